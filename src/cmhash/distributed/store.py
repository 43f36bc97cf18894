"""Packed codes of a chunked database, stored as zarr with their item ids.

Layout (a zarr group, one directory)::

    codes   (n, ceil(r / 8)) uint8, row chunks   packed codes (cmhash.codes.pack_codes order)
    ids     (n,) int64 or str                    item ids (default 0 .. n-1)
    attrs   format "cmhash-codes-zarr", version 1, n_bits, modality, task, model
            (the model's fingerprint when it has one), n

Encoding is a map over row blocks (:func:`encode_to_zarr`): each block is encoded and packed
where it is computed (on the Dask workers when a ``distributed.Client`` is active) and written
straight to the store, so neither the features nor the codes of the whole database are ever
in one process. The store is written under a temporary name and renamed when complete: a
failed or interrupted encode never leaves a truncated store under the final name.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..codes import n_bytes, pack_codes

__all__ = ["STORE_FORMAT", "as_row_blocks", "encode_to_zarr", "open_codes"]

STORE_FORMAT = "cmhash-codes-zarr"
DEFAULT_CHUNK_ROWS = 65_536


def _dask():
    try:
        import dask
        import dask.array as da
        import zarr  # noqa: F401
    except ModuleNotFoundError as exc:  # pragma: no cover - the [dask] extra is missing
        raise ImportError("chunked encoding needs Dask and zarr: pip install 'cmhash[dask]'") \
            from exc
    return dask, da


def as_row_blocks(X, chunk_rows: int = DEFAULT_CHUNK_ROWS):
    """``X`` as a dask array chunked by rows only (one chunk across the features).

    Accepts a dask array, a zarr array, an h5py dataset, a NumPy array or a SciPy sparse
    matrix (its row blocks become dense only when computed, one block at a time)."""
    dask, da = _dask()
    chunk_rows = int(chunk_rows)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if isinstance(X, da.Array):
        if X.ndim != 2:
            raise ValueError(f"features must be 2-D (n_samples, n_features), got shape {X.shape}")
        return X.rechunk({1: -1})
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        n, d = X.shape
        blocks = [da.from_delayed(dask.delayed(_dense_rows)(X, s, min(n, s + chunk_rows)),
                                  shape=(min(n, s + chunk_rows) - s, d), dtype=X.dtype)
                  for s in range(0, n, chunk_rows)]
        return da.concatenate(blocks, axis=0) if blocks else da.zeros((0, d), chunks=(1, d))
    if not hasattr(X, "shape") or len(X.shape) != 2:
        raise ValueError(f"features must be a 2-D array (n_samples, n_features), got "
                         f"{type(X).__name__} of shape {getattr(X, 'shape', None)}")
    return da.from_array(X, chunks=(chunk_rows, X.shape[1]))


def _dense_rows(X, start, stop):
    return X[start:stop].toarray()


def _encode_block(block, hasher, modality, task):
    return pack_codes(hasher.encode(block, modality, task=task))


def encode_to_zarr(hasher, X, modality, path, *, ids=None, task=None,
                   chunk_rows: int = DEFAULT_CHUNK_ROWS, overwrite: bool = False) -> Path:
    """Encode ``X`` (modality ``modality``) with the fitted ``hasher`` into a zarr store.

    The work runs on the active ``distributed.Client`` when there is one (else Dask's local
    scheduler). ``ids``: one id per row (int or str; default ``0 .. n-1``). Returns the path.
    """
    dask, da = _dask()
    import zarr

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True to replace it")
    m = hasher.modality_index(modality)
    Xd = as_row_blocks(X, chunk_rows)
    n = int(Xd.shape[0])
    r = hasher._code_length(m, task) if task is not None else hasher.n_bits
    w = n_bytes(r)
    if ids is not None:
        ids = np.asarray(ids)
        if ids.shape != (n,):
            raise ValueError(f"ids must have one entry per row ({n}), got shape {ids.shape}")
        if ids.dtype.kind not in "iuUO":
            raise ValueError(f"ids must be integers or strings, got dtype {ids.dtype}")
        if np.unique(ids).size != n:
            raise ValueError("ids must be unique")
    codes = Xd.map_blocks(_encode_block, hasher, modality, task, dtype=np.uint8,
                          chunks=(Xd.chunks[0], (w,)))
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        da.to_zarr(codes, str(tmp), component="codes", overwrite=True)
        group = zarr.open_group(str(tmp), mode="a")
        if ids is None:
            group.create_array("ids", data=np.arange(n, dtype=np.int64))
        elif ids.dtype.kind in "iu":
            group.create_array("ids", data=ids.astype(np.int64))
        else:
            strings = ids.astype(str)
            arr = group.create_array("ids", shape=strings.shape, dtype=str)
            arr[...] = strings
        group.attrs.update({"format": STORE_FORMAT, "version": 1, "n_bits": int(r), "n": n,
                            "modality": str(modality),
                            "task": list(task) if task is not None else None,
                            "model": getattr(hasher, "fingerprint", None)})
        if path.exists():                       # overwrite: swap in, then drop the old store
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def open_codes(path):
    """``(codes, ids, attrs)`` of a store written by :func:`encode_to_zarr`: ``codes`` a dask
    array of packed codes (row-chunked as stored), ``ids`` a NumPy array, ``attrs`` a dict;
    every field checked (a ValueError naming the problem)."""
    _, da = _dask()
    import zarr

    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{str(path)!r} is not a codes store (a zarr directory written by "
                         f"cmhash encode --zarr)")
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise ValueError(f"{str(path)!r} is not a readable zarr store: {exc}") from None
    attrs = dict(group.attrs)
    if attrs.get("format") != STORE_FORMAT:
        raise ValueError(f"{str(path)!r} is not a cmhash codes store (format "
                         f"{attrs.get('format')!r}, expected {STORE_FORMAT!r})")
    if "codes" not in group or "ids" not in group:
        raise ValueError(f"{str(path)!r}: the store lacks its 'codes' or 'ids' array")
    z = group["codes"]
    r = attrs.get("n_bits")
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"{str(path)!r}: n_bits {r!r} is not a positive integer")
    if z.dtype != np.uint8 or len(z.shape) != 2 or z.shape[1] != n_bytes(r):
        raise ValueError(f"{str(path)!r}: codes have dtype {z.dtype} and shape {z.shape}; "
                         f"{r}-bit packed codes are uint8 of width {n_bytes(r)}")
    ids = np.asarray(group["ids"][...])
    if ids.shape != (z.shape[0],) or attrs.get("n") != z.shape[0]:
        raise ValueError(f"{str(path)!r}: {ids.shape[0]} ids for {z.shape[0]} codes "
                         f"(header n = {attrs.get('n')!r})")
    return da.from_zarr(z), ids, attrs
