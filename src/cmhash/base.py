"""The estimator base class shared by every cross-modal hasher, its persistence and registry.

Subclasses implement ``_fit(views, labels, rng)`` (paired data: lists of (n, d_v) arrays and one
(n, c) label matrix) and, where the method supports it, ``_fit_unpaired(views, labels, rng)``
(per-modality samples and labels, no correspondence). They set learned attributes ending in
``_``; ``codes_`` holds the learned training codes (one (n, r) matrix shared by all modalities,
or a list with one matrix per modality). The base class validates input, seeds, times, names
modalities, encodes, and saves/loads models as .npz + JSON (no pickle).
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from ._io import atomic_write
from ._memory import ordinary_pages
from ._phases import phase
from ._state_check import check_learned_state
from ._validation import (check_distinct_label_sets, check_features, check_labels,
                          check_n_anchors, check_n_bits, check_not_constant,
                          check_random_state, class_indices, is_image_source, open_npz,
                          warn_if_degenerate_codes, warn_if_far_from_training)
from .data.images import ImageTransform
from .data.text import TextVocabulary, as_text_list
from .deep.normalization import InputNormalization
from .fingerprint import model_fingerprint, training_data_fingerprint
from .kernel import CenteredFeatures, RBFAnchorFeatures
from .solvers import ridge_regression, sign

FORMAT = "cmhash-model"
FORMAT_VERSION = 1
DEFAULT_NAMES = ("image", "text")

#: name -> "module:Class"; resolved lazily so that importing cmhash never imports torch
_REGISTRY: dict[str, str] = {
    "batch": "cmhash.methods.batch:BATCH",
    "ascmh": "cmhash.methods.ascmh:ASCMH",
    "asfoh": "cmhash.methods.asfoh:ASFOH",
    "amsh": "cmhash.methods.amsh:AMSH",
    "scratch": "cmhash.methods.scratch:SCRATCH",
    "dch": "cmhash.methods.dch:DCH",
    "cmfh": "cmhash.methods.cmfh:CMFH",
    "dlfh": "cmhash.methods.dlfh:DLFH",
    "kdlfh": "cmhash.methods.dlfh:KDLFH",
    "smfh": "cmhash.methods.smfh:SMFH",
    "scm-orth": "cmhash.methods.scm:SCMOrth",
    "scm-seq": "cmhash.methods.scm:SCMSeq",
    "gsph": "cmhash.methods.gsph:GSPH",
    "fsh": "cmhash.methods.fsh:FSH",
    "seph-km": "cmhash.methods.seph:SePHKM",
    "seph-rnd": "cmhash.methods.seph:SePHRnd",
    "lssh": "cmhash.methods.lssh:LSSH",
    "lcmfh": "cmhash.methods.lcmfh:LCMFH",
    "ta-adcmh": "cmhash.deep.ta_adcmh:TAADCMH",
    "sdch": "cmhash.deep.sdch:SDCH",
    "dcmh": "cmhash.deep.dcmh:DCMH",
}

#: classes whose instances can be stored as learned state (get_state/from_state)
_STATE_CLASSES = {"RBFAnchorFeatures": RBFAnchorFeatures, "CenteredFeatures": CenteredFeatures,
                  "TextVocabulary": TextVocabulary, "ImageTransform": ImageTransform,
                  "InputNormalization": InputNormalization}


def register(name: str, target: str) -> None:
    """Register a method under ``name`` as ``"package.module:ClassName"``."""
    _REGISTRY[name] = target


def available_methods() -> list[str]:
    """Registered method names whose module is present in this installation."""
    out = []
    for name, target in _REGISTRY.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            out.append(name)
    return out


def get_method(name: str):
    """The estimator class registered as ``name`` (e.g. ``"batch"``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {sorted(_REGISTRY)}")
    module, cls = _REGISTRY[name].split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == "torch":
            raise ImportError(f"method {name!r} needs PyTorch: pip install 'cmhash[deep]'") from exc
        raise
    return getattr(mod, cls)


#: :meth:`CrossModalHasher.encode` works through at most this many rows at a time, and at most
#: ``ENCODE_CHUNK_ELEMENTS`` input values per chunk, so encoding millions of items needs memory
#: for one chunk's intermediate features (kernel features, standardised inputs) plus the codes
ENCODE_CHUNK_ROWS = 16384
ENCODE_CHUNK_ELEMENTS = 1 << 24
#: encode() runs inside _memory.ordinary_pages() from this many rows on (batch encoding);
#: smaller calls (a service's queries) leave the process-wide allocator settings alone
ENCODE_ORDINARY_PAGES_ROWS = 4096


def encode_chunk_rows(sample_shape) -> int:
    """Rows per encoding chunk for samples of ``sample_shape`` (features, or C x H x W)."""
    per_row = max(int(np.prod(sample_shape)), 1)
    return max(1, min(ENCODE_CHUNK_ROWS, ENCODE_CHUNK_ELEMENTS // per_row))


def make_hasher(name: str, **params):
    """Instantiate the method registered as ``name`` with ``params``."""
    return get_method(name)(**params)


def unpaired_label_matrices(labels, sizes, names) -> list:
    """Unpaired training labels (one per modality, ``sizes[v]`` rows each) as multi-hot
    matrices; class-index labels are one-hot encoded over the union of all modalities' classes,
    so that a column means the same class in every modality."""
    if not isinstance(labels, (list, tuple)) or len(labels) != len(sizes):
        raise ValueError(f"unpaired training needs one label matrix per modality: got "
                         f"{len(sizes)} modalities and "
                         f"{len(labels) if isinstance(labels, (list, tuple)) else 'a single'} "
                         f"label matrix/matrices")
    indices = [class_indices(L) for L in labels]
    classes = None
    if any(i is not None for i in indices):
        if any(i is None for i in indices):
            raise ValueError("unpaired labels must all be class-index vectors or all be "
                             "multi-hot (n_v, c) matrices, not a mix of both")
        classes = np.unique(np.concatenate(indices))
    return [check_labels(L, n, name=f"labels[{v!r}]", require_nonempty_classes=False,
                         require_labelled_rows=True, classes=classes)
            for v, n, L in zip(names, sizes, labels)]


class CrossModalHasher:
    """Base class of cross-modal hashers (scikit-learn style).

    Parameters common to all methods: ``n_bits`` (code length r), ``random_state`` (seed of
    every random choice: the same seed gives the same codes) and ``verbose`` (progress).
    """

    name = ""
    supports_unpaired = False
    #: whether ``encode(..., task=...)`` selects task-specific hash functions (TA-ADCMH);
    #: other methods ignore ``task``
    task_specific = False
    #: modality count the method accepts
    min_views, max_views = 2, 2
    #: feature arrays up to this many dimensions (deep methods take images (n, C, H, W))
    max_feature_ndim = 2
    #: shapes of the learned arrays, checked when a model file is loaded (and before saving):
    #: see :mod:`cmhash._state_check` (``codes_`` is checked for every method)
    state_shapes: dict = {}
    #: learned diagnostics (loss histories) exempt from the finiteness check of a loaded model
    diagnostic_state: tuple = ()

    def __init__(self, n_bits: int = 32, *, random_state=None, verbose: bool = False):
        self.n_bits = n_bits
        self.random_state = random_state
        self.verbose = verbose

    # ----------------------------------------------------------------- params
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params):
        valid = set(self._param_names())
        for k, v in params.items():
            if k not in valid:
                raise ValueError(f"invalid parameter {k!r} for {type(self).__name__}; "
                                 f"valid parameters: {sorted(valid)}")
            setattr(self, k, v)
        return self

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    # -------------------------------------------------------------------- fit
    def fit(self, image, text, labels):
        """Fit on paired image/text data: ``image`` (n, d_x), ``text`` (n, d_y), ``labels`` (n, c).

        ``labels``: multi-hot (n, c) 0/1, or class indices (n,) / (n, 1) (see
        :func:`cmhash._validation.check_labels`). Every training item needs at least one class:
        all-zero label rows (unlabelled items) are refused with a ValueError naming them, and
        so are labels that give every item the same label set (one class: nothing to learn).
        """
        return self.fit_views([image, text], labels, names=DEFAULT_NAMES)

    def fit_views(self, views, labels, names=None):
        """Fit on V >= 2 paired modalities: ``views[v]`` of shape (n, d_v), ``labels`` (n, c).

        Dask arrays (under a ``distributed.Client``) fit out-of-core / distributed for the
        methods that have a Dask fit (:func:`cmhash.distributed.fit.fit_on_dask`)."""
        if any(type(a).__module__.startswith("dask.") for a in [*views, labels]):
            from .distributed.fit import fit_on_dask
            return fit_on_dask(self, views, labels, names)
        views, names = self._check_views(views, names)
        n = views[0].shape[0]
        for v, X in zip(names, views):
            if X.shape[0] != n:
                raise ValueError(f"paired training needs the same number of samples in every "
                                 f"modality: {names[0]!r} has {n}, {v!r} has {X.shape[0]} "
                                 f"(use fit_unpaired for unpaired data)")
        Y = check_labels(labels, n, require_labelled_rows=True)
        check_distinct_label_sets([Y])
        self._prepare_fit(views, names, Y.shape[1])
        rng = check_random_state(self.random_state)
        start = time.perf_counter()
        with ordinary_pages():
            self._fit(views, Y, rng)
        self.train_seconds_ = time.perf_counter() - start
        self.paired_ = True
        self.training_data_fingerprint_ = training_data_fingerprint(views, Y)
        self._check_learned_codes()
        return self

    def _check_learned_codes(self) -> None:
        """Warn when a learned code matrix collapsed (:func:`warn_if_degenerate_codes`)."""
        codes = getattr(self, "codes_", None)
        if codes is None:
            return
        if isinstance(codes, (list, tuple)):
            for m, B in enumerate(codes):
                label = self.modality_names_[m] if m < len(getattr(self, "modality_names_", [])) else m
                warn_if_degenerate_codes(B, f"{type(self).__name__} learned codes [{label}]")
        else:
            warn_if_degenerate_codes(codes, f"{type(self).__name__} learned codes")

    def fit_unpaired(self, views, labels, names=None):
        """Fit on unpaired modalities: ``views[v]`` (n_v, d_v) with its own ``labels[v]`` (n_v, c).

        No correspondence between the modalities' samples is assumed and n_v may differ.
        Only methods with ``supports_unpaired = True`` (AMSH, GSPH) accept it. Dask arrays
        (under a ``distributed.Client``) fit AMSH on the cluster
        (:func:`cmhash.distributed.fit.fit_on_dask`).
        """
        if not self.supports_unpaired:
            raise ValueError(f"{type(self).__name__} needs paired training data; it cannot be "
                             f"fitted on unpaired modalities (methods that can: AMSH, GSPH)")
        if any(type(a).__module__.startswith("dask.") for a in [*views, *labels]):
            from .distributed.fit import fit_on_dask
            return fit_on_dask(self, views, labels, names, paired=False)
        views, names = self._check_views(views, names)
        Ys = unpaired_label_matrices(labels, [X.shape[0] for X in views], names)
        c = Ys[0].shape[1]
        for v, Y in zip(names, Ys):
            if Y.shape[1] != c:
                raise ValueError(f"labels of {v!r} have {Y.shape[1]} classes but labels of "
                                 f"{names[0]!r} have {c}")
        empty = np.flatnonzero(sum(Y.sum(axis=0) for Y in Ys) == 0)
        if empty.size:
            raise ValueError(f"labels: class column(s) {empty.tolist()} have no positive sample "
                             f"in any modality (empty class)")
        check_distinct_label_sets(Ys)
        self._prepare_fit(views, names, c)
        rng = check_random_state(self.random_state)
        start = time.perf_counter()
        with ordinary_pages():
            self._fit_unpaired(views, Ys, rng)
        self.train_seconds_ = time.perf_counter() - start
        self.paired_ = False
        self.training_data_fingerprint_ = training_data_fingerprint(views, Ys)
        self._check_learned_codes()
        return self

    def _check_views(self, views, names):
        if not isinstance(views, (list, tuple)):
            raise TypeError("views must be a list of feature arrays, one per modality")
        V = len(views)
        if V < self.min_views or V > self.max_views:
            want = (f"exactly {self.min_views}" if self.min_views == self.max_views
                    else f"between {self.min_views} and {self.max_views}")
            raise ValueError(f"{type(self).__name__} takes {want} modalities, got {V}")
        if names is None:
            names = DEFAULT_NAMES if V == 2 else tuple(f"view{v}" for v in range(V))
        elif isinstance(names, (str, bytes)):
            raise TypeError(f"names must be a list of {V} modality names, got the string "
                            f"{names!r}")
        names = tuple(str(s) for s in names)
        if len(names) != V or len(set(names)) != V:
            raise ValueError(f"names must be {V} distinct modality names, got {names}")
        views = [check_features(X, f"features of modality {nm!r}", max_ndim=self.max_feature_ndim)
                 for nm, X in zip(names, views)]
        for nm, X in zip(names, views):   # training views only: every method, deep ones too
            check_not_constant(X, f"features of modality {nm!r}")
        return views, names

    def _prepare_fit(self, views, names, n_classes):
        self.n_bits = check_n_bits(self.n_bits)
        self._validate_params()
        self.modality_names_ = list(names)
        self.n_features_ = [list(X.shape[1:]) for X in views]
        self.n_classes_ = int(n_classes)

    def _state_shapes(self) -> dict:
        """Expected shapes of the learned arrays (:mod:`cmhash._state_check`): the class's
        ``state_shapes``; subclasses add shapes that depend on the fitted model."""
        return dict(type(self).state_shapes)

    def _validate_params(self) -> None:
        """Subclasses check their hyper-parameters here (messages quote the bad value)."""

    def _fit(self, views, labels, rng):  # pragma: no cover - abstract
        raise NotImplementedError

    def _fit_unpaired(self, views, labels, rng):  # pragma: no cover - abstract
        raise NotImplementedError

    # ----------------------------------------------------------------- encode
    def _check_fitted(self):
        if not hasattr(self, "modality_names_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(...) first")

    def modality_index(self, modality) -> int:
        """Index of ``modality`` given by name or by integer position."""
        self._check_fitted()
        names = self.modality_names_
        if isinstance(modality, (int, np.integer)) and not isinstance(modality, bool):
            if 0 <= modality < len(names):
                return int(modality)
            raise ValueError(f"modality index {modality} out of range for {len(names)} modalities")
        if modality in names:
            return names.index(modality)
        raise ValueError(f"unknown modality {modality!r}; this model has {names}")

    def _check_task(self, task):
        if task is None:
            return None
        if not (isinstance(task, (tuple, list)) and len(task) == 2):
            raise ValueError(f"task must be a (query_modality, database_modality) pair, got {task!r}")
        q, d = (self.modality_index(t) for t in task)
        if q == d:
            raise ValueError(f"task {task!r} is not cross-modal")
        return (q, d)

    def encode(self, X, modality, *, task=None) -> np.ndarray:
        """Binary codes (m, r) int8 in {-1, +1} for samples ``X`` of ``modality``.

        ``X`` is 2-D (m, d) (deep image modalities: (m, C, H, W)), dense or CSR; one sample is
        ``X.reshape(1, -1)`` (a 1-D ``X`` is a ValueError). ``m = 0`` rows give a (0, r) int8
        array.

        Rows are encoded in chunks (``encode_chunk_rows``): memory beyond the input and the
        codes is that of one chunk, however large ``m`` is; the codes do not depend on it.

        ``task`` = (query_modality, database_modality) selects task-specific hash functions
        (TA-ADCMH); other methods ignore it.
        """
        m = self.modality_index(modality)
        t = self._check_task(task)
        X = self._check_query(X, m)
        if X.shape[0] == 0:
            return np.zeros((0, self._code_length(m, t)), dtype=np.int8)
        # large batches only: a service's one-query encodes skip the process-wide settings
        # (and the malloc_trim on leaving them)
        large = X.shape[0] >= ENCODE_ORDINARY_PAGES_ROWS
        with ordinary_pages() if large else nullcontext():
            codes, far = self._encode_chunks(X, m, t)
        warn_if_far_from_training(codes, far, X, f"{type(self).__name__}.encode "
                                                 f"({self.modality_names_[m]!r})")
        return codes

    def _encode_chunks(self, X, m, t):
        """``(codes, far)`` of all rows of ``X``, chunk by chunk (:meth:`encode`)."""
        # a lazy image source is read batch by batch anyway: chunks only bound the outputs
        rows = ENCODE_CHUNK_ROWS if is_image_source(X) else encode_chunk_rows(X.shape[1:])
        first, far = self._encode_and_flag(X[:rows], m, t)
        if X.shape[0] <= rows:
            codes = first
        else:
            codes = np.empty((X.shape[0],) + first.shape[1:], dtype=first.dtype)
            codes[:rows] = first
            far = None if far is None else [far]
            for start in range(rows, X.shape[0], rows):
                codes[start:start + rows], f = self._encode_and_flag(X[start:start + rows], m, t)
                if far is not None:
                    far.append(f)
            far = None if far is None else np.concatenate(far)
        return codes, far

    def _encode_and_flag(self, X, m, task):
        """``(codes, far)`` of one chunk: ``far`` is a boolean mask of the rows whose features
        are far outside the training distribution (kernel features that underflow), or None
        when the method has no such test (then only codes that are all the same are flagged)."""
        return self._encode(X, m, task), None

    def _check_query(self, X, m: int):
        """Validate samples ``X`` of modality ``m`` for :meth:`encode` and the other methods that
        take raw query inputs (the deep methods' ``network_outputs``, ``features``): numeric,
        finite, (n, ...) with the training per-sample shape; n = 0 rows is allowed. Raw
        strings are turned into bag-of-words vectors by the model's ``text_vocabulary_``
        (:meth:`set_text_vocabulary`) when it applies to modality ``m``."""
        name = f"features of modality {self.modality_names_[m]!r}"
        texts = None
        if isinstance(X, (list, tuple)) or (isinstance(X, np.ndarray) and X.dtype.kind in "USO"):
            texts = as_text_list(X, name)   # None for numbers
        if texts is not None:
            X = self._vectorize_text(texts, m, name)
        X = check_features(X, name, max_ndim=self.max_feature_ndim, allow_empty=True)
        fitted = tuple(self.n_features_[m])
        if tuple(X.shape[1:]) != fitted:
            hint = (f"; a single sample is X[None] (shape (1, {', '.join(map(str, fitted))}))"
                    if tuple(X.shape) == fitted else "")
            raise ValueError(f"{name} have shape {X.shape[1:]} per sample but the model was "
                             f"fitted on {fitted}{hint}")
        return X

    def set_text_vocabulary(self, vocabulary, modality="text"):
        """Keep the fitted :class:`~cmhash.data.text.TextVocabulary` that made ``modality``'s
        bag-of-words from raw text (e.g. ``dataset.text_vocabulary`` of an image-text
        manifest): it is saved with the model (plain arrays, no pickle), and :meth:`encode`
        then also takes raw strings for that modality. Returns self."""
        if not isinstance(vocabulary, TextVocabulary):
            raise TypeError(f"vocabulary must be a fitted TextVocabulary, got "
                            f"{type(vocabulary).__name__}")
        m = self.modality_index(modality)
        vocabulary.get_state()   # fitted, else a RuntimeError
        if self.n_features_[m] != [len(vocabulary)]:
            raise ValueError(f"the vocabulary has {len(vocabulary)} words but modality "
                             f"{self.modality_names_[m]!r} was fitted on features of shape "
                             f"{tuple(self.n_features_[m])}")
        self.text_vocabulary_ = vocabulary
        self.text_vocabulary_modality_ = m
        return self

    def _vectorize_text(self, texts, m: int, name: str):
        vocab = getattr(self, "text_vocabulary_", None)
        if vocab is None or getattr(self, "text_vocabulary_modality_", None) != m:
            raise TypeError(f"{name}: got raw strings, but this model has no text vocabulary "
                            f"for this modality: pass bag-of-words vectors, or attach the "
                            f"vocabulary with set_text_vocabulary(...) before saving")
        return vocab.transform(texts)

    def _code_length(self, m: int, task) -> int:
        """Bits of the codes :meth:`encode` gives for modality ``m`` (those of the learned codes,
        so a later ``set_params(n_bits=...)`` does not change it)."""
        try:
            codes = self._learned_codes(m, task)
        except AttributeError:
            codes = None
        return int(np.shape(codes)[1]) if codes is not None else int(self.n_bits)

    def learned_codes(self, modality, *, task=None) -> np.ndarray:
        """The codes learned for the training samples of ``modality`` (n_v, r), int8 +-1."""
        m = self.modality_index(modality)
        return self._learned_codes(m, self._check_task(task))

    def _learned_codes(self, m, task):
        codes = self.codes_
        return codes[m] if isinstance(codes, (list, tuple)) else codes

    def _encode(self, X, m, task):  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------ persistence
    @property
    def fingerprint(self) -> str:
        """Content fingerprint of the fitted model (16 hex digits): its method, parameters
        and learned state as saved (:func:`cmhash.fingerprint.model_fingerprint`); the same
        after :meth:`save` / :func:`load`. Computed on each access (one pass over the learned
        arrays): keep it in a variable where it is used repeatedly."""
        self._check_fitted()
        arrays, meta_state = _pack_state(self)
        params, _ = _jsonable_params(self.get_params())
        return model_fingerprint(self.name, params, meta_state, arrays)

    def save(self, path) -> Path:
        """Write the model to ``path`` (.npz: arrays + a JSON header; loads without pickle).

        Parameters round-trip exactly: :func:`load` gives a model whose ``get_params()``
        equals this one's (tuples stay tuples, lists lists, ``pathlib.Path`` values -- written
        as strings -- come back as ``Path``; numpy scalars come back as Python numbers; a
        ``numpy.random.Generator`` ``random_state`` is saved as None, the fitted state being
        saved instead).
        """
        self._check_fitted()
        try:   # what load() would refuse is not written (e.g. n_bits changed after fit)
            check_learned_state(self)
        except ValueError as exc:
            raise ValueError(f"cannot save this {type(self).__name__}: {exc}") from None
        arrays, meta_state = _pack_state(self)
        params, param_types = _jsonable_params(self.get_params())
        header = {"format": FORMAT, "version": FORMAT_VERSION, "method": self.name,
                  "class": f"{type(self).__module__}:{type(self).__name__}",
                  "params": params, "param_types": param_types, "state": meta_state,
                  "fingerprint": model_fingerprint(self.name, params, meta_state, arrays)}
        arrays["__header__"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
        path = Path(path)
        with atomic_write(path) as fh:
            np.savez_compressed(fh, **arrays)
        return path

    @classmethod
    def load(cls, path):
        return load(path)

    def _after_load(self) -> None:
        """Hook run after the learned state is restored (deep methods rebuild networks)."""


def _jsonable_params(params: dict) -> tuple[dict, dict]:
    """``(values, types)``: the parameters as JSON values, and for each parameter whose Python
    type JSON does not keep (a tuple, a path, or a list holding them) its type spec, which
    :func:`_restore_param` applies at load time so that ``get_params()`` round-trips.

    A parameter that cannot be written (not a number, string, bool, None, path, list / tuple /
    dict of those, numpy scalar or dtype) is a TypeError naming it."""
    values, types = {}, {}
    for k, v in params.items():
        try:
            values[k], spec = _json_param(v)
        except TypeError as exc:
            raise TypeError(f"cannot save parameter {k}={v!r}: {exc}") from None
        if spec is not None:
            types[k] = spec
    return values, types


def _json_param(v):
    """``(json_value, type_spec)`` of one parameter value (``type_spec`` None: plain JSON)."""
    if isinstance(v, (np.random.Generator, np.random.RandomState, np.random.SeedSequence,
                      np.random.BitGenerator)):
        return None, None  # a generator's state is not a parameter; the fitted model is saved
    if isinstance(v, np.generic):
        return v.item(), None
    if v is None or isinstance(v, (bool, int, float, str)):
        return v, None
    if isinstance(v, os.PathLike):
        return os.fspath(v), "path"
    if isinstance(v, type) or isinstance(v, np.dtype):
        return np.dtype(v).name, None
    if isinstance(v, (list, tuple)):
        pairs = [_json_param(x) for x in v]
        specs = [t for _, t in pairs]
        values = [x for x, _ in pairs]
        if isinstance(v, tuple):
            return values, {"tuple": specs}
        return values, ({"list": specs} if any(t is not None for t in specs) else None)
    if isinstance(v, dict):
        pairs = {str(k): _json_param(x) for k, x in v.items()}
        specs = {k: t for k, (_, t) in pairs.items() if t is not None}
        return {k: x for k, (x, _) in pairs.items()}, ({"dict": specs} if specs else None)
    raise TypeError(f"{type(v).__name__} values cannot be written to a model file")


def _restore_param(value, spec):
    """Inverse of :func:`_json_param` on a JSON value (unknown specs leave it as it is)."""
    if spec is None or value is None:
        return value
    if spec == "path" and isinstance(value, str):
        return Path(value)
    if isinstance(spec, dict) and isinstance(value, list) and len(spec) == 1:
        kind, items = next(iter(spec.items()))
        if kind in ("tuple", "list") and isinstance(items, list) and len(items) == len(value):
            restored = [_restore_param(x, t) for x, t in zip(value, items)]
            return tuple(restored) if kind == "tuple" else restored
    if isinstance(spec, dict) and isinstance(value, dict) and isinstance(spec.get("dict"), dict):
        return {k: _restore_param(x, spec["dict"].get(k)) for k, x in value.items()}
    return value


def _pack_state(obj) -> tuple[dict, dict]:
    arrays, meta = {}, {}
    for key, value in vars(obj).items():
        if not key.endswith("_") or key.startswith("_"):
            continue
        meta[key] = _pack_value(key, value, arrays)
    return arrays, meta


def _pack_value(key, value, arrays):
    if isinstance(value, np.ndarray):
        arrays[key] = value
        return {"kind": "array"}
    if isinstance(value, (np.generic,)):
        return {"kind": "json", "value": value.item()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"kind": "json", "value": value}
    if hasattr(value, "get_state") and type(value).__name__ in _STATE_CLASSES:
        for sk, sv in value.get_state().items():
            arrays[f"{key}/{sk}"] = np.asarray(sv)
        return {"kind": "object", "class": type(value).__name__, "params": value.get_params(),
                "keys": list(value.get_state())}
    if isinstance(value, dict):
        if all(isinstance(v, np.ndarray) for v in value.values()):
            for sk, sv in value.items():
                arrays[f"{key}/{sk}"] = sv
            return {"kind": "array_dict", "keys": list(value)}
        return {"kind": "json", "value": json.loads(json.dumps(value, default=_json_default))}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, np.ndarray) or hasattr(v, "get_state") or v is None
                         for v in value) and not all(v is None for v in value):
            return {"kind": "list", "items": [_pack_value(f"{key}/{i}", v, arrays)
                                              for i, v in enumerate(value)]}
        return {"kind": "json", "value": json.loads(json.dumps(list(value), default=_json_default))}
    raise TypeError(f"cannot save attribute {key!r} of type {type(value).__name__}")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _unpack_value(key, spec, data):
    """The state value ``key`` described by ``spec`` (from the header) from the arrays ``data``;
    a ValueError naming the field when the description or an array it names is missing or
    malformed, or a feature map's arrays do not fit together."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"the header's description of {key} is malformed: {spec!r}")
    kind = spec["kind"]

    def array(name):
        if name not in data.files:
            raise ValueError(f"the array {name!r} of the learned state {key} is missing")
        return data[name]

    try:
        if kind == "array":
            return array(key)
        if kind == "json":
            return spec["value"]
        if kind == "object":
            cls = _STATE_CLASSES.get(spec["class"])
            if cls is None:
                raise ValueError(f"{key} is of unknown class {spec['class']!r}")
            state = {k: array(f"{key}/{k}") for k in spec["keys"]}
            try:
                return cls.from_state(spec["params"], state)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{key.replace('/', '[', 1) + ']' if '/' in key else key}: "
                                 f"{exc}") from None
        if kind == "array_dict":
            return {k: array(f"{key}/{k}") for k in spec["keys"]}
        if kind == "list":
            return [_unpack_value(f"{key}/{i}", s, data) for i, s in enumerate(spec["items"])]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"the header's description of {key} is malformed ({type(exc).__name__}: "
                         f"{exc})") from None
    raise ValueError(f"unknown state kind {kind!r} of {key}")


def _read_header(path, data) -> dict:
    """The JSON header of an open model file, checked: a ValueError naming the problem."""
    def bad(why):
        return ValueError(f"{path} is not a valid cmhash model file: {why}")

    if "__header__" not in data.files:
        raise ValueError(f"{path} is not a cmhash model file (no header)")
    raw = data["__header__"]
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise bad(f"its '__header__' must be a 1-D uint8 array of JSON text, got dtype "
                  f"{raw.dtype} and shape {raw.shape}")
    try:
        header = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"its header is not JSON text ({exc}); the file is damaged or was edited") \
            from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a cmhash model file (its header is not a "
                         f"{FORMAT!r} header)")
    version = header.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise bad(f"its header's 'version' must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer cmhash (format {version})")
    for field, typ in (("method", str), ("params", dict), ("state", dict)):
        if not isinstance(header.get(field), typ):
            raise bad(f"its header's {field!r} must be a {typ.__name__}, got "
                      f"{header.get(field)!r}")
    return header


def load(path):
    """Load a model written by :meth:`CrossModalHasher.save` (no pickle involved).

    The file is checked: a header that is not JSON, a missing or malformed field, a learned
    array that is missing, whose shape does not fit the parameters and the other arrays
    (:mod:`cmhash._state_check`: e.g. projections with fewer columns than ``n_bits``) or that
    holds NaN / infinite values, a kernel width that is not positive, and a content that does
    not match the fingerprint written in the header, are each a ValueError naming the file and
    the field.
    """
    path = Path(path)

    def bad(why):
        return ValueError(f"{path} is not a valid cmhash model file: {why}")

    with open_npz(path, "a cmhash model file") as data:
        header = _read_header(path, data)
        cls = get_method(header["method"])
        types = header.get("param_types")
        if isinstance(types, dict):
            params = {k: _restore_param(v, types.get(k))
                      for k, v in header["params"].items() if k in cls._param_names()}
        else:  # files written before param_types: a list is a tuple where the default is one
            defaults = {p.name: p.default
                        for p in inspect.signature(cls.__init__).parameters.values()}
            params = {k: (tuple(v) if isinstance(v, list) and isinstance(defaults.get(k), tuple)
                          else v)
                      for k, v in header["params"].items() if k in cls._param_names()}
        obj = cls(**params)
        try:
            for key, spec in header["state"].items():
                setattr(obj, key, _unpack_value(key, spec, data))
            check_learned_state(obj)
        except ValueError as exc:
            raise bad(exc) from None
    try:
        obj._after_load()
    except (RuntimeError, ValueError, KeyError) as exc:   # e.g. torch's size mismatch
        raise bad(f"its saved networks (network_states_) do not load: {exc}") from None
    saved = header.get("fingerprint")
    if saved is not None:
        got = obj.fingerprint
        if got != saved:
            raise bad(f"its content does not match the fingerprint in its header (header "
                      f"{saved}, content {got}): the file was modified after it was saved")
    return obj


class TwoStepKernelHasher(CrossModalHasher):
    """Shared skeleton of the two-step kernel methods (BATCH, ASCMH, ASFOH, AMSH).

    Step 1 learns training codes from kernel features ``phi_v = kernels_[v].transform(X_v)``;
    step 2 fits one linear hash function per modality, ``W_v = (phi_v^T phi_v + xi I)^{-1}
    phi_v^T B`` (:func:`cmhash.solvers.ridge_regression`), and encodes ``sign(phi_v(X) W_v)``.
    Subclasses call :meth:`_kernelize` and :meth:`_fit_hash_functions` (or set
    ``projections_`` themselves for non-ridge hash functions, e.g. AMSH's margins).
    """

    state_shapes = {"kernels_[v]": ("d{v}", "q{v}"), "projections_[v]": ("q{v}", "r")}

    def _uses_anchors(self) -> bool:
        """Whether this fit maps the inputs through an RBF anchor kernel (``n_anchors`` used)."""
        return True

    def _prepare_fit(self, views, names, n_classes):
        # n_anchors (an int, or one per modality) is checked by the one shared validator, for
        # the actual number of modalities, before any work
        if self._uses_anchors():
            check_n_anchors(self.n_anchors, len(views))
        super()._prepare_fit(views, names, n_classes)

    def _check_fewer_bits_than_samples(self, n: int) -> None:
        """The latent V (n x r) with V^T V = n I and V^T 1 = 0 exists only for n > r."""
        if self.n_bits >= n:
            raise ValueError(f"n_bits={self.n_bits} must be smaller than the number of training "
                             f"samples ({n}): V^T V = n I with V^T 1 = 0 needs n > r")

    def _anchors_for(self, v: int, n_views: int) -> int:
        return check_n_anchors(self.n_anchors, n_views)[v]

    def _kernelize(self, views, rng, *, use_kernel: bool = True):
        """Fit one feature map per modality; returns the list of training features phi_v."""
        with phase("kernel"):
            return self._fit_feature_maps(views, rng, use_kernel)

    def _fit_feature_maps(self, views, rng, use_kernel: bool):
        self.kernels_ = []
        phis = []
        for v, X in enumerate(views):
            if use_kernel:
                fmap = RBFAnchorFeatures(self._anchors_for(v, len(views)),
                                         anchors=getattr(self, "anchor_method", "random"),
                                         random_state=rng)
            else:
                fmap = CenteredFeatures()
            phis.append(fmap.fit_transform(X))
            self.kernels_.append(fmap)
        return phis

    def _fit_hash_functions(self, phis, codes, xi: float):
        """``projections_[v] = (phi_v^T phi_v + xi I)^{-1} phi_v^T B_v`` for each modality."""
        if not isinstance(codes, (list, tuple)):
            codes = [codes] * len(phis)
        self.projections_ = [ridge_regression(phi, B.astype(np.float32), xi)
                             for phi, B in zip(phis, codes)]

    def _encode(self, X, m, task):
        return self._encode_and_flag(X, m, task)[0]

    def _encode_and_flag(self, X, m, task):
        fmap = self.kernels_[m]
        if isinstance(fmap, RBFAnchorFeatures):
            phi, far = fmap.transform(X, return_far=True)
        else:   # centred raw features (the no-kernel ablations) do not underflow
            phi, far = fmap.transform(X), None
        return sign(phi @ self.projections_[m].astype(phi.dtype)), far
