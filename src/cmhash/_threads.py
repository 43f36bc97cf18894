"""Single-threaded BLAS for latency-bound linear algebra.

The shallow methods run many small dense operations per iteration: r x r Cholesky / SVD /
eigendecompositions and n x r x r products (r <= a few hundred). Their cost is dominated by
call latency, and a multi-threaded BLAS adds thread wake-up and synchronisation to every call:
on the project's 2-core machines OpenBLAS with 2 threads made a Wiki AMSH fit at 128 bits 2x
slower (6.1 s against 2.9 s), a 128 x 128 Cholesky ~15 ms instead of 0.2 ms. Operations above
``LATENCY_BOUND_FLOPS`` (large n, large q) keep the process's BLAS threads, where they can pay.

:func:`single_threaded_blas` limits the BLAS libraries loaded by NumPy/SciPy to one thread
inside a ``with`` block (threadpoolctl; ~20 us per entry) and restores them on exit;
:func:`single_threaded_blas_if_small` does so only for work of at most ``LATENCY_BOUND_FLOPS``.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager

#: work (flops of one call) up to which a single BLAS thread is used: n x r x r products at
#: Wiki size (2,173 x 128 x 128 = 3.6e7) are below it, n = 50,000 at 64 bits (2e8) above
LATENCY_BOUND_FLOPS = 1e8

_controller = None


def _get_controller():
    global _controller
    if _controller is None:
        import numpy  # noqa: F401  (load the BLAS libraries before scanning for them)
        import scipy.linalg  # noqa: F401
        from threadpoolctl import ThreadpoolController
        _controller = ThreadpoolController()
    return _controller


_local = threading.local()


@contextmanager
def single_threaded_blas():
    """Run the block with one BLAS thread (NumPy's and SciPy's BLAS), then restore.

    Re-entrant per thread: a block nested in another of the same thread costs a counter
    update instead of two threadpoolctl calls (~20 us each; the latent steps nest the tall
    products' :func:`leaf_map` in their own block). The limit is a process-wide OpenBLAS
    setting that only the main thread changes (OpenBLAS ignores the call from other threads:
    measured with threadpoolctl 3.8), so worker threads entering a block change nothing."""
    depth = getattr(_local, "depth", 0)
    if depth:
        _local.depth = depth + 1
        try:
            yield
        finally:
            _local.depth = depth
        return
    with _get_controller().limit(limits=1, user_api="blas"):
        _local.depth = 1
        try:
            yield
        finally:
            _local.depth = 0


def single_threaded(func):
    """Decorator: run ``func`` with one BLAS thread (:func:`single_threaded_blas`). For the
    thin products of the latent steps (``V^T V``, ``G^T V``, ``G K``: outputs of r x r or
    n x r with an inner dimension c <= a few dozen), which are memory-bound; two OpenBLAS
    threads made them 2-4x slower on the project's 2-core machine when other jobs ran
    (``G^T V`` at n = 184,577: 27 ms CPU with two threads, 7 ms with one)."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with single_threaded_blas():
            return func(*args, **kwargs)
    return wrapper


@contextmanager
def single_threaded_blas_if_small(flops: float):
    """:func:`single_threaded_blas` when ``flops <= LATENCY_BOUND_FLOPS``, else no change."""
    if flops > LATENCY_BOUND_FLOPS:
        yield
        return
    with single_threaded_blas():
        yield


def cpu_workers() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):   # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def parallel_map(func, items, *, workers=None) -> list:
    """``[func(x) for x in items]``, in order, on up to ``workers`` threads (default: the
    cores, :func:`cpu_workers`) with one BLAS thread each.

    For loops over independent row blocks whose work is single-threaded code that releases the
    GIL (scipy's sparse products, numpy's elementwise ufuncs) or small BLAS calls: the blocks
    run on all cores instead of one. The results are the same as the serial loop's (each item
    is computed by the same single-threaded code; callers combine the results in order).
    """
    items = list(items)
    workers = cpu_workers() if workers is None else int(workers)
    workers = min(workers, len(items))
    if workers <= 1:
        return [func(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor
    with single_threaded_blas(), ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(func, items))


_leaf_pool = None
_leaf_pool_lock = threading.Lock()


def _forget_leaf_pool_in_child() -> None:
    """A forked child has none of the parent's pool threads: start a new pool there."""
    global _leaf_pool, _leaf_pool_lock
    _leaf_pool, _leaf_pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_leaf_pool_in_child)


def leaf_map(func, items) -> list:
    """:func:`parallel_map` on a persistent pool of :func:`cpu_workers` threads, for *leaf*
    work only: ``func`` must not itself wait on this pool (a BLAS call on a row block, an
    elementwise pass). Saves the pool's start (~0.3 ms a call), which matters for the
    10-50 ms tall products of the latent steps (:func:`cmhash.solvers.tall_product`). Results
    are those of the serial loop, in order; with one core the loop runs in the caller."""
    items = list(items)
    workers = min(cpu_workers(), len(items))
    if workers <= 1:
        return [func(x) for x in items]
    global _leaf_pool
    if _leaf_pool is None:
        with _leaf_pool_lock:
            if _leaf_pool is None:
                from concurrent.futures import ThreadPoolExecutor
                _leaf_pool = ThreadPoolExecutor(max_workers=cpu_workers(),
                                                thread_name_prefix="cmhash-leaf")
    with single_threaded_blas():
        return list(_leaf_pool.map(func, items))
