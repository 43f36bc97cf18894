"""ASCMH: each closed-form step solves its sub-problem of Eq. 7, the objective never increases,
the n x n similarity is never formed, and the codes retrieve."""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from cmhash.kernel import RBFAnchorFeatures
from cmhash.labels import normalize_rows
from cmhash.methods.ascmh import (ASCMH, ascmh_objective, update_M, update_P, update_R, v_step_target)
from cmhash.metrics import mean_average_precision
from cmhash.solvers import orthogonal_zero_mean, procrustes, sign

from conftest import WIKI  # ../shared or $CMHASH_SHARED


# ------------------------------------------------------------------------------ fixtures
def make_data(n=150, c=4, d=(20, 30), seed=0, multilabel=0.3):
    """Label-dependent features: each class a prototype per modality, items = mean + noise."""
    rng = np.random.default_rng(seed)
    L = np.zeros((n, c))
    L[np.arange(n), rng.integers(0, c, n)] = 1
    L[rng.random((n, c)) < multilabel / c] = 1
    protos = [rng.standard_normal((c, dv)) for dv in d]
    views = [(L @ P) / L.sum(1, keepdims=True) + 0.7 * rng.standard_normal((n, P.shape[1]))
             for P in protos]
    return views, L


@pytest.fixture(scope="module")
def problem():
    """A random feasible point of Eq. 7 on small data (float64 kernel features)."""
    views, L = make_data()
    n, r = L.shape[0], 8
    phis = [RBFAnchorFeatures(q, dtype=np.float64, random_state=1).fit_transform(X)
            for q, X in zip((15, 25), views)]
    rng = np.random.default_rng(3)
    st = dict(L=L, G=normalize_rows(L), phis=phis, n=n, r=r, lambdas=(0.7, 1.3), omega=0.4)
    st["V"] = orthogonal_zero_mean(rng.standard_normal((n, r)), rng)
    st["R"] = procrustes(rng.standard_normal((r, r)))
    st["M"] = rng.standard_normal((L.shape[1], r))
    st["B"] = sign(rng.standard_normal((n, r))).astype(float)
    st["Ps"] = [rng.standard_normal((r, p.shape[1])) for p in phis]
    return st


def objective(st, **over):
    s = {**st, **over}
    return ascmh_objective(s["V"], s["R"], s["M"], s["B"], s["Ps"], s["L"], s["G"], s["phis"],
                           s["lambdas"], s["omega"], s["r"])


def num_grad(f, X, h=1e-4):
    """Central finite differences of scalar f at matrix X (exact for quadratics up to rounding)."""
    g = np.zeros_like(X)
    for idx in np.ndindex(X.shape):
        E = np.zeros_like(X)
        E[idx] = h
        g[idx] = (f(X + E) - f(X - E)) / (2 * h)
    return g


def random_rotation(rng, r, scale=1.0):
    S = rng.standard_normal((r, r)) * scale
    from scipy.linalg import expm
    return expm(S - S.T)


# --------------------------------------------------------------------- objective expansion
def test_objective_equals_dense_formula(problem):
    """The O(n (q + c) r) expansion equals Eq. 7 evaluated with the explicit n x n matrix."""
    st = problem
    A = st["V"] @ st["R"]
    N = st["L"] @ st["M"]
    S = st["r"] * st["G"] @ st["G"].T
    dense = (np.sum((A @ N.T - S) ** 2) + st["omega"] * np.sum((st["B"] - N) ** 2)
             + sum(lam * np.sum((phi - st["V"] @ P) ** 2)
                   for lam, phi, P in zip(st["lambdas"], st["phis"], st["Ps"])))
    assert objective(st) == pytest.approx(dense, rel=1e-10)
    terms = ascmh_objective(st["V"], st["R"], st["M"], st["B"], st["Ps"], st["L"], st["G"],
                            st["phis"], st["lambdas"], st["omega"], st["r"], terms=True)
    assert terms["total"] == pytest.approx(dense, rel=1e-10)


# ------------------------------------------------------------------- closed-form steps
def test_P_step_zeroes_gradient(problem):
    st = problem
    Ps = [update_P(st["V"], st["V"].T @ phi) for phi in st["phis"]]
    np.testing.assert_allclose(Ps[0], st["V"].T @ st["phis"][0] / st["n"], atol=1e-12)  # Eq. 10
    for t in range(2):
        def f(P, t=t):
            Q = list(Ps)
            Q[t] = P
            return objective(st, Ps=Q)
        g_opt = num_grad(f, Ps[t])
        g_off = num_grad(f, Ps[t] + 0.1)
        assert np.abs(g_off).max() > 1.0
        assert np.abs(g_opt).max() < 1e-6 * np.abs(g_off).max()


@pytest.mark.parametrize("singular", [False, True])
def test_M_step_zeroes_gradient(problem, singular):
    """Eq. 12 corrected; also when L^T L is singular (a duplicated class column)."""
    st = dict(problem)
    if singular:
        st["L"] = np.hstack([st["L"], st["L"][:, :1]])
        st["G"] = normalize_rows(st["L"])
        assert np.linalg.matrix_rank(st["L"].T @ st["L"]) < st["L"].shape[1]
    M = update_M(st["V"] @ st["R"], st["L"], st["G"], st["B"], st["omega"], st["r"])
    f = lambda X: objective(st, M=X)  # noqa: E731
    g_opt = num_grad(f, M)
    g_off = num_grad(f, M + 0.05)
    assert np.abs(g_off).max() > 1.0
    assert np.abs(g_opt).max() < 1e-6 * np.abs(g_off).max()
    # under A^T A = n I the general form reduces to (L^T L)^+ K / (n + omega)
    K = (st["r"] * st["L"].T @ st["G"] @ (st["G"].T @ st["V"] @ st["R"])
         + st["omega"] * st["L"].T @ st["B"])
    np.testing.assert_allclose(M, np.linalg.pinv(st["L"].T @ st["L"]) @ K / (st["n"] + st["omega"]),
                               rtol=1e-8, atol=1e-10)


def test_R_step_is_optimal_rotation(problem):
    st = problem
    rng = np.random.default_rng(7)
    LMc = st["G"].T @ st["L"] @ st["M"]
    R = update_R(st["V"], st["G"], LMc, st["r"])
    np.testing.assert_allclose(R.T @ R, np.eye(st["r"]), atol=1e-12)
    best = objective(st, R=R)
    others = [objective(st, R=procrustes(rng.standard_normal((st["r"], st["r"]))))
              for _ in range(100)]
    near = [objective(st, R=R @ random_rotation(rng, st["r"], 1e-3)) for _ in range(20)]
    assert best <= min(others) and best <= min(near) + 1e-9 * abs(best)
    assert min(others) > best  # the test can fail: rotations matter here


def test_V_step_is_optimal_and_feasible(problem):
    st = problem
    rng = np.random.default_rng(11)
    LMc = st["G"].T @ st["L"] @ st["M"]
    Z = v_step_target(st["G"], LMc, st["R"], st["phis"], st["Ps"], st["lambdas"], st["r"])
    V = orthogonal_zero_mean(Z, rng)
    n, r = st["n"], st["r"]
    np.testing.assert_allclose(V.T @ V, n * np.eye(r), atol=1e-9)
    np.testing.assert_allclose(V.sum(0), 0, atol=1e-6)
    # first-order optimality on {V^T V = n I, V^T 1 = 0}: Zc^T V symmetric positive semidefinite
    C = (Z - Z.mean(0)).T @ V
    np.testing.assert_allclose(C, C.T, atol=1e-8 * np.abs(C).max())
    assert np.linalg.eigvalsh((C + C.T) / 2).min() > -1e-8 * np.abs(C).max()
    best = objective(st, V=V)
    others = [objective(st, V=orthogonal_zero_mean(rng.standard_normal((n, r)), rng))
              for _ in range(30)]
    near = [objective(st, V=V @ random_rotation(rng, r, 1e-3)) for _ in range(20)]
    assert best < min(others) and best <= min(near) + 1e-9 * abs(best)


def test_V_solver_keeps_small_directions():
    """Z with singular values over ~9 decades (ASCMH's label part + factorisation part): the
    V-step solver must attain the maximum; an eigenvalue-of-Zc^T Zc solver with a rank threshold
    randomises the small directions and made the recorded objective non-monotone on Wiki."""
    rng = np.random.default_rng(0)
    n, r = 400, 12
    U, _ = np.linalg.qr(rng.standard_normal((n, r)))
    U -= U.mean(0)
    W, _ = np.linalg.qr(rng.standard_normal((r, r)))
    # six large and six small singular values (sigma_k / sigma_1 <= 1e-7: eigenvalues of
    # Zc^T Zc below 1e-14 relative, under the shared solver's 1e-10 rank threshold)
    s = np.concatenate([np.logspace(0, -2, 6), np.logspace(-7, -9, 6)])
    Z = (U * s) @ W.T
    V = orthogonal_zero_mean(Z, rng)
    np.testing.assert_allclose(V.T @ V, n * np.eye(r), atol=1e-9)
    np.testing.assert_allclose(V.sum(0), 0, atol=1e-6)
    Zc = Z - Z.mean(0)
    opt = np.sqrt(n) * np.linalg.svd(Zc, compute_uv=False).sum()   # max tr(Zc^T V)
    small = np.sqrt(n) * s[6:].sum()
    # a solver that randomised the six small directions would miss opt by ~small
    assert np.trace(Zc.T @ V) == pytest.approx(opt, abs=1e-3 * small)


def test_B_step_minimises_quantisation(problem):
    st = problem
    N = st["L"] @ st["M"]
    B = sign(N).astype(float)
    assert set(np.unique(B)) <= {-1.0, 1.0}
    base = objective(st, B=B)
    rng = np.random.default_rng(2)
    for _ in range(20):
        F = B.copy()
        idx = rng.integers(0, F.shape[0]), rng.integers(0, F.shape[1])
        F[idx] *= -1
        assert objective(st, B=F) >= base


def test_every_step_and_iteration_non_increasing(problem):
    """Algorithm 1 in float64: no step increases Eq. 7."""
    st = dict(problem)
    rng = np.random.default_rng(5)
    vals = [objective(st)]
    for _ in range(6):
        st["Ps"] = [update_P(st["V"], st["V"].T @ phi) for phi in st["phis"]]
        vals.append(objective(st))
        st["M"] = update_M(st["V"] @ st["R"], st["L"], st["G"], st["B"], st["omega"], st["r"])
        vals.append(objective(st))
        LMc = st["G"].T @ st["L"] @ st["M"]
        st["R"] = update_R(st["V"], st["G"], LMc, st["r"])
        vals.append(objective(st))
        Z = v_step_target(st["G"], LMc, st["R"], st["phis"], st["Ps"], st["lambdas"], st["r"])
        st["V"] = orthogonal_zero_mean(Z, rng)
        vals.append(objective(st))
        st["B"] = sign(st["L"] @ st["M"]).astype(float)
        vals.append(objective(st))
    d = np.diff(vals)
    assert np.all(d <= 1e-10 * abs(vals[0])), d
    assert vals[-1] < 0.5 * vals[0]


# ------------------------------------------------------------------------- estimator
@pytest.fixture(scope="module")
def fitted():
    views, L = make_data(n=300, seed=4)
    h = ASCMH(16, n_anchors=(40, 60), n_iter=8, random_state=0).fit(*views, L)
    return h, views, L


def test_fit_constraints_and_monotone_objective(fitted):
    h, views, L = fitted
    n, r = L.shape[0], 16
    assert h.codes_.dtype == np.int8 and set(np.unique(h.codes_)) <= {-1, 1}
    np.testing.assert_allclose(h.latent_.T @ h.latent_, n * np.eye(r), atol=1e-8)
    np.testing.assert_allclose(h.latent_.sum(0), 0, atol=1e-6)  # centring a Z with large means
    np.testing.assert_allclose(h.rotation_.T @ h.rotation_, np.eye(r), atol=1e-12)
    np.testing.assert_array_equal(h.codes_, sign(L @ h.label_projection_))
    obj = np.asarray(h.objective_)
    assert obj.shape == (8,) and h.n_iter_ == 8
    # float32 kernel features: allow rounding at 1e-9 of the objective
    assert np.all(np.diff(obj) <= 1e-9 * obj[0]), np.diff(obj)


def test_same_seed_same_codes(fitted):
    h, views, L = fitted
    h2 = ASCMH(16, n_anchors=(40, 60), n_iter=8, random_state=0).fit(*views, L)
    np.testing.assert_array_equal(h.codes_, h2.codes_)
    np.testing.assert_array_equal(h.encode(views[0], "image"), h2.encode(views[0], "image"))
    h3 = ASCMH(16, n_anchors=(40, 60), n_iter=8, random_state=1).fit(*views, L)
    assert np.any(h3.codes_ != h.codes_)


def test_retrieval_beats_chance_and_lsh():
    views, L = make_data(n=700, seed=9, multilabel=0.0)
    tr, te = np.arange(500), np.arange(500, 700)
    h = ASCMH(16, n_anchors=(60, 80), random_state=0).fit(views[0][tr], views[1][tr], L[tr])
    rng = np.random.default_rng(0)
    res = {}
    for q, d, name in ((0, 1, "text"), (1, 0, "image")):
        Q = h.encode(views[q][te], q)
        m = mean_average_precision(Q, h.learned_codes(name), L[te], L[tr])
        # chance: random codes; baseline: sign of a random projection of the kernel features
        chance = mean_average_precision(sign(rng.standard_normal(Q.shape)), h.codes_, L[te], L[tr])
        Wq = rng.standard_normal((h.kernels_[q].anchors_.shape[0], 16))
        Wd = rng.standard_normal((h.kernels_[d].anchors_.shape[0], 16))
        lsh = mean_average_precision(sign(h.kernels_[q].transform(views[q][te]) @ Wq),
                                     sign(h.kernels_[d].transform(views[d][tr]) @ Wd),
                                     L[te], L[tr])
        res[name] = (m, chance, lsh)
        assert m > chance + 0.3 and m > lsh + 0.3, res


def test_never_forms_n_by_n():
    """Peak memory of a fit at n = 6,000 stays far below one n x n float64 matrix (288 MB)."""
    views, L = make_data(n=6000, d=(10, 10), seed=1)
    h = ASCMH(16, n_anchors=(20, 20), n_iter=3, random_state=0)
    tracemalloc.start()
    h.fit(*views, L)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 0.1 * 6000 ** 2 * 8, peak


def test_save_load_roundtrip(fitted, tmp_path):
    import cmhash.base as base
    h, views, L = fitted
    path = h.save(tmp_path / "m.npz")
    h2 = base.load(path)
    np.testing.assert_array_equal(h2.encode(views[1], "text"), h.encode(views[1], "text"))
    np.testing.assert_array_equal(h2.learned_codes("image"), h.codes_)
    assert h2.objective_ == h.objective_


@pytest.mark.parametrize("param,value,msg", [
    ("omega", -1.0, "-1"), ("lambda_image", float("nan"), "nan"), ("lambda_h", -0.5, "-0.5"),
    ("n_iter", 0, "0"), ("anchor_method", "grid", "grid"), ("n_anchors", (10, 10, 10), "(10, 10, 10)"),
])
def test_bad_params_raise(param, value, msg):
    views, L = make_data(n=60)
    with pytest.raises(ValueError, match=param):
        ASCMH(8, **{param: value}).fit(*views, L)
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        ASCMH(8, **{param: value}).fit(*views, L)


def test_too_many_bits_for_samples():
    views, L = make_data(n=30)
    with pytest.raises(ValueError, match="n_bits=32"):
        ASCMH(32, n_anchors=(10, 10)).fit(*views, L)


def test_presets_are_valid_parameters():
    names = set(ASCMH._param_names())
    for ds, p in ASCMH.PRESETS.items():
        assert set(p) <= names, ds
    for v, p in ASCMH.VARIANTS.items():
        assert set(p) <= names, v


@pytest.mark.skipif(not WIKI.exists(), reason="Wiki data not available")
def test_wiki_beats_chance_by_far():
    import scipy.io as sio
    d = sio.loadmat(str(WIKI))
    L_tr, L_te = d["L_train"].astype(float), d["L_test"].astype(float)
    h = ASCMH(32, random_state=0, **ASCMH.PRESETS["wiki"]).fit(d["I_tr"], d["T_tr"], L_tr)
    rng = np.random.default_rng(0)
    for q, key, db in ((0, "I_te", "text"), (1, "T_te", "image")):
        m = mean_average_precision(h.encode(d[key], q), h.learned_codes(db), L_te, L_tr)
        # a random ranking has AP ~ the fraction of relevant items (~0.11 on Wiki)
        prevalence = float(np.mean((L_te @ L_tr.T > 0).mean(axis=1)))
        random_queries = mean_average_precision(sign(rng.standard_normal((L_te.shape[0], 32))),
                                                h.learned_codes(db), L_te, L_tr)
        assert m > 2.5 * prevalence and m > random_queries + 0.1, (m, prevalence, random_queries)


def test_steps_from_shared_products_equal_the_steps_from_the_matrices(problem):
    """The fit passes V^T V, G^T V, L^T B (computed once per V / B) to the steps and the
    objective; each then equals its value computed from the n-sized matrices."""
    from cmhash.methods.ascmh import objective_constants
    st = problem
    V, R, L, G, B = st["V"], st["R"], st["L"], st["G"], st["B"]
    VtV, GtV, LtB = V.T @ V, G.T @ V, L.T @ B
    Vp = V.T @ st["phis"][0]
    np.testing.assert_allclose(update_P(V, Vp, VtV=VtV), update_P(V, Vp), rtol=1e-12)
    M = update_M(V @ R, L, G, B, st["omega"], st["r"])
    M2 = update_M(None, L, G, B, st["omega"], st["r"], GtA=GtV @ R, AtA=R.T @ VtV @ R, LtB=LtB)
    np.testing.assert_allclose(M2, M, rtol=1e-10, atol=1e-12)
    LMc = G.T @ L @ M
    np.testing.assert_allclose(update_R(V, G, LMc, st["r"], GtV=GtV),
                               update_R(V, G, LMc, st["r"]), atol=1e-12)
    args = (V, R, M, B, st["Ps"], L, G, st["phis"], st["lambdas"], st["omega"], st["r"])
    shared = ascmh_objective(*args, VtV=VtV, GtV=GtV, LtB=LtB,
                             constants=objective_constants(L, G),
                             Vt_phis=[V.T @ phi for phi in st["phis"]])
    assert shared == pytest.approx(ascmh_objective(*args), rel=1e-12)
