"""Same seed -> same codes, for every shallow method (threaded kernel pass, blocked products)."""
import numpy as np
import pytest

from cmhash.base import make_hasher
from conftest import make_structured


@pytest.mark.parametrize("method", ["batch", "ascmh", "asfoh", "amsh"])
def test_same_seed_same_codes_and_hash_functions(method, monkeypatch):
    import cmhash.base as base
    import cmhash.kernel as kernel

    class Chunked(kernel.RBFAnchorFeatures):
        """Several kernel chunks (on parallel threads), several cache blocks per chunk."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, chunk_size=128, **kwargs)

    monkeypatch.setattr(base, "RBFAnchorFeatures", Chunked)
    monkeypatch.setattr(kernel, "CACHE_BLOCK_ELEMENTS", 40 * 50)
    X, T, Y = make_structured(900, seed=3)
    fits = [make_hasher(method, n_bits=16, n_anchors=40, random_state=7).fit(X, T, Y)
            for _ in range(2)]
    a, b = fits
    for m, Q in enumerate((X[:50], T[:50])):
        np.testing.assert_array_equal(a.learned_codes(m), b.learned_codes(m))
        np.testing.assert_array_equal(a.projections_[m], b.projections_[m])
        np.testing.assert_array_equal(a.encode(Q, m), b.encode(Q, m))
    c = make_hasher(method, n_bits=16, n_anchors=40, random_state=8).fit(X, T, Y)
    assert not np.array_equal(a.learned_codes(0), c.learned_codes(0))
