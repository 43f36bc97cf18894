"""Out-of-core and distributed work on Dask (``pip install cmhash[dask]``).

* :mod:`.cluster` -- a ``distributed.Client`` from ``--cluster local[:N]`` / ``--scheduler``.
* :mod:`.store` -- encode a chunked database into packed codes stored as zarr, with item ids.
* :mod:`.search` -- a sharded Hamming index: one :class:`cmhash.HammingIndex` shard per worker,
  queries broadcast, per-shard results merged with the single-index tie rule.
* :mod:`.fit` -- fitting BATCH, ASFOH, ASCMH (:mod:`.fit_ascmh`) and AMSH (:mod:`.fit_amsh`)
  out-of-core: kernel features and the n x r latents on the workers, the small matrices by
  tree reductions, all from the shared pieces of :mod:`.blocks` (``fit_batch``, ``fit_asfoh``,
  ``fit_ascmh``, ``fit_amsh``, ``fit_on_dask``; docs/scale.md).

Importing :mod:`cmhash` never imports dask; this package imports it on use.
"""
from __future__ import annotations

__all__ = ["make_client", "parse_cluster", "encode_to_zarr", "open_codes",
           "ShardedHammingIndex", "fit_batch", "fit_asfoh", "fit_ascmh", "fit_amsh",
           "fit_on_dask"]


def __getattr__(name):
    if name in ("make_client", "parse_cluster"):
        from . import cluster
        return getattr(cluster, name)
    if name in ("encode_to_zarr", "open_codes"):
        from . import store
        return getattr(store, name)
    if name == "ShardedHammingIndex":
        from .search import ShardedHammingIndex
        return ShardedHammingIndex
    if name in ("fit_batch", "fit_asfoh", "fit_ascmh", "fit_amsh", "fit_on_dask"):
        from . import fit
        return getattr(fit, name)
    raise AttributeError(name)
