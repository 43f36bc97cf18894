"""Phase timing of the shallow fits: off by default, a shared no-op when off.

The methods wrap the phases of a fit (kernel features, products with the n x q features, the
latent step, small solves, objective, hash functions) in ``with phase("name"):``. Normally
nothing records them and :func:`phase` returns one shared ``nullcontext`` (a global lookup and
a compare, ~0.1 us per call). Inside ``with record_phases() as times:`` every phase adds its
wall time to ``times[name]`` (seconds) and ``times.calls[name]``; nested phases are exclusive
(entering an inner phase pauses the outer one), so the phase times sum to the timed wall time.
``benchmarks/roofline.py`` uses it to put measured seconds beside counted floating-point work.

Threads (AMSH's ``n_jobs``) each keep their own stack; their times add up, so with parallel
phases the total exceeds the wall time.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager, nullcontext

_OFF = nullcontext()
_recorder = None


class PhaseTimes(dict):
    """``{phase name: seconds}`` plus ``calls`` (``{phase name: number of entries}``)."""

    def __init__(self, clock=time.perf_counter):
        super().__init__()
        self.clock = clock
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def _stack(self) -> list:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def _add(self, name: str, seconds: float, entered: bool) -> None:
        with self._lock:
            self[name] = self.get(name, 0.0) + seconds
            if entered:
                self.calls[name] = self.calls.get(name, 0) + 1

    @contextmanager
    def _phase(self, name: str):
        stack = self._stack()
        now = self.clock()
        if stack:                                   # pause the enclosing phase
            outer, since = stack[-1]
            self._add(outer, now - since, entered=False)
        stack.append((name, now))
        try:
            yield
        finally:
            now = self.clock()
            _, since = stack.pop()
            self._add(name, now - since, entered=True)
            if stack:                               # resume the enclosing phase
                stack[-1] = (stack[-1][0], now)


def phase(name: str):
    """Context manager timing the enclosed block as phase ``name`` while recording is on
    (:func:`record_phases`); otherwise a shared no-op."""
    rec = _recorder
    return _OFF if rec is None else rec._phase(name)


@contextmanager
def record_phases(clock=None):
    """Record every :func:`phase` entered inside the block; yields the :class:`PhaseTimes`.
    ``clock``: the time source (default ``time.perf_counter``, wall time; e.g.
    ``time.process_time`` for CPU time of a single-threaded run on a loaded machine)."""
    global _recorder
    if _recorder is not None:
        raise RuntimeError("record_phases() is already active (phases cannot be recorded twice)")
    times = PhaseTimes(time.perf_counter if clock is None else clock)
    _recorder = times
    try:
        yield times
    finally:
        _recorder = None


def timed(name: str):
    """Decorator: the function's calls are phase ``name`` (see :func:`phase`)."""
    import functools

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with phase(name):
                return func(*args, **kwargs)
        return wrapper
    return decorate
