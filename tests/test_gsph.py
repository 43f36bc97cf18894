"""GSPH: the code objective without n x n matrices, exact DCC blocks, KLR optimality, wiring."""
import numpy as np
import pytest
import scipy.sparse as sp

import cmhash.methods.gsph as gsph_module
from cmhash import base
from cmhash.labels import normalize_rows
from cmhash.logistic import (fit_kernel_logistic, klr_feature_map, klr_objective,
                             mean_pairwise_sq_distance)
from cmhash.methods.gsph import GSPH, gsph_objective
from cmhash.solvers import sign
from conftest import held_out_maps, make_structured, peak_fit_bytes


def _explicit_objective(A, B, Y):
    S = normalize_rows(Y) @ normalize_rows(Y).T
    return float(np.sum((S - A @ B.T / A.shape[1]) ** 2))


@pytest.fixture(scope="module")
def fitted():
    X, T, Y = make_structured(240, seed=5)
    m = GSPH(8, n_anchors=(30, 25), klr_max_iter=300, random_state=0).fit(X, T, Y)
    return m, X, T, Y


def test_objective_matches_the_explicit_n_by_n_formula():
    _, _, Y = make_structured(50, seed=1)
    rng = np.random.default_rng(0)
    A, B = sign(rng.standard_normal((50, 6))), sign(rng.standard_normal((50, 6)))
    assert gsph_objective(A, B, normalize_rows(Y)) == pytest.approx(
        _explicit_objective(A.astype(float), B.astype(float), Y), rel=1e-12)


def test_codes_are_coordinatewise_optimal_and_the_trace_decreases(fitted):
    """At the end of the coordinate solver no single flip of an image or a text bit lowers
    ||S - A B^T / r||^2 (DCC sweeps to a fixed point), the trace never increases, and
    ``objective_`` is that objective."""
    m, X, T, Y = fitted
    A, B = (c.astype(float) for c in m.codes_)
    base_value = _explicit_objective(A, B, Y)
    assert m.objective_[-1] == pytest.approx(base_value, rel=1e-10)
    obj = np.array(m.objective_)
    assert np.all(np.diff(obj) <= 1e-9 * obj[0]) and m.n_iter_ < m.n_iter
    rng = np.random.default_rng(0)
    for i, j in zip(rng.integers(0, A.shape[0], 150), rng.integers(0, A.shape[1], 150)):
        for M, other, first in ((A, B, True), (B, A, False)):
            P = M.copy()
            P[i, j] *= -1
            value = _explicit_objective(P, other, Y) if first else _explicit_objective(other, P, Y)
            assert value >= base_value - 1e-9 * base_value


def test_dcc_step_is_the_exact_column_minimiser():
    """One sweep of the A-step minimises J exactly over each column of A in turn: every entry
    of column k is sign of its own coefficient (the objective is separable over rows)."""
    _, _, Y = make_structured(40, seed=2)
    Yn = normalize_rows(Y)
    rng = np.random.default_rng(1)
    A, B = (sign(rng.standard_normal((40, 5))).astype(float) for _ in range(2))
    new = gsph_module._dcc_step(A, B, Yn, Yn, n_sweeps=1)
    expect = A.copy()
    for k in range(5):
        for i in range(40):
            vals = []
            for v in (-1.0, 1.0):
                expect[i, k] = v
                vals.append(_explicit_objective(expect, B, Y))
            expect[i, k] = -1.0 if vals[0] <= vals[1] else 1.0
    assert np.array_equal(new, expect)


def test_projected_gradient_steps_stay_in_the_box_and_decrease_the_relaxed_objective():
    """The released code's step is a 1/L gradient step on the convex ||r S - A B^T||^2 in A
    followed by the projection on [-1, 1]: it never increases that relaxed objective."""
    _, _, Y = make_structured(60, seed=3)
    Yn = normalize_rows(Y)
    rng = np.random.default_rng(2)
    A, B = rng.uniform(-1, 1, (60, 6)), rng.uniform(-1, 1, (60, 6))
    S = Yn @ Yn.T

    def relaxed(A_):
        return np.sum((6 * S - A_ @ B.T) ** 2)

    for _ in range(5):
        new = gsph_module._projected_gradient_step(A, B, Yn, Yn)
        assert np.abs(new).max() <= 1.0 and relaxed(new) <= relaxed(A) + 1e-9
        A = new
    # the unprojected step (no clipping active) is exactly A - grad / (2 lambda_max)
    small = 1e-3 * rng.uniform(-1, 1, (60, 6))
    grad = 2 * small @ (B.T @ B) - 2 * 6 * S @ B
    step = gsph_module._projected_gradient_step(small, B, Yn, Yn)
    free = np.abs(step) < 1
    assert np.allclose(step[free], (small - grad / (2 * np.linalg.eigvalsh(B.T @ B)[-1]))[free])


def test_mean_pairwise_distance_matches_brute_force():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 4)) + 5.0
    D = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    assert mean_pairwise_sq_distance(X) == pytest.approx(D.mean(), rel=1e-12)
    assert mean_pairwise_sq_distance(sp.csr_matrix(X)) == pytest.approx(D.mean(), rel=1e-10)


def test_klr_gradient_and_optimality():
    """The KLR objective's minimiser has zero gradient (checked by finite differences of the
    objective itself) and no random perturbation improves it."""
    X, _, Y = make_structured(120, seed=4)
    fmap = klr_feature_map(X, 20, "random", np.random.default_rng(0))
    assert fmap.sigma_ == pytest.approx(mean_pairwise_sq_distance(X))
    K, K0 = fmap.transform(X).astype(float), fmap.transform(fmap.anchors_).astype(float)
    assert np.all(K > 0)                                   # uncentred kernel values
    B = sign(np.random.default_rng(1).standard_normal((120, 3))).astype(float)
    W, info = fit_kernel_logistic(K, K0, B, 0.5, max_iter=2000, gtol=1e-8)
    f0 = klr_objective(W, K, K0, B, 0.5)
    assert info["objective"] == pytest.approx(f0)
    h = 1e-6
    for idx in [(0, 0), (5, 1), (19, 2)]:
        E = np.zeros_like(W)
        E[idx] = h
        fd = (klr_objective(W + E, K, K0, B, 0.5) - klr_objective(W - E, K, K0, B, 0.5)) / (2 * h)
        assert abs(fd) < 1e-4 * max(1.0, f0)
    rng = np.random.default_rng(2)
    for _ in range(10):
        assert klr_objective(W + 1e-3 * rng.standard_normal(W.shape), K, K0, B, 0.5) >= f0


def test_hash_functions_are_the_klr_signs(fitted):
    m, X, T, Y = fitted
    for v, Z in enumerate((X, T)):
        K = m.kernels_[v].transform(Z).astype(np.float64)
        assert np.array_equal(m.encode(Z, v), sign(K @ m.projections_[v]))
        # each modality's regressions fit that modality's own codes (image -> A, text -> B)
        agree = np.mean(m.encode(Z, v) == m.codes_[v])
        assert agree > np.mean(m.encode(Z, v) == m.codes_[1 - v]) and agree > 0.8


def test_determinism_and_seed_dependence():
    X, T, Y = make_structured(120, seed=6)
    kw = dict(n_anchors=20, klr_max_iter=50)
    a = GSPH(8, random_state=3, **kw).fit(X, T, Y)
    b = GSPH(8, random_state=3, **kw).fit(X, T, Y)
    c = GSPH(8, random_state=4, **kw).fit(X, T, Y)
    assert all(np.array_equal(p, q) for p, q in zip(a.codes_, b.codes_))
    assert np.array_equal(a.encode(X, "image"), b.encode(X, "image"))
    assert not np.array_equal(a.codes_[0], c.codes_[0])


def test_retrieval_beats_chance():
    for solver in ("coordinate", "projected_gradient"):
        i2t, t2i, chance = held_out_maps(lambda: GSPH(16, solver=solver, n_anchors=60,
                                                      klr_max_iter=150, random_state=0))
        assert i2t > chance + 0.3 and t2i > chance + 0.3


@pytest.mark.parametrize("params, exc, match", [
    ({"solver": "newton"}, ValueError, "solver must be one of"),
    ({"anchor_method": "grid"}, ValueError, "anchor_method must be one of"),
    ({"C": -1.0}, ValueError, "C must be >= 0, got -1.0"),
    ({"n_iter": 0}, ValueError, "n_iter must be >= 1, got 0"),
    ({"klr_max_iter": 2.5}, TypeError, "klr_max_iter must be an integer"),
    ({"n_anchors": (10, 10, 10)}, ValueError, "n_anchors must be an int or one value"),
])
def test_bad_parameters_are_refused_before_any_work(params, exc, match, monkeypatch):
    called = []
    monkeypatch.setattr(gsph_module, "fit_klr_hash_functions",
                        lambda *a, **k: called.append(1))
    X, T, Y = make_structured(40)
    with pytest.raises(exc, match=match):
        GSPH(8, **params).fit(X, T, Y)
    assert not called


def test_registered_and_round_trips(tmp_path, fitted):
    m, X, T, Y = fitted
    assert base.get_method("gsph") is GSPH
    path = m.save(tmp_path / "gsph.npz")
    loaded = base.load(path)
    assert np.array_equal(loaded.encode(T, "text"), m.encode(T, "text"))
    assert np.array_equal(loaded.learned_codes("image"), m.codes_[0])


def test_memory_is_linear_in_n_no_n_by_n_matrix():
    def make():
        return GSPH(8, n_anchors=30, n_iter=3, klr_max_iter=5, random_state=0)
    small, large = peak_fit_bytes(make, 2000), peak_fit_bytes(make, 8000)
    assert large < 0.05 * 8000 * 8000 * 8 and large / small < 5.5


def test_unpaired_fit_factorises_the_cross_set_similarity():
    """Unpaired (the paper's N-label setting): n_a image and n_b text samples with their own
    labels, S = Ya Yb^T (n_a x n_b); the codes are coordinatewise optimal for it and the
    objective is the explicit one."""
    X, _, Y = make_structured(90, seed=11)
    _, T2, Y2 = make_structured(70, seed=12)
    m = GSPH(8, n_anchors=15, klr_max_iter=50, random_state=0).fit_unpaired([X, T2], [Y, Y2])
    A, B = (c.astype(float) for c in m.codes_)
    assert A.shape == (90, 8) and B.shape == (70, 8)
    S = normalize_rows(Y) @ normalize_rows(Y2).T

    def J(A_, B_):
        return float(np.sum((S - A_ @ B_.T / 8) ** 2))

    base_value = J(A, B)
    assert m.objective_[-1] == pytest.approx(base_value, rel=1e-10)
    for i, j in zip(range(0, 90, 7), range(8)):
        P = A.copy()
        P[i, j] *= -1
        assert J(P, B) >= base_value - 1e-9 * base_value
        Q = B.copy()
        Q[i % 70, j] *= -1
        assert J(A, Q) >= base_value - 1e-9 * base_value
    assert m.encode(T2, "text").shape == (70, 8)
