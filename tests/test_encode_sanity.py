"""encode warns when its inputs are far outside the training distribution (issue 16, item 5):
queries whose kernel features underflow, or many distinct queries that all get one code, were
encoded silently (queries scaled x1e10 all got one code)."""
import warnings

import numpy as np
import pytest

from cmhash import OutOfDistributionWarning, base
from cmhash.base import CrossModalHasher
from cmhash.kernel import RBFAnchorFeatures
from cmhash.methods.batch import BATCH
from conftest import make_structured


@pytest.fixture(scope="module")
def fitted():
    X, T, Y = make_structured(400, seed=3)
    return BATCH(16, n_anchors=(80, 80), random_state=0).fit(X, T, Y), X, T


def _ood_warnings(func, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = func(*args, **kwargs)
    return out, [str(w.message) for w in caught if w.category is OutOfDistributionWarning]


def test_in_distribution_queries_are_silent(fitted):
    h, X, T = fitted
    for Q, mod in ((X, "image"), (T, "text"), (X[:3] * 1.5, "image")):
        _, caught = _ood_warnings(h.encode, Q, mod)
        assert caught == []


def test_scaled_queries_warn_once_with_the_fraction(fitted, monkeypatch):
    h, X, _ = fitted
    Q = X[:100].copy()
    codes, caught = _ood_warnings(h.encode, Q * 1e10, "image")
    assert len(np.unique(codes, axis=0)) == 1          # the silent wrong answer of the issue
    assert len(caught) == 1
    assert "100 of 100 input rows (100.0%; first: row 0) are far outside" in caught[0]
    assert "BATCH.encode ('image')" in caught[0]
    # half of the rows far away, and several encoding chunks: still one warning per call
    Q[50:] *= 1e10
    monkeypatch.setattr(base, "ENCODE_CHUNK_ROWS", 7)
    codes, caught = _ood_warnings(h.encode, Q, "image")
    assert len(caught) == 1 and "50 of 100 input rows (50.0%; first: row 50)" in caught[0]
    # the far rows share the far-away code sign(-mean W); the others are encoded as before
    far_code = np.where(-h.kernels_[0].mean_ @ h.projections_[0] > 0, 1, -1)
    assert (codes[50:] == far_code).all()
    assert np.array_equal(codes[:50], h.encode(X[:50], "image"))


def test_far_mask_is_the_rows_whose_features_are_the_far_limit():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 6))
    k = RBFAnchorFeatures(40, random_state=0).fit(X)
    Q = np.vstack([X[:20], X[:20] * 50.0, X[:5] + 1e6])
    phi, far = k.transform(Q, return_far=True)
    assert np.array_equal(phi, k.transform(Q))        # the mask does not change the features
    # flagged exactly when every raw kernel value is at most the tolerance
    D = ((Q[:, None, :] - k.anchors_[None]) ** 2).sum(-1)
    raw_max = np.exp(-D / (2 * k.sigma_)).max(axis=1)
    assert np.array_equal(far, raw_max <= k.far_tolerance())
    assert not far[:20].any() and far[40:].all()
    # ... and then the features are -mean_ to float32 precision: no information left
    assert np.allclose(phi[far], -k.mean_, rtol=0, atol=2 * k.far_tolerance())
    assert k.far_tolerance() == pytest.approx(np.finfo(np.float32).eps * np.abs(k.mean_).max())


class _OneCode(CrossModalHasher):
    """A stub whose hash functions give every input the same code (like a saturated network)."""
    name = "one-code"

    def _fit(self, views, labels, rng):
        self.codes_ = np.ones((views[0].shape[0], self.n_bits), dtype=np.int8)

    def _encode(self, X, m, task):
        return -np.ones((X.shape[0], self.n_bits), dtype=np.int8)


def test_all_distinct_inputs_with_one_code_warn_for_any_method():
    X, T, Y = make_structured(100, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # the stub's learned codes are degenerate
        h = _OneCode(8).fit(X, T, Y)
    _, caught = _ood_warnings(h.encode, X[:20], "image")
    assert len(caught) == 1 and "all 20 input rows (100%) got the same code" in caught[0]
    # identical inputs, or too few rows to tell, are not flagged
    for Q in (np.repeat(X[:1], 30, axis=0), X[:15]):
        assert _ood_warnings(h.encode, Q, "image")[1] == []
    import scipy.sparse as sp
    assert len(_ood_warnings(h.encode, sp.csr_matrix(X[:20]), "image")[1]) == 1
    assert _ood_warnings(h.encode, sp.csr_matrix(np.repeat(X[:1], 20, axis=0)), "image")[1] == []
