"""The dataset object shared by every method, the evaluation protocol and the benchmark.

A :class:`CrossModalDataset` stores a *pool* of ``n`` items once -- one array per modality
(row-sample convention: ``(n, d)`` dense float or ``scipy.sparse`` CSR; image modalities may
have more axes, e.g. ``(n, 3, H, W)``) and a multi-hot label matrix ``(n, c)`` -- plus named
splits given as integer index arrays into the pool. The three standard splits are

* ``"train"``     the items a method is fitted on,
* ``"query"``     the queries of the evaluation,
* ``"retrieval"`` the database searched by the queries.

Derived datasets (:meth:`CrossModalDataset.subset_train`,
:meth:`CrossModalDataset.validation_split`, ...) share the pool arrays; only index arrays
are new. See ``docs/data.md``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._validation import check_random_state
from .images import concat_image_sources, is_image_source

__all__ = [
    "CrossModalDataset",
    "DataSplit",
    "DataWarning",
    "STANDARD_SPLITS",
    "labels_from_indices",
    "as_label_matrix",
    "label_class_names",
]

#: The split names every dataset has (``"query"`` may be empty).
STANDARD_SPLITS = ("train", "query", "retrieval")

_DEFAULT_NAMES = ("image", "text")

# rows per chunk when scanning large dense arrays for NaN / inf
_CHUNK_ELEMS = 1 << 24


class DataWarning(UserWarning):
    """Warning about a dataset that is usable but probably not what was meant."""


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _check_count(value: Any, name: str, *, minimum: int = 1) -> int:
    """A number of items given by the user (``n_train``, ``n_query``) as an int: bool, float
    and other types are a TypeError (2.5 was silently truncated), values below ``minimum`` a
    ValueError naming the argument."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer number of items, got {value!r}")
    if value < minimum:
        need = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {need}, got {value}")
    return int(value)


def _class_name_vector(labels: Any) -> np.ndarray | None:
    """String / bytes labels as a 1-D array of class names (one per item), None for numeric
    labels. Strings in any other shape (e.g. a 2-D array of characters) are a ValueError."""
    if sp.issparse(labels):
        return None
    y = np.asarray(labels)
    if y.dtype.kind not in "US":
        return None
    if y.dtype.kind == "S":
        y = np.char.decode(y, "utf-8", "replace")
    if y.ndim == 2 and 1 in y.shape:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise ValueError(f"labels are a {y.ndim}-D array of strings (shape {y.shape}, dtype "
                         f"{y.dtype}); give one class name per item (a 1-D array of strings), "
                         f"class indices (n,) or a numeric (n, c) multi-hot matrix")
    return np.char.strip(y)


def label_class_names(labels: Any) -> list[str] | None:
    """The class names of labels given as one class name (string) per item -- the sorted
    unique names, the order of :func:`as_label_matrix`'s columns -- or None for numeric
    labels."""
    names = _class_name_vector(labels)
    return None if names is None else [str(c) for c in np.unique(names)]


def _is_int_valued(a: np.ndarray) -> bool:
    if a.dtype.kind in "iub":
        return True
    if a.dtype.kind == "f":
        return bool(np.all(np.isfinite(a)) and np.all(a == np.round(a)))
    return False


def labels_from_indices(indices: Any, classes: Iterable | None = None) -> np.ndarray:
    """Class-index vector -> one-hot ``(n, c)`` float32 matrix.

    Rule: the classes are the sorted unique values of ``indices`` (or ``classes`` when given),
    and column ``k`` of the result is the ``k``-th class in that order. MATLAB's 1-based labels
    ``1..c`` therefore map to columns ``0..c-1``, 0-based labels ``0..c-1`` to the same columns.
    A class that never occurs gets no column unless it is listed in ``classes``.

    Parameters
    ----------
    indices : array of shape (n,) or (n, 1) or (1, n), integer-valued
    classes : optional sequence of all class values (e.g. ``range(1, 11)``)
    """
    idx = np.asarray(indices)
    if idx.ndim == 2 and 1 in idx.shape:
        idx = idx.reshape(-1)
    if idx.ndim != 1:
        raise ValueError(f"labels: class indices must be a vector, got shape {idx.shape}")
    if idx.dtype.kind in "US":   # class names: the classes are the sorted names
        idx = _class_name_vector(idx)
    elif idx.size and not _is_int_valued(idx):
        raise ValueError("labels: class indices must be integer-valued (no NaN, no fractions)")
    if classes is None:
        cls = np.unique(idx)
    else:
        cls = np.unique(np.asarray(list(classes)))
        missing = np.setdiff1d(np.unique(idx), cls)
        if missing.size:
            raise ValueError(
                f"labels: class values {missing[:10].tolist()} are not in classes={cls.tolist()}"
            )
    col = np.searchsorted(cls, idx)
    out = np.zeros((idx.shape[0], cls.shape[0]), dtype=np.float32)
    out[np.arange(idx.shape[0]), col] = 1.0
    return out


def as_label_matrix(labels: Any, n_classes: int | None = None) -> np.ndarray:
    """Multi-hot matrix or class-index vector -> multi-hot ``(n, c)`` float32 matrix.

    * 2-D with more than one column: taken as multi-hot; values must be 0/1 (bool ok).
      A sparse matrix is densified (labels are small: ``c`` columns).
    * 1-D strings: one class name per item; the columns are the sorted names
      (:func:`label_class_names`). Strings in another shape are a ValueError.
    * 1-D, or 2-D with a single column / single row: class indices, converted by
      :func:`labels_from_indices` (sorted unique values -> columns). When ``n_classes`` is
      given and the values are a subset of ``1..n_classes`` with a 1 present (MATLAB) or of
      ``0..n_classes-1``, the full class range is used so absent classes keep their column.
    """
    if sp.issparse(labels):
        labels = labels.toarray()
    y = np.asarray(labels)
    if y.dtype == object:
        raise TypeError("labels must be a numeric array, got dtype=object")
    names = _class_name_vector(y)
    if names is not None:
        return labels_from_indices(names)
    if y.ndim == 1 or (y.ndim == 2 and (y.shape[1] == 1 or (y.shape[0] == 1 and y.shape[1] > 1))):
        flat = y.reshape(-1)
        classes = None
        if n_classes is not None and flat.size and _is_int_valued(flat):
            lo, hi = flat.min(), flat.max()
            if lo >= 1 and hi <= n_classes:
                classes = range(1, n_classes + 1)
            elif lo >= 0 and hi <= n_classes - 1:
                classes = range(0, n_classes)
        return labels_from_indices(flat, classes)
    if y.ndim != 2:
        raise ValueError(f"labels must be (n, c) multi-hot or (n,) class indices, got shape {y.shape}")
    if y.dtype.kind == "b":
        return y.astype(np.float32)
    if y.dtype.kind not in "iuf":
        raise TypeError(f"labels must be numeric, got dtype {y.dtype}")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError("labels contain NaN or inf")
    bad = (y != 0) & (y != 1)
    if np.any(bad):
        vals = np.unique(y[bad])[:5].tolist()
        raise ValueError(
            f"labels: a multi-hot matrix must contain only 0 and 1, found {vals}; "
            "pass class indices as a vector of shape (n,) or (n, 1)"
        )
    return y.astype(np.float32, copy=False)


def _check_features(name: str, X: Any) -> Any:
    """Validate / normalise one modality array. Returns ndarray (ndim >= 2), CSR, or a lazy
    image source (:mod:`cmhash.data.images`, kept as it is: nothing is read)."""
    if is_image_source(X):
        return X
    if sp.issparse(X):
        X = sp.csr_matrix(X) if not isinstance(X, sp.csr_matrix) else X
        if X.dtype.kind not in "f":
            if X.dtype.kind not in "iub":
                raise TypeError(f"modality '{name}': unsupported dtype {X.dtype}")
            X = X.astype(np.float32)
        if X.data.size and not np.all(np.isfinite(X.data)):
            raise ValueError(f"modality '{name}' contains NaN or inf values")
        return X
    X = np.asarray(X)
    if X.dtype == object:
        raise TypeError(f"modality '{name}': dtype=object arrays are not supported")
    if X.ndim < 2:
        raise ValueError(
            f"modality '{name}' must be (n, d) (row samples), got an array of shape {X.shape}"
        )
    if X.dtype.kind in "iub":
        X = X.astype(np.float32)
    elif X.dtype.kind != "f":
        raise TypeError(f"modality '{name}': unsupported dtype {X.dtype}")
    # chunked finiteness scan (no full-size boolean temporary for big pools)
    n = X.shape[0]
    row = int(np.prod(X.shape[1:])) or 1
    step = max(1, _CHUNK_ELEMS // row)
    for s in range(0, n, step):
        chunk = X[s : s + step]
        fin = np.isfinite(chunk)
        if not fin.all():
            bad = s + int(np.flatnonzero(~fin.reshape(chunk.shape[0], -1).all(axis=1))[0])
            raise ValueError(f"modality '{name}' contains NaN or inf values (first in row {bad})")
    return X


def _as_index(name: str, idx: Any, n: int) -> np.ndarray:
    a = np.asarray(idx)
    if a.dtype.kind == "b":
        if a.shape != (n,):
            raise ValueError(
                f"split '{name}': a boolean mask must have shape ({n},), got {a.shape}"
            )
        return np.flatnonzero(a).astype(np.int64)
    a = a.reshape(-1) if a.ndim != 1 else a
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.dtype.kind not in "iu":
        if a.dtype.kind == "f" and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise TypeError(f"split '{name}': indices must be integers, got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= n:
        raise ValueError(
            f"split '{name}': indices out of range [0, {n}) (min {lo}, max {hi})"
        )
    if a.size > 1 and not bool(np.all(a[1:] > a[:-1])):  # strictly increasing: no duplicates
        if np.bincount(a, minlength=n).max() > 1:
            raise ValueError(f"split '{name}' contains duplicate indices")
    return a


def _as_slice(idx: np.ndarray) -> slice | None:
    """A contiguous ascending index array as a slice (for zero-copy row access)."""
    if idx.size == 0:
        return slice(0, 0)
    a, b = int(idx[0]), int(idx[-1])
    if b - a + 1 == idx.size and (idx.size == 1 or bool(np.all(np.diff(idx) == 1))):
        return slice(a, b + 1)
    return None


def _take(X: Any, idx: np.ndarray) -> Any:
    s = _as_slice(idx)
    if s is not None:
        if s.start == 0 and s.stop == X.shape[0]:
            return X
        return X[s]
    return X[idx]


def _vstack(parts: list) -> Any:
    if any(is_image_source(p) for p in parts):
        return concat_image_sources(parts)
    if any(sp.issparse(p) for p in parts):
        return sp.vstack([sp.csr_matrix(p) for p in parts], format="csr")
    return np.concatenate([np.asarray(p) for p in parts], axis=0)


def _n_rows(X: Any) -> int:
    return int(X.shape[0])


# --------------------------------------------------------------------------------------------
# DataSplit
# --------------------------------------------------------------------------------------------
class DataSplit:
    """Read-only view of one split of a :class:`CrossModalDataset`.

    ``split["image"]`` (or ``split[0]``) gives that modality's rows, ``split.views`` all
    modalities in order, ``split.labels`` the ``(m, c)`` labels, ``split.indices`` the pool
    indices. Arrays are materialised on access (a contiguous split is a zero-copy view).
    """

    def __init__(self, dataset: CrossModalDataset, name: str):
        self.dataset = dataset
        self.name = name
        self.indices = dataset.indices(name)

    def __len__(self) -> int:
        return int(self.indices.size)

    @property
    def n(self) -> int:
        return len(self)

    @property
    def modality_names(self) -> tuple[str, ...]:
        return self.dataset.modality_names

    def __getitem__(self, modality: str | int) -> Any:
        return self.dataset.get(self.name, modality)

    @property
    def views(self) -> list:
        return self.dataset.views(self.name)

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels_of(self.name)

    def __repr__(self) -> str:
        return f"DataSplit({self.dataset.name!r}, {self.name!r}, n={len(self)})"


# --------------------------------------------------------------------------------------------
# CrossModalDataset
# --------------------------------------------------------------------------------------------
class CrossModalDataset:
    """Paired multi-modal data with multi-hot labels and named index splits.

    Parameters
    ----------
    modalities : dict name -> array, or a list/tuple of arrays
        One entry per modality, each ``(n, d)`` dense float / CSR (other sparse formats are
        converted to CSR; integer/bool features to float32), or ``(n, ...)`` dense with more
        axes (images ``(n, 3, H, W)``). All with the same ``n``. A list gets the names
        ``"image", "text"`` (then ``"view2", "view3", ...``). One modality is accepted (e.g. a
        text-only release) but flagged: methods need two or more.
    labels : (n, c) multi-hot, or (n,) / (n, 1) class indices
        Class indices are converted by :func:`as_label_matrix` (sorted unique values -> one-hot
        columns in that order; MATLAB 1..c -> columns 0..c-1). Stored as float32 0/1.
    splits : dict name -> index array (or boolean mask of length n), optional
        Must contain ``"train"`` unless None. ``"retrieval"`` defaults to ``"train"`` and
        ``"query"`` to empty. Extra split names are kept. None: every item is train =
        retrieval, no query.
    name : str
    allow_empty_classes : bool, default False
        A label column without positives in the training split raises ``ValueError`` naming
        the class; set True to allow it.
    allow_overlap : bool, default False
        Query items that are also retrieval or training items trigger a :class:`DataWarning`
        unless True.
    class_names : optional sequence of c strings
    """

    def __init__(
        self,
        modalities: Mapping[str, Any] | list | tuple,
        labels: Any,
        splits: Mapping[str, Any] | None = None,
        name: str = "",
        *,
        allow_empty_classes: bool = False,
        allow_overlap: bool = False,
        class_names: Iterable[str] | None = None,
        _validated: bool = False,
    ):
        if isinstance(modalities, Mapping):
            items = list(modalities.items())
        elif isinstance(modalities, (list, tuple)):
            names = list(_DEFAULT_NAMES) + [f"view{i}" for i in range(2, len(modalities))]
            items = list(zip(names[: len(modalities)], modalities))
        else:
            raise TypeError(
                "modalities must be a dict name -> array (or a list of arrays), "
                f"got {type(modalities).__name__}"
            )
        if not items:
            raise ValueError("modalities: at least one modality is required")
        mods: dict[str, Any] = {}
        for key, X in items:
            if not isinstance(key, str) or not key:
                raise TypeError(f"modality names must be non-empty strings, got {key!r}")
            if key in mods:
                raise ValueError(f"duplicate modality name {key!r}")
            X = X if _validated else _check_features(key, X)
            if isinstance(X, np.ndarray) and X.flags.writeable:
                # a read-only view: in-place edits by a method fail loudly instead of
                # silently corrupting the shared pool (the caller's array is untouched)
                X = X.view()
                X.flags.writeable = False
            mods[key] = X

        names_ = list(mods)
        n = _n_rows(mods[names_[0]])
        for key in names_[1:]:
            if _n_rows(mods[key]) != n:
                raise ValueError(
                    f"modalities have different row counts: '{names_[0]}' has {n} rows, "
                    f"'{key}' has {_n_rows(mods[key])} (row-sample convention: (n, d))"
                )
        if class_names is None and not _validated:
            class_names = label_class_names(labels)   # labels given as class names
        Y = labels if _validated else as_label_matrix(labels)
        if Y.flags.writeable:
            Y = Y.view()
            Y.flags.writeable = False
        if Y.shape[0] != n:
            hint = ""
            if Y.shape[1] == n:
                hint = " (labels look transposed: pass (n, c))"
            raise ValueError(
                f"labels have {Y.shape[0]} rows but the modalities have {n}{hint}"
            )
        self._modalities = mods
        self._labels = Y
        self.name = str(name)
        self.allow_empty_classes = bool(allow_empty_classes)
        self.allow_overlap = bool(allow_overlap)
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if len(class_names) != Y.shape[1]:
                raise ValueError(
                    f"class_names has {len(class_names)} entries but labels have {Y.shape[1]} columns"
                )
        self.class_names = class_names
        #: the TextVocabulary that made the text modality from raw text (image-text manifests),
        #: else None; kept by derived datasets
        self.text_vocabulary = None
        #: free-form provenance (loader layout, preset, source path, generator parameters)
        self.meta: dict[str, Any] = {}

        # splits
        if splits is None:
            splits = {"train": np.arange(n)}
        if not isinstance(splits, Mapping):
            raise TypeError("splits must be a dict name -> index array")
        sp_: dict[str, np.ndarray] = {}
        seen: dict[int, np.ndarray] = {}
        for key, idx in splits.items():
            if not isinstance(key, str):
                raise TypeError(f"split names must be strings, got {key!r}")
            if id(idx) in seen:  # the same array for two splits (train = retrieval): check once
                sp_[key] = seen[id(idx)]
                continue
            arr = _as_index(key, idx, n).view()  # a view: never touch the caller's flags
            arr.flags.writeable = False
            sp_[key] = seen[id(idx)] = arr
        if "train" not in sp_:
            raise ValueError(f"splits must contain 'train'; got {sorted(sp_)}")
        sp_.setdefault("retrieval", sp_["train"])
        if "query" not in sp_:
            sp_["query"] = np.zeros(0, dtype=np.int64)
            sp_["query"].flags.writeable = False
        self._splits = sp_
        self._check_classes()
        self._check_overlap()

    # ------------------------------------------------------------------ checks
    def _check_classes(self) -> None:
        tr = self._splits["train"]
        if tr.size == 0:
            raise ValueError("split 'train' is empty")
        if self.allow_empty_classes:
            return
        counts = self._labels[tr].sum(axis=0)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            desc = ", ".join(
                str(j) + (f" ({self.class_names[j]})" if self.class_names else "") for j in empty[:20]
            )
            raise ValueError(
                f"empty class: label column(s) {desc} have no positive item in the training "
                f"split ({tr.size} items); drop the column(s) or pass allow_empty_classes=True"
            )

    def _check_overlap(self) -> None:
        if self.allow_overlap:
            return
        q = self._splits["query"]
        if q.size == 0:
            return
        for other in ("retrieval", "train"):
            k = np.intersect1d(q, self._splits[other], assume_unique=True).size
            if k:
                warnings.warn(
                    f"dataset {self.name!r}: {k} query item(s) are also in the '{other}' split "
                    "(pass allow_overlap=True if intended)",
                    DataWarning,
                    stacklevel=3,
                )
                return

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_split_arrays(
        cls,
        train: tuple[Mapping[str, Any], Any],
        query: tuple[Mapping[str, Any], Any] | None = None,
        retrieval: tuple[Mapping[str, Any], Any] | None = None,
        name: str = "",
        **kwargs: Any,
    ) -> CrossModalDataset:
        """Build a pooled dataset from separately stored split arrays.

        Each argument is ``(modalities_dict, labels)``. The pool is the row concatenation
        ``[train; query; retrieval]`` (retrieval only when given: otherwise retrieval = train).
        Class-index labels are converted after concatenation so every split shares the same
        class columns.
        """
        parts = [("train", train)]
        if query is not None:
            parts.append(("query", query))
        if retrieval is not None:
            parts.append(("retrieval", retrieval))
        names = list(train[0].keys())
        for split, (mods, _) in parts[1:]:
            if list(mods.keys()) != names:
                raise ValueError(
                    f"split '{split}' has modalities {list(mods.keys())}, train has {names}"
                )
        pooled = {m: _vstack([p[1][0][m] for p in parts]) for m in names}
        labs = [np.asarray(p[1][1].toarray() if sp.issparse(p[1][1]) else p[1][1]) for p in parts]
        if all(lab.ndim == 1 or (lab.ndim == 2 and lab.shape[1] == 1) for lab in labs):
            Y = np.concatenate([lab.reshape(-1) for lab in labs])
        else:
            Y = np.concatenate([as_label_matrix(lab) for lab in labs], axis=0)
        splits: dict[str, np.ndarray] = {}
        start = 0
        for split, (mods, _) in parts:
            k = _n_rows(mods[names[0]])
            splits[split] = np.arange(start, start + k)
            start += k
        if retrieval is None:
            splits["retrieval"] = splits["train"]
        return cls(pooled, Y, splits, name=name, **kwargs)

    def _derive(self, splits: Mapping[str, Any], name: str | None = None, **kwargs: Any) -> CrossModalDataset:
        """A dataset sharing this pool with new splits (features are not re-validated)."""
        opts = dict(
            allow_empty_classes=self.allow_empty_classes,
            allow_overlap=self.allow_overlap,
            class_names=self.class_names,
        )
        opts.update(kwargs)
        ds = CrossModalDataset(
            self._modalities,
            self._labels,
            splits,
            name=self.name if name is None else name,
            _validated=True,
            **opts,
        )
        ds.meta = dict(self.meta)
        ds.text_vocabulary = self.text_vocabulary
        return ds

    def with_splits(self, **splits: Any) -> CrossModalDataset:
        """Copy with some splits replaced (pool shared). ``None`` removes an extra split."""
        new = dict(self._splits)
        for k, v in splits.items():
            if v is None:
                if k in STANDARD_SPLITS:
                    raise ValueError(f"cannot remove standard split '{k}'")
                new.pop(k, None)
            else:
                new[k] = v
        return self._derive(new)

    def select_modalities(self, names: Iterable[str | int]) -> CrossModalDataset:
        """Copy restricted to (and ordered as) the given modalities; pool arrays shared."""
        keys = [self._modality_key(m) for m in names]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate modalities in {keys}")
        ds = CrossModalDataset(
            {k: self._modalities[k] for k in keys},
            self._labels,
            self._splits,
            name=self.name,
            allow_empty_classes=self.allow_empty_classes,
            allow_overlap=True,
            class_names=self.class_names,
            _validated=True,
        )
        ds.allow_overlap = self.allow_overlap
        ds.meta = dict(self.meta)
        ds.text_vocabulary = self.text_vocabulary
        return ds

    # ------------------------------------------------------------------ basic attributes
    @property
    def modality_names(self) -> tuple[str, ...]:
        return tuple(self._modalities)

    @property
    def n_modalities(self) -> int:
        return len(self._modalities)

    @property
    def is_single_modality(self) -> bool:
        """True for a one-modality dataset (loadable, but methods refuse it)."""
        return len(self._modalities) == 1

    @property
    def n_items(self) -> int:
        """Size of the pool (all splits index into it)."""
        return int(self._labels.shape[0])

    def __len__(self) -> int:
        return self.n_items

    @property
    def n_classes(self) -> int:
        return int(self._labels.shape[1])

    @property
    def labels(self) -> np.ndarray:
        """Pool labels ``(n, c)`` float32 0/1."""
        return self._labels

    @property
    def modalities(self) -> dict[str, Any]:
        """Pool arrays by name (a new dict; the arrays are shared, do not modify them)."""
        return dict(self._modalities)

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(self._splits)

    @property
    def splits(self) -> dict[str, np.ndarray]:
        return dict(self._splits)

    def dims(self, modality: str | int) -> tuple[int, ...]:
        """Per-item shape of a modality (``(d,)`` for features, ``(3, H, W)`` for images)."""
        return tuple(int(s) for s in self._modalities[self._modality_key(modality)].shape[1:])

    def is_sparse(self, modality: str | int) -> bool:
        return sp.issparse(self._modalities[self._modality_key(modality)])

    @property
    def train_is_retrieval(self) -> bool:
        """True when the train and retrieval index arrays are identical (same items, same
        order) -- the condition of the "learned database" protocol."""
        a, b = self._splits["train"], self._splits["retrieval"]
        return a is b or (a.shape == b.shape and bool(np.array_equal(a, b)))

    # ------------------------------------------------------------------ access
    def _modality_key(self, modality: str | int) -> str:
        names = list(self._modalities)
        if isinstance(modality, (int, np.integer)) and not isinstance(modality, bool):
            i = int(modality)
            if not -len(names) <= i < len(names):
                raise ValueError(
                    f"modality index {i} out of range: the dataset has {len(names)} modalities {names}"
                )
            return names[i]
        if modality not in self._modalities:
            raise ValueError(f"unknown modality {modality!r}; valid modalities: {names}")
        return modality

    def _split_key(self, split: str) -> str:
        if split not in self._splits:
            raise ValueError(f"unknown split {split!r}; valid splits: {list(self._splits)}")
        return split

    def indices(self, split: str) -> np.ndarray:
        """Pool indices of a split (read-only int64 array)."""
        return self._splits[self._split_key(split)]

    def get(self, split: str, modality: str | int) -> Any:
        """Rows of ``modality`` in ``split`` (zero-copy when the split is contiguous)."""
        X = self._modalities[self._modality_key(modality)]
        return _take(X, self.indices(split))

    def views(self, split: str) -> list:
        """All modalities of ``split`` in ``modality_names`` order."""
        idx = self.indices(split)
        return [_take(X, idx) for X in self._modalities.values()]

    def labels_of(self, split: str) -> np.ndarray:
        return _take(self._labels, self.indices(split))

    def split(self, name: str) -> DataSplit:
        self._split_key(name)
        return DataSplit(self, name)

    def __getitem__(self, split: str) -> DataSplit:
        return self.split(split)

    # ------------------------------------------------------------------ protocols
    def subset_train(self, n: int, random_state: Any = None) -> CrossModalDataset:
        """Copy whose training split is a random ``n``-subset of the retrieval split
        (sorted pool order). The papers' protocol for large sets: train on a subset of the
        database. ``n`` equal to the retrieval size gives train = retrieval; a larger ``n``
        is a ValueError (it used to give train = retrieval silently)."""
        ret = self._splits["retrieval"]
        n = _check_count(n, "subset_train: n")
        if n > ret.size:
            raise ValueError(f"subset_train: n={n} exceeds the {ret.size} items of the "
                             f"retrieval split the training subset is drawn from")
        if n == ret.size:
            return self._derive({**self._splits, "train": ret})
        pick = check_random_state(random_state).choice(ret.size, size=n, replace=False)
        return self._derive({**self._splits, "train": np.sort(ret[pick])})

    def validation_split(self, val_size: float | int = 0.2, random_state: Any = None) -> CrossModalDataset:
        """Hold out part of the training split for hyper-parameter selection.

        Returns a copy whose query split is ``val_size`` (a fraction in (0, 1) or a count) of
        the training items drawn at random, and whose train = retrieval = the remaining
        training items. The original query (and retrieval) items are never used.
        """
        tr = self._splits["train"]
        if isinstance(val_size, (float, np.floating)):
            if not 0 < val_size < 1:
                raise ValueError(f"validation_split: a fraction must be in (0, 1), got {val_size}")
            k = int(round(float(val_size) * tr.size))
        elif isinstance(val_size, (int, np.integer)) and not isinstance(val_size, bool):
            k = int(val_size)
        else:
            raise TypeError(f"validation_split: val_size must be a float fraction or an int, got {val_size!r}")
        if not 1 <= k < tr.size:
            raise ValueError(
                f"validation_split: need 1 <= n_val < {tr.size} (training size), got {k}"
            )
        perm = check_random_state(random_state).permutation(tr.size)
        val = np.sort(tr[perm[:k]])
        rest = np.sort(tr[perm[k:]])
        name = f"{self.name}[val]" if self.name else "validation"
        return self._derive({"train": rest, "retrieval": rest, "query": val}, name=name)

    def unpaired(
        self, random_state: Any = None, split: str = "train", return_indices: bool = False
    ) -> tuple:
        """Per-modality training sets, each shuffled by its own random permutation.

        AMSH's unpaired protocol (paper Sec. IV-E: "all data randomly shuffled", so no
        cross-modal correspondence). Labels travel with their samples.

        Returns ``(views, labels)`` -- lists with one entry per modality -- or
        ``(views, labels, indices)`` with the pool indices of each shuffled list.
        """
        idx = self.indices(split)
        rng = check_random_state(random_state)
        views, labs, inds = [], [], []
        for X in self._modalities.values():
            p = idx[rng.permutation(idx.size)]
            views.append(X[p])
            labs.append(self._labels[p])
            inds.append(p)
        if return_indices:
            return views, labs, inds
        return views, labs

    # ------------------------------------------------------------------ summary
    def summary(self) -> dict:
        """Sizes, dims, sparsity and label statistics as a JSON-friendly dict."""
        mods = {}
        for k, X in self._modalities.items():
            if is_image_source(X):   # lazy images: nothing is decoded for a summary
                mods[k] = {"dims": list(int(s) for s in X.shape[1:]), "dtype": str(X.dtype),
                           "sparse": False, "density": None,
                           "source": type(X).__name__}
                continue
            total = X.shape[0] * int(np.prod(X.shape[1:]))
            if sp.issparse(X):
                nnz = int(X.nnz)
            else:
                nnz = int(np.count_nonzero(X))
            mods[k] = {
                "dims": list(int(s) for s in X.shape[1:]),
                "dtype": str(X.dtype),
                "sparse": bool(sp.issparse(X)),
                "density": (nnz / total) if total else 0.0,
            }
        splits = {k: int(v.size) for k, v in self._splits.items()}
        Y = self._labels
        per_item = Y.sum(axis=1)
        tr_counts = Y[self._splits["train"]].sum(axis=0)
        out = {
            "name": self.name,
            "n_items": self.n_items,
            "n_classes": self.n_classes,
            "modalities": mods,
            "splits": splits,
            "train_is_retrieval": self.train_is_retrieval,
            "label_cardinality": float(per_item.mean()) if Y.shape[0] else 0.0,
            "multi_label": bool(np.any(per_item > 1)),
            "items_without_label": int(np.sum(per_item == 0)),
            "empty_train_classes": [int(j) for j in np.flatnonzero(tr_counts == 0)],
            "single_modality": self.is_single_modality,
        }
        if self.is_single_modality:
            out["note"] = "single modality: loadable, but cross-modal methods need two or more"
        return out

    def format_summary(self) -> str:
        s = self.summary()
        lines = [f"dataset {s['name'] or '(unnamed)'}: {s['n_items']} items, {s['n_classes']} classes"]
        for k, m in s["modalities"].items():
            kind = "CSR" if m["sparse"] else "dense"
            dims = "x".join(map(str, m["dims"]))
            if m["density"] is None:
                lines.append(f"  {k:<10s} {dims:>10s}  lazy  {m['dtype']:<8s} {m['source']}")
                continue
            lines.append(f"  {k:<10s} {dims:>10s}  {kind:<5s} {m['dtype']:<8s} density {m['density']:.4f}")
        lines.append("  splits: " + ", ".join(f"{k}={v}" for k, v in s["splits"].items())
                     + f"  (train is retrieval: {s['train_is_retrieval']})")
        lines.append(
            f"  labels per item: {s['label_cardinality']:.3f}"
            f" ({'multi-label' if s['multi_label'] else 'single-label'})"
            + (f", {s['items_without_label']} items without label" if s["items_without_label"] else "")
        )
        if s["single_modality"]:
            lines.append("  NOTE: " + s["note"])
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_summary()

    def __repr__(self) -> str:
        mods = ", ".join(
            f"{k}={'x'.join(map(str, X.shape[1:]))}{'(csr)' if sp.issparse(X) else ''}"
            for k, X in self._modalities.items()
        )
        spl = ", ".join(f"{k}={v.size}" for k, v in self._splits.items())
        return f"CrossModalDataset({self.name!r}, n={self.n_items}, c={self.n_classes}, {mods}; {spl})"
