"""Load cross-modal datasets from MATLAB (.mat v5 / v7.3), .npz and .h5 files.

:func:`load_dataset` reads every numeric array of one or more files, recognises the common
key layouts of the field (Wiki ``I_tr/T_tr/L_tr``, ``XTrain/YTrain/LTrain``, database /
query splits, single-pool ``IAll/YAll/LAll``), fixes transposed (``d x n``) storage by matching
the sample count with the labels, and returns a :class:`~cmhash.data.CrossModalDataset`.
The exact key grammar is documented in ``docs/data.md``.

``load_dataset("synthetic:...")`` builds a synthetic dataset instead (see
:mod:`cmhash.data.synthetic`). Arrays can also be named explicitly -- ``keys={"image": "emb"}``
or one file per role, ``load_dataset({"image": "img.npy", "text": "txt.npy", "labels":
"y.npy"})`` -- and :func:`load_features` reads one modality's features without labels (for
encoding an unlabelled database).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._io import atomic_write
from .._validation import check_random_state
from .dataset import (CrossModalDataset, DataWarning, _check_count, as_label_matrix,
                      label_class_names)
from .images import ArrayImageSource, H5ImageSource, detect_image_layout, is_image_source
from .presets import DatasetPreset, detect_preset, get_preset

__all__ = [
    "load_dataset",
    "load_features",
    "load_labels",
    "save_dataset",
    "read_arrays",
    "MissingLabelsError",
    "default_shared_dir",
    "shared_path",
    "SPARSE_DENSITY_THRESHOLD",
]

#: dense 2-D modalities with a fraction of non-zeros below this are stored as CSR
SPARSE_DENSITY_THRESHOLD = 0.1

_EXTS = (".mat", ".npz", ".npy", ".h5", ".hdf5")


class MissingLabelsError(ValueError):
    """The data has no label array (training and evaluation need one; encoding does not:
    :func:`load_features`)."""


# --------------------------------------------------------------------------------------------
# where the shared data lives
# --------------------------------------------------------------------------------------------
def default_shared_dir() -> Path:
    """The shared data folder: ``$CMHASH_SHARED`` if set, else ``<repo>/../shared``.

    ``<repo>`` is the source checkout containing this package (``src/cmhash/data`` ->
    three levels up, recognised by its ``pyproject.toml``); for an installed copy without
    a checkout, ``<cwd>/../shared``. The folder may not exist: callers check.
    """
    env = os.environ.get("CMHASH_SHARED")
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve()
    try:
        repo = here.parents[3]
    except IndexError:  # pragma: no cover - unusual install layout
        repo = None
    if repo is not None and (repo / "pyproject.toml").is_file():
        return (repo.parent / "shared").resolve()
    return (Path.cwd().parent / "shared").resolve()


def shared_path(*parts: str) -> Path:
    """``default_shared_dir() / part / ...`` (existence not checked)."""
    return default_shared_dir().joinpath(*parts)


# --------------------------------------------------------------------------------------------
# reading raw arrays
# --------------------------------------------------------------------------------------------
def _is_matlab_h5(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(128)
    except OSError:
        return False
    return head.startswith(b"MATLAB")


def _read_mat_v5(path: Path, skipped: list[str]) -> dict[str, Any]:
    import scipy.io

    raw = scipy.io.loadmat(str(path))
    out = {}
    for k, v in raw.items():
        if k.startswith("__"):
            continue
        if sp.issparse(v) or (isinstance(v, np.ndarray) and v.dtype.kind in "biuf"):
            out[k] = v
        elif isinstance(v, np.ndarray) and v.dtype.kind == "U":
            out[k] = np.char.rstrip(v)   # a char matrix: one (space-padded) string per row
        else:
            skipped.append(f"{k} ({_kind_name(v)})")
    return out


def _kind_name(v: Any) -> str:
    """What a value that is not a numeric or string array is, for error messages."""
    if isinstance(v, np.ndarray):
        if v.dtype == object:
            return "cell array" if v.dtype.names is None else "struct"
        if v.dtype.names is not None:
            return "struct"
        return f"{v.dtype} array"
    return type(v).__name__


def _h5_sparse_from_matlab(g: Any) -> sp.csr_matrix:
    nrows = int(np.asarray(g.attrs["MATLAB_sparse"]).reshape(-1)[0])
    jc = np.asarray(g["jc"][()], dtype=np.int64).reshape(-1)
    ir = np.asarray(g["ir"][()], dtype=np.int64).reshape(-1) if "ir" in g else np.zeros(0, np.int64)
    data = np.asarray(g["data"][()]).reshape(-1) if "data" in g else np.zeros(ir.size)
    if data.dtype.kind == "b":
        data = data.astype(np.float32)
    return sp.csc_matrix((data, ir, jc), shape=(nrows, jc.size - 1)).tocsr()


def _read_h5(path: Path, matlab: bool, skipped: list[str] | None = None) -> dict[str, Any]:
    """Flatten an HDF5 file into ``{"a/b": array}``. MATLAB v7.3 arrays are transposed back
    to MATLAB's orientation (h5py sees column-major data with reversed axes)."""
    import h5py

    out: dict[str, Any] = {}

    def visit(group: Any, prefix: str) -> None:
        for key in group:
            if key.startswith("#"):  # MATLAB's #refs# / #subsystem#
                continue
            obj = group[key]
            name = f"{prefix}{key}"
            if isinstance(obj, h5py.Group):
                if "MATLAB_sparse" in obj.attrs:
                    out[name] = _h5_sparse_from_matlab(obj)
                else:
                    visit(obj, name + "/")
                continue
            mcls = obj.attrs.get("MATLAB_class", b"")
            if isinstance(mcls, bytes):
                mcls = mcls.decode("ascii", "replace")
            if mcls in ("char", "cell", "struct", "function_handle"):
                if skipped is not None:
                    skipped.append(f"{name} (MATLAB {mcls})")
                continue
            if obj.dtype.kind not in "biuf" or obj.ndim == 0:
                if skipped is not None:
                    skipped.append(f"{name} ({'scalar' if obj.ndim == 0 else obj.dtype})")
                continue
            if obj.ndim == 4:   # an image array: read lazily, in row batches, never as floats
                logical = obj.shape[::-1] if matlab else obj.shape
                try:
                    detect_image_layout(tuple(int(s) for s in logical))
                except ValueError:
                    pass
                else:
                    out[name] = H5ImageSource(path, obj.name, matlab=matlab)
                    continue
            arr = obj[()]
            if isinstance(arr, np.ndarray) and matlab:
                arr = arr.T
            if mcls == "logical":
                arr = np.asarray(arr).astype(bool)
            out[name] = np.asarray(arr)

    with h5py.File(path, "r") as f:
        visit(f, "")
    return out


def _read_npz(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _rebuild_sparse(raw: dict[str, Any]) -> dict[str, Any]:
    """``P/data, P/indices, P/indptr, P/shape`` -> one CSR matrix at key ``P``."""
    out = dict(raw)
    for k in list(raw):
        if not k.endswith("/indptr"):
            continue
        base = k[: -len("/indptr")]
        parts = [f"{base}/{s}" for s in ("data", "indices", "indptr", "shape")]
        if all(p in raw for p in parts):
            shape = tuple(int(s) for s in np.asarray(raw[parts[3]]).reshape(-1))
            out[base] = sp.csr_matrix(
                (np.asarray(raw[parts[0]]), np.asarray(raw[parts[1]]), np.asarray(raw[parts[2]])),
                shape=shape,
            )
            for p in parts + [f"{base}/format"]:
                out.pop(p, None)
    return out


def _unreadable(path: Path, exc: BaseException) -> ValueError:
    """The error for a data file its reader cannot parse (h5py's OSError, scipy's
    MatReadError, numpy's zip / pickle errors, an IndexError from a truncated .mat header,
    ...): a ValueError naming the file, the reader's message kept."""
    return ValueError(f"{path} is not a readable {path.suffix.lower()} data file "
                      f"({type(exc).__name__}: {exc})")


def _read_errors() -> tuple[type[BaseException], ...]:
    import zipfile

    from scipy.io.matlab import MatReadError

    return (OSError, ValueError, TypeError, EOFError, IndexError, KeyError, zipfile.BadZipFile,
            MatReadError)


#: what each kind of file content is, and the extension it should have
_CONTENT = {"npy": ("a NumPy .npy file (a single array)", ".npy"),
            "npz": ("a NumPy .npz archive", ".npz"),
            "hdf5": ("an HDF5 file", ".h5"),
            "mat": ("a MATLAB .mat file", ".mat")}
#: the contents each extension may hold (.mat v7.3 files are HDF5 with a MATLAB header)
_EXT_CONTENT = {".npy": {"npy"}, ".npz": {"npz"}, ".mat": {"mat", "hdf5"},
                ".h5": {"hdf5", "mat"}, ".hdf5": {"hdf5", "mat"}}


def _content_kind(path: Path) -> str | None:
    """The file's format from its first bytes (None: not recognised; its reader says why)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "npz"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(b"MATLAB"):
        return "mat"
    return None


def _check_content(p: Path, ext: str) -> None:
    """A file whose content is another format than its extension says (e.g. an .npy array
    renamed .npz) is a ValueError saying what it is and how to name it."""
    kind = _content_kind(p)
    if kind is not None and kind not in _EXT_CONTENT[ext]:
        what, right = _CONTENT[kind]
        raise ValueError(f"{p} is {what}, not the {ext} file its extension says: rename it to "
                         f"{p.with_suffix(right).name}")


def read_arrays(path: str | os.PathLike, *, skipped: list[str] | None = None) -> dict[str, Any]:
    """All numeric arrays (and string arrays, which can be class labels) of one file as
    ``{key: ndarray or CSR}``, in MATLAB/row orientation as stored (v7.3 .mat files are
    transposed back; nested HDF5 groups give ``"a/b"`` keys; an ``.npy`` file is one array
    named by the file's stem). A file its reader cannot parse, or whose content is another
    format than its extension says, is a ValueError naming it. Entries that are not arrays
    (MATLAB cells and structs, scalars) are left out and, when ``skipped`` is a list,
    appended to it as ``"key (what)"``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}")
    ext = p.suffix.lower()
    import h5py

    if ext not in _EXTS:
        raise ValueError(f"unsupported data file extension {ext!r} ({p}); supported: {list(_EXTS)}")
    _check_content(p, ext)
    skipped = [] if skipped is None else skipped
    try:
        if ext == ".npz":
            raw = _read_npz(p)
        elif ext == ".npy":
            raw = {p.stem: np.load(p, allow_pickle=False)}
        elif ext == ".mat":
            if h5py.is_hdf5(str(p)):
                raw = _read_h5(p, matlab=True, skipped=skipped)
            else:
                raw = _read_mat_v5(p, skipped)
        else:
            raw = _read_h5(p, matlab=_is_matlab_h5(p), skipped=skipped)
    except _read_errors() as exc:
        raise _unreadable(p, exc) from exc
    return _rebuild_sparse(raw)


# --------------------------------------------------------------------------------------------
# key grammar
# --------------------------------------------------------------------------------------------
_ROLE_TOKENS = {
    "image": {"i", "x", "im", "img", "imgs", "image", "images", "vis", "visual"},
    "text": {"t", "y", "txt", "text", "texts", "tag", "tags", "bow"},
    "labels": {"l", "lab", "labs", "label", "labels", "gnd", "gt", "cat", "cats", "category"},
}
_SPLIT_TOKENS = {
    "train": {"tr", "trn", "train", "training"},
    "query": {"te", "tst", "test", "testing", "q", "qry", "query", "queries"},
    "retrieval": {"db", "database", "retrieval", "ret", "base", "gallery"},
    "all": {"all"},
}
_TOKEN_RE = re.compile(r"[A-Z][a-z]+|[A-Z]+(?![a-z])|[a-z]+|\d+")


def _tokens(key: str) -> list[str]:
    toks: list[str] = []
    for part in re.split(r"[_\-./\s]+", key):
        toks.extend(t.lower() for t in _TOKEN_RE.findall(part))
    return toks


def _classify(key: str) -> tuple[str, str] | None:
    """Key -> (role, split) or None. A key must be exactly one role token plus at most one
    split token (no split token = the whole pool, like ``*All``)."""
    toks = _tokens(key)
    roles = [r for t in toks for r, v in _ROLE_TOKENS.items() if t in v]
    splits = [s for t in toks for s, v in _SPLIT_TOKENS.items() if t in v]
    if len(roles) != 1 or len(splits) > 1 or len(roles) + len(splits) != len(toks):
        return None
    return roles[0], (splits[0] if splits else "all")


def _label_score(a: Any) -> int:
    """Preference among several label arrays for one split: multi-hot first."""
    if sp.issparse(a):
        return 2
    a = np.asarray(a)
    if a.ndim == 2 and min(a.shape) > 1:
        return 2
    return 1


# --------------------------------------------------------------------------------------------
# orientation
# --------------------------------------------------------------------------------------------
def _sample_dims(a: Any) -> set[int]:
    if sp.issparse(a) or np.ndim(a) == 2:
        return {int(a.shape[0]), int(a.shape[1])}
    if np.ndim(a) == 1:
        return {int(a.shape[0])}
    return {int(a.shape[0]), int(a.shape[-1])}


def _orient(split: str, mods: dict[str, Any], labels: Any) -> tuple[dict[str, Any], Any]:
    """Transpose arrays stored ``d x n`` so every array of the split has ``n`` rows."""
    lab = labels.toarray() if sp.issparse(labels) else np.asarray(labels)
    if lab.ndim == 1 or (lab.ndim == 2 and 1 in lab.shape):
        cands = {int(lab.size)}
    elif lab.ndim == 2:
        cands = {int(lab.shape[0]), int(lab.shape[1])}
    else:
        raise ValueError(f"labels of split '{split}' have unsupported shape {lab.shape}")
    common = set(cands)
    for m in mods.values():
        common &= _sample_dims(m)
    if not common:
        shapes = {k: tuple(v.shape) for k, v in mods.items()}
        where = "the whole pool" if split == "all" else f"split '{split}'"
        raise ValueError(
            f"{where}: cannot match the sample count of labels {lab.shape} with "
            f"modalities {shapes} (no common dimension: every array needs one row per item)"
        )
    n = int(lab.shape[0]) if lab.ndim == 2 and lab.shape[0] in common else max(common)
    if lab.ndim == 2 and lab.shape[0] != n and not (1 in lab.shape):
        lab = lab.T
    elif lab.ndim == 2 and 1 in lab.shape:
        lab = lab.reshape(-1)
    out = {}
    for k, m in mods.items():
        if m.shape[0] == n:
            out[k] = m
        elif sp.issparse(m):
            out[k] = m.T.tocsr()
        elif np.ndim(m) == 2:
            out[k] = np.ascontiguousarray(m.T)
        else:
            out[k] = np.moveaxis(m, -1, 0)   # a view: _finish_features copies if needed
    return out, lab


# --------------------------------------------------------------------------------------------
# feature post-processing
# --------------------------------------------------------------------------------------------
def _dense_to_csr(X: np.ndarray, chunk_elems: int = 1 << 24) -> sp.csr_matrix:
    """Dense 2-D -> CSR, row-chunked (several times faster than ``csr_matrix(X)``)."""
    if X.flags.f_contiguous and not X.flags.c_contiguous:
        # MATLAB files load column-major: convert the C-ordered transpose, transpose back
        return _dense_to_csr(X.T, chunk_elems).T.tocsr()
    n, d = X.shape
    step = max(1, chunk_elems // max(d, 1))
    data, cols, counts = [], [], []
    for s in range(0, n, step):
        B = np.ascontiguousarray(X[s : s + step])
        mask = B != 0
        flat = np.flatnonzero(mask)
        counts.append(mask.sum(axis=1))
        cols.append((flat % d).astype(np.int32 if d < 2**31 else np.int64))
        data.append(B.reshape(-1)[flat])
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.concatenate(counts) if counts else np.zeros(0, np.int64), out=indptr[1:])
    out = sp.csr_matrix(
        (np.concatenate(data) if data else np.zeros(0, X.dtype),
         np.concatenate(cols) if cols else np.zeros(0, np.int32), indptr),
        shape=(n, d),
    )
    return out


def _finish_features(X: Any, sparse: str | bool, dtype: Any) -> Any:
    if is_image_source(X):
        return X
    if np.ndim(X) == 4 and np.asarray(X).dtype.kind in "biu" and dtype is None:
        try:   # integer images (uint8 pixels) stay as they are: no float copy
            return ArrayImageSource(X)
        except ValueError:   # no 3-channel axis: a plain 4-D array
            pass
    if sp.issparse(X):
        X = X.tocsr()
        if sparse is False:
            X = X.toarray()
    elif np.ndim(X) == 2:
        if sparse is True:
            X = _dense_to_csr(X)
        elif sparse == "auto":
            total = X.shape[0] * X.shape[1]
            if total and np.count_nonzero(X) / total < SPARSE_DENSITY_THRESHOLD:
                X = _dense_to_csr(X)
    if not sp.issparse(X):
        X = np.ascontiguousarray(X)  # MATLAB arrays load column-major; rows are gathered often
    if dtype is not None:
        X = X.astype(dtype, copy=False)
    elif X.dtype.kind in "biu":
        X = X.astype(np.float32)
    if sp.issparse(X):
        X.sum_duplicates()
        X.eliminate_zeros()
    return X


# --------------------------------------------------------------------------------------------
# native cmhash layout (save_dataset)
# --------------------------------------------------------------------------------------------
def save_dataset(dataset: CrossModalDataset, path: str | os.PathLike) -> Path:
    """Write a dataset (pool, labels, splits) to ``.npz`` or ``.h5`` in cmhash's own layout
    (keys ``modality/<name>`` -- CSR as ``.../data|indices|indptr|shape`` --, ``labels``,
    ``split/<name>``, ``modality_order``, ``name``). :func:`load_dataset` reads it back."""
    p = Path(path)
    ext = p.suffix.lower()
    arrays: dict[str, np.ndarray] = {}
    for k, X in dataset.modalities.items():
        if is_image_source(X):
            if not isinstance(X, ArrayImageSource):
                raise ValueError(f"save_dataset: modality {k!r} is a lazy {type(X).__name__} "
                                 f"(image files or an HDF5 array); keep its manifest / file "
                                 f"instead of copying every image into one array")
            arrays[f"modality/{k}"] = X.with_transform(X.transform.without_geometry()).to_array()
        elif sp.issparse(X):
            arrays[f"modality/{k}/data"] = X.data
            arrays[f"modality/{k}/indices"] = X.indices
            arrays[f"modality/{k}/indptr"] = X.indptr
            arrays[f"modality/{k}/shape"] = np.asarray(X.shape, dtype=np.int64)
        else:
            arrays[f"modality/{k}"] = np.asarray(X)
    arrays["labels"] = dataset.labels.astype(np.uint8)
    for k, v in dataset.splits.items():
        arrays[f"split/{k}"] = np.asarray(v, dtype=np.int64)
    arrays["modality_order"] = np.array(dataset.modality_names)
    arrays["name"] = np.array(dataset.name)
    if dataset.class_names is not None:
        arrays["class_names"] = np.array(dataset.class_names)
    if ext == ".npz":
        with atomic_write(p) as fh:   # a file object: exactly p, never a truncated file
            np.savez_compressed(fh, **arrays)
    elif ext in (".h5", ".hdf5"):
        import h5py

        with h5py.File(p, "w") as f:
            f.attrs["cmhash_format"] = 1
            for k, v in arrays.items():
                if v.dtype.kind == "U":
                    f.create_dataset(k, data=np.char.encode(v, "utf-8"))
                else:
                    f.create_dataset(k, data=v, compression="gzip" if v.size > 4096 else None)
    else:
        raise ValueError(f"save_dataset: use a .npz or .h5 path, got {p.name!r}")
    return p


def _str_array(a: Any) -> list[str]:
    a = np.asarray(a)
    if a.dtype.kind == "S":
        a = np.char.decode(a, "utf-8")
    return [str(x) for x in a.reshape(-1)]


def _read_native(path: Path) -> dict[str, Any] | None:
    """Raw keys (incl. string arrays) when the file is in the native layout, else None."""
    if path.suffix.lower() in _EXT_CONTENT:
        _check_content(path, path.suffix.lower())
    try:
        return _read_native_raw(path)
    except _read_errors() as exc:
        raise _unreadable(path, exc) from exc


def _read_native_raw(path: Path) -> dict[str, Any] | None:
    ext = path.suffix.lower()
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "labels" not in z.files or not any(f.startswith("modality/") for f in z.files):
                return None
            raw = {k: z[k] for k in z.files}
    elif ext in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as f:
            if "cmhash_format" not in f.attrs:
                return None
            raw: dict[str, Any] = {}
            f.visititems(lambda k, o: raw.__setitem__(k, o[()]) if isinstance(o, h5py.Dataset) else None)
    else:
        return None
    return _rebuild_sparse(raw)


def _from_native(raw: dict[str, Any], *, sparse: str | bool = "auto", dtype: Any = None,
                 name: str | None = None, **kwargs: Any) -> CrossModalDataset:
    order = _str_array(raw["modality_order"]) if "modality_order" in raw else sorted(
        {k.split("/")[1] for k in raw if k.startswith("modality/")}
    )
    mods = {m: _finish_features(raw[f"modality/{m}"], sparse, dtype) for m in order}
    splits = {k.split("/", 1)[1]: np.asarray(v) for k, v in raw.items() if k.startswith("split/")}
    if name is None:
        name = _str_array(raw["name"])[0] if "name" in raw else ""
    cn = _str_array(raw["class_names"]) if "class_names" in raw else None
    return CrossModalDataset(mods, raw["labels"], splits, name=name, class_names=cn, **kwargs)


# --------------------------------------------------------------------------------------------
# layout assembly
# --------------------------------------------------------------------------------------------
def _key_role(k: str) -> tuple[str, str] | None:
    """(role, split) of a key by the grammar (a nested HDF5 key by its last component too)."""
    c = _classify(k)
    if c is None and "/" in k:
        c = _classify(k.rsplit("/", 1)[1])
    return c


def _is_text(a: Any) -> bool:
    return isinstance(a, np.ndarray) and a.dtype.kind in "US"


def _group(raw: dict[str, Any]) -> tuple[dict[str, dict[str, list[tuple[str, Any]]]], list[str]]:
    """{split: {role: [(key, array), ...]}} and the list of unrecognised keys. String arrays
    can only be labels (class names); as features they are left out."""
    groups: dict[str, dict[str, list[tuple[str, Any]]]] = {}
    unknown = []
    for k, v in raw.items():
        c = _key_role(k)
        if c is None or (_is_text(v) and c[0] != "labels"):
            unknown.append(k)
            continue
        role, split = c
        groups.setdefault(split, {}).setdefault(role, []).append((k, v))
    return groups, unknown


#: how many keys an error message lists
KEYS_LISTED = 20


def _describe_array(k: str, v: Any) -> str:
    shape = " x ".join(str(int(d)) for d in v.shape) or "scalar"
    kind = "sparse " if sp.issparse(v) else ""
    c = _key_role(k)
    if c is None or (_is_text(v) and c[0] != "labels"):
        use = "not used: not a recognised name" if c is None else "not used: text, not numeric"
    else:
        use = f"{c[0]}, " + ("whole pool" if c[1] == "all" else f"split {c[1]}")
    return f"{k} ({shape} {kind}{v.dtype}; {use})"


def describe_keys(raw: dict[str, Any], skipped=()) -> str:
    """``"keys found: ...; skipped: ..."`` -- every array with its shape, dtype and what the
    key grammar reads it as, and the entries left out -- for error messages."""
    found = [_describe_array(k, v) for k, v in sorted(raw.items())]
    more = f", ... ({len(found) - KEYS_LISTED} more)" if len(found) > KEYS_LISTED else ""
    text = "keys found: " + (", ".join(found[:KEYS_LISTED]) + more if found else "none")
    skipped = list(skipped)
    if skipped:
        text += "; skipped (not numeric arrays): " + ", ".join(skipped[:KEYS_LISTED])
        if len(skipped) > KEYS_LISTED:
            text += f", ... ({len(skipped) - KEYS_LISTED} more)"
    return text


#: how the CLI names the arrays of each role (error messages suggest it)
_KEY_OPTIONS = "name them with --image-key / --text-key / --label-key (load_dataset(keys=...))"


def _pick(split: str, role: str, cands: list[tuple[str, Any]]) -> tuple[str, Any]:
    if len(cands) == 1:
        return cands[0]
    if role == "labels":
        best = max(_label_score(v) for _, v in cands)
        top = [c for c in cands if _label_score(c[1]) == best]
        if len(top) == 1:
            return top[0]
        cands = top
    raise ValueError(
        f"ambiguous layout: several arrays for {role} of split '{split}': "
        f"{[k for k, _ in cands]}"
    )


def _split_entry(split: str, g: dict[str, list[tuple[str, Any]]], listing: str = ""
                 ) -> tuple[dict[str, Any], Any, dict[str, str]]:
    """(modalities, labels, {role: key}) of one split; ``listing`` (:func:`describe_keys`)
    ends the error messages."""
    where = "the whole pool" if split == "all" else f"split '{split}'"
    if "labels" not in g:
        raise MissingLabelsError(
            f"no label array for {where} (expected e.g. L_tr / LTrain / LAll / labels); "
            f"{listing}; {_KEY_OPTIONS}")
    keys = {}
    lk, lab = _pick(split, "labels", g["labels"])
    keys["labels"] = lk
    mods = {}
    for role in ("image", "text"):
        if role in g:
            k, arr = _pick(split, role, g[role])
            mods[role] = arr
            keys[role] = k
    if not mods:
        raise ValueError(f"{where} has labels ({lk}) but no image or text feature array; "
                         f"{listing}; {_KEY_OPTIONS}")
    mods, lab = _orient(split, mods, lab)
    return mods, lab, keys


def _check_split_dims(entries: dict[str, tuple], source: str) -> None:
    """Every split of a modality must have the same per-item shape (I_tr 20-d with I_te 10-d
    failed in the concatenation with a message naming no array)."""
    first = next(iter(entries))
    for role in entries[first][0]:
        dims = {s: tuple(e[0][role].shape[1:]) for s, e in entries.items()}
        if len(set(dims.values())) > 1:
            desc = ", ".join(f"{entries[s][2][role]} {'x'.join(map(str, d)) or 'scalar'}-d "
                             f"({s})" for s, d in dims.items())
            raise ValueError(f"{source}: the {role} features of the splits have different "
                             f"dimensions: {desc}; every split of a modality needs the same "
                             f"features")


def _same_rows(a: Any, b: Any) -> bool:
    if is_image_source(a) or is_image_source(b):   # lazy images: the same stored array only
        return (isinstance(a, H5ImageSource) and isinstance(b, H5ImageSource)
                and (a.path, a.key) == (b.path, b.key))
    return a.shape == b.shape and _rows_equal(a, b)


_HASH_MULT = None


def _row_hash(X: Any, Y: np.ndarray) -> np.ndarray:
    """Exact per-row 64-bit hash of features + labels (modular integer arithmetic on the
    raw bits, so identical rows always hash equal; chunked, O(n) memory)."""
    global _HASH_MULT
    if _HASH_MULT is None:
        _HASH_MULT = np.random.default_rng(12345).integers(1, 2**63, size=1 << 16, dtype=np.uint64) | np.uint64(1)

    def bits(a: np.ndarray) -> np.ndarray:
        a = np.ascontiguousarray(a)
        if a.dtype.itemsize == 8:
            return a.view(np.uint64)
        if a.dtype.itemsize == 4:
            return a.view(np.uint32).astype(np.uint64)
        return a.astype(np.float64).view(np.uint64)

    def mult(cols: np.ndarray, salt: int) -> np.ndarray:
        return _HASH_MULT[(cols * 7919 + salt) % _HASH_MULT.size]

    n = X.shape[0]
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        if sp.issparse(X):
            X = sp.csr_matrix(X)
            X.sum_duplicates()
            prod = bits(X.data) * mult(X.indices.astype(np.int64), 1)
            nz = np.diff(X.indptr) > 0
            if prod.size:
                h[nz] = np.add.reduceat(prod, X.indptr[:-1][nz])
        else:
            F = np.asarray(X).reshape(n, -1)
            d = F.shape[1]
            m = mult(np.arange(d, dtype=np.int64), 1)
            step = max(1, (1 << 22) // max(d, 1))
            for s0 in range(0, n, step):
                h[s0 : s0 + step] = (bits(F[s0 : s0 + step]) * m).sum(axis=1)
        L = np.asarray(Y, dtype=np.float64).reshape(n, -1)
        h += (bits(L) * mult(np.arange(L.shape[1], dtype=np.int64), 2)).sum(axis=1)
    return h


def _rows_equal(A: Any, B: Any) -> bool:
    if sp.issparse(A) or sp.issparse(B):
        return (sp.csr_matrix(A) != sp.csr_matrix(B)).nnz == 0
    return bool(np.array_equal(np.asarray(A), np.asarray(B)))


def _match_subset(tr: tuple[dict, np.ndarray], db: tuple[dict, np.ndarray]) -> np.ndarray | None:
    """Positions of the training rows inside the database rows when train is a subset of the
    database (same features of every modality and same labels), else None."""
    names = list(tr[0])
    if tr[0][names[0]].shape[0] > db[0][names[0]].shape[0]:
        return None
    if any(is_image_source(tr[0][m]) or is_image_source(db[0][m]) for m in names):
        return None   # lazy images are not compared row by row (that would read them all)
    m0 = names[0]
    h_db = _row_hash(db[0][m0], db[1])
    h_tr = _row_hash(tr[0][m0], tr[1])
    order = np.argsort(h_db, kind="stable")
    hs = h_db[order]
    left = np.searchsorted(hs, h_tr, side="left")
    right = np.searchsorted(hs, h_tr, side="right")
    if np.any(left == right):
        return None
    pos = order[np.minimum(left, hs.size - 1)]
    dup = np.flatnonzero(right - left > 1)
    if dup.size:  # identical database rows: give each training row its own occurrence
        used: dict[int, int] = {}
        for i in dup:
            k = used.get(int(left[i]), 0)
            if left[i] + k >= right[i]:
                return None
            pos[i] = order[left[i] + k]
            used[int(left[i])] = k + 1
    if np.unique(pos).size != pos.size:
        return None
    for m in names:
        if not _rows_equal(tr[0][m], db[0][m][pos]):
            return None
    if not _rows_equal(np.asarray(tr[1]), np.asarray(db[1])[pos]):
        return None
    return pos.astype(np.int64)


def _assemble(raw: dict[str, Any], source: str, skipped=()
              ) -> tuple[str, dict[str, Any], np.ndarray, dict[str, np.ndarray] | None]:
    """-> (layout, pooled modalities, pooled labels, splits or None for the 'all' layout)."""
    groups, _unknown = _group(raw)
    listing = describe_keys(raw, skipped)
    has_split = any(s in groups for s in ("train", "query", "retrieval"))
    if not has_split and "all" not in groups:
        labelled = any(_key_role(k) is not None and _key_role(k)[0] == "labels" for k in raw)
        error = ValueError if labelled else MissingLabelsError
        raise error(
            f"{source}: no known layout; {listing}. Expected e.g. I_tr/T_tr/L_tr + "
            f"I_te/T_te/L_te, XTrain/YTrain/LTrain + XTest/..., or IAll/YAll/LAll; or "
            f"{_KEY_OPTIONS}")
    if has_split:
        entries = {s: _split_entry(s, groups[s], listing)
                   for s in ("train", "query", "retrieval") if s in groups}
        names = {s: list(e[0]) for s, e in entries.items()}
        first = next(iter(names.values()))
        for s, nm in names.items():
            if nm != first:
                raise ValueError(f"{source}: splits have different modalities: {names}")
        _check_split_dims(entries, source)
        tr = entries.get("train")
        q = entries.get("query")
        db = entries.get("retrieval")
        if tr is None and db is None:
            raise ValueError(
                f"{source}: found only query arrays ({sorted(k for r in groups['query'].values() for k, _ in r)}); "
                "a training or database split is required"
            )
        parts: list[tuple[str, tuple[dict, np.ndarray]]] = []
        splits: dict[str, np.ndarray] = {}
        if tr is not None and db is not None:
            if all(_same_rows(tr[0][m], db[0][m]) for m in tr[0]) and _same_rows(tr[1], db[1]):
                layout = "train/query (database = train)"
                db = None
            else:
                sub = _match_subset((tr[0], np.asarray(tr[1])), (db[0], np.asarray(db[1])))
                if sub is not None:
                    layout = "database/query + training subset of the database"
                    parts = [("retrieval", (db[0], db[1]))]
                    if q is not None:
                        parts.append(("query", (q[0], q[1])))
                    return _pool(parts, {"train": sub}, layout)
                layout = "train/query/database (disjoint arrays)"
        elif tr is not None:
            layout = "train/query"
        else:
            layout = "database/query"
        for s, e in (("train", tr), ("query", q), ("retrieval", db)):
            if e is not None:
                parts.append((s, (e[0], e[1])))
        return _pool(parts, splits, layout)
    mods, lab, _ = _split_entry("all", groups["all"], listing)
    return "single pool (random split)", mods, lab, None


def _pool(parts: list, extra: dict[str, np.ndarray], layout: str):
    names = list(parts[0][1][0])
    pooled = {}
    for m in names:
        arrs = [p[1][0][m] for p in parts]
        if any(is_image_source(a) for a in arrs):
            from .images import concat_image_sources

            pooled[m] = concat_image_sources(arrs)
        elif any(sp.issparse(a) for a in arrs):
            pooled[m] = sp.vstack([sp.csr_matrix(a) for a in arrs], format="csr")
        else:
            pooled[m] = np.concatenate([np.asarray(a) for a in arrs], axis=0)
    labs = [np.asarray(p[1][1]) for p in parts]
    if all(lab.ndim == 1 for lab in labs):
        Y = np.concatenate(labs)
    else:
        Y = np.concatenate([as_label_matrix(lab) for lab in labs], axis=0)
    splits: dict[str, np.ndarray] = {}
    start = 0
    for s, (mods, _) in parts:
        k = next(iter(mods.values())).shape[0]
        splits[s] = np.arange(start, start + k)
        start += k
    splits.update(extra)
    if "train" not in splits:
        splits["train"] = splits["retrieval"]
    if "retrieval" not in splits:
        splits["retrieval"] = splits["train"]
    return layout, pooled, Y, splits


def _random_split(n: int, n_query: int, n_train: int | None, rng: np.random.Generator, *,
                  where: str = "the data", nq_origin: str = "", nt_origin: str = "") -> dict[str, np.ndarray]:
    """Seeded query / retrieval / training split of a pool of ``n`` items. The origins (e.g.
    ``" (preset 'nuswide')"``) follow the numbers in error messages."""
    if n_query >= n:
        raise ValueError(f"n_query={n_query}{nq_origin} exceeds the {n - 1} items available for "
                         f"queries in {where} ({n} items; at least one must remain for retrieval)")
    _check_n_train(n_train, n - n_query, where, nt_origin)
    perm = rng.permutation(n)
    query = np.sort(perm[:n_query])
    ret = np.sort(perm[n_query:])
    train = ret
    if n_train is not None and n_train < ret.size:
        train = np.sort(rng.choice(ret, size=n_train, replace=False))
    return {"train": train, "query": query, "retrieval": ret}


def _check_n_train(n_train: int | None, n_retrieval: int, where: str, origin: str = "") -> None:
    """A training subset larger than the retrieval split it is drawn from is an error (it was
    silently the whole split)."""
    if n_train is not None and n_train > n_retrieval:
        raise ValueError(f"n_train={n_train}{origin} exceeds the {n_retrieval} items available "
                         f"in split 'retrieval' of {where} (the training subset is drawn from it)")


def default_n_query(n: int) -> int:
    """Queries drawn for an unknown single-pool dataset: 2,000, capped at 10% of the pool."""
    return int(min(2000, max(1, n // 10)))


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------
def _expand_paths(path: Any) -> list[Path]:
    if isinstance(path, (list, tuple)):
        out: list[Path] = []
        for p in path:
            out.extend(_expand_paths(p))
        return out
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in _EXTS)
        if not files:
            raise FileNotFoundError(f"no {'/'.join(_EXTS)} file in directory {p}")
        return files
    if not p.exists():
        raise FileNotFoundError(f"data file not found: {p}")
    return [p]


def _is_synthetic_spec(path: Any) -> bool:
    """``"synthetic"`` / ``"synthetic:..."``, or another string starting with "synthetic" that
    names no file (a malformed spec: the parser then lists the valid forms). A bare synthetic
    preset name (``"nuswide-like"``) that names no file is a FileNotFoundError saying how to
    ask for synthetic data."""
    if not isinstance(path, str):
        return False
    s = path.strip().lower()
    if s == "synthetic" or s.startswith("synthetic:"):
        return True
    exists = Path(path).expanduser().exists()
    if s.startswith("synthetic"):
        return not exists and Path(s).suffix not in _EXTS
    from .synthetic import SYNTHETIC_PRESETS

    if not exists and (s in SYNTHETIC_PRESETS or s == "image-text"):
        raise FileNotFoundError(f"data file not found: {path}; for the synthetic data preset "
                                f"write 'synthetic:{s}'")
    return False


def _lookup_preset(preset: str | DatasetPreset) -> DatasetPreset:
    """:func:`get_preset`, with a hint when a synthetic preset name is given as the preset."""
    try:
        return get_preset(preset)
    except ValueError as exc:
        from .synthetic import SYNTHETIC_PRESETS

        name = str(preset).strip().lower()
        if name in SYNTHETIC_PRESETS or name == "image-text":
            raise ValueError(f"{exc} ({name!r} is a synthetic data preset: pass the data as "
                             f"'synthetic:{name}')") from None
        raise


def load_dataset(
    path: Any,
    preset: str | DatasetPreset | None = "auto",
    random_state: Any = 0,
    *,
    n_query: int | None = None,
    n_train: int | None = None,
    sparse: str | bool = "auto",
    dtype: Any = None,
    name: str | None = None,
    allow_empty_classes: bool = False,
    allow_overlap: bool = False,
    keys: Mapping[str, str] | None = None,
    image_size: int | None = None,
    text_vocabulary: Any = None,
) -> CrossModalDataset:
    """Load a dataset from file(s), or build a synthetic one.

    Parameters
    ----------
    path : str | Path | list of paths | directory | ``"synthetic:<spec>"`` | CrossModalDataset
           | mapping role -> file
        A list (or a directory: all its .mat/.npz/.npy/.h5 files) is merged into one key
        space, e.g. ``[".../mirflickr25k-yall.mat", ".../mirflickr25k-lall.mat"]``; an
        ``.npy`` file is one array named by its stem. A mapping gives one file per role
        (``{"image": "img.npy", "text": "txt.npy", "labels": "y.npy"}``; a value may be a
        ``(file, key)`` pair for a file of several arrays): the arrays form one pool, split
        at random.
    preset : "auto" (default), None / "none", a preset name or a DatasetPreset
        Split protocol (see :mod:`cmhash.data.presets`). "auto" detects it from the pool size
        and class count, then from the file name. It sets ``n_query`` / ``n_train`` for
        single-pool files and ``n_train`` (training subset) for natively split files. An
        unknown name is a ValueError; a preset that cannot apply (synthetic data, a cmhash
        native file, a CrossModalDataset) is ignored with a :class:`DataWarning`.
    random_state : seed of the random split / training subset (same seed, same split)
    n_query, n_train : override the preset's numbers (``n_train=None`` and no preset value:
        train = retrieval). An ``n_train`` above the retrieval split it is drawn from, or an
        ``n_query`` leaving no retrieval item, is a ValueError naming the available number.
    sparse : "auto" (stored sparse or density < 0.1 -> CSR), True (all 2-D modalities CSR),
        False (all dense)
    dtype : cast features (default: floats kept, integer/bool -> float32)
    name : dataset name (default: the preset name, else the file stem)
    allow_empty_classes, allow_overlap : passed to :class:`CrossModalDataset`
    keys : mapping role -> array key, optional
        Names the arrays of some roles (``"image"``, ``"text"``, ``"labels"``) instead of the
        key grammar, e.g. ``{"image": "clip_img", "text": "clip_txt", "labels": "y"}``. The
        named arrays form one pool, split at random; a role not named is the one pool-style
        key of that role (``IAll``, ``labels``, ...), if any. A missing key, or no label
        array, is a ValueError listing the keys found (:func:`describe_keys`).

    Labels may be multi-hot, class indices, or one class name per item (strings; the
    dataset's ``class_names`` are then the sorted names). No label array is a
    :class:`MissingLabelsError` (a ValueError) listing every key, its shape and role.

    image_size, text_vocabulary : for an image-text manifest (a ``.csv``, ``.tsv``,
        ``.jsonl`` or ``.ndjson`` path), passed to
        :func:`cmhash.data.manifest.load_image_text_dataset` (which takes more options);
        ``preset``, ``sparse`` and ``dtype`` do not apply to manifests (ignored with a
        :class:`DataWarning` when given)

    Image arrays (4-D) are read lazily from ``.h5`` / v7.3 ``.mat`` files
    (:class:`~cmhash.data.images.H5ImageSource`, any of the layouts N x 3 x H x W,
    N x H x W x 3 and MATLAB's H x W x 3 x N), and integer image arrays of other files are kept
    as they are (:class:`~cmhash.data.images.ArrayImageSource`, no float copy).

    A CrossModalDataset ``path`` is returned unchanged (``preset``, ``n_query``, ``n_train``,
    ``sparse``, ``dtype`` and ``name`` are then ignored with a :class:`DataWarning`).
    """
    if n_train is not None:
        n_train = _check_count(n_train, "n_train")
    if n_query is not None:
        n_query = _check_count(n_query, "n_query", minimum=0)
    # an explicit preset is looked up first (a typo is an error, also where it would be ignored)
    explicit = preset is not None and not (isinstance(preset, str) and preset.strip().lower() in ("auto", "none", ""))
    if explicit:
        pname = _lookup_preset(preset).name
    if isinstance(path, CrossModalDataset):
        given = {"preset": pname if explicit else None, "n_query": n_query, "n_train": n_train,
                 "sparse": None if sparse == "auto" else sparse, "dtype": dtype, "name": name}
        ignored = [f"{k}={v!r}" for k, v in given.items() if v is not None]
        if ignored:
            warnings.warn(f"{', '.join(ignored)} ignored: a CrossModalDataset is returned unchanged",
                          DataWarning, stacklevel=2)
        return path
    if _is_synthetic_spec(path):
        from .synthetic import from_spec

        if explicit:
            warnings.warn(f"preset={pname!r} ignored: {path.strip()!r} is synthetic data, whose split "
                          "comes from the spec (set n_query / n_train there or as arguments)",
                          DataWarning, stacklevel=2)
        return from_spec(path, random_state=random_state, n_query=n_query, n_train=n_train)
    from .manifest import is_manifest_path, load_image_text_dataset

    if not isinstance(path, Mapping) and is_manifest_path(path):
        given = {"preset": pname if explicit else None,
                 "sparse": None if sparse == "auto" else sparse, "dtype": dtype}
        ignored = [f"{k}={v!r}" for k, v in given.items() if v is not None]
        if ignored:
            warnings.warn(f"{', '.join(ignored)} ignored: {Path(path).name} is an image-text "
                          f"manifest", DataWarning, stacklevel=2)
        return load_image_text_dataset(path, image_size=image_size,
                                       text_vocabulary=text_vocabulary,
                                       random_state=random_state, n_query=n_query,
                                       n_train=n_train, name=name,
                                       allow_empty_classes=allow_empty_classes,
                                       allow_overlap=allow_overlap)
    if image_size is not None or text_vocabulary is not None:
        warnings.warn("image_size / text_vocabulary apply to image-text manifests only; "
                      "ignored", DataWarning, stacklevel=2)
    ds_kwargs = dict(allow_empty_classes=allow_empty_classes, allow_overlap=allow_overlap)
    if isinstance(path, Mapping) or keys:
        raw, files, skipped, used = _role_arrays(path, keys)
    else:
        files = _expand_paths(path)
        raw, skipped, used = None, [], None
    if raw is None and len(files) == 1:
        native = _read_native(files[0])
        if native is not None:
            if n_query is not None:
                warnings.warn(f"n_query={n_query} ignored: {files[0].name} is a cmhash native file "
                              "and stores its own query split", DataWarning, stacklevel=2)
            if explicit:
                warnings.warn(f"preset={pname!r} ignored: {files[0].name} is a "
                              "cmhash native file and stores its own splits", DataWarning, stacklevel=2)
            ds = _from_native(native, sparse=sparse, dtype=dtype, name=name, **ds_kwargs)
            if n_train is not None:
                _check_n_train(n_train, ds.indices("retrieval").size, files[0].name)
                ds = ds.subset_train(n_train, random_state)
            ds.meta.update(layout="cmhash native", preset=None, source=str(files[0]))
            return ds

    if raw is None:
        raw = _merged_arrays(files, skipped)
    source = ", ".join(str(f) for f in files)
    layout, mods, labels, splits = _assemble(raw, source, skipped)
    mods = {k: _finish_features(v, sparse, dtype) for k, v in mods.items()}
    class_names = label_class_names(labels)
    Y = as_label_matrix(labels)
    n = Y.shape[0]

    fname = " ".join(f"{f.parent.name}/{f.name}" for f in files)
    if preset is None or (isinstance(preset, str) and preset.lower() in ("none", "")):
        pre = None
    elif isinstance(preset, str) and preset.lower() == "auto":
        pre = detect_preset(n, Y.shape[1], fname)
    else:
        pre = _lookup_preset(preset)
        if pre.n_total is not None and pre.n_total != n:
            warnings.warn(
                f"preset '{pre.name}' expects {pre.n_total} items, the data has {n}",
                DataWarning,
                stacklevel=2,
            )
        if pre.n_classes is not None and pre.n_classes != Y.shape[1]:
            warnings.warn(
                f"preset '{pre.name}' expects {pre.n_classes} classes, the data has {Y.shape[1]}",
                DataWarning,
                stacklevel=2,
            )
    rng = check_random_state(random_state)
    nq = n_query if n_query is not None else (pre.n_query if pre is not None and pre.n_query else None)
    nt = n_train if n_train is not None else (pre.n_train if pre is not None else None)
    # numbers that came from the preset say so in error messages
    nq_origin = f" (preset '{pre.name}')" if n_query is None and nq is not None else ""
    nt_origin = f" (preset '{pre.name}')" if n_train is None and nt is not None else ""
    if splits is None:
        splits = _random_split(n, int(nq) if nq is not None else default_n_query(n), nt, rng,
                               where=fname, nq_origin=nq_origin, nt_origin=nt_origin)
    else:
        # stored split: n_query is ignored (with a warning); n_train independently draws the
        # training subset of the stored database
        if n_query is not None:
            nq_stored = splits["query"].size if "query" in splits else 0
            warnings.warn(
                f"n_query={n_query} ignored: the file stores its own query split "
                f"({nq_stored} items)",
                DataWarning,
                stacklevel=2,
            )
        _check_n_train(nt, splits["retrieval"].size, fname, nt_origin)
        if nt is not None and nt < splits["retrieval"].size:
            splits["train"] = np.sort(rng.choice(splits["retrieval"], size=int(nt), replace=False))
    dname = name if name is not None else (pre.name if pre is not None else files[0].stem)
    ds = CrossModalDataset(mods, Y, splits, name=dname, class_names=class_names, **ds_kwargs)
    ds.meta.update(
        layout=layout if used is None else "named arrays (random split)",
        preset=pre.name if pre is not None else None,
        source=source,
        random_state=random_state if isinstance(random_state, (int, type(None))) else "generator",
        keys=sorted(raw) if used is None else used,
    )
    return ds


def _merged_arrays(files: list[Path], skipped: list[str]) -> dict[str, Any]:
    """The arrays of several files in one key space (a key in two files is a ValueError)."""
    raw: dict[str, Any] = {}
    for f in files:
        for k, v in read_arrays(f, skipped=skipped).items():
            if k in raw:
                raise ValueError(f"key {k!r} appears in more than one file ({[str(x) for x in files]})")
            raw[k] = v
    return raw


#: the pool-style keys under which explicitly named arrays are assembled
_POOL_KEYS = {"image": "IAll", "text": "TAll", "labels": "LAll"}
_ROLE_OPTION = {"image": "--image-key", "text": "--text-key", "labels": "--label-key"}


def _role_arrays(path: Any, keys: Mapping[str, str] | None):
    """``(raw, files, skipped, used)`` for explicitly named arrays: ``raw`` holds them under
    pool-style keys (``IAll``, ``TAll``, ``LAll``), ``used`` maps each role to
    ``"file:key"``. ``path`` is a file spec (one or several files: every role read from
    them) or a mapping role -> file / (file, key)."""
    keys = dict(keys or {})
    unknown = set(keys) - set(_POOL_KEYS)
    if isinstance(path, Mapping):
        unknown |= set(path) - set(_POOL_KEYS)
    if unknown:
        raise ValueError(f"unknown role(s) {sorted(unknown)}; roles: {sorted(_POOL_KEYS)}")
    sources = {}
    if isinstance(path, Mapping):
        for role, spec in path.items():
            if spec is None:
                continue
            file, key = spec if isinstance(spec, (tuple, list)) else (spec, None)
            sources[role] = (_expand_paths(file), key if key is not None else keys.get(role))
        for role in set(keys) - set(sources):
            raise ValueError(f"keys[{role!r}] names an array but no file is given for the {role}")
    else:
        files = _expand_paths(path)
        sources = {role: (files, keys.get(role)) for role in _POOL_KEYS}
    read: dict[tuple, tuple[dict, list]] = {}
    raw, used, taken, skipped_all = {}, {}, set(), []
    for role in ("image", "text", "labels"):
        if role not in sources:
            continue
        files, key = sources[role]
        ident = tuple(files)
        if ident not in read:
            skipped: list[str] = []
            read[ident] = (_merged_arrays(files, skipped), skipped)
            skipped_all += skipped
        arrays, skipped = read[ident]
        where = ", ".join(str(f) for f in files)
        k = _pick_role_key(arrays, skipped, role, key, where,
                           exclude={k for (i, k) in taken if i == ident},
                           required=role == "labels" or isinstance(path, Mapping))
        if k is None:
            continue
        taken.add((ident, k))
        raw[_POOL_KEYS[role]] = arrays[k]
        used[role] = f"{where}:{k}"
    all_files = list(dict.fromkeys(f for files, _ in sources.values() for f in files))
    return raw, all_files, skipped_all, used


def _pick_role_key(arrays: dict, skipped, role: str, key: str | None, where: str, *,
                   exclude=(), required: bool = True, split: str | None = None) -> str | None:
    """The key of ``role``'s array in ``arrays``: ``key`` if given, else the only array, else
    the one key of that role by the grammar (of ``split``, or of the whole pool). None when
    the role has no array and is not ``required``; otherwise a ValueError listing the keys."""
    what = "label" if role == "labels" else role
    if key is not None:
        if key not in arrays:
            raise ValueError(f"{where} has no array {key!r} for the {what}s; "
                             f"{describe_keys(arrays, skipped)}")
        return key
    free = {k: v for k, v in arrays.items() if k not in exclude}
    if len(arrays) == 1 and free:
        return next(iter(free))
    want = {split} if split is not None else {"all"}
    cands = [k for k, v in free.items()
             if (c := _key_role(k)) is not None and c[0] == role and c[1] in want
             and (role == "labels" or not _is_text(v))]
    if split is None and not cands:   # features to encode: any split's array, if only one
        cands = [k for k, v in free.items()
                 if (c := _key_role(k)) is not None and c[0] == role and not _is_text(v)]
        cands = cands if role != "labels" and len(cands) == 1 else []
    if len(cands) == 1:
        return cands[0]
    if not cands and not required:
        return None
    problem = (f"several {what} arrays ({', '.join(cands)})" if cands
               else f"no {what} array")
    error = MissingLabelsError if role == "labels" and not cands else ValueError
    raise error(f"{where}: {problem}; {describe_keys(arrays, skipped)}; name the array with "
                f"{_ROLE_OPTION[role]}")


def load_labels(path: Any, *, key: str | None = None) -> Any:
    """The label array of a file, as stored (multi-hot rows, class indices or class names):
    ``key`` if given, else the file's only array, else its one label array by the key grammar
    (whole pool). A :class:`MissingLabelsError` / ValueError lists the keys otherwise."""
    files = _expand_paths(path)
    skipped: list[str] = []
    arrays = _merged_arrays(files, skipped)
    where = ", ".join(str(f) for f in files)
    return arrays[_pick_role_key(arrays, skipped, "labels", key, where)]


def load_features(path: Any, modality: str = "image", *, key: str | None = None,
                  split: str | None = None, dtype: Any = None) -> np.ndarray:
    """One modality's feature array from a file, without labels (to encode an unlabelled
    database or queries).

    ``path``: a file (.npy, .npz, .mat, .h5) or a list of files. The array is ``key`` if given,
    else the file's only array, else the one array of ``modality`` (``"image"`` / ``"text"``)
    by the key grammar -- of ``split`` (``"train"``, ``"query"``, ``"retrieval"``, ``"all"``)
    when given. Returned as stored (dense or CSR; a 1-D array stays 1-D; integer / bool
    features as float32). Anything ambiguous or missing is a ValueError listing the keys."""
    files = _expand_paths(path)
    skipped: list[str] = []
    arrays = _merged_arrays(files, skipped)
    role = modality if modality in ("image", "text") else "image"
    where = ", ".join(str(f) for f in files)
    if split is not None and split not in _SPLIT_TOKENS:
        raise ValueError(f"unknown split {split!r}; splits: {sorted(_SPLIT_TOKENS)}")
    if key is None and modality not in ("image", "text") and len(arrays) != 1:
        raise ValueError(f"{where}: name the array of modality {modality!r} with a key; "
                         f"{describe_keys(arrays, skipped)}")
    k = _pick_role_key(arrays, skipped, role, key, where, split=split)
    X = arrays[k]
    if _is_text(X) or (isinstance(X, np.ndarray) and X.dtype.kind not in "biuf"):
        raise ValueError(f"{where}: array {k!r} is not numeric (dtype {X.dtype}); features must be "
                         f"numbers")
    X = X.tocsr() if sp.issparse(X) else np.ascontiguousarray(X)
    if dtype is not None:
        return X.astype(dtype, copy=False)
    return X.astype(np.float32) if X.dtype.kind in "biu" else X
