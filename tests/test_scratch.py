"""SCRATCH: every step minimises its block of the objective, constraints hold, retrieval works."""
import numpy as np
import pytest

import cmhash.methods.scratch as scratch_module
from cmhash.metrics import mean_average_precision
from cmhash.methods.scratch import SCRATCH
from cmhash.solvers import sign
from conftest import make_structured, peak_fit_bytes

HP = dict(lambda_image=0.3, alpha=7.0, mu=4.0, gamma=0.5)   # every term moves a step


@pytest.fixture(scope="module")
def recorded():
    """A fit whose per-iteration blocks (the arguments of scratch_objective) are recorded."""
    calls = []
    real = scratch_module.scratch_objective

    def recording(*args, **kw):
        calls.append((args, kw))
        return real(*args, **kw)

    scratch_module.scratch_objective = recording
    try:
        X, T, Y = make_structured(150, seed=4)
        m = SCRATCH(8, n_anchors=(20, 25), n_iter=4, random_state=0, **HP).fit(X, T, Y)
    finally:
        scratch_module.scratch_objective = real
    phis = [k.transform(Z).astype(np.float64) for k, Z in zip(m.kernels_, (X, T))]
    return m, phis, Y, calls


def explicit_objective(B, V, R, Us, G, Ws, phis, L):
    lams = (HP["lambda_image"], 1 - HP["lambda_image"])
    val = sum(lam * np.sum((p - V @ U) ** 2) for lam, p, U in zip(lams, phis, Us))
    val += sum(HP["mu"] * np.sum((V - p @ W) ** 2) for p, W in zip(phis, Ws))
    val += HP["alpha"] * np.sum((L - V @ G) ** 2) + np.sum((B - V @ R.T) ** 2)
    val += HP["gamma"] * sum(np.sum(M * M) for M in [*Us, *Ws, G, V])
    return val


def _state(calls, t):
    (B, V, R, Us, G, Ws, L), _ = calls[t]
    return B, V, R, Us, G, Ws, L


def test_objective_trace_is_the_objective_and_never_increases(recorded):
    m, phis, Y, calls = recorded
    obj = np.array(m.objective_)
    assert len(obj) == 4 and np.all(np.diff(obj) <= 1e-9 * obj[:-1])
    B, V, R, Us, G, Ws, L = _state(calls, 3)
    assert obj[3] == pytest.approx(explicit_objective(B, V, R, Us, G, Ws, phis, L), rel=1e-9)


def test_each_step_is_optimal_for_its_block(recorded):
    m, phis, Y, calls = recorded
    g = HP["gamma"]
    lams = (HP["lambda_image"], 1 - HP["lambda_image"])
    _, V0, R0, *_ = _state(calls, 1)
    B, V, R, Us, G, Ws, L = _state(calls, 2)
    # B-step: sign(V R^T) at the previous (V, R)
    assert np.array_equal(B, sign(V0 @ R0.T))
    # U-, G- and W-steps: zero gradient at the previous V
    for lam, p, U in zip(lams, phis, Us):
        assert np.abs(lam * V0.T @ (V0 @ U - p) + g * U).max() < 1e-8 * np.abs(V0.T @ p).max()
    assert np.abs(HP["alpha"] * V0.T @ (V0 @ G - L) + g * G).max() < 1e-8 * np.abs(V0.T @ L).max()
    for p, W in zip(phis, Ws):
        grad = HP["mu"] * p.T @ (p @ W - V0) + g * W
        assert np.abs(grad).max() < 1e-7 * HP["mu"] * np.abs(p.T @ V0).max()
    # V-step: zero gradient of the objective in V (with R of the previous iteration)
    # (the fit multiplies the float32 kernel features in float32: a 1e-5 relative tolerance)
    terms = [lam * (V @ U - p) @ U.T for lam, p, U in zip(lams, phis, Us)]
    terms += [HP["mu"] * (V - p @ W) for p, W in zip(phis, Ws)]
    terms += [HP["alpha"] * (V @ G - L) @ G.T, (V @ R0.T - B) @ R0, g * V]
    scale = max(np.abs(t).max() for t in terms)
    assert np.abs(sum(terms)).max() < 1e-5 * scale
    # R-step: orthogonal, and no nearby rotation does better
    assert np.allclose(R.T @ R, np.eye(8), atol=1e-10)
    base = explicit_objective(B, V, R, Us, G, Ws, phis, L)
    rng = np.random.default_rng(0)
    for s in (1e-3, 1e-2, 1e-1):
        A = s * rng.standard_normal((8, 8))
        Q = np.linalg.qr(np.eye(8) + A - A.T)[0]
        assert explicit_objective(B, V, R @ Q, Us, G, Ws, phis, L) >= base - 1e-9 * base


def test_hash_functions_and_codes(recorded):
    m, phis, Y, calls = recorded
    B, V, R, Us, G, Ws, L = _state(calls, 3)
    assert np.array_equal(m.codes_, B.astype(np.int8)) and m.codes_.dtype == np.int8
    for p, W, P in zip(phis, Ws, m.projections_):
        assert np.allclose(P, W @ R.T)
    X, T, _ = make_structured(150, seed=4)
    assert np.array_equal(m.encode(X, "image"), sign(phis[0] @ m.projections_[0]))


def test_retrieval_beats_chance():
    X, T, Y = make_structured(700, seed=2, noise=1.0)
    tr, te = np.arange(550), np.arange(550, 700)
    m = SCRATCH(16, n_anchors=(80, 80), n_iter=10, random_state=0).fit(X[tr], T[tr], Y[tr])
    chance = np.mean((Y[te] @ Y[tr].T) > 0)
    for q, db in (("image", "text"), ("text", "image")):
        Q = X[te] if q == "image" else T[te]
        ap = mean_average_precision(m.encode(Q, q), m.learned_codes(db), Y[te], Y[tr])
        assert ap > chance + 0.3


def test_same_seed_same_codes():
    X, T, Y = make_structured(120)
    a = SCRATCH(8, n_anchors=20, n_iter=2, random_state=5).fit(X, T, Y)
    b = SCRATCH(8, n_anchors=20, n_iter=2, random_state=5).fit(X, T, Y)
    assert np.array_equal(a.codes_, b.codes_)
    assert np.array_equal(a.encode(X, "image"), b.encode(X, "image"))


def test_memory_has_no_n_by_n_matrix():
    n = 6000
    peak = peak_fit_bytes(lambda: SCRATCH(16, n_anchors=40, n_iter=2, random_state=0), n)
    assert peak < 0.05 * n * n * 8


@pytest.mark.parametrize("param, value, exc, match", [
    ("lambda_image", 1.5, ValueError, r"lambda_image must be in \[0, 1\]"),
    ("gamma", 0.0, ValueError, "gamma must be > 0, got 0.0"),
    ("mu", "a", TypeError, "mu must be a real number"),
    ("n_iter", 0, ValueError, "n_iter must be >= 1, got 0"),
])
def test_parameters_are_validated(param, value, exc, match):
    X, T, Y = make_structured(60)
    with pytest.raises(exc, match=match):
        SCRATCH(8, n_anchors=10, **{param: value}).fit(X, T, Y)
