"""The command line's Dask options: ``--cluster local[:N]`` / ``--scheduler ADDRESS`` /
``--worker-memory`` / ``--kernel-features`` for ``fit``, ``evaluate``, ``scale`` (the fit on
Dask), ``encode`` (chunked codes stores, ``--out DB.zarr``) and ``search`` (sharded over them,
``--database DB.zarr``). See :mod:`cmhash.distributed` and docs/scale.md."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np

__all__ = ["add_cluster_options", "cluster_client", "cluster_settings", "dask_fit",
           "uses_cluster", "is_zarr_path",
           "encode_to_store", "store_index"]

log = logging.getLogger("cmhash")


def add_cluster_options(p) -> None:
    g = p.add_argument_group("Dask (pip install 'cmhash[dask]')")
    g.add_argument("--cluster", metavar="local[:N]",
                   help="start a local Dask cluster with N worker processes (default: one per "
                        "core) for this command")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="join a running Dask cluster (e.g. tcp://host:8786)")
    g.add_argument("--worker-memory", metavar="SIZE",
                   help="memory limit of each local worker, e.g. 4GiB (with --cluster)")
    g.add_argument("--kernel-features", choices=["auto", "persist", "recompute"],
                   default="auto",
                   help="a Dask fit's kernel features: kept on the workers, recomputed in each "
                        "pass, or chosen from the workers' memory limit (default auto)")


def uses_cluster(args) -> bool:
    """Whether the command runs on Dask (``--cluster`` or ``--scheduler`` given)."""
    return bool(getattr(args, "cluster", None) or getattr(args, "scheduler", None))


def cluster_settings(args) -> dict:
    """The Dask options of ``args`` as keyword arguments (:func:`cmhash.bench.scale_table`)."""
    return {k: getattr(args, k, None) for k in ("cluster", "scheduler", "worker_memory",
                                                  "kernel_features")}


def dask_fit(client, kernel_features: str | None = "auto"):
    """A ``fit(hasher, views, labels, names, paired)`` for :func:`cmhash.protocol.run_evaluation`
    that fits on the cluster of ``client`` and gathers the codes (evaluated in this process)."""
    from .distributed.fit import fit_on_dask

    persist = {"persist": True, "recompute": False}.get(kernel_features or "auto")

    def fit(hasher, views, labels, names, paired=True):
        return fit_on_dask(hasher, views, labels, names, client=client, materialize=True,
                           paired=paired, persist_features=persist)
    return fit


@contextlib.contextmanager
def cluster_client(args):
    """The ``distributed.Client`` the options ask for (None without them); closed on exit."""
    from .distributed.cluster import make_client

    client = make_client(getattr(args, "cluster", None), getattr(args, "scheduler", None),
                         getattr(args, "worker_memory", None))
    try:                            # (make_client logs the workers and the dashboard link)
        yield client
    finally:
        if client is not None:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None and getattr(args, "cluster", None):
                cluster.close()


def is_zarr_path(path) -> bool:
    return str(path).rstrip("/").endswith(".zarr")


def encode_to_store(args, hasher, X, ids, modality, task) -> None:
    """``cmhash encode --out DB.zarr``: packed codes + ids in a zarr store, encoded block by
    block (on the cluster's workers with --cluster / --scheduler)."""
    from .distributed.store import encode_to_zarr

    with cluster_client(args):
        path = encode_to_zarr(hasher, X, modality, args.out, ids=ids, task=task,
                              chunk_rows=args.chunk_rows)
    log.info(f"encoded {X.shape[0]} {modality} items into {path} (zarr, chunks of "
             f"{args.chunk_rows} rows)")


def store_index(args, stack: contextlib.ExitStack):
    """The database of ``search --database DB.zarr``: a ShardedHammingIndex over the cluster's
    workers with --cluster / --scheduler, else one in-process HammingIndex over the store."""
    from .distributed.store import open_codes
    from .index import HammingIndex

    client = stack.enter_context(cluster_client(args))
    if client is not None:
        from .distributed.search import ShardedHammingIndex
        index = ShardedHammingIndex(Path(args.database), client=client)
        return index, index.n_bits, None
    codes, ids, attrs = open_codes(args.database)
    index = HammingIndex(attrs["n_bits"], backend=args.backend or "auto",
                         model_fingerprint=attrs.get("model"))
    index.add(np.asarray(codes.compute()), packed=True)
    return index, attrs["n_bits"], ids
