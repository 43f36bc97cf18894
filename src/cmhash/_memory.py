"""How a fit gets its memory: freed memory reused, no huge-page requests that stall.

A fit allocates and frees dozens of n x r and n x q arrays. On the project's virtual machines
new memory is expensive, in two ways that :func:`ordinary_pages` (around every fit and
``encode`` of :mod:`cmhash.base`) avoids; the outermost of nested or concurrent calls sets and
restores the process-wide settings.

1. **Freed memory goes back to the kernel.** glibc serves an array above its mmap threshold
   (at most 32 MiB) with fresh pages and unmaps them on free, and trims freed heap memory
   above its trim threshold, so the next array of that size page-faults again (zeroed pages
   at ~5 GB/s here against ~23 GB/s for a copy into memory the process has). Inside the block
   every array comes from the heap (``M_MMAP_MAX = 0``) and nothing is trimmed
   (``M_TRIM_THRESHOLD`` at its maximum), so freed arrays serve the next ones; on exit the
   thresholds become the ones glibc's dynamic adjustment reaches for large arrays (mmap above
   32 MiB, trim above 64 MiB; any ``mallopt`` ends the dynamic adjustment) and
   ``malloc_trim(0)`` returns the free heap memory, so the resident memory after a fit is what
   the process holds, not its peak. ``CMHASH_MALLOC_REUSE=0`` turns this part off; not glibc:
   nothing happens.
2. **Huge-page requests that stall.** NumPy asks for transparent huge pages
   (``madvise(MADV_HUGEPAGE)``) on every array of 4 MiB or more. Where the kernel compacts
   memory synchronously for such requests (``/sys/kernel/mm/transparent_hugepage/defrag``:
   ``always``, ``madvise`` -- this machine -- or ``defer+madvise``), a first touch can wait for
   2 MiB pages to be assembled: a fresh 400 MB float32 array took 1.39 s to fill with the
   request, 0.15 s without. Inside the block NumPy's request is off (its
   ``_set_madvise_hugepage``, the runtime form of the documented ``NUMPY_MADVISE_HUGEPAGE``)
   and restored after. ``CMHASH_HUGEPAGES=keep`` keeps NumPy's setting.

Measured (nuswide-like, 2 cores; benchmarks/roofline.py and fresh-process fits): huge pages
off, BATCH 32 bits at n = 100,000 in a fresh process 8.21-8.45 -> 5.01-5.20 s, ASFOH
13.77-14.53 -> 9.56-9.70 s; freed memory reused too, fits in a process that fitted before
(``--memory cold``, n = 184,577) BATCH 32 / 64 bits 12.69 / 17.84 -> 9.64 / 13.06 s, ASFOH
25.55 / 36.77 -> 20.76 / 29.42 s (the latent steps' temporaries no longer fault), peak RSS
of a fresh-process BATCH fit 997 -> 1,007 MiB (n = 100,000). Codes are the same: memory
placement does not change arithmetic.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import threading
from contextlib import contextmanager

THP_DEFRAG = "/sys/kernel/mm/transparent_hugepage/defrag"
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
#: THP defrag policies under which a madvised region's page fault may compact synchronously
COMPACTING_POLICIES = ("always", "madvise", "defer+madvise")

_lock = threading.Lock()
_depth = 0
_saved = None
_libc = None
#: glibc mallopt parameters, and the values its dynamic threshold adjustment reaches (64-bit)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
DEFAULT_MMAP_MAX = 65536
DYNAMIC_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024


def _glibc():
    """The C library when it is glibc (``mallopt``, ``malloc_trim``), else None."""
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            lib.gnu_get_libc_version                   # glibc only
            lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            lib.malloc_trim.argtypes = [ctypes.c_size_t]
            _libc = lib
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def _keep_freed_memory(libc) -> None:
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)


def _release_freed_memory(libc) -> None:
    libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
    libc.mallopt(M_MMAP_THRESHOLD, DYNAMIC_MMAP_THRESHOLD_MAX)
    libc.mallopt(M_TRIM_THRESHOLD, 2 * DYNAMIC_MMAP_THRESHOLD_MAX)
    libc.malloc_trim(0)


def _selected(path: str):
    """The bracketed (selected) value of a sysfs THP setting, or None."""
    try:
        with open(path) as fh:
            match = re.search(r"\[([^\]]+)\]", fh.read())
    except OSError:
        return None
    return match.group(1) if match else None


def huge_page_requests_stall() -> bool:
    """True when THP is on for madvised regions and their faults compact synchronously."""
    return (_selected(THP_ENABLED) in ("always", "madvise")
            and _selected(THP_DEFRAG) in COMPACTING_POLICIES)


def _numpy_switch():
    """NumPy's (getter, setter) of its huge-page requests, or None."""
    import numpy as np
    for module in ("_core", "core"):
        multiarray = getattr(getattr(np, module, None), "multiarray", None)
        get = getattr(multiarray, "_get_madvise_hugepage", None)
        set_ = getattr(multiarray, "_set_madvise_hugepage", None)
        if get is not None and set_ is not None:
            return get, set_
    return None


@contextmanager
def ordinary_pages():
    """Run the block (a fit, an encoding) without NumPy's huge-page requests where they
    stall (module docstring)."""
    global _depth, _saved
    switch = _numpy_switch()
    if (switch is None or os.environ.get("CMHASH_HUGEPAGES", "") == "keep"
            or not huge_page_requests_stall()):
        switch = None
    libc = _glibc() if os.environ.get("CMHASH_MALLOC_REUSE", "1") != "0" else None
    with _lock:
        if _depth == 0:
            if switch is not None:
                _saved = bool(switch[0]())
                switch[1](False)
            if libc is not None:
                _keep_freed_memory(libc)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                if switch is not None:
                    switch[1](_saved)
                if libc is not None:
                    _release_freed_memory(libc)
