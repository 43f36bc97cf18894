"""Single-threaded BLAS for latency-bound linear algebra.

The shallow methods run many small dense operations per iteration: r x r Cholesky / SVD /
eigendecompositions and n x r x r products (r <= a few hundred). Their cost is dominated by
call latency, and a multi-threaded BLAS adds thread wake-up and synchronisation to every call:
on the project's 2-core machines OpenBLAS with 2 threads made a Wiki AMSH fit at 128 bits 2x
slower (6.1 s against 2.9 s), a 128 x 128 Cholesky ~15 ms instead of 0.2 ms. The large
products (n x q kernel features, q x q ridge solves) keep the process's BLAS threads.

:func:`single_threaded_blas` limits the BLAS libraries loaded by NumPy/SciPy to one thread
inside a ``with`` block (threadpoolctl; ~20 us per entry) and restores them on exit.
"""
from __future__ import annotations

from contextlib import contextmanager

_controller = None


def _get_controller():
    global _controller
    if _controller is None:
        import numpy  # noqa: F401  (load the BLAS libraries before scanning for them)
        import scipy.linalg  # noqa: F401
        from threadpoolctl import ThreadpoolController
        _controller = ThreadpoolController()
    return _controller


@contextmanager
def single_threaded_blas():
    """Run the block with one BLAS thread (NumPy's and SciPy's BLAS), then restore."""
    with _get_controller().limit(limits=1, user_api="blas"):
        yield
