"""CMFH: every step minimises its block of the objective; codes and hash functions as specified."""
import numpy as np
import pytest

import cmhash.methods.cmfh as cmfh_module
from cmhash.metrics import mean_average_precision
from cmhash.methods.cmfh import CMFH
from cmhash.solvers import sign
from conftest import make_structured, peak_fit_bytes

HP = dict(image_weight=0.3, mu=2.0, gamma=0.4)


@pytest.fixture(scope="module")
def recorded():
    """A fit with the arguments of every objective evaluation and every V-step recorded."""
    objective_calls, v_steps = [], []
    real_obj, real_v = cmfh_module.cmfh_objective, cmfh_module.update_V

    def rec_obj(*a, **k):
        objective_calls.append((a, k))
        return real_obj(*a, **k)

    def rec_v(*a, **k):
        v_steps.append(real_v(*a, **k))
        return v_steps[-1]

    cmfh_module.cmfh_objective, cmfh_module.update_V = rec_obj, rec_v
    try:
        X, T, Y = make_structured(150, seed=4)
        m = CMFH(6, n_iter=4, random_state=0, **HP).fit(X, T, Y)
    finally:
        cmfh_module.cmfh_objective, cmfh_module.update_V = real_obj, real_v
    Xs = [k.transform(Z).astype(np.float64) for k, Z in zip(m.kernels_, (X, T))]
    return m, Xs, objective_calls, v_steps


def explicit_objective(V, Us, Ps, Xs):
    a = (HP["image_weight"], 1 - HP["image_weight"])
    val = HP["gamma"] * np.sum(V * V)
    for w, X, U, P in zip(a, Xs, Us, Ps):
        val += w * (np.sum((X - V @ U) ** 2) + HP["mu"] * np.sum((V - X @ P) ** 2)
                    + HP["gamma"] * (np.sum(U * U) + np.sum(P * P)))
    return val


def test_features_are_the_centred_training_features(recorded):
    m, Xs, *_ = recorded
    assert all(np.allclose(X.mean(axis=0), 0, atol=1e-5) for X in Xs)


def test_every_step_minimises_its_block(recorded):
    m, Xs, calls, v_steps = recorded
    a = (HP["image_weight"], 1 - HP["image_weight"])
    obj = np.array(m.objective_)
    assert len(obj) == 4 and np.all(np.diff(obj) <= 1e-9 * obj[:-1]) and obj[-1] < obj[0]
    (V_prev, *_), _ = calls[1]
    (V, Us, Ps), _ = calls[2]
    assert obj[2] == pytest.approx(explicit_objective(V, Us, Ps, Xs), rel=1e-8)
    g = HP["gamma"]
    for X, U in zip(Xs, Us):                    # U-step at the previous V
        assert np.abs(V_prev.T @ (V_prev @ U - X) + g * U).max() < 1e-8 * np.abs(V_prev.T @ X).max()
    for X, P in zip(Xs, Ps):                    # P-step at the new V
        grad = HP["mu"] * X.T @ (X @ P - V) + g * P
        assert np.abs(grad).max() < 1e-6 * HP["mu"] * np.abs(X.T @ V).max()
    (_, _, Ps_prev), _ = calls[1]               # V-step with the new U and the previous P
    terms = [w * ((V @ U - X) @ U.T + HP["mu"] * (V - X @ P))
             for w, X, U, P in zip(a, Xs, Us, Ps_prev)] + [g * V]
    scale = max(np.abs(t).max() for t in terms)    # X (U^T + mu P) is a float32 product
    assert np.abs(sum(terms)).max() < 1e-5 * scale


def test_codes_are_the_sign_of_the_final_latent(recorded):
    m, Xs, calls, v_steps = recorded
    (V, Us, Ps), _ = calls[-1]
    # one more V-step with the final U and P, then its sign; V has zero mean (it is a product
    # of centred features), so the released code's sign(V - mean(V)) is the same
    assert len(v_steps) == 5 and np.array_equal(m.latent_, v_steps[-1])
    assert np.abs(m.latent_.mean(axis=0)).max() < 1e-6 * np.abs(m.latent_).max()
    assert np.array_equal(m.codes_, sign(m.latent_))
    X, T, _ = make_structured(150, seed=4)
    assert np.array_equal(m.encode(X, "image"), sign(Xs[0] @ m.projections_[0]))
    assert explicit_objective(m.latent_, Us, Ps, Xs) <= m.objective_[-1] * (1 + 1e-9)


def test_retrieval_beats_chance_without_labels():
    """Unsupervised: the labels do not change the codes; retrieval still has structure."""
    X, T, Y = make_structured(700, seed=2, noise=0.5)
    tr, te = np.arange(550), np.arange(550, 700)
    m = CMFH(16, random_state=0).fit(X[tr], T[tr], Y[tr])
    shuffled = CMFH(16, random_state=0).fit(X[tr], T[tr], Y[tr][::-1])
    assert np.array_equal(m.codes_, shuffled.codes_)
    chance = np.mean((Y[te] @ Y[tr].T) > 0)
    ap = mean_average_precision(m.encode(X[te], "image"), m.learned_codes("text"), Y[te], Y[tr])
    assert ap > chance + 0.15


def test_memory_has_no_n_by_n_matrix():
    n = 6000
    peak = peak_fit_bytes(lambda: CMFH(16, n_iter=2, random_state=0), n)
    assert peak < 0.05 * n * n * 8


@pytest.mark.parametrize("param, value, exc, match", [
    ("image_weight", -0.1, ValueError, "image_weight must be >= 0"),
    ("image_weight", 2.0, ValueError, r"image_weight must be in \[0, 1\]"),
    ("gamma", 0.0, ValueError, "gamma must be > 0, got 0.0"),
    ("n_iter", 2.5, TypeError, "n_iter must be an integer, got 2.5"),
])
def test_parameters_are_validated(param, value, exc, match):
    X, T, Y = make_structured(60)
    with pytest.raises(exc, match=match):
        CMFH(8, **{param: value}).fit(X, T, Y)
