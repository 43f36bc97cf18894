"""A ``distributed.Client`` from the command line's ``--cluster`` / ``--scheduler``.

``--cluster local`` starts a LocalCluster with one worker per core, ``local:N`` with N workers
(one thread each), ``--worker-memory 4GiB`` sets each worker's memory limit;
``--scheduler ADDRESS`` joins an existing cluster (started by ``dask scheduler`` /
``dask worker``, dask-jobqueue on SLURM, dask-kubernetes, ...). Without either nothing changes:
cmhash runs in-process.
"""
from __future__ import annotations

import logging
import re

__all__ = ["parse_cluster", "make_client"]

logger = logging.getLogger(__name__)


def _import_distributed():
    try:
        import distributed
    except ModuleNotFoundError as exc:  # pragma: no cover - the [dask] extra is missing
        raise ImportError("--cluster / --scheduler need Dask: pip install 'cmhash[dask]'") from exc
    return distributed


def parse_cluster(spec: str) -> int | None:
    """``"local"`` -> None (one worker per core), ``"local:N"`` -> N; anything else is a
    ValueError naming the accepted forms."""
    if not isinstance(spec, str):
        raise ValueError(f"--cluster must be 'local' or 'local:N_WORKERS', got {spec!r}")
    m = re.fullmatch(r"local(?::(\d+))?", spec.strip())
    if not m:
        raise ValueError(f"--cluster must be 'local' or 'local:N_WORKERS' (to join a running "
                         f"cluster use --scheduler ADDRESS), got {spec!r}")
    if m.group(1) is None:
        return None
    n = int(m.group(1))
    if n < 1:
        raise ValueError(f"--cluster local:N needs N >= 1 workers, got {n}")
    return n


def make_client(cluster: str | None = None, scheduler: str | None = None,
                worker_memory: str | None = None, *, dashboard: bool = True):
    """A ``distributed.Client``: a new LocalCluster (``cluster``) or an existing scheduler
    (``scheduler``); None when neither is given. The dashboard link is logged; a LocalCluster
    started with ``dashboard=False`` serves no dashboard (and takes no fixed port)."""
    if cluster and scheduler:
        raise ValueError("give either --cluster (start a local cluster) or --scheduler (join "
                         "one), not both")
    if worker_memory is not None and not cluster:
        raise ValueError("--worker-memory applies to a cluster started with --cluster")
    if not cluster and not scheduler:
        return None
    distributed = _import_distributed()
    if scheduler:
        client = distributed.Client(scheduler)
    else:
        n = parse_cluster(cluster)
        # the scheduler always serves HTTP (health and metrics routes; default port 8787):
        # on a free port, with the Bokeh dashboard only when asked for
        kwargs = {"threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
                  "dashboard_address": "127.0.0.1:0",
                  "scheduler_kwargs": {"dashboard": bool(dashboard)}}
        if n is not None:
            kwargs["n_workers"] = n
        if worker_memory is not None:
            kwargs["memory_limit"] = worker_memory
        local = distributed.LocalCluster(**kwargs)
        client = distributed.Client(local)
    link = getattr(client, "dashboard_link", None) if dashboard or scheduler else None
    logger.info("Dask cluster: %d workers%s", len(client.scheduler_info()["workers"]),
                f", dashboard {link}" if link else "")
    client.cmhash_dashboard_logged = True      # the Dask fits do not log it again
    return client
