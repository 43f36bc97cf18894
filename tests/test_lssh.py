"""LSSH: the sparse-coding and dictionary blocks meet their optimality conditions, every step
of a fit minimises its block, codes and hash functions as specified, no n x n matrix."""
import numpy as np
import pytest

import cmhash.methods.lssh as lssh_module
from cmhash.methods.lssh import LSSH, lssh_objective, text_latent
from cmhash.solvers import sign
from cmhash.sparse_coding import lasso_objective, sparse_codes, unit_ball_least_squares
from conftest import make_structured, peak_fit_bytes

HP = dict(lam=0.05, mu=0.7, gamma=1.3)


def assert_lasso_kkt(Y, S, G, lam, rtol=1e-4):
    """Subgradient condition of min ||y - s G||^2 + lam |s|_1 for every row:
    2 (y - s G) G^T = lam sign(s) where s != 0, and |.| <= lam where s = 0."""
    grad = 2.0 * (Y - S @ G) @ G.T
    nz = S != 0
    assert nz.any() and (~nz).any(), "the check needs both zero and non-zero coefficients"
    assert np.abs(grad[nz] - lam * np.sign(S[nz])).max() < rtol * lam
    assert np.abs(grad[~nz]).max() <= lam * (1 + rtol)


def assert_unit_ball_kkt(S, X, D, mult, rtol=1e-6):
    """KKT of min ||X - S D||^2 s.t. ||D_j|| <= 1: stationarity 2 S^T (S D - X) + 2 diag(mult) D
    = 0 on the used atoms, mult >= 0, feasibility, complementary slackness."""
    used = np.abs(S).sum(axis=0) > 0
    grad = (S.T @ (S @ D - X) + mult[:, None] * D)[used]
    assert np.abs(grad).max() < rtol * max(np.abs(S.T @ X).max(), 1.0)
    norms = np.linalg.norm(D, axis=1)
    assert (mult >= 0).all() and (norms <= 1 + 1e-12).all()
    assert np.abs(mult * (norms ** 2 - 1)).max() < rtol * max(np.abs(S.T @ X).max(), 1.0)


def test_sparse_codes_meet_the_lasso_optimality_condition():
    rng = np.random.default_rng(0)
    G = rng.standard_normal((40, 12))
    G /= np.linalg.norm(G, axis=1, keepdims=True)
    Y = rng.standard_normal((30, 12))
    lam = 0.8
    S = sparse_codes(Y, G, lam, tol=1e-12)
    assert_lasso_kkt(Y, S, G, lam)
    # a warm start reaches the same minimiser; a single row works too
    warm = sparse_codes(Y, G, lam, init=S + 0.01, tol=1e-12)
    assert lasso_objective(Y, warm, G, lam) == pytest.approx(lasso_objective(Y, S, G, lam),
                                                             rel=1e-8)
    assert np.allclose(sparse_codes(Y[:1], G, lam, tol=1e-12), S[:1], atol=1e-6)


def test_unit_ball_least_squares_meets_kkt_and_no_feasible_perturbation_lowers_it():
    rng = np.random.default_rng(1)
    S = rng.standard_normal((50, 8)) * np.array([3, 3, 3, 3, 0.05, 0.05, 0.05, 0.05])
    S[:, 7] = 0.0                                      # an atom no sample uses
    X = rng.standard_normal((50, 5))
    previous = rng.standard_normal((8, 5)) * 0.1
    D, mult = unit_ball_least_squares(S, X, previous)
    assert_unit_ball_kkt(S, X, D, mult)
    norms = np.linalg.norm(D, axis=1)
    assert (norms[:4] < 0.999).any() and np.isclose(norms[4:7], 1.0).all()   # both regimes
    assert np.array_equal(D[7], previous[7])                                  # unused: kept
    warm, _ = unit_ball_least_squares(S, X, previous, multipliers=2.0 * mult + 0.3)
    assert np.allclose(warm, D, atol=1e-6)                # a warm start: the same minimiser
    base = np.sum((X - S @ D) ** 2)
    for _ in range(20):
        P = D + 0.05 * rng.standard_normal(D.shape)
        P /= np.maximum(np.linalg.norm(P, axis=1, keepdims=True), 1.0)     # back into the balls
        assert np.sum((X - S @ P) ** 2) >= base - 1e-10 * base


@pytest.fixture(scope="module")
def recorded():
    """A fit with the inputs and outputs of every block step recorded."""
    steps = []
    real = {k: getattr(lssh_module, k) for k in ("text_latent", "unit_ball_least_squares",
                                                 "sparse_codes", "lssh_objective")}

    def spy(name):
        def f(*a, **k):
            out = real[name](*a, **k)
            steps.append((name, a, k, out))
            return out
        return f

    for name in real:
        setattr(lssh_module, name, spy(name))
    try:
        X, T, Y = make_structured(160, seed=4)
        m = LSSH(6, n_atoms=24, n_pca=10, n_iter=3, lasso_tol=1e-12, random_state=0,
                 **HP).fit(X, T, Y)
    finally:
        for name, f in real.items():
            setattr(lssh_module, name, f)
    return m, (X, T, Y), steps


def test_preprocessing_is_pca_and_unit_rows(recorded):
    m, (X, T, Y), _ = recorded
    Xc = X - X.mean(axis=0)
    evals, evecs = np.linalg.eigh(Xc.T @ Xc)
    top = evecs[:, ::-1][:, :10]
    # the same principal subspace, orthonormal axes
    assert np.allclose(m.image_components_ @ m.image_components_.T, np.eye(10), atol=1e-10)
    assert np.allclose(np.abs(m.image_components_ @ top), np.eye(10), atol=1e-6)
    Xp = m._image_features(X)
    assert np.allclose(np.linalg.norm(Xp, axis=1), 1.0)
    assert np.allclose(np.linalg.norm(m._text_features(T), axis=1), 1.0)


def test_every_step_minimises_its_block_and_the_objective_never_increases(recorded):
    m, (X, T, Y), steps = recorded
    obj = np.array(m.objective_)
    assert len(obj) == 3 and np.all(np.diff(obj) <= 1e-9 * obj[:-1]) and obj[-1] < obj[0]
    Xp, Tp = m._image_features(X), m._text_features(T)
    lam, mu, g = HP["lam"], HP["mu"], HP["gamma"]
    names = [s[0] for s in steps]
    # one iteration: A-step, U-step, S-step, D-step, R-step, objective (the second iteration)
    i = [k for k, nm in enumerate(names) if nm == "lssh_objective"][0] + 1
    assert names[i:i + 6] == ["text_latent", "unit_ball_least_squares", "sparse_codes",
                              "unit_ball_least_squares", "unit_ball_least_squares",
                              "lssh_objective"]
    (_, (T_a, S_a, U_a, R_a), _, A) = steps[i]
    (_, (A_u, T_u, _), _, (U, mult_u)) = steps[i + 1]
    (_, (Y_s, G_s, lam_s), _, S) = steps[i + 2]
    (_, (S_d, X_d, _), _, (D, mult_d)) = steps[i + 3]
    (_, (S_r, A_r, _), _, (R, mult_r)) = steps[i + 4]
    (_, objective_args, _, value) = steps[i + 5]
    assert value == pytest.approx(lssh_objective(Xp, Tp, S, A, D, U, R, lam=lam, mu=mu,
                                                 gamma=g), rel=1e-10)
    # A-step: zero gradient of mu ||T - A U||^2 + gamma ||A - S R||^2
    grad = mu * (A @ U_a - Tp) @ U_a.T + g * (A - S_a @ R_a)
    assert np.abs(grad).max() < 1e-9 * max(np.abs(Tp @ U_a.T).max(), 1.0)
    rng = np.random.default_rng(0)
    f_A = lambda Ap: mu * np.sum((Tp - Ap @ U_a) ** 2) + g * np.sum((Ap - S_a @ R_a) ** 2)
    for _ in range(5):
        assert f_A(A + 1e-3 * rng.standard_normal(A.shape)) > f_A(A)
    # U-, D- and R-steps: KKT of the constrained least squares at their inputs
    assert np.array_equal(A_u, A) and np.array_equal(S_d, S) and np.array_equal(S_r, S)
    assert_unit_ball_kkt(A, Tp, U, mult_u)
    assert_unit_ball_kkt(S, Xp, D, mult_d)
    assert_unit_ball_kkt(S, A, R, mult_r)
    # S-step: the stacked lasso [X, sqrt(g) A] against [D_prev, sqrt(g) R_prev] meets its
    # subgradient condition, i.e. S minimises ||X - S D||^2 + g ||A - S R||^2 + lam |S|_1
    assert lam_s == lam
    p = Xp.shape[1]
    (_, _, _, (D_prev, _)), (_, _, _, (R_prev, _)) = steps[i - 3], steps[i - 2]
    assert np.allclose(Y_s[:, :p], Xp) and np.allclose(Y_s[:, p:], np.sqrt(g) * A)
    assert np.allclose(G_s, np.hstack([D_prev, np.sqrt(g) * R_prev]))
    assert_lasso_kkt(Y_s, S, G_s, lam)


def test_codes_and_hash_functions(recorded):
    m, (X, T, Y), _ = recorded
    Xp, Tp = m._image_features(X), m._text_features(T)
    S_img = sparse_codes(Xp, m.dictionary_, HP["lam"], tol=1e-12)
    # training codes: the A-step with the images' own lasso codes (the released code)
    A = text_latent(Tp, S_img, m.text_basis_, m.latent_map_, mu=HP["mu"], gamma=HP["gamma"])
    assert np.array_equal(m.codes_, sign(A))
    assert np.array_equal(m.encode(X, "image"), sign(S_img @ m.latent_map_))
    M = HP["mu"] * m.text_basis_ @ m.text_basis_.T + HP["gamma"] * np.eye(6)
    text = HP["mu"] * Tp @ m.text_basis_.T @ np.linalg.inv(M)
    assert np.array_equal(m.encode(T, "text"), sign(text))
    # row-by-row encoding: the same codes in chunks of one
    assert np.array_equal(np.vstack([m.encode(X[i:i + 1], "image") for i in range(5)]),
                          m.encode(X[:5], "image"))


def test_unsupervised_and_retrieval_beats_chance():
    from cmhash.metrics import mean_average_precision
    X, T, Y = make_structured(500, seed=2, noise=0.5)
    tr, te = np.arange(400), np.arange(400, 500)
    kw = dict(n_atoms=48, n_pca=None, n_iter=5, random_state=0)
    m = LSSH(16, **kw).fit(X[tr], T[tr], Y[tr])
    shuffled = LSSH(16, **kw).fit(X[tr], T[tr], Y[tr][::-1])
    assert np.array_equal(m.codes_, shuffled.codes_)
    chance = np.mean((Y[te] @ Y[tr].T) > 0)
    for q, Q, db in (("image", X[te], "text"), ("text", T[te], "image")):
        ap = mean_average_precision(m.encode(Q, q), m.learned_codes(db), Y[te], Y[tr])
        assert ap > chance + 0.2


@pytest.mark.slow
def test_memory_has_no_n_by_n_matrix():
    n = 4000
    peak = peak_fit_bytes(lambda: LSSH(8, n_atoms=16, n_iter=1, random_state=0), n)
    assert peak < 0.05 * n * n * 8


@pytest.mark.parametrize("param, value, exc, match", [
    ("lam", 0.0, ValueError, "lam must be > 0, got 0.0"),
    ("n_atoms", 0, ValueError, "n_atoms must be >= 1, got 0"),
    ("n_pca", 2.5, TypeError, "n_pca must be an integer, got 2.5"),
    ("gamma", -1.0, ValueError, "gamma must be > 0"),
])
def test_parameters_are_validated(param, value, exc, match):
    X, T, Y = make_structured(60)
    with pytest.raises(exc, match=match):
        LSSH(8, **{param: value}).fit(X, T, Y)
