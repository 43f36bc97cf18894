"""Fingerprints: which model made a set of codes, and which data a model was fitted on.

Two short hexadecimal digests (SHA-256, first :data:`DIGEST_HEX` hex digits):

* **model fingerprint** (:func:`model_fingerprint`, ``CrossModalHasher.fingerprint``): the
  method name, the constructor parameters as written to the model file (JSON; the execution
  options :data:`EXECUTION_PARAMS` left out) and the learned state -- every saved array (name,
  dtype, shape, bytes) and every JSON state value -- except the run measurements
  :data:`RUN_STATE` (timings). The same model before :meth:`save` and after :func:`load` has
  the same fingerprint; two fits with the same data, parameters and seed too. Codes files
  written by ``cmhash encode`` and index files carry it, and searches refuse codes of another
  model.
* **training-data fingerprint** (:func:`training_data_fingerprint`, stored by every fit as
  ``training_data_fingerprint_``): per modality the shape and the values of the training
  features -- all of them when the modality has at most :data:`DATA_VALUES_HASHED` values,
  else :func:`sample_rows` (evenly spaced rows, first and last included, as many as fit in
  that many values, at least :data:`MIN_SAMPLE_ROWS`), converted to float64 (so float32 and
  float64 copies of the same data agree; sparse rows are densified, lazy image sources decoded
  with their evaluation geometry) -- and *all* the labels
  (the checked multi-hot matrix as packed bits, ``n x c / 8`` bytes). Cost: one pass over the
  labels and at most 2^20 feature values per modality, whatever ``n`` is.
  ``evaluate_hasher(database="learned")``, which scores the learned training codes as the
  database, refuses a model whose training data differ from the dataset's train split.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import scipy.sparse as sp

from ._validation import is_image_source

__all__ = ["model_fingerprint", "training_data_fingerprint", "check_same_training_data",
           "check_same_model", "DIGEST_HEX"]

#: hex digits kept of the SHA-256 digest (64 bits)
DIGEST_HEX = 16
#: constructor parameters that choose how a fit runs, not what it computes
EXECUTION_PARAMS = frozenset({"verbose", "n_jobs", "device"})
#: learned-state attributes that are measurements of a run, not part of the model
RUN_STATE = frozenset({"train_seconds_", "timings_"})
#: a training modality with at most this many values is hashed in full, else sampled rows
DATA_VALUES_HASHED = 1 << 20
MIN_SAMPLE_ROWS = 16
DATA_SCHEME = "cmhash-training-data-v1"


def _new(tag: str):
    h = hashlib.sha256()
    h.update(tag.encode("utf-8") + b"\0")
    return h


def _update_json(h, value) -> None:
    h.update(json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\0")


def _update_array(h, name: str, a) -> None:
    a = np.ascontiguousarray(a)
    _update_json(h, [name, a.dtype.str, list(a.shape)])
    h.update(a.data if a.ndim else a.tobytes())


def model_fingerprint(method: str, params: dict, state_meta: dict, arrays: dict) -> str:
    """Digest of a model given as it is saved: ``params`` (JSON values), the JSON description
    of its state (``state_meta``) and its state ``arrays`` (name -> ndarray)."""
    h = _new("cmhash-model-v1")
    _update_json(h, method)
    _update_json(h, {k: v for k, v in params.items() if k not in EXECUTION_PARAMS})
    skip = tuple(RUN_STATE)
    _update_json(h, {k: v for k, v in state_meta.items() if k not in RUN_STATE})
    for name in sorted(arrays):
        if name.split("/", 1)[0] not in skip:
            _update_array(h, name, arrays[name])
    return h.hexdigest()[:DIGEST_HEX]


def sample_rows(n: int, values_per_row: int) -> np.ndarray | None:
    """Rows hashed of a modality with ``n`` rows of ``values_per_row`` values: None (all of
    them) up to :data:`DATA_VALUES_HASHED` values, else evenly spaced rows (first and last
    included) that fit in that many values (at least :data:`MIN_SAMPLE_ROWS`)."""
    per_row = max(1, int(values_per_row))
    if n * per_row <= DATA_VALUES_HASHED:
        return None
    rows = min(n, max(MIN_SAMPLE_ROWS, DATA_VALUES_HASHED // per_row))
    return np.unique(np.linspace(0, n - 1, rows).round().astype(np.int64))


def _view_digest(X) -> str:
    h = _new("view")
    n = X.shape[0]
    per_row = int(np.prod(X.shape[1:])) if X.ndim > 1 else 1
    rows = sample_rows(n, per_row)
    _update_json(h, {"shape": list(X.shape), "rows": "all" if rows is None else rows.size})
    part = X if rows is None else X[rows]
    if is_image_source(part):   # lazy images: the sampled rows decoded (evaluation geometry)
        part = part.to_array()
    part = part.toarray() if sp.issparse(part) else np.asarray(part)
    _update_array(h, "values", np.asarray(part, dtype=np.float64))
    return h.hexdigest()[:DIGEST_HEX]


def _labels_digest(Y) -> str:
    Y = np.asarray(Y)
    h = _new("labels")
    _update_array(h, "labels", np.packbits(Y.reshape(Y.shape[0], -1) != 0, axis=1))
    _update_json(h, list(Y.shape))
    return h.hexdigest()[:DIGEST_HEX]


def training_data_fingerprint(views, labels) -> dict:
    """``{"scheme", "digest", "views", "labels", "shapes"}`` of validated training ``views``
    and checked multi-hot ``labels`` (one matrix for paired data, a list of one per modality for
    unpaired data). ``digest`` covers everything; the parts say what differs."""
    paired = not isinstance(labels, (list, tuple))
    views_d = [_view_digest(X) for X in views]
    labels_d = [_labels_digest(labels)] if paired else [_labels_digest(Y) for Y in labels]
    shapes = [list(X.shape) for X in views]
    h = _new(DATA_SCHEME)
    _update_json(h, [views_d, labels_d, shapes, paired])
    return {"scheme": DATA_SCHEME, "digest": h.hexdigest()[:DIGEST_HEX], "views": views_d,
            "labels": labels_d, "shapes": shapes, "paired": paired}


def check_same_training_data(stored: dict, views, labels, names, *, what: str) -> None:
    """ValueError naming what differs when ``views`` / ``labels`` (the dataset's train split, in
    the model's modality order; ``views`` None: compare the labels and sizes only, as for
    unpaired training, whose modalities were shuffled) are not the data of ``stored``."""
    if not isinstance(stored, dict) or stored.get("scheme") != DATA_SCHEME:
        raise ValueError(f"{what}: the model's training-data fingerprint is not readable "
                         f"({stored!r})")
    paired = stored.get("paired", True)
    if paired and isinstance(labels, (list, tuple)):
        labels = labels[0]
    sizes = ([int(L.shape[0]) for L in labels] if isinstance(labels, (list, tuple))
             else [int(labels.shape[0])] * len(names))
    got_n = [s[0] for s in stored["shapes"]]
    if got_n != sizes:
        raise ValueError(f"{what}: the model was fitted on {got_n} training items per modality "
                         f"but this dataset's train split has {sizes}: it was fitted on other "
                         f"data (use database='hashed', or the data the model was fitted on)")
    diffs = []
    if views is not None:
        for name, X, digest in zip(names, views, stored["views"]):
            if _view_digest(X) != digest:
                diffs.append(f"the {name!r} features")
    labels_d = ([_labels_digest(labels)] if not isinstance(labels, (list, tuple))
                else [_labels_digest(Y) for Y in labels])
    if labels_d != stored["labels"]:
        diffs.append("the labels")
    if diffs:
        raise ValueError(f"{what}: the model was fitted on other data than this dataset's "
                         f"train split ({' and '.join(diffs)} differ; training-data fingerprint "
                         f"{stored['digest']}): its learned codes are not this dataset's "
                         f"database. Use database='hashed', or the data the model was fitted on")


def check_same_model(expected: str | None, got: str | None, *, expected_what: str,
                     got_what: str) -> None:
    """ValueError naming both fingerprints when two codes' models differ (None: unknown, e.g.
    a file written before fingerprints, is not checked)."""
    if expected is None or got is None or expected == got:
        return
    raise ValueError(f"{got_what} come from another model (fingerprint {got}) than "
                     f"{expected_what} (fingerprint {expected}): codes of different models "
                     f"cannot be compared; encode both with the same model")
