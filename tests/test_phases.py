"""Phase timing (cmhash._phases): off by default and free, exclusive nesting when recording."""
import time

import numpy as np
import pytest

from cmhash import _phases
from cmhash._phases import phase, record_phases, timed


def test_off_by_default_is_one_shared_no_op():
    assert _phases._recorder is None
    assert phase("a") is phase("b")                      # the same nullcontext, no allocation
    with phase("a"):
        pass
    t = time.perf_counter()
    for _ in range(10000):
        with phase("x"):
            pass
    assert (time.perf_counter() - t) / 10000 < 20e-6     # ~0.2 us; generous for loaded machines


def test_nested_phases_are_exclusive_and_sum_to_the_wall_time():
    """With a fake clock: an inner phase pauses the outer one, so each second is counted once."""
    clock = [0.0]

    def tick(seconds):
        clock[0] += seconds

    @timed("inner")
    def inner():
        tick(2.0)

    with record_phases(clock=lambda: clock[0]) as times:
        with phase("outer"):
            tick(1.0)
            inner()
            tick(0.5)
            inner()
        tick(7.0)                                        # outside every phase: not counted
    assert times == {"outer": 1.5, "inner": 4.0}
    assert times.calls == {"outer": 1, "inner": 2}
    assert _phases._recorder is None                     # recording ends with the block
    with pytest.raises(RuntimeError, match="already active"):
        with record_phases():
            with record_phases():
                pass


@pytest.mark.parametrize("method", ["batch", "ascmh", "asfoh", "amsh"])
def test_a_fit_records_its_phases(method):
    """Every shallow fit marks its kernel features, products, Gram / hash functions and latent
    steps; the phase names are those benchmarks/roofline.py has FLOP formulas for."""
    from cmhash.base import make_hasher
    from conftest import make_structured
    X, T, Y = make_structured(300)
    with record_phases() as times:
        h = make_hasher(method, n_bits=8, n_anchors=30, random_state=0).fit(X, T, Y)
    assert {"kernel", "products", "gram", "latent", "small", "objective"} <= set(times)
    assert set(times) <= {"kernel", "products", "gram", "latent", "small", "objective"}
    assert 0 < sum(times.values()) <= h.train_seconds_ * 1.01 + 1e-3
