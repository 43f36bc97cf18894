"""ITQ: both block steps are exact minimisers and the quantization loss never increases."""
import numpy as np
import pytest

from cmhash.itq import ITQ
from cmhash.solvers import sign


def _clustered(n=600, d=8, seed=0):
    """Points around +-1 corners of a randomly rotated cube: a rotation quantizes them well."""
    rng = np.random.default_rng(seed)
    corners = sign(rng.standard_normal((n, d))).astype(float)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (corners + 0.2 * rng.standard_normal((n, d))) @ Q.T + 3.0, Q


def _loss(Zc, B, R):
    return float(np.sum((B - Zc @ R) ** 2))


def test_quantization_loss_is_monotone_and_decreases():
    Z, _ = _clustered()
    itq = ITQ(n_iter=30, random_state=0).fit(Z)
    q = np.array(itq.quantization_loss_)
    assert q.shape == (30,)
    assert np.all(np.diff(q) <= 1e-9 * q[1:])
    # the start (random rotation) quantizes a rotated cube badly; ITQ finds the cube's axes
    Zc = Z - Z.mean(0)
    R0, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((8, 8)))
    assert q[-1] < 0.5 * _loss(Zc, sign(Zc @ R0), R0)


def test_rotation_is_orthogonal_and_recovers_the_cube():
    Z, Q = _clustered(seed=1)
    itq = ITQ(n_iter=50, random_state=1).fit(Z)
    R = itq.rotation_
    assert np.allclose(R.T @ R, np.eye(8), atol=1e-10)
    # Zc R ~ corners, so R ~ Q up to a signed permutation: |Q^T R| is close to a permutation
    P = np.abs(Q.T @ R)
    assert np.all(np.sort(P, axis=1)[:, -1] > 0.95)
    # per-sample loss near the noise level 0.2^2 * d, far below a random rotation's
    assert itq.quantization_loss_[-1] / Z.shape[0] < 2 * 0.04 * 8


def test_each_step_is_the_exact_block_minimiser():
    Z, _ = _clustered(n=200, d=6, seed=2)
    itq = ITQ(n_iter=5, random_state=2).fit(Z)
    Zc, R = Z - itq.mean_, itq.rotation_
    rng = np.random.default_rng(3)
    # B-step: sign(Zc R) minimises ||B - Zc R||^2 over B; any single flip increases it
    B = sign(Zc @ R).astype(float)
    base = _loss(Zc, B, R)
    for _ in range(100):
        Bp = B.copy()
        Bp[rng.integers(200), rng.integers(6)] *= -1
        assert _loss(Zc, Bp, R) >= base
    # R-step: procrustes(Zc^T B) minimises over orthogonal R; nearby rotations are no better
    B = sign(Zc @ R).astype(float)
    U, _, Wt = np.linalg.svd(Zc.T @ B)
    R_opt = U @ Wt
    best = _loss(Zc, B, R_opt)
    for _ in range(50):
        A = 0.05 * rng.standard_normal((6, 6))
        K = A - A.T                                    # skew-symmetric -> expm is a rotation
        w, V = np.linalg.eig(K)
        G = np.real(V @ np.diag(np.exp(w)) @ np.linalg.inv(V))
        assert _loss(Zc, B, R_opt @ G) >= best - 1e-9


def test_transform_centres_and_is_reproducible():
    Z, _ = _clustered(seed=4)
    a = ITQ(n_iter=10, random_state=7).fit(Z)
    b = ITQ(n_iter=10, random_state=7).fit(Z)
    assert np.array_equal(a.rotation_, b.rotation_)
    codes = a.transform(Z)
    assert codes.dtype == np.int8 and set(np.unique(codes)) == {-1, 1}
    assert np.allclose(a.mean_, Z.mean(0))
    assert np.array_equal(codes, sign((Z - Z.mean(0)) @ a.rotation_))
    # centring makes every bit roughly balanced although Z has mean 3
    assert np.all(np.abs(codes.mean(0)) < 0.3)
    nc = ITQ(n_iter=10, center=False, random_state=7).fit(Z)
    assert np.allclose(nc.mean_, 0)


def test_bad_input():
    with pytest.raises(ValueError, match="not fitted"):
        ITQ().transform(np.ones((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        ITQ().fit(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="n_iter"):
        ITQ(n_iter=-1).fit(np.ones((3, 2)))
    itq = ITQ(n_iter=2, random_state=0).fit(np.random.default_rng(0).standard_normal((10, 3)))
    with pytest.raises(ValueError, match="5 columns but ITQ was fitted on 3"):
        itq.transform(np.ones((4, 5)))
