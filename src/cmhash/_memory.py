"""How a fit gets its memory: no transparent-huge-page requests where they stall allocations.

NumPy asks the kernel for transparent huge pages (``madvise(MADV_HUGEPAGE)``) on every array
of 4 MiB or more. Where the kernel's THP defragmentation policy is to compact memory
synchronously for such requests (``/sys/kernel/mm/transparent_hugepage/defrag`` set to
``always``, ``madvise`` or ``defer+madvise``), the first touch of each new large array can wait
for the kernel to assemble 2 MiB pages: on the project's machines (``madvise``) a fresh
400 MB float32 array took 1.39 s to fill with huge pages requested against 0.15-0.17 s
without, and a fit allocates dozens of n x r and n x q arrays. :func:`ordinary_pages` turns
NumPy's request off for the duration of a fit (and of an ``encode``) (ordinary 4 KiB pages, faulted without
compaction) and restores NumPy's setting afterwards; the outermost of nested or concurrent
fits restores it.

Measured (``benchmarks/fit_speedup.py``-style fresh processes, nuswide-like, n = 100,000,
32 bits, 2 cores; three / two alternating runs each): BATCH 8.21-8.45 s with NumPy's huge-page
requests, 5.01-5.20 s without; ASFOH 13.77-14.53 s against 9.56-9.70 s; peak RSS the same
(+-4 MiB). The codes are the same (memory placement does not change arithmetic).

Where the policy does not compact synchronously (``defer``, ``never``), THP is off, or NumPy
lacks the switch (it is NumPy's ``_set_madvise_hugepage``, the runtime form of the documented
``NUMPY_MADVISE_HUGEPAGE`` environment variable), nothing changes. ``CMHASH_HUGEPAGES=keep``
in the environment keeps NumPy's setting.
"""
from __future__ import annotations

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
        yield
        return
    get, set_ = switch
    with _lock:
        if _depth == 0:
            _saved = bool(get())
            set_(False)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                set_(_saved)
