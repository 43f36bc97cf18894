"""DLFH / KDLFH: the column updates ascend the likelihood, hash functions are optimal."""
import itertools

import numpy as np
import pytest
from scipy.special import expit

from cmhash.metrics import mean_average_precision
from cmhash.methods.dlfh import (DLFH, KDLFH, kernel_logistic_regression,
                                 negative_log_likelihood, similarity_block, update_columns)
from cmhash.solvers import sign
from conftest import make_structured, peak_fit_bytes


def _problem(n=8, m=6, r=3, seed=0):
    rng = np.random.default_rng(seed)
    U = sign(rng.standard_normal((n, r))).astype(float)
    Vs = sign(rng.standard_normal((m, r))).astype(float)
    S = (rng.random((n, m)) < 0.4).astype(float)
    return U, Vs, S


def test_similarity_block_is_shared_label_indicator():
    X, T, Y = make_structured(40, seed=1)
    cols = np.array([3, 17, 5])
    expect = np.array([[float(np.any(Y[i].astype(bool) & Y[j].astype(bool))) for j in cols]
                       for i in range(40)])
    assert np.array_equal(similarity_block(Y, cols), expect)


def test_single_column_update_maximises_the_minorizer_and_the_likelihood_grows():
    """r = 1: the update is the maximiser, over all 2^n columns, of the quadratic minorizer
    l(u0) + g^T (u - u0) - m s^2 / (8 r^2) ||u - u0||^2 of the log-likelihood l, and the
    minorizer lies below l everywhere (so l(new) >= l(u0))."""
    scale = 8.0
    for seed in range(5):
        U, Vs, S = _problem(n=8, m=6, r=1, seed=seed)
        r, m = 1, 6
        loglik = lambda u: -negative_log_likelihood(u[:, None], Vs, S, scale)  # noqa: E731
        u0 = U[:, 0]
        g = (scale / r) * (S - expit((scale / r) * np.outer(u0, Vs[:, 0]))) @ Vs[:, 0]
        bound = lambda u: loglik(u0) + g @ (u - u0) - m * scale ** 2 / (8 * r ** 2) * np.sum((u - u0) ** 2)  # noqa: E731,E501
        columns = [np.array(c) for c in itertools.product((-1.0, 1.0), repeat=8)]
        for u in columns:
            assert loglik(u) >= bound(u) - 1e-9
        new = update_columns(U, Vs, S, scale)[:, 0]
        assert bound(new) >= max(bound(u) for u in columns) - 1e-9
        assert loglik(new) >= loglik(u0) - 1e-12


def test_column_updates_never_decrease_the_likelihood():
    """r > 1: one pass (each column against the others as updated so far) and repeated passes
    never decrease the likelihood, whatever the scale."""
    for seed, scale in itertools.product(range(4), (1.0, 8.0, 30.0)):
        U, Vs, S = _problem(n=50, m=20, r=6, seed=seed)
        values = [negative_log_likelihood(U, Vs, S, scale)]
        for _ in range(3):
            U = update_columns(U, Vs, S, scale)
            values.append(negative_log_likelihood(U, Vs, S, scale))
        assert np.all(np.diff(values) <= 1e-12 * values[0])
        assert set(np.unique(U)) <= {-1.0, 1.0}


def test_full_sampling_objective_never_increases():
    """n_samples = n: every iteration's block is the whole likelihood, so the trace of the
    negative log-likelihood is non-increasing (each column step ascends it)."""
    X, T, Y = make_structured(90, seed=5)
    m = DLFH(12, n_samples=90, n_iter=6, random_state=0).fit(X, T, Y)
    obj = np.array(m.objective_)
    assert np.all(np.diff(obj) <= 1e-9 * obj[:-1]) and obj[-1] < obj[0]
    U, V = (c.astype(float) for c in m.codes_)
    S = similarity_block(Y, np.arange(90))
    assert obj[-1] == pytest.approx(negative_log_likelihood(U, V, S, 8.0), rel=1e-10)


def test_dlfh_hash_functions_are_ridge_solutions_on_each_modalitys_codes():
    X, T, Y = make_structured(120, seed=6)
    m = DLFH(8, n_iter=3, gamma=0.5, random_state=0).fit(X, T, Y)
    assert np.array_equal(m.learned_codes("image"), m.codes_[0])
    assert np.array_equal(m.learned_codes("text"), m.codes_[1])
    for k, Z, B, W in zip(m.kernels_, (X, T), m.codes_, m.projections_):
        F = k.transform(Z).astype(float)
        assert np.array_equal(F, Z)               # the raw features, as the released code
        assert np.abs(F.T @ (F @ W - B) + 0.5 * W).max() < 1e-6 * np.abs(F.T @ B).max()
    assert np.array_equal(m.encode(T, "text"), sign(m.kernels_[1].transform(T) @ m.projections_[1]))


def test_kernel_logistic_regression_first_order_conditions():
    rng = np.random.default_rng(0)
    K = rng.random((80, 12))
    A = rng.standard_normal((12, 12))
    K0 = A @ A.T / 12 + 0.1 * np.eye(12)
    H = sign(rng.standard_normal((80, 3))).astype(float)
    W, res = kernel_logistic_regression(K, H, K0, 0.05, tol=1e-9)

    def grad(W):
        return -(K.T @ (H * expit(-H * (K @ W)))) + 0.05 * K0 @ W

    assert np.abs(grad(W)).max() < 1e-6 * np.abs(grad(np.zeros_like(W))).max()
    # the columns are independent problems: one column alone gives the same solution
    w1, _ = kernel_logistic_regression(K, H[:, 1:2], K0, 0.05, tol=1e-9)
    assert np.allclose(w1[:, 0], W[:, 1], atol=1e-5 * np.abs(W).max())


def test_kdlfh_uses_uncentred_kernel_features_and_klr_weights():
    X, T, Y = make_structured(150, seed=7)
    m = KDLFH(8, n_anchors=30, n_iter=3, random_state=0).fit(X, T, Y)
    for k, Z, B, W in zip(m.kernels_, (X, T), m.codes_, m.projections_):
        assert not k.center and k.anchors_.shape[0] == 30
        K = k.transform(Z).astype(float)
        K0 = k.transform(k.anchors_).astype(float)
        g = -(K.T @ (B * expit(-B * (K @ W)))) + m.eta * K0 @ W
        assert np.abs(g).max() < 1e-3 * np.abs(K.T @ B).max() / 2
    assert np.array_equal(m.encode(X, "image"), sign(m.kernels_[0].transform(X) @ m.projections_[0]))


@pytest.mark.parametrize("cls", [DLFH, KDLFH])
def test_retrieval_beats_chance(cls):
    X, T, Y = make_structured(600, seed=2, noise=1.0)
    tr, te = np.arange(480), np.arange(480, 600)
    extra = {"n_anchors": 60} if cls is KDLFH else {}
    m = cls(16, n_iter=15, random_state=0, **extra).fit(X[tr], T[tr], Y[tr])
    chance = np.mean((Y[te] @ Y[tr].T) > 0)
    i2t = mean_average_precision(m.encode(X[te], "image"), m.learned_codes("text"), Y[te], Y[tr])
    t2i = mean_average_precision(m.encode(T[te], "text"), m.learned_codes("image"), Y[te], Y[tr])
    assert i2t > chance + 0.3 and t2i > chance + 0.3


def test_memory_has_no_n_by_n_matrix():
    n = 6000
    peak = peak_fit_bytes(lambda: DLFH(16, n_iter=2, random_state=0), n)
    assert peak < 0.05 * n * n * 8


@pytest.mark.parametrize("param, value, exc, match", [
    ("lambda_scale", 0.0, ValueError, "lambda_scale must be > 0, got 0.0"),
    ("n_samples", 1000, ValueError, r"n_samples=1000 exceeds the number of training samples \(60\)"),
    ("n_samples", 2.0, TypeError, "n_samples must be an integer, got 2.0"),
    ("n_iter", 0, ValueError, "n_iter must be >= 1, got 0"),
])
def test_parameters_are_validated(param, value, exc, match):
    X, T, Y = make_structured(60)
    with pytest.raises(exc, match=match):
        DLFH(8, **{param: value}).fit(X, T, Y)
