"""Inputs of the ``cmhash`` commands: where the data comes from and where results go.

Data: ``--data`` (a dataset file, files joined by ``+``, or ``synthetic:...``) or one file per
role (``--image``, ``--text``, ``--labels``: .npy, .npz, .mat, .h5), with ``--image-key`` /
``--text-key`` / ``--label-key`` naming an array where a file holds several; the split options
``--n-query`` (0: train on everything), ``--n-train``, ``--preset``, ``--split-seed``. A random
held-out query split is announced on stderr. ``cmhash encode`` also takes a features file
alone (``--features`` / ``--image`` / ``--text``), without labels, and one query vector.

Outputs: every output path is checked before any work (a directory, a missing or read-only
folder is an error before a fit, not after it).
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np

from .data.dataset import DataWarning

log = logging.getLogger("cmhash")

ROLES = ("image", "text", "labels")
_KEY_ATTR = {"image": "image_key", "text": "text_key", "labels": "label_key"}


# ------------------------------------------------------------------------------- options
def add_data_options(p, *, encode: bool = False) -> None:
    """The data options of a command (all optional here: :func:`load_data` says what is
    missing). ``encode`` adds ``--features`` (a features file of any modality)."""
    g = p.add_argument_group("data (--data, or one file per role)")
    g.add_argument("--data",
                   help="dataset file (.mat/.npz/.npy/.h5; several joined by '+') or "
                        "synthetic:<preset|key=value,...>")
    g.add_argument("--image", metavar="FILE", help="image features file (.npy/.npz/.mat/.h5)")
    g.add_argument("--text", metavar="FILE", help="text features file")
    g.add_argument("--labels", metavar="FILE",
                   help="labels file: (n, c) multi-hot, (n,) class indices or class names"
                        + (" (optional: stored with the codes)" if encode else ""))
    if encode:
        g.add_argument("--features", metavar="FILE",
                       help="features file of the modality given by --modality (no labels "
                            "needed; a 1-D array is one query)")
        g.add_argument("--features-key", metavar="KEY", help="array of --features to use")
    g.add_argument("--image-key", metavar="KEY", help="name of the image array in its file")
    g.add_argument("--text-key", metavar="KEY", help="name of the text array in its file")
    g.add_argument("--label-key", metavar="KEY", help="name of the label array in its file")
    s = p.add_argument_group("split")
    s.add_argument("--preset", help="split protocol, a data preset such as wiki, mirflickr25k, "
                                    "nuswide, iapr-tc12 (all in docs/data.md; default: "
                                    "auto-detected; ignored with a warning for synthetic data "
                                    "and cmhash native files)")
    s.add_argument("--split-seed", type=int, default=0, help="seed of random splits (default 0)")
    s.add_argument("--n-query", type=int,
                   help="queries held out at random from a single pool (default: the preset's, "
                        "else min(2000, n/10)); 0 trains on everything")
    s.add_argument("--n-train", type=int, help="train on a random subset of this size")


def _is_synthetic(spec) -> bool:
    low = str(spec).strip().lower()
    return low == "synthetic" or low.startswith("synthetic:")


def _data_path(spec: str):
    return spec if _is_synthetic(spec) else (spec.split("+") if "+" in spec else spec)


def _split_kwargs(args) -> dict:
    kwargs = {}
    if getattr(args, "preset", None):
        kwargs["preset"] = args.preset
    if getattr(args, "n_train", None) is not None:   # 0 is refused by load_dataset, not dropped
        kwargs["n_train"] = args.n_train
    if getattr(args, "n_query", None) is not None:
        kwargs["n_query"] = args.n_query
    return kwargs


def _role_keys(args) -> dict:
    return {role: getattr(args, attr) for role, attr in _KEY_ATTR.items()
            if getattr(args, attr, None)}


def _role_files(args) -> dict:
    return {role: getattr(args, role) for role in ROLES if getattr(args, role, None)}


# ---------------------------------------------------------------------------- datasets
def load_data(args, command: str = "", **extra):
    """The dataset of a command from ``--data`` / ``--image`` / ``--text`` / ``--labels`` and
    the key and split options; the random held-out split, if any, is announced
    (:func:`announce_split`). ``extra``: more :func:`cmhash.data.load_dataset` options for a
    data file (an image-text manifest's ``text_vocabulary``); ``--image-size`` is passed for
    manifests."""
    from .data import load_dataset
    from .data.manifest import is_manifest_path

    if getattr(args, "image_size", None) is not None:
        if not (getattr(args, "data", None) and is_manifest_path(args.data)):
            raise ValueError("--image-size applies to image-text manifests (--data images.csv)")
        extra["image_size"] = args.image_size

    files, keys = _role_files(args), _role_keys(args)
    if not files and not getattr(args, "data", None):
        raise ValueError("no data: give --data FILE (or synthetic:...), or the files "
                         "--image, --text and --labels")
    if getattr(args, "preset", None) and args.data and _is_synthetic(args.data) and not files:
        from .data.loaders import _lookup_preset

        _lookup_preset(args.preset)   # an unknown name says so first
        raise ValueError("--preset selects the split protocol of a data file; synthetic data "
                         "is split by its spec (set n_query / n_train there, or --n-query / "
                         "--n-train)")
    kwargs = _split_kwargs(args)
    if files:
        if "labels" not in files and not args.data:
            raise ValueError("--labels FILE is required with --image / --text (training and "
                             "evaluation need labels; `cmhash encode` does not)")
        if args.data and _is_synthetic(args.data):
            raise ValueError("--image / --text / --labels cannot be combined with synthetic "
                             "--data")
        source = {role: (files[role], keys.get(role)) if role in files
                  else (_data_path(args.data), keys.get(role))
                  for role in ROLES if role in files or args.data}
        ds = load_dataset(source, random_state=args.split_seed, **kwargs)
    else:
        if keys and _is_synthetic(args.data):
            raise ValueError(f"{', '.join('--' + _KEY_ATTR[r].replace('_', '-') for r in keys)} "
                             f"name arrays of a data file; synthetic data has none")
        with warnings.catch_warnings():   # refused below instead of ignored with a warning
            warnings.filterwarnings("ignore", message=r"n_query=\d+ ignored", category=DataWarning)
            ds = load_dataset(_data_path(args.data), random_state=args.split_seed,
                              keys=keys or None, **kwargs, **extra)
        if getattr(args, "n_query", None) is not None and not _is_synthetic(args.data) \
                and "random split" not in (ds.meta.get("layout") or ""):
            raise ValueError(f"--n-query applies to a single pool split at random; {args.data} "
                             f"stores its own query split ({ds.indices('query').size} items)")
    announce_split(ds, args, command)
    return ds


def announce_split(ds, args, command: str) -> None:
    """Say on stderr when a file's pool was split at random: how many queries were held out
    (a warning for ``fit``, which does not use them: it trains on the rest only), or that
    everything is trained on (``--n-query 0``)."""
    layout = ds.meta.get("layout") or ""
    if "random split" not in layout:
        return
    n, nq, ntr = ds.n_items, ds.indices("query").size, ds.indices("train").size
    origin = f", preset {ds.meta['preset']!r}" if ds.meta.get("preset") else ""
    if nq == 0:
        log.info(f"{ds.name or 'data'}: no held-out queries; training on all {ntr} items")
        return
    held = (f"{ds.name or 'data'}: {nq} of {n} items held out at random as queries "
            f"(--split-seed {args.split_seed}{origin})")
    if command == "fit":
        log.warning(f"{held}; fit trains on the other {ntr} items only (--n-query 0 trains on "
                    f"all {n})")
    else:
        log.info(f"{held}; {ntr} training items, {ds.indices('retrieval').size} retrieval")


def require_queries(ds, what: str) -> None:
    """Evaluation needs query items (``--n-query 0`` or a file without a query split has none)."""
    if ds.indices("query").size == 0:
        raise ValueError(f"{what} needs query items, but the query split of "
                         f"{ds.name or 'the data'} is empty (--n-query 0, or a file without a "
                         f"query split); give --n-query N")


# ------------------------------------------------------------------------- encode input
def encode_input(args, hasher):
    """``(X, ids, labels or None, modality, description)`` for ``cmhash encode``: a features
    file encoded whole (``--features`` / ``--image`` / ``--text``; labels optional), or a
    split of ``--data`` (a file without labels: its features of the modality, whole)."""
    from .data.loaders import MissingLabelsError, load_features

    feature_files = {o: getattr(args, o) for o in ("features", "image", "text")
                     if getattr(args, o, None)}
    if len(feature_files) > 1:
        raise ValueError(f"give one features file to encode, got {sorted(feature_files)}")
    modality = args.modality
    if feature_files:
        option, path = next(iter(feature_files.items()))
        if option != "features":
            if modality is not None and modality != option:
                raise ValueError(f"--{option} gives {option} features but --modality is "
                                 f"{modality!r}")
            modality = option
        elif modality is None:
            raise ValueError("--features needs --modality (the model's modality name)")
        if args.split is not None:
            raise ValueError(f"--split selects a split of --data; --{option} is encoded whole")
        if args.data:
            raise ValueError(f"give --data or --{option}, not both")
        split_options = [o for o in ("preset", "n_query", "n_train") if getattr(args, o, None)
                         is not None]
        if split_options:
            raise ValueError(f"{', '.join('--' + o.replace('_', '-') for o in split_options)} "
                             f"choose how --data is split; --{option} is encoded whole")
        key = args.features_key if option == "features" else _role_keys(args).get(option)
        X = load_features(path, modality, key=key)
        labels = _read_labels(args, _n_rows(X)) if args.labels else None
        return X, np.arange(_n_rows(X)), labels, modality, f"{path}"
    if modality is None:
        raise ValueError("--modality is required with --data")
    if not args.data:
        raise ValueError("nothing to encode: give --data, --features, --image or --text")
    if args.labels:
        raise ValueError("--labels is for a features file (--features / --image / --text); "
                         "--data brings its own labels")
    from .data.manifest import is_manifest_path
    vocab = getattr(hasher, "text_vocabulary_", None)
    # an image-text manifest's captions go through the model's own vocabulary
    extra = ({"text_vocabulary": vocab} if vocab is not None and is_manifest_path(args.data)
             else {})
    try:
        ds = load_data(args, "encode", **extra)
    except MissingLabelsError:
        if _is_synthetic(args.data):
            raise
        role = modality if modality in ("image", "text") else None
        key = _role_keys(args).get(role) if role else None
        X = load_features(_data_path(args.data), modality, key=key, split=args.split)
        log.info(f"{args.data} has no labels: encoding its {modality} features "
                 f"({_n_rows(X)} items)")
        return X, np.arange(_n_rows(X)), None, modality, args.data
    split = args.split or "query"
    X = ds.get(split, modality)
    return X, ds.indices(split), ds.labels_of(split), modality, f"split {split!r}"


def _n_rows(X) -> int:
    return 1 if np.ndim(X) == 1 else int(X.shape[0])


def _read_labels(args, n: int) -> np.ndarray:
    """The ``--labels`` file of ``cmhash encode`` as an (n, c) matrix (kept with the codes)."""
    from .data.dataset import as_label_matrix
    from .data.loaders import load_labels

    Y = as_label_matrix(load_labels(args.labels, key=args.label_key))
    if Y.shape[0] != n:
        raise ValueError(f"--labels has {Y.shape[0]} rows but the features have {n} items")
    return Y


def as_query_matrix(X, hasher, modality: str):
    """A 1-D array of the model's feature length is one query: ``(1, d)`` (said on stderr);
    anything else is passed to ``encode`` unchanged (it checks the shape)."""
    from .data.images import is_image_source
    if is_image_source(X) or np.ndim(X) != 1:
        return X
    m = hasher.modality_index(modality)
    fitted = tuple(hasher.n_features_[m])
    if fitted == (np.shape(X)[0],):
        log.info(f"a 1-D array of {np.shape(X)[0]} values: encoded as one {modality} query")
        return np.asarray(X).reshape(1, -1)
    raise ValueError(f"the {modality} input is a 1-D array of {np.shape(X)[0]} values, but the "
                     f"model's {modality} features have shape {fitted}: one query is a vector "
                     f"of {fitted[0] if len(fitted) == 1 else fitted} values, several queries "
                     f"an (n, d) array")


# ---------------------------------------------------------------------------- outputs
def check_output_file(path, option: str, *, make_parents: bool = False) -> None:
    """Fail before any work when ``path`` cannot be written as a file: it is a directory, its
    folder does not exist (and is not created: ``make_parents``), is a file, or is not
    writable."""
    if not path:
        return
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{option} {path} is a directory; give a file name")
    _check_folder(p.parent, option, path, make_parents)


def check_output_dir(path, option: str) -> None:
    """Fail before any work when the folder ``path`` cannot be created or written."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{option} {path} is a file, not a directory")
    _check_folder(p, option, path, make_parents=True)


def _check_folder(folder: Path, option: str, path, make_parents: bool) -> None:
    folder = folder if str(folder) else Path(".")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != folder and not make_parents:
        raise FileNotFoundError(f"{option} {path}: the directory {folder} does not exist")
    if not existing.is_dir():
        raise ValueError(f"{option} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {path}: the directory {existing} is not writable")
