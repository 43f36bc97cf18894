"""BATCH: every step minimises its block, constraints hold, retrieval has structure."""
import tracemalloc

import numpy as np
import pytest

from cmhash.labels import normalize_rows
from cmhash.metrics import mean_average_precision
from cmhash.methods.batch import BATCH
from cmhash.solvers import sign
from conftest import make_structured


@pytest.fixture(scope="module")
def fitted():
    X, T, Y = make_structured(500, seed=1)
    m = BATCH(16, n_anchors=(60, 60), n_iter=8, random_state=0).fit(X, T, Y)
    return m, X, T, Y


def test_constraints(fitted):
    m, X, *_ = fitted
    n, r = m.latent_.shape
    V = m.latent_
    assert np.allclose(V.T @ V, n * np.eye(r), atol=1e-6 * n)
    assert np.allclose(V.sum(axis=0), 0, atol=1e-6 * n)
    assert set(np.unique(m.codes_)) <= {-1, 1} and m.codes_.dtype == np.int8
    assert set(np.unique(m.encode(X, "image"))) <= {-1, 1}


def test_objective_is_monotone(fitted):
    obj = np.array(fitted[0].objective_)
    assert len(obj) == 8
    assert np.all(np.diff(obj) <= 1e-6 * np.abs(obj[1:]))
    assert obj[-1] < obj[0]


def test_b_step_is_the_block_minimiser(fitted):
    """B = sign(r G G^T V + omega V) minimises the B-terms; flips of any entry do not help."""
    m, X, T, Y = fitted
    G = normalize_rows(Y)
    V, B = m.latent_, m.codes_.astype(float)
    r = m.n_bits

    def f(Bc):  # B-dependent part of the objective (||B V^T||^2 is constant)
        return -2 * r * np.sum((G.T @ Bc) * (G.T @ V)) - 2 * m.omega * np.sum(Bc * V)

    assert np.array_equal(B, sign(r * G @ (G.T @ V) + m.omega * V))
    base = f(B)
    rng = np.random.default_rng(0)
    for _ in range(50):
        Bp = B.copy()
        i, j = rng.integers(0, B.shape[0]), rng.integers(0, r)
        Bp[i, j] *= -1
        assert f(Bp) >= base - 1e-9


def test_hash_functions_are_ridge_solutions(fitted):
    m, X, *_ = fitted
    phi = m.kernels_[0].transform(X).astype(np.float64)
    W = m.projections_[0]
    grad = phi.T @ (phi @ W - m.codes_) + m.xi * W
    assert np.abs(grad).max() < 1e-4 * np.abs(phi.T @ m.codes_).max()


def test_retrieval_beats_chance_and_lsh_baseline():
    X, T, Y = make_structured(900, seed=2, noise=1.0)
    tr, te = np.arange(700), np.arange(700, 900)
    m = BATCH(16, n_anchors=(100, 100), random_state=0).fit(X[tr], T[tr], Y[tr])
    i2t = mean_average_precision(m.encode(X[te], "image"), m.learned_codes("text"), Y[te], Y[tr])
    t2i = mean_average_precision(m.encode(T[te], "text"), m.learned_codes("image"), Y[te], Y[tr])
    chance = np.mean((Y[te] @ Y[tr].T) > 0)
    # unsupervised baseline: random-hyperplane LSH on raw features (needs a shared space, so
    # same-modality codes would be the only meaningful use; cross-modal LSH is ~chance)
    rng = np.random.default_rng(0)
    lsh_i = sign((X - X[tr].mean(0)) @ rng.standard_normal((X.shape[1], 16)))
    lsh_t = sign((T - T[tr].mean(0)) @ rng.standard_normal((T.shape[1], 16)))
    lsh = mean_average_precision(lsh_i[te], lsh_t[tr], Y[te], Y[tr])
    assert i2t > chance + 0.3 and t2i > chance + 0.3
    assert i2t > lsh + 0.2


def _peak_fit_bytes(n):
    X, T, Y = make_structured(n, seed=3)
    tracemalloc.start()
    BATCH(16, n_anchors=(50, 50), n_iter=2, random_state=0).fit(X, T, Y)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_memory_is_linear_in_n_no_n_by_n_matrix():
    small, large = _peak_fit_bytes(2000), _peak_fit_bytes(8000)
    # a single 8000 x 8000 float64 matrix would take 512 MB; the whole fit must stay far below
    assert large < 0.05 * 8000 * 8000 * 8
    # 4x more samples -> at most ~4x (plus slack) more memory, not 16x
    assert large / small < 5.5


@pytest.mark.parametrize("n_anchors, exc, match", [
    (2.5, TypeError, "n_anchors must be an integer, got 2.5"),      # was truncated to 2
    (True, TypeError, "n_anchors must be an integer, got True"),    # was 1 anchor
    ("a", TypeError, "n_anchors must be an integer, got 'a'"),     # was int('a') ValueError
    (None, TypeError, "n_anchors must be an integer, got None"),   # was int(None) TypeError
    ((10, 0), ValueError, "n_anchors must be >= 1, got 0"),
    ((10, 10, 10), ValueError, r"n_anchors must be an int or one value per modality \(2\)"),
])
def test_batch_validates_n_anchors(n_anchors, exc, match):
    X, T, Y = make_structured(60)
    with pytest.raises(exc, match=match):
        BATCH(8, n_anchors=n_anchors, n_iter=1, random_state=0).fit(X, T, Y)


def test_batch_n_bits_not_below_n_is_refused_before_any_work(monkeypatch):
    # n_bits >= n used to reach the r x r U-step first (a 74.5 GiB allocation for
    # n_bits=100000) and then fail inside solvers.orthogonal_zero_mean without naming n_bits
    from cmhash import base
    X, T, Y = make_structured(40)
    called = []
    monkeypatch.setattr(base.TwoStepKernelHasher, "_kernelize",
                        lambda self, *a, **k: called.append(1))
    for bits in (40, 10**5):
        with pytest.raises(ValueError, match=rf"n_bits={bits} must be smaller than the number "
                                             r"of training samples \(40\)"):
            BATCH(bits, n_anchors=10, n_iter=1, random_state=0).fit(X, T, Y)
    assert not called


def test_every_step_minimises_its_block_of_the_explicit_objective(monkeypatch):
    """Each step of a fit against the BATCH objective written out with n x n matrices
    (``||B V^T - r G G^T||^2 + omega ||B - V||^2 + sum_m eta_m (||phi_m - V U_m||^2
    + rho ||U_m||^2)``): the U-step zeroes its gradient, no feasible neighbour of the new V
    and no single flip of the new B is better, and ``objective_`` is that objective. Every term
    moves a step with these weights (at the defaults omega V and rho U barely do). V^T phi is
    a float32 product (solvers.cross_product), hence the 1e-5 and 1e-7 tolerances."""
    import cmhash.methods.batch as batch
    from cmhash.solvers import orthogonal_zero_mean
    rec = {"U": [], "V": [], "B": []}

    def recording(key, func):
        return lambda *a: rec[key].append(func(*a)) or rec[key][-1]

    monkeypatch.setattr(batch, "solve_psd", recording("U", batch.solve_psd))
    monkeypatch.setattr(batch, "orthogonal_zero_mean", recording("V", batch.orthogonal_zero_mean))
    monkeypatch.setattr(batch, "sign", recording("B", batch.sign))
    X, T, Y = make_structured(150, seed=4)
    hp = dict(eta_image=1500.0, eta_text=3000.0, eta_label=800.0, omega=200.0, rho=40.0)
    m = BATCH(8, n_anchors=(20, 25), n_iter=3, random_state=0, **hp).fit(X, T, Y)
    n, r = X.shape[0], m.n_bits
    phis = [k.transform(Z).astype(np.float64) for k, Z in zip(m.kernels_, (X, T))]
    targets, etas = phis + [Y], (hp["eta_image"], hp["eta_text"], hp["eta_label"])
    S = r * normalize_rows(Y) @ normalize_rows(Y).T

    def f(B, V, Us):
        val = np.sum((B @ V.T - S) ** 2) + hp["omega"] * np.sum((B - V) ** 2)
        for eta, A, U in zip(etas, targets, Us):
            val += eta * (np.sum((A - V @ U) ** 2) + hp["rho"] * np.sum(U * U))
        return val

    t = 1                                             # second iteration: V_old is a V-step's
    V_old, B_old = rec["V"][t - 1], rec["B"][t].astype(np.float64)
    Us, V, B = rec["U"][3 * t:3 * t + 3], rec["V"][t], rec["B"][t + 1].astype(np.float64)
    for eta, A, U in zip(etas, targets, Us):          # U-step: zero gradient
        grad = eta * (V_old.T @ (V_old @ U - A) + hp["rho"] * U)
        assert np.abs(grad).max() < 1e-5 * eta * np.abs(V_old.T @ A).max()
    base = f(B_old, V, Us)                            # V-step: no better feasible neighbour
    rng = np.random.default_rng(0)
    for s in (1e-3, 1e-2, 1e-1):
        for _ in range(5):
            Vp = orthogonal_zero_mean(V + s * rng.standard_normal(V.shape))
            assert f(B_old, Vp, Us) >= base - 1e-11 * abs(base)
    base = f(B, V, Us)                                # B-step: no better single flip
    for i, j in zip(rng.integers(0, n, 300), rng.integers(0, r, 300)):
        Bp = B.copy()
        Bp[i, j] *= -1
        assert f(Bp, V, Us) >= base - 1e-11 * abs(base)
    assert m.objective_[t] == pytest.approx(base, rel=1e-7)
