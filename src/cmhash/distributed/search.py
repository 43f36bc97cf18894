"""A sharded Hamming index on a Dask cluster.

The database's packed codes are cut into contiguous row ranges, one per worker; each worker
builds and keeps a :class:`cmhash.HammingIndex` over its range (NumPy or faiss backend, with
faiss's multi-index hashing for small-radius search where it pays, exactly as in-process).
A query batch is broadcast to every worker, each shard returns its own top-k (or radius
results) with global positions, and the shards' results are merged by (distance, position).
Because every shard orders equal distances by position and the shards are contiguous ranges,
the merge gives exactly the results of one HammingIndex over all codes, ties included.
"""
from __future__ import annotations

import numpy as np

from ..codes import n_bytes, pack_codes
from ..index import HammingIndex

__all__ = ["ShardedHammingIndex"]


def _build_shard(packed, n_bits, backend):
    index = HammingIndex(n_bits, backend=backend)
    index.add(np.ascontiguousarray(packed), packed=True)
    return index


def _search_shard(index, queries, k, offset):
    D, I = index.search(queries, k, packed=True)
    return D, I + offset


def _range_shard(index, queries, radius, offset):
    lims, D, I = index.range_search(queries, radius, packed=True)
    return lims, D, I + offset


def _shard_rss():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class ShardedHammingIndex:
    """Exact Hamming search over codes spread across the workers of a Dask cluster.

    Parameters
    ----------
    codes : packed codes: a dask array (n, ceil(r/8)) uint8, a NumPy array, or the path of a
        store written by :func:`cmhash.distributed.encode_to_zarr` (its ids are used).
    n_bits : int (taken from the store when ``codes`` is a path).
    ids : optional (n,) item ids returned by the searches (default: positions 0 .. n-1).
    client : a ``distributed.Client`` (default: the current one).
    n_shards : shards (default: one per worker); shard i lives on worker i mod n_workers.
    backend : the shards' HammingIndex backend ("auto", "numpy", "faiss").
    """

    def __init__(self, codes, n_bits=None, *, ids=None, client=None, n_shards=None,
                 backend: str = "auto"):
        import dask.array as da
        from distributed import default_client

        if isinstance(codes, (str, bytes)) or hasattr(codes, "__fspath__"):
            from .store import open_codes
            codes, store_ids, attrs = open_codes(codes)
            if n_bits is not None and int(n_bits) != attrs["n_bits"]:
                raise ValueError(f"n_bits={n_bits} but the store holds {attrs['n_bits']}-bit "
                                 f"codes")
            n_bits = attrs["n_bits"]
            ids = store_ids if ids is None else ids
            self.model = attrs.get("model")
        else:
            self.model = None
        if n_bits is None:
            raise ValueError("n_bits is required when codes are an array")
        self.n_bits = int(n_bits)
        w = n_bytes(self.n_bits)
        if len(codes.shape) != 2 or codes.shape[1] != w or np.dtype(codes.dtype) != np.uint8:
            raise ValueError(f"codes must be packed {self.n_bits}-bit codes: uint8 of shape "
                             f"(n, {w}), got {np.dtype(codes.dtype)} {tuple(codes.shape)}")
        self.client = client or default_client()
        self.ntotal = int(codes.shape[0])
        if ids is not None:
            ids = np.asarray(ids)
            if ids.shape != (self.ntotal,):
                raise ValueError(f"ids must have one entry per code ({self.ntotal}), got "
                                 f"shape {ids.shape}")
        self.ids = ids
        workers = sorted(self.client.scheduler_info()["workers"])
        if not workers:
            raise RuntimeError("the Dask cluster has no workers")
        n_shards = len(workers) if n_shards is None else int(n_shards)
        if n_shards < 1:
            raise ValueError(f"n_shards must be >= 1, got {n_shards}")
        bounds = np.linspace(0, self.ntotal, n_shards + 1).astype(np.int64)
        self.shards = []
        for i in range(n_shards):
            s, e = int(bounds[i]), int(bounds[i + 1])
            where = [workers[i % len(workers)]]
            if isinstance(codes, da.Array):
                part = self.client.compute(codes[s:e], workers=where)
            else:
                part = self.client.scatter(np.ascontiguousarray(codes[s:e]), workers=where)
            shard = self.client.submit(_build_shard, part, self.n_bits, backend,
                                       workers=where, allow_other_workers=False, pure=False)
            self.shards.append((shard, s, where))
        self.client.gather([f for f, _, _ in self.shards])       # built (errors surface here)

    def __len__(self) -> int:
        return self.ntotal

    @property
    def model_fingerprint(self):
        """The fingerprint of the model that encoded the store (None for arrays)."""
        return self.model

    def _queries(self, query_codes, packed: bool):
        q = np.asarray(query_codes)
        if q.ndim == 1:
            q = q[None, :]
        if not packed:
            q = pack_codes(q)
        if q.dtype != np.uint8 or q.ndim != 2 or q.shape[1] != n_bytes(self.n_bits):
            raise ValueError(f"queries must be {self.n_bits}-bit codes, got shape "
                             f"{np.asarray(query_codes).shape}")
        return np.ascontiguousarray(q)

    def _map(self, fn, q, arg):
        qf = self.client.scatter(q, broadcast=True, hash=False)   # a fresh key per call
        futures = [self.client.submit(fn, shard, qf, arg, offset, workers=where, pure=False)
                   for shard, offset, where in self.shards]
        return self.client.gather(futures)

    def _user_ids(self, positions):
        return positions if self.ids is None else self.ids[positions]

    def search(self, query_codes, k, *, packed: bool = False):
        """Top-``k`` of each query: ``(distances, ids)``, identical to one
        :class:`HammingIndex` over all codes (equal distances: smaller position first)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        q = self._queries(query_codes, packed)
        k = min(int(k), self.ntotal)
        parts = self._map(_search_shard, q, k)
        D = np.concatenate([p[0] for p in parts], axis=1)
        I = np.concatenate([p[1] for p in parts], axis=1)
        order = np.lexsort((I, D), axis=-1)[:, :k]
        D = np.take_along_axis(D, order, axis=1)
        I = np.take_along_axis(I, order, axis=1)
        return D, self._user_ids(I)

    def range_search(self, query_codes, radius, *, packed: bool = False):
        """All codes within ``radius``: ``(lims, distances, ids)`` as
        :meth:`HammingIndex.range_search`, sorted by (distance, position) per query."""
        q = self._queries(query_codes, packed)
        m = q.shape[0]
        parts = self._map(_range_shard, q, radius)
        qid = np.concatenate([np.repeat(np.arange(m), np.diff(lims)) for lims, _, _ in parts])
        D = np.concatenate([p[1] for p in parts])
        I = np.concatenate([p[2] for p in parts])
        order = np.lexsort((I, D, qid))
        counts = np.bincount(qid, minlength=m)
        lims = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(counts, out=lims[1:])
        return lims, D[order].astype(np.int32, copy=False), self._user_ids(I[order])

    def worker_memory(self) -> dict:
        """Peak resident memory (bytes) of each worker process."""
        return self.client.run(_shard_rss)
