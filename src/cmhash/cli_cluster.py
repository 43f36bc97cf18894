"""The command line's Dask options: ``--cluster local[:N]`` / ``--scheduler ADDRESS`` /
``--worker-memory``, chunked codes stores (``encode --out DB.zarr``) and sharded search over
them (``search --database DB.zarr``). See :mod:`cmhash.distributed`."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np

__all__ = ["add_cluster_options", "cluster_client", "is_zarr_path", "encode_to_store",
           "store_index"]

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


@contextlib.contextmanager
def cluster_client(args):
    """The ``distributed.Client`` the options ask for (None without them); closed on exit."""
    from .distributed.cluster import make_client

    client = make_client(getattr(args, "cluster", None), getattr(args, "scheduler", None),
                         getattr(args, "worker_memory", None))
    try:
        if client is not None:
            link = getattr(client, "dashboard_link", None)
            log.info(f"Dask: {len(client.scheduler_info()['workers'])} workers"
                     + (f", dashboard {link}" if link else ""))
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
