"""Image-text datasets from files: a manifest (CSV or JSON lines) naming one item per row.

Columns (docs/data.md, "Image-text manifests"):

* ``image``    -- the image file, relative to the manifest's folder (or absolute);
* ``text``     -- a caption or space-separated tags (turned into bag-of-words vectors by a
  :class:`~cmhash.data.text.TextVocabulary` fitted on the training rows only), OR
  ``text_row`` -- the row of a text-feature file given beside the manifest (``.npy``,
  ``.npz``, ``.mat``, ``.h5``);
* ``labels``   -- ``;``-separated label names (multi-hot over the sorted names);
* ``split``    -- optional: ``train`` (training and retrieval item), ``query`` or
  ``retrieval`` (retrieval only).

:func:`load_image_text_dataset` returns a :class:`~cmhash.data.CrossModalDataset` whose
``"image"`` modality is a lazy :class:`~cmhash.data.images.ImageFileSource` (nothing is
decoded until a batch is formed) and whose ``"text"`` modality is the CSR bag-of-words (or
the text-feature rows). ``load_dataset("images.csv")`` calls it.
"""
from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._validation import check_random_state
from .dataset import CrossModalDataset, DataWarning, _check_count
from .images import ImageFileSource, ImageTransform
from .text import DEFAULT_TOKEN_PATTERN, TextVocabulary

__all__ = ["load_image_text_dataset", "read_manifest", "MANIFEST_EXTENSIONS", "SPLIT_NAMES",
           "EMPTY_LABEL_POLICIES", "is_manifest_path"]

#: file extensions read as manifests (CSV, tab-separated, JSON lines)
MANIFEST_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".ndjson")
#: values of the ``split`` column
SPLIT_NAMES = ("train", "query", "retrieval")
#: what to do with rows whose ``labels`` field is empty
EMPTY_LABEL_POLICIES = ("error", "drop", "keep")
#: file extensions of a text-feature file beside the manifest (``text_row`` column)
TEXT_FEATURE_EXTENSIONS = (".npy", ".npz", ".mat", ".h5", ".hdf5")
_SHOWN = 5


def is_manifest_path(path: Any) -> bool:
    """A single path (str / PathLike) with a manifest extension."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    return Path(path).suffix.lower() in MANIFEST_EXTENSIONS


# --------------------------------------------------------------------------------------------
# reading the rows
# --------------------------------------------------------------------------------------------
def read_manifest(path) -> tuple[list[dict[str, str]], list[int], list[str]]:
    """``(rows, line_numbers, columns)`` of a CSV / TSV / JSON-lines manifest.

    Every value is a string (JSON numbers are converted; a JSON list of labels is joined with
    ``;``). A record that is not a JSON object, a CSV row with more fields than the header, or
    a file without any row is a ValueError naming the file and line.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"manifest not found: {p}")
    ext = p.suffix.lower()
    if ext not in MANIFEST_EXTENSIONS:
        raise ValueError(f"{p}: a manifest is a {', '.join(MANIFEST_EXTENSIONS)} file")
    rows, lines = [], []
    try:
        with open(p, encoding="utf-8-sig", newline="") as fh:
            if ext in (".csv", ".tsv"):
                reader = csv.DictReader(fh, delimiter="\t" if ext == ".tsv" else ",",
                                        restkey="\0extra")
                columns = [c.strip() for c in (reader.fieldnames or [])]
                reader.fieldnames = columns
                for rec in reader:
                    if "\0extra" in rec:
                        raise ValueError(f"{p} line {reader.line_num}: more fields than the "
                                         f"{len(columns)} columns of the header")
                    if all(v is None or not str(v).strip() for v in rec.values()):
                        continue   # a blank line
                    rows.append({k: "" if v is None else str(v) for k, v in rec.items()})
                    lines.append(reader.line_num)
            else:
                columns = []
                for number, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{p} line {number}: not valid JSON ({exc.msg})") \
                            from None
                    if not isinstance(rec, dict):
                        raise ValueError(f"{p} line {number}: a JSON-lines manifest has one "
                                         f"JSON object per line, got {type(rec).__name__}")
                    for k in rec:
                        if k not in columns:
                            columns.append(k)
                    rows.append({str(k): _json_value(v) for k, v in rec.items()})
                    lines.append(number)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p} is not a UTF-8 text file ({exc})") from None
    except csv.Error as exc:
        raise ValueError(f"{p}: not a readable CSV file ({exc})") from None
    if not rows:
        raise ValueError(f"manifest {p} has no rows")
    return rows, lines, columns


def _json_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, list):
        return ";".join(str(x) for x in v)
    return str(v)


def _missing_columns_error(p, missing, columns, record_line=None):
    where = f" (line {record_line})" if record_line is not None else ""
    return ValueError(f"manifest {p}{where} has no {', '.join(missing)} "
                      f"column; found {columns}. A manifest needs the columns 'image', "
                      f"'labels' and one of 'text' / 'text_row' (docs/data.md)")


def _check_columns(p, rows, lines, columns) -> str:
    """The text column used ("text" or "text_row"); every required column is present."""
    has_text, has_row = "text" in columns, "text_row" in columns
    missing = [f"'{c}'" for c in ("image", "labels") if c not in columns]
    if not has_text and not has_row:
        missing.append("'text' or 'text_row'")
    if missing:
        raise _missing_columns_error(p, missing, columns)
    if has_text and has_row:
        raise ValueError(f"manifest {p} has both a 'text' and a 'text_row' column; keep one "
                         f"(captions / tags, or rows of a text-feature file)")
    text_col = "text" if has_text else "text_row"
    for rec, line in zip(rows, lines):   # JSON lines: every record needs the keys
        absent = [f"'{c}'" for c in ("image", "labels", text_col) if c not in rec]
        if absent:
            raise _missing_columns_error(p, absent, sorted(rec), line)
    return text_col


# --------------------------------------------------------------------------------------------
# the pieces
# --------------------------------------------------------------------------------------------
def _where(p, line) -> str:
    return f"{p.name} line {line}"


def _image_paths(p: Path, rows, lines) -> list[str]:
    root = p.parent
    paths, missing = [], []
    for rec, line in zip(rows, lines):
        value = rec["image"].strip()
        if not value:
            raise ValueError(f"{_where(p, line)}: empty 'image' field")
        f = Path(value).expanduser()
        f = f if f.is_absolute() else root / f
        if not f.is_file():
            missing.append((line, value, f))
        paths.append(str(f))
    if missing:
        line, value, f = missing[0]
        more = f" ({len(missing)} of {len(rows)} image files are missing)" if len(missing) > 1 \
            else ""
        raise FileNotFoundError(f"{_where(p, line)}: image file {value!r} not found "
                                f"(looked for {f}){more}")
    return paths


def _labels(p: Path, rows, lines) -> tuple[list[list[str]], list[int]]:
    """Label names per row, and the rows with none."""
    names, empty = [], []
    for k, rec in enumerate(rows):
        parts = [s.strip() for s in rec["labels"].split(";")]
        parts = sorted({s for s in parts if s})
        if not parts:
            empty.append(k)
        names.append(parts)
    return names, empty


def _splits_column(p: Path, rows, lines) -> list[str]:
    out = []
    for rec, line in zip(rows, lines):
        value = rec.get("split", "").strip().lower()
        if value not in SPLIT_NAMES:
            what = "an empty 'split' field" if not value else \
                f"unknown split {rec.get('split', '').strip()!r}"
            raise ValueError(f"{_where(p, line)}: {what}; a split is one of "
                             f"{', '.join(SPLIT_NAMES)} (train items are also retrieval items)")
        out.append(value)
    return out


def _text_rows(p: Path, rows, lines) -> np.ndarray:
    out = np.empty(len(rows), dtype=np.int64)
    for k, (rec, line) in enumerate(zip(rows, lines)):
        value = rec["text_row"].strip()
        try:
            v = float(value)
            if not v.is_integer() or v < 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"{_where(p, line)}: text_row must be a row number (an integer "
                             f">= 0), got {value!r}") from None
        out[k] = int(v)
    return out


def _find_text_features(p: Path, given) -> Path:
    if given is not None:
        f = Path(given).expanduser()
        f = f if f.is_absolute() else p.parent / f
        if not f.is_file():
            raise FileNotFoundError(f"text-feature file not found: {f}")
        return f
    found = [p.with_suffix(ext) for ext in TEXT_FEATURE_EXTENSIONS if p.with_suffix(ext).is_file()]
    if len(found) != 1:
        what = "none" if not found else ", ".join(f.name for f in found)
        raise ValueError(f"manifest {p} has a 'text_row' column: give the text-feature file "
                         f"(text_features=PATH), or put exactly one "
                         f"{p.stem}{{{','.join(TEXT_FEATURE_EXTENSIONS)}}} beside it "
                         f"(found {what})")
    return found[0]


def _read_text_features(f: Path):
    """The one feature matrix of a text-feature file (rows = items): dense or CSR."""
    from .loaders import _classify, read_arrays

    if f.suffix.lower() == ".npy":
        try:
            arrays = {"": np.load(f, mmap_mode="r", allow_pickle=False)}
        except (OSError, ValueError) as exc:
            raise ValueError(f"{f} is not a readable .npy file ({exc})") from None
    else:
        arrays = read_arrays(f)
    cands = {k: v for k, v in arrays.items() if sp.issparse(v) or np.ndim(v) == 2}
    if len(cands) > 1:
        named = {k: v for k, v in cands.items()
                 if (_classify(k.rsplit("/", 1)[-1]) or ("", ""))[0] == "text"}
        cands = named if len(named) == 1 else cands
    if len(cands) != 1:
        raise ValueError(f"{f}: expected one 2-D text-feature matrix (or one whose key names "
                         f"text, e.g. 'text', 'T', 'YAll'), found {sorted(arrays) or 'none'}")
    X = next(iter(cands.values()))
    if not sp.issparse(X) and X.dtype.kind not in "biuf":
        raise ValueError(f"{f}: text features must be numeric, got {X.dtype}")
    return X


def _take_text_rows(p, X, rows_idx, lines, f):
    n = X.shape[0]
    bad = np.flatnonzero(rows_idx >= n)
    if bad.size:
        k = int(bad[0])
        raise ValueError(f"{_where(p, lines[k])}: text_row {int(rows_idx[k])} is outside the "
                         f"{n} rows of {f.name}")
    if sp.issparse(X):
        out = sp.csr_matrix(X)[rows_idx]
        return out.astype(np.float32) if out.dtype.kind != "f" else out
    out = np.asarray(X[rows_idx])
    return out.astype(np.float32) if out.dtype.kind != "f" else out


def _default_transform(image_size, transform) -> ImageTransform:
    if transform is not None:
        if image_size is not None:
            raise ValueError("give image_size or transform, not both")
        if not isinstance(transform, ImageTransform):
            raise TypeError(f"transform must be an ImageTransform, got "
                            f"{type(transform).__name__}")
        return transform
    size = 224 if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    return ImageTransform(size=int(size), resize=int(round(size * 256 / 224)))


# --------------------------------------------------------------------------------------------
# the loader
# --------------------------------------------------------------------------------------------
def load_image_text_dataset(
    path,
    *,
    image_size: int | None = None,
    transform: ImageTransform | None = None,
    text_features=None,
    text_vocabulary: TextVocabulary | None = None,
    min_df=1,
    max_features: int | None = None,
    binary: bool = True,
    token_pattern: str = DEFAULT_TOKEN_PATTERN,
    empty_labels: str = "error",
    random_state: Any = 0,
    n_query: int | None = None,
    n_train: int | None = None,
    name: str | None = None,
    allow_empty_classes: bool = False,
    allow_overlap: bool = False,
) -> CrossModalDataset:
    """A dataset from a manifest (CSV / TSV / JSON lines), images read lazily from files.

    Parameters
    ----------
    path : the manifest (``.csv``, ``.tsv``, ``.jsonl`` / ``.ndjson``)
    image_size, transform : the images' :class:`ImageTransform` (default: ``image_size=224``:
        the shorter side resized to ``round(image_size * 256 / 224)``, then a ``image_size``
        centre crop, random crop + flip in training). The deep methods keep the transform
        they were fitted with and apply it to every image source they encode.
    text_features : the text-feature file of a ``text_row`` column (default: the one file
        ``<manifest stem>.npy|.npz|.mat|.h5`` beside the manifest)
    text_vocabulary : a fitted :class:`TextVocabulary` to apply instead of fitting one (e.g.
        a model's ``text_vocabulary_``); else one is fitted on the training rows with
        ``min_df``, ``max_features``, ``binary``, ``token_pattern``
    empty_labels : "error" (default: a ValueError naming the rows), "drop" (such rows are
        left out, with a :class:`DataWarning`) or "keep" (all-zero label rows: fine for query
        and retrieval items, refused by ``fit`` for training items)
    random_state, n_query, n_train : the split when there is no ``split`` column: ``n_query``
        (default ``min(2000, n // 10)``) random queries, the rest retrieval, train =
        retrieval or a random ``n_train``-subset of it (announced with a DataWarning). With a
        ``split`` column, ``n_train`` draws a random training subset of the ``train`` rows
        and ``n_query`` is ignored with a DataWarning.
    name, allow_empty_classes, allow_overlap : as :class:`CrossModalDataset`

    The dataset's ``text_vocabulary`` (None for ``text_row``) is the vocabulary used;
    ``meta`` records the source, the layout ``"image-text manifest"``, the text kind and
    how the split was made.
    """
    p = Path(path).expanduser()
    if empty_labels not in EMPTY_LABEL_POLICIES:
        raise ValueError(f"empty_labels must be one of {list(EMPTY_LABEL_POLICIES)}, got "
                         f"{empty_labels!r}")
    if n_train is not None:
        n_train = _check_count(n_train, "n_train")
    if n_query is not None:
        n_query = _check_count(n_query, "n_query", minimum=0)
    if text_vocabulary is not None and not isinstance(text_vocabulary, TextVocabulary):
        raise TypeError(f"text_vocabulary must be a TextVocabulary, got "
                        f"{type(text_vocabulary).__name__}")
    tfm = _default_transform(image_size, transform)
    rows, lines, columns = read_manifest(p)
    text_col = _check_columns(p, rows, lines, columns)
    has_split = "split" in columns
    # every row is checked before any is dropped: errors name manifest lines
    split_of = _splits_column(p, rows, lines) if has_split else None
    label_names, empty = _labels(p, rows, lines)
    if empty and empty_labels == "error":
        shown = ", ".join(str(lines[k]) for k in empty[:_SHOWN])
        more = ", ..." if len(empty) > _SHOWN else ""
        raise ValueError(f"manifest {p}: {len(empty)} of {len(rows)} rows have no label "
                         f"(lines {shown}{more}); pass empty_labels='drop' to leave them out "
                         f"(the MIRFlickr / NUS-WIDE protocols do) or 'keep' for query / "
                         f"retrieval-only items")
    text_rows = _text_rows(p, rows, lines) if text_col == "text_row" else None
    paths = _image_paths(p, rows, lines)
    keep = np.ones(len(rows), dtype=bool)
    if empty and empty_labels == "drop":
        keep[empty] = False
        warnings.warn(f"manifest {p.name}: {len(empty)} row(s) without labels left out "
                      f"(empty_labels='drop')", DataWarning, stacklevel=2)
        if not keep.any():
            raise ValueError(f"manifest {p}: no row has a label")
    kept = np.flatnonzero(keep)
    lines = [lines[k] for k in kept]
    label_names = [label_names[k] for k in kept]
    classes = sorted({c for names in label_names for c in names})
    col = {c: j for j, c in enumerate(classes)}
    n = kept.size
    Y = np.zeros((n, len(classes)), dtype=np.float32)
    for i, names in enumerate(label_names):
        Y[i, [col[c] for c in names]] = 1.0

    # splits
    rng = check_random_state(random_state)
    if has_split:
        kinds = np.array([split_of[k] for k in kept])
        train = np.flatnonzero(kinds == "train")
        if train.size == 0:
            raise ValueError(f"manifest {p}: no row has split 'train'")
        if n_query is not None:
            warnings.warn(f"n_query={n_query} ignored: manifest {p.name} has a split column",
                          DataWarning, stacklevel=2)
        retrieval = np.flatnonzero(kinds != "query")
        if n_train is not None:
            if n_train > train.size:
                raise ValueError(f"n_train={n_train} exceeds the {train.size} rows with split "
                                 f"'train' in {p.name}")
            if n_train < train.size:
                train = np.sort(rng.choice(train, size=n_train, replace=False))
        splits = {"train": train, "query": np.flatnonzero(kinds == "query"),
                  "retrieval": retrieval}
        split_source = "split column"
    else:
        from .loaders import _random_split, default_n_query

        nq = default_n_query(n) if n_query is None else n_query
        splits = _random_split(n, nq, n_train, rng, where=p.name)
        split_source = (f"random: {nq} queries (random_state={random_state!r}), train = "
                        + ("retrieval" if n_train is None else f"{n_train} retrieval items"))
        warnings.warn(f"manifest {p.name} has no 'split' column: {split_source}",
                      DataWarning, stacklevel=2)

    # text
    vocab = None
    if text_col == "text":
        texts = [rows[k]["text"] for k in kept]
        if text_vocabulary is not None:
            vocab = text_vocabulary
        else:
            vocab = TextVocabulary(min_df=min_df, max_features=max_features, binary=binary,
                                   token_pattern=token_pattern)
            vocab.fit([texts[i] for i in splits["train"]])
        T = vocab.transform(texts)
    else:
        if text_vocabulary is not None:
            warnings.warn("text_vocabulary ignored: the manifest gives text_row feature rows",
                          DataWarning, stacklevel=2)
        f = _find_text_features(p, text_features)
        T = _take_text_rows(p, _read_text_features(f), text_rows[kept], lines, f)

    images = ImageFileSource([paths[k] for k in kept],
                             origins=[_where(p, line) for line in lines], transform=tfm)
    ds = CrossModalDataset({"image": images, "text": T}, Y, splits,
                           name=p.stem if name is None else name, class_names=classes,
                           allow_empty_classes=allow_empty_classes, allow_overlap=allow_overlap)
    ds.text_vocabulary = vocab
    ds.meta.update(layout="image-text manifest", preset=None, source=str(p),
                   text="bag of words" if vocab is not None else f"rows of {f}",
                   split=split_source, random_state=random_state
                   if isinstance(random_state, (int, type(None))) else "generator",
                   rows_without_labels=len(empty), empty_labels=empty_labels)
    return ds
