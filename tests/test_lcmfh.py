"""LCMFH: every step minimises its block of the objective; codes and hash functions as specified."""
import numpy as np
import pytest

import cmhash.methods.lcmfh as lcmfh_module
from cmhash.labels import normalize_rows
from cmhash.methods.lcmfh import LCMFH
from cmhash.solvers import sign
from conftest import held_out_maps, make_structured, peak_fit_bytes

HP = dict(image_weight=0.3, mu=2.0, gamma=0.4)


@pytest.fixture(scope="module")
def recorded():
    """A fit with the arguments of every objective evaluation recorded."""
    calls = []
    real = lcmfh_module.lcmfh_objective

    def rec(*a, **k):
        calls.append((a, k))
        return real(*a, **k)

    lcmfh_module.lcmfh_objective = rec
    try:
        X, T, Y = make_structured(150, seed=4)
        m = LCMFH(6, n_iter=4, random_state=0, **HP).fit(X, T, Y)
    finally:
        lcmfh_module.lcmfh_objective = real
    Xs = [k.transform(Z).astype(np.float64) for k, Z in zip(m.kernels_, (X, T))]
    return m, Xs, normalize_rows(Y), calls


def explicit_objective(Z, Us, Ps, Xs, Ln):
    a = (HP["image_weight"], 1 - HP["image_weight"])
    V = Ln @ Z
    val = HP["gamma"] * np.sum(V * V)
    for w, X, U, P in zip(a, Xs, Us, Ps):
        val += w * np.sum((X - V @ U) ** 2) + HP["mu"] * np.sum((V - X @ P) ** 2)
        val += HP["gamma"] * (np.sum(U * U) + np.sum(P * P))
    return val


def test_objective_never_increases_and_is_the_written_one(recorded):
    m, Xs, Ln, calls = recorded
    obj = np.array(m.objective_)
    assert len(obj) == 4 and np.all(np.diff(obj) <= 1e-9 * obj[:-1]) and obj[-1] < obj[0]
    (Z, Us, Ps), _ = calls[2]
    assert obj[2] == pytest.approx(explicit_objective(Z, Us, Ps, Xs, Ln), rel=1e-8)


def _perturbed_never_lower(f, x, rng, eps=1e-3, trials=6):
    base = f(x)
    for _ in range(trials):
        E = rng.standard_normal(x.shape)
        for s in (eps, -eps):
            assert f(x + s * E / np.linalg.norm(E) * max(np.linalg.norm(x), 1.0)) >= base - 1e-9 * abs(base)


def test_every_step_minimises_its_block(recorded):
    """U at the previous Z (and P), Z with the new U and the previous P, P at the new Z: each is
    a stationary point of a strictly convex block (zero gradient), and random perturbations of
    the block never lower the objective."""
    m, Xs, Ln, calls = recorded
    rng = np.random.default_rng(0)
    (Z_prev, U_prev, P_prev), _ = calls[1]
    (Z, Us, Ps), _ = calls[2]
    a = (HP["image_weight"], 1 - HP["image_weight"])
    g, mu = HP["gamma"], HP["mu"]
    V_prev, V = Ln @ Z_prev, Ln @ Z
    for w, X, U in zip(a, Xs, Us):                       # U-step at the previous V
        grad = w * (V_prev @ U - X).T @ V_prev + g * U.T
        assert np.abs(grad).max() < 1e-8 * np.abs(X.T @ V_prev).max()
    # Z-step with the new U and the previous P
    terms = [w * (V @ U - X) @ U.T + mu * (V - X @ P) for w, X, U, P in zip(a, Xs, Us, P_prev)]
    gradZ = Ln.T @ (sum(terms) + g * V)
    scale = max(np.abs(Ln.T @ t).max() for t in terms)
    assert np.abs(gradZ).max() < 1e-8 * scale
    for X, P in zip(Xs, Ps):                             # P-step at the new V
        grad = mu * X.T @ (X @ P - V) + g * P
        assert np.abs(grad).max() < 1e-6 * mu * np.abs(X.T @ V).max()
    # perturbations
    _perturbed_never_lower(lambda Zp: explicit_objective(Zp, Us, P_prev, Xs, Ln), Z, rng)
    _perturbed_never_lower(lambda U0: explicit_objective(Z_prev, [U0, U_prev[1]], P_prev, Xs,
                                                         Ln), Us[0], rng)
    _perturbed_never_lower(lambda P1: explicit_objective(Z, Us, [Ps[0], P1], Xs, Ln), Ps[1], rng)


def test_codes_latent_and_hash_functions(recorded):
    m, Xs, Ln, calls = recorded
    (Z, Us, Ps), _ = calls[-1]
    assert np.array_equal(m.label_map_, Z) and np.allclose(m.latent_, Ln @ Z)
    # the latent is tied to the labels: items with the same label set share it
    assert np.array_equal(m.codes_, sign(m.latent_ - m.latent_.mean(axis=0)))
    X, T, Y = make_structured(150, seed=4)
    same = np.flatnonzero((Y == Y[0]).all(axis=1))
    assert same.size > 1 and (m.codes_[same] == m.codes_[same[0]]).all()
    assert np.array_equal(m.encode(T, "text"), sign(Xs[1] @ m.projections_[1]))
    assert np.array_equal(m.encode(X, "image"), sign(Xs[0] @ m.projections_[0]))


def test_training_codes_are_thresholded_at_the_latent_mean():
    """With a weak projection term the latent's column means are far enough from 0 to change
    some signs: the codes are sign(V - mean(V)), not sign(V)."""
    X, T, Y = make_structured(150, seed=4)
    m = LCMFH(6, n_iter=4, mu=0.01, gamma=0.4, random_state=0).fit(X, T, Y)
    V = m.latent_
    assert np.array_equal(m.codes_, sign(V - V.mean(axis=0)))
    assert not np.array_equal(m.codes_, sign(V))


def test_labels_drive_the_codes_and_retrieval_beats_chance():
    i2t, t2i, chance = held_out_maps(lambda: LCMFH(16, random_state=0))
    assert i2t > chance + 0.2 and t2i > chance + 0.2
    X, T, Y = make_structured(200, seed=1)
    a = LCMFH(8, random_state=0).fit(X, T, Y)
    b = LCMFH(8, random_state=0).fit(X, T, Y[::-1])
    assert not np.array_equal(a.codes_, b.codes_)


def test_memory_has_no_n_by_n_matrix():
    n = 6000
    peak = peak_fit_bytes(lambda: LCMFH(16, n_iter=2, random_state=0), n)
    assert peak < 0.05 * n * n * 8


@pytest.mark.parametrize("param, value, exc, match", [
    ("image_weight", 1.0, ValueError, r"image_weight must be in \(0, 1\)"),
    ("mu", 0.0, ValueError, "mu must be > 0, got 0.0"),
    ("gamma", -1.0, ValueError, "gamma must be > 0"),
    ("n_iter", 2.5, TypeError, "n_iter must be an integer, got 2.5"),
])
def test_parameters_are_validated(param, value, exc, match):
    X, T, Y = make_structured(60)
    with pytest.raises(exc, match=match):
        LCMFH(8, **{param: value}).fit(X, T, Y)
