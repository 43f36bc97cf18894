"""AMSH: each closed-form step solves its sub-problem, Eq. 10 decreases, unpaired training works.

The mathematics tested here is derived in docs/methods/amsh.md (row-sample convention).
"""
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from cmhash import NumericalFallbackWarning
from cmhash.kernel import CenteredFeatures, RBFAnchorFeatures
from cmhash.methods.amsh import AMSH, HashStage, Stage1, _pca_init
from cmhash.metrics import mean_average_precision
from cmhash.solvers import ridge_regression, sign
from conftest import make_structured

PUBLISHED = Path(__file__).resolve().parents[1] / "src" / "cmhash" / "published" / "amsh.json"


def _random_feasible(n, r, rng):
    """A random V with V^T V = n I and V^T 1 = 0."""
    M = rng.standard_normal((n, r))
    M -= M.mean(axis=0)
    Q, _ = np.linalg.qr(M)
    return np.sqrt(n) * Q


def _unpaired_problem(sizes=(120, 90, 150), c=4, r=6, seed=0, lam=0.1, beta=0.05, eta=0.7):
    """Three unpaired modalities of different sizes with multi-label targets; one iteration
    done so that V is feasible and P, E are set."""
    rng = np.random.default_rng(seed)
    labels = []
    for n in sizes:
        L = np.zeros((n, c))
        L[np.arange(n), rng.integers(0, c, n)] = 1
        L[rng.random((n, c)) < 0.2] = 1
        labels.append(L)
    V0 = [rng.standard_normal((n, r)) for n in sizes]
    s = Stage1(labels, V0, n_bits=r, eta=eta, lam=lam, beta=beta, rng=rng)
    s.iterate()
    return s, rng


def _brute_objective(s):
    """Eq. 10 with every n_i x n_j matrix formed explicitly (small sizes only)."""
    r = s.r
    J = 0.0
    for t in range(s.m):
        J += np.sum((s.targets(t) - s.V[t] @ s.P[t].T) ** 2)
        J += s.eta * np.sum((s.B[t] - s.V[t]) ** 2)
        J += s.lam * np.sum((s.B[t] @ s.V[t].T - r * s.Lh[t] @ s.Lh[t].T) ** 2)
    for i in range(s.m):
        for j in range(i + 1, s.m):
            J += s.beta * np.sum((s.V[i] @ s.V[j].T - r * s.Lh[i] @ s.Lh[j].T) ** 2)
    return J


# ------------------------------------------------------------------------ stage 1
def test_objective_through_labels_equals_brute_force():
    s, _ = _unpaired_problem()
    assert np.isclose(s.objective(), _brute_objective(s), rtol=1e-10)


def test_each_stage1_step_does_not_increase_the_objective():
    s, _ = _unpaired_problem(seed=3)
    for _ in range(6):
        for step in (s.update_P, s.update_V, s.update_B, s.update_E):
            before = s.objective()
            step()
            assert s.objective() <= before + 1e-9 * abs(before)


def test_P_step_zeroes_the_gradient():
    s, rng = _unpaired_problem(seed=4)
    s.update_P()
    for t in range(s.m):
        P0 = s.P[t].copy()
        G = np.zeros_like(P0)
        h = 1e-5
        for idx in np.ndindex(P0.shape):
            s.P[t] = P0.copy(); s.P[t][idx] += h
            fp = s.objective()
            s.P[t] = P0.copy(); s.P[t][idx] -= h
            fm = s.objective()
            G[idx] = (fp - fm) / (2 * h)
        s.P[t] = P0
        scale = np.sum(s.targets(t) ** 2)
        assert np.max(np.abs(G)) < 1e-6 * scale
        # and a non-optimal P has a clearly non-zero gradient (the check can fail)
        assert np.max(np.abs(2 * (s.V[t].T @ (s.V[t] @ (P0 + 0.1).T - s.targets(t))))) > 1e-3


def test_V_step_linearisation_and_optimality():
    """On the feasible set J(V_i) = const - 2 tr(Z_i^T V_i): checks the Z of Eq. 13 (with the
    beta r coefficient of the unordered-pair objective), then optimality against competitors."""
    s, rng = _unpaired_problem(seed=5)
    s.update_P()
    for i in range(s.m):
        n, r = s.V[i].shape
        Z = s.z_matrix(i)
        Va, Vb = _random_feasible(n, r, rng), _random_feasible(n, r, rng)
        keep = s.V[i]
        s.V[i] = Va; Ja = s.objective()
        s.V[i] = Vb; Jb = s.objective()
        s.V[i] = keep
        assert np.isclose(Ja - Jb, -2 * np.sum(Z * (Va - Vb)), rtol=1e-8, atol=1e-8 * abs(Ja))
        s.update_V(i)
        V = s.V[i]
        assert np.allclose(V.T @ V, n * np.eye(r), atol=1e-8 * n)
        assert np.allclose(V.sum(axis=0), 0, atol=1e-8 * n)
        best = s.objective()
        for _ in range(30):
            s.V[i] = _random_feasible(n, r, rng)
            assert s.objective() >= best - 1e-9 * abs(best)
            A = rng.standard_normal((r, r)) * 1e-2
            Rot, _ = np.linalg.qr(np.eye(r) + (A - A.T) / 2)
            s.V[i] = V @ Rot
            assert s.objective() >= best - 1e-9 * abs(best)
        s.V[i] = V


def test_B_step_is_the_exact_binary_minimiser():
    s, rng = _unpaired_problem(seed=6)
    s.update_P(); s.update_V()
    s.update_B()
    for t in range(s.m):
        B = s.B[t].copy()
        best = s.objective()
        # the sub-objective is linear in B on the feasible V: every single-bit flip is worse
        for _ in range(100):
            u, k = rng.integers(B.shape[0]), rng.integers(B.shape[1])
            s.B[t] = B.copy(); s.B[t][u, k] *= -1
            assert s.objective() >= best - 1e-9 * abs(best)
        s.B[t] = sign(rng.standard_normal(B.shape)).astype(float)
        assert s.objective() >= best
        s.B[t] = B
        assert set(np.unique(B)) <= {-1.0, 1.0}


def test_E_step_is_the_exact_minimiser_of_eq19():
    s, rng = _unpaired_problem(seed=7)
    s.update_P(); s.update_V(); s.update_B()
    s.update_E()
    for t in range(s.m):
        E = s.E[t]
        assert np.all(E >= 0)
        # KKT of min_{E >= 0} ||H - R o E||^2 (H = V P^T - L, R o R = 1): gradient
        # g = 2 (E - R o H); E > 0 => g = 0, E = 0 => g >= 0
        H = s.V[t] @ s.P[t].T - s.L[t]
        g = 2 * (E - s.R[t] * H)
        assert np.allclose(g[E > 0], 0, atol=1e-12)
        assert np.all(g[E == 0] >= -1e-12)
        assert np.count_nonzero(E > 0) > 0 and np.count_nonzero(E == 0) > 0
        best = s.objective()
        for _ in range(30):
            s.E[t] = np.maximum(E + 0.05 * rng.standard_normal(E.shape), 0)
            assert s.objective() >= best
        s.E[t] = E


def test_objective_decreases_monotonically_over_a_fit():
    X, T, Y = make_structured(300, seed=1)
    h = AMSH(16, n_anchors=60, lam=0.05, beta=0.05, random_state=0).fit(X, T, Y)
    obj = np.array(h.objective_)
    assert len(obj) == h.n_iter == 15
    assert np.all(np.diff(obj) <= 1e-9 * np.abs(obj[:-1]))
    assert obj[-1] < obj[0]
    ho = np.array(h.objective_hash_)
    assert len(ho) == 15 and np.all(np.diff(ho) <= 1e-9 * ho[:-1]) and ho[-1] < ho[0]
    for B, V in zip(h.codes_, h.latent_):
        assert B.dtype == np.int8 and set(np.unique(B)) <= {-1, 1}
        assert np.allclose(V.T @ V, 300 * np.eye(16), atol=1e-6 * 300)
        assert np.allclose(V.sum(axis=0), 0, atol=1e-6 * 300)


def test_pca_init_spans_the_top_principal_directions():
    rng = np.random.default_rng(0)
    phi = (rng.standard_normal((500, 30)) * np.linspace(5, 0.1, 30)).astype(np.float32)
    for k in (200, 20):  # covariance route (k >= q) and Gram route (k < q)
        V = _pca_init(phi, 4, k, np.random.default_rng(1))
        # V = phi W with W orthonormal: recover W and compare with the sample's eigenvectors
        W = np.linalg.lstsq(phi.astype(float), V, rcond=None)[0]
        assert np.allclose(W.T @ W, np.eye(4), atol=1e-5)
        idx = np.sort(np.random.default_rng(1).choice(500, size=k, replace=False))
        S = phi[idx].astype(float) - phi[idx].mean(axis=0)
        _, U = np.linalg.eigh(S.T @ S)
        assert np.allclose(np.abs(W.T @ U[:, ::-1][:, :4]), np.eye(4), atol=1e-4)
    V = _pca_init(phi[:, :3], 8, 100, rng)  # fewer directions than bits: Gaussian completion
    assert V.shape == (500, 8) and np.linalg.matrix_rank(V) == 8


@pytest.mark.parametrize("seed", range(4))
def test_pca_init_of_rank_deficient_features_is_finite(seed):
    """Features with a few distinct rows (rank 4 < r): the Gram route (k < q) divided the
    rounding-noise directions by sqrt(max(lam, 1e-300)) and gave huge / inf columns (NaN and a
    LinAlgError from inside NumPy in the fit); those directions are now missing directions,
    completed with Gaussian columns as when q < r."""
    rng = np.random.default_rng(seed)
    P = np.random.default_rng(0).standard_normal((5, 40))
    phi = (P[rng.integers(0, 5, 200)] @ rng.standard_normal((40, 150))).astype(np.float32)
    for k in (60, 200):   # Gram route (k < q) and covariance route (k >= q)
        V = _pca_init(phi, 32, k, np.random.default_rng(seed))
        assert V.shape == (200, 32) and np.isfinite(V).all()
        assert np.abs(V).max() <= np.linalg.norm(phi.astype(float), axis=1).max() + 10
        assert np.linalg.matrix_rank(V) == 32


def test_fit_on_features_with_few_distinct_rows():
    # noise-free data: 5 distinct feature rows; raised LinAlgError("SVD did not converge")
    # after NumPy overflow warnings for every seed
    import warnings
    X, T, Y = make_structured(n=200, noise=0.0, multilabel=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = AMSH(32, n_anchors=150, n_init_samples=60, random_state=0).fit(X, T, Y)
    for t, Q in enumerate((X, T)):
        B = h.encode(Q, t)
        assert set(np.unique(B)) <= {-1, 1}
        assert np.isfinite(h.latent_[t]).all()


# ------------------------------------------------------------------------ stage 2
def _hash_stage(seed=0, margins=True):
    rng = np.random.default_rng(seed)
    phi = rng.standard_normal((200, 12)).astype(np.float64)
    B = sign(phi @ rng.standard_normal((12, 5)) + rng.standard_normal((200, 5))).astype(float)
    return HashStage(phi, B, 0.3, margins=margins), rng


def test_F_step_is_ridge_regression_and_zeroes_the_gradient():
    st, _ = _hash_stage()
    st.update_F()
    assert np.allclose(st.W, ridge_regression(st.phi, st.B, 0.3), atol=1e-10)
    st.update_M()
    st.update_F()
    W0 = st.W.copy()
    # gradient of ||T - phi W||^2 + xi ||W||^2 by central differences
    def f(W):
        return np.sum((st.target() - st.phi @ W) ** 2) + st.xi * np.sum(W ** 2)
    G = np.zeros_like(W0)
    for idx in np.ndindex(W0.shape):
        Wp, Wm = W0.copy(), W0.copy()
        Wp[idx] += 1e-5; Wm[idx] -= 1e-5
        G[idx] = (f(Wp) - f(Wm)) / 2e-5
    assert np.max(np.abs(G)) < 1e-5
    assert np.isclose(st.objective(), f(W0))


def test_F_step_survives_a_numerically_indefinite_gram(monkeypatch):
    """At n ~ 1e5 rounding can make phi^T phi + xi I indefinite; the F-step must still solve it."""
    import cmhash.methods.amsh as amsh
    rng = np.random.default_rng(3)
    phi = rng.standard_normal((50, 6))
    B = sign(rng.standard_normal((50, 3))).astype(float)
    G = phi.T @ phi
    G[0, 0] = -5.0  # indefinite even after + xi I
    monkeypatch.setattr(amsh, "gram", lambda A, Bm=None: G.copy() if Bm is None else A.T @ Bm)
    st = HashStage(phi, B, 0.3)
    st.update_F()
    assert np.allclose((G + 0.3 * np.eye(6)) @ st.W, phi.T @ B)


def test_F_step_with_an_exactly_singular_gram_is_the_minimum_norm_solution():
    """xi = 0 and duplicated kernel columns: phi^T phi is exactly singular, the LU fallback had
    a zero pivot (SciPy LinAlgWarning) and gave inf / NaN W, so every query got one code."""
    import warnings
    rng = np.random.default_rng(4)
    base = rng.standard_normal((40, 5))
    phi = np.hstack([base, base[:, :2]])          # two duplicated columns: rank 5 of 7
    B = sign(rng.standard_normal((40, 3))).astype(float)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        st = HashStage(phi, B, 0.0)
        st.update_F()
    # the pseudo-inverse fallback is announced (it was silent), and nothing else is raised
    assert [type(w.message) for w in caught] == [NumericalFallbackWarning], caught
    assert "AMSH stage 2" in str(caught[0].message) and "xi=0.0" in str(caught[0].message)
    assert np.isfinite(st.W).all()
    assert np.allclose(st.W, np.linalg.pinv(phi) @ B, atol=1e-8)


@pytest.mark.filterwarnings("ignore::cmhash.DegenerateCodesWarning")
def test_xi_zero_with_duplicated_rows_and_eta_zero():
    import warnings
    X, T, Y = make_structured(150)
    X, T, Y = np.vstack([X, X]), np.vstack([T, T]), np.vstack([Y, Y])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)   # no SciPy LinAlgWarning
        with pytest.warns(NumericalFallbackWarning, match="pseudo-inverse"):
            h = AMSH(16, xi=0.0, n_anchors=300, beta=1e-2, random_state=0).fit(X, T, Y)
    assert all(np.isfinite(W).all() for W in h.projections_)
    assert len(np.unique(h.encode(X, "image"), axis=0)) > 10   # was one code for all
    # eta = 0 without the intra-modal term: B = sign(0) = -1 for every item and bit
    for kw in ({"eta": 0.0, "lam": 0.0}, {"eta": 0.0, "intra_modal": False}):
        with pytest.raises(ValueError, match="every code is -1, with eta = 0"):
            AMSH(8, n_anchors=20, random_state=0, **kw).fit(X[:60], T[:60], Y[:60])
    AMSH(8, n_anchors=20, eta=0.0, random_state=0).fit(X[:60], T[:60], Y[:60])  # lam > 0: fine


def test_M_step_is_the_exact_minimiser_and_stage2_decreases():
    st, rng = _hash_stage(1)
    prev = np.inf
    for _ in range(10):
        st.update_F()
        J = st.objective()
        assert J <= prev + 1e-9 * abs(J)
        prev = J
        st.update_M()
        assert st.objective() <= J + 1e-9 * J  # objective() uses the cached phi W
        M = st.M
        C = st._fitted - st.B
        g = 2 * (M - st.B * C)            # d/dM ||B o M - C||^2, B o B = 1
        assert np.all(M >= 0)
        assert np.allclose(g[M > 0], 0, atol=1e-12) and np.all(g[M == 0] >= -1e-12)
        for _ in range(5):
            Mp = np.maximum(M + 0.05 * rng.standard_normal(M.shape), 0)
            assert np.sum((st.B + st.B * Mp - st._fitted) ** 2) >= np.sum((st.target() - st._fitted) ** 2)


# ------------------------------------------------------------------- estimator
def test_unpaired_accepts_different_sizes_and_many_modalities():
    rng = np.random.default_rng(0)
    X, T, Y = make_structured(400, seed=3)
    Z = Y @ rng.standard_normal((Y.shape[1], 8)) + 0.5 * rng.standard_normal((400, 8))
    p = [rng.permutation(400)[:n] for n in (400, 250, 320)]
    views = [X[p[0]], T[p[1]], Z[p[2]]]
    labels = [Y[p[0]], Y[p[1]], Y[p[2]]]
    # the similarity terms scale with n_t (sums over samples); at n ~ 300 the inter-modal
    # weight must be larger than the paper's 1e-3 (tuned for n ~ 1e4) to couple the modalities
    h = AMSH(8, n_anchors=50, beta=1e-2, random_state=0).fit_unpaired(
        views, labels, names=["img", "txt", "aux"])
    assert [B.shape for B in h.codes_] == [(400, 8), (250, 8), (320, 8)]
    assert h.learned_codes("txt").shape == (250, 8)
    assert h.encode(T[:7], "txt").shape == (7, 8)
    assert not h.paired_
    # retrieval across the unpaired modalities beats chance, in every direction
    for (A, src), dst in (((X, "img"), "txt"), ((T, "txt"), "img"), ((Z, "aux"), "img")):
        db = labels[h.modality_index(dst)]
        chance = np.mean((Y[:100] @ db.T) > 0)
        m = mean_average_precision(h.encode(A[:100], src), h.learned_codes(dst), Y[:100], db)
        assert m > chance + 0.3


def test_unpaired_rejects_mismatched_label_counts():
    X, T, Y = make_structured(100, seed=0)
    h = AMSH(8, n_anchors=20)
    with pytest.raises(ValueError, match=r"labels\['text'\] has 99 rows but the features have 100"):
        h.fit_unpaired([X, T], [Y, Y[:99]])
    with pytest.raises(ValueError, match="one label matrix per modality"):
        h.fit_unpaired([X, T], Y)
    with pytest.raises(ValueError, match="same number of samples"):
        h.fit_views([X, T[:90]], Y)
    with pytest.raises(ValueError, match="more than n_bits=8"):
        h.fit_unpaired([X, T[:8]], [Y, Y[:8]])


@pytest.mark.parametrize("bad, msg", [({"eta": -1.0}, "eta must be >= 0, got -1.0"),
                                      ({"n_iter": 0}, "n_iter must be >= 1, got 0"),
                                      ({"beta": float("nan")}, "beta must be >= 0, got nan")])
def test_bad_parameters_are_rejected(bad, msg):
    X, T, Y = make_structured(60, seed=0)
    with pytest.raises(ValueError, match=msg):
        AMSH(8, n_anchors=10, **bad).fit(X, T, Y)
    with pytest.raises(TypeError, match="kernel must be True or False"):
        AMSH(8, kernel="no").fit(X, T, Y)


def test_retrieval_beats_chance_and_a_random_projection_baseline():
    X, T, Y = make_structured(700, seed=2, noise=1.0)
    tr, te = slice(0, 500), slice(500, 700)
    h = AMSH(16, n_anchors=100, random_state=0).fit(X[tr], T[tr], Y[tr])
    i2t = mean_average_precision(h.encode(X[te], "image"), h.learned_codes("text"), Y[te], Y[tr])
    t2i = mean_average_precision(h.encode(T[te], "text"), h.learned_codes("image"), Y[te], Y[tr])
    chance = np.mean((Y[te] @ Y[tr].T) > 0)
    # baseline: cross-modal LSH (random projections of the same kernel features)
    rng = np.random.default_rng(0)
    ks = [RBFAnchorFeatures(100, random_state=rng).fit(A[tr]) for A in (X, T)]
    Rs = [rng.standard_normal((100, 16)) for _ in range(2)]
    lsh = mean_average_precision(sign(ks[0].transform(X[te]) @ Rs[0]),
                                 sign(ks[1].transform(T[tr]) @ Rs[1]), Y[te], Y[tr])
    assert i2t > chance + 0.3 and t2i > chance + 0.3
    assert min(i2t, t2i) > lsh + 0.2


def test_parallel_stage2_gives_the_same_hash_functions():
    X, T, Y = make_structured(200, seed=4)
    a = AMSH(8, n_anchors=30, random_state=7).fit(X, T, Y)
    from threadpoolctl import threadpool_info
    before = [lib["num_threads"] for lib in threadpool_info()]
    for n_jobs in (1, 2):
        b = AMSH(8, n_anchors=30, random_state=7, n_jobs=n_jobs).fit(X, T, Y)
        assert np.allclose(a.objective_hash_, b.objective_hash_, rtol=1e-12)
        for Wa, Wb in zip(a.projections_, b.projections_):
            assert np.allclose(Wa, Wb, rtol=1e-10, atol=1e-12)
        assert np.array_equal(a.encode(X, "image"), b.encode(X, "image"))
        assert np.array_equal(a.encode(T, "text"), b.encode(T, "text"))
    # the one-BLAS-thread limit of the fit is lifted afterwards
    assert [lib["num_threads"] for lib in threadpool_info()] == before
    with pytest.raises(ValueError, match="n_jobs must be >= 1"):
        AMSH(8, n_jobs=0).fit(X, T, Y)


def test_same_seed_same_codes_and_save_load(tmp_path):
    X, T, Y = make_structured(200, seed=4)
    a = AMSH(8, n_anchors=30, random_state=7).fit(X, T, Y)
    b = AMSH(8, n_anchors=30, random_state=7).fit(X, T, Y)
    for Ba, Bb in zip(a.codes_, b.codes_):
        assert np.array_equal(Ba, Bb)
    c = AMSH(8, n_anchors=30, random_state=8).fit(X, T, Y)
    assert not np.array_equal(a.codes_[0], c.codes_[0])
    path = a.save(tmp_path / "amsh.npz")
    from cmhash.base import load
    d = load(path)
    assert np.array_equal(d.encode(X[:20], "image"), a.encode(X[:20], "image"))
    assert np.array_equal(d.learned_codes("text"), a.learned_codes("text"))


def test_variants_switch_the_right_terms_off():
    X, T, Y = make_structured(200, seed=5)
    assert set(AMSH.VARIANTS) == {"AMSH", "AMSH-s", "AMSH-t", "AMSH-k", "AMSH-m"}
    valid = set(AMSH._param_names())
    for params in AMSH.VARIANTS.values():
        assert set(params) <= valid
    for preset in AMSH.PRESETS.values():
        assert set(preset) <= valid
    k = AMSH(8, random_state=0, **AMSH.VARIANTS["AMSH-k"]).fit(X, T, Y)
    assert all(isinstance(f, CenteredFeatures) for f in k.kernels_)
    m = AMSH(8, n_anchors=30, random_state=0, **AMSH.VARIANTS["AMSH-m"]).fit(X, T, Y)
    # without margins stage 2 is a single ridge regression on the codes
    assert len(m.objective_hash_) == 1
    phi = m.kernels_[0].transform(X)
    W_ref = ridge_regression(phi, m.codes_[0].astype(np.float32), m.xi)
    # kernel features: the rhs is a float32 product (HashStage exact_products=False), so W
    # agrees to ~1e-5 relative and the fitted values (what the codes come from) to ~1e-5
    assert np.abs(m.projections_[0] - W_ref).max() <= 1e-4 * np.abs(W_ref).max()
    assert np.allclose(phi @ m.projections_[0], phi @ W_ref, atol=1e-4)
    assert np.array_equal(m.encode(X, "image"), np.where(phi @ W_ref > 0, 1, -1))
    # AMSH-s / AMSH-t: the corresponding term's weight is zero in the codes step
    s = AMSH(8, n_anchors=30, random_state=0, **AMSH.VARIANTS["AMSH-s"]).fit(X, T, Y)
    for B, V in zip(s.codes_, s.latent_):
        assert np.array_equal(B, sign(V))   # B-step with lam = 0 is sign(eta V)
    full = AMSH(8, n_anchors=30, random_state=0).fit(X, T, Y)
    t = AMSH(8, n_anchors=30, random_state=0, **AMSH.VARIANTS["AMSH-t"]).fit(X, T, Y)
    assert not np.array_equal(full.codes_[0], t.codes_[0])


def test_memory_is_linear_in_n():
    """No n x n matrix: with n = 6,000 one float64 n x n matrix alone is 288 MB."""
    X, T, Y = make_structured(6000, seed=6, d_image=8, d_text=6)
    tracemalloc.start()
    AMSH(16, n_anchors=50, n_iter=2, n_iter_hash=2, random_state=0).fit(X, T, Y)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 40e6


def test_published_numbers_file():
    data = json.loads(PUBLISHED.read_text())
    assert "Luo" in data["source"]
    seen = set()
    for tab in data["tables"]:
        assert tab["dataset"] in {"wiki", "mirflickr25k", "nuswide", "iapr-tc12"}
        assert tab["task"] in {"i2t", "t2i"} and tab["metric"] == "map"
        for row in tab["rows"].values():
            assert len(row) == len(tab["bits"]) and all(0 < v < 1 for v in row)
        seen.add((tab["table"], tab["dataset"], tab["task"]))
    assert len(seen) == 3 * 3 * 2  # Tables II, III, V x 3 datasets x 2 tasks
    # the paper's claim in Table II: AMSH is the best row everywhere
    for tab in data["tables"]:
        if tab["table"] == "Table II":
            best = np.max([r for r in tab["rows"].values()], axis=0)
            assert np.allclose(tab["rows"]["AMSH"], best)


def test_wiki_matches_the_authors_code(wiki):
    """Issue #4 parity at 32 bits, one seed: the authors' code gives I->T 0.343, T->I 0.720;
    the seed-to-seed spread is about 0.01-0.02, hence the 0.04 tolerance."""
    h = AMSH(32, random_state=0).fit(wiki["I_tr"], wiki["T_tr"], wiki["L_train"])
    i2t = mean_average_precision(h.encode(wiki["I_te"], "image"), h.learned_codes("text"),
                                 wiki["L_test"], wiki["L_train"])
    t2i = mean_average_precision(h.encode(wiki["T_te"], "text"), h.learned_codes("image"),
                                 wiki["L_test"], wiki["L_train"])
    assert abs(i2t - 0.343) < 0.04 and abs(t2i - 0.720) < 0.04


def test_unpaired_class_index_labels_share_their_columns_across_modalities():
    # each modality's class indices used to be one-hot encoded over its own classes: image
    # classes {0, 1} and text classes {1, 2} both became 2 columns, so column 0 meant class 0
    # for the images and class 1 for the texts (no error, silently wrong supervision)
    rng = np.random.default_rng(0)
    X, T = rng.standard_normal((60, 6)), rng.standard_normal((50, 5))
    ix, it = rng.integers(0, 2, 60), rng.integers(1, 3, 50)
    onehot = np.eye(3)
    kw = dict(n_anchors=20, n_iter=2, n_iter_hash=2, n_init_samples=30, random_state=0)
    a = AMSH(8, **kw).fit_unpaired([X, T], [ix, it])
    b = AMSH(8, **kw).fit_unpaired([X, T], [onehot[ix], onehot[it]])
    assert a.n_classes_ == 3
    for m in (0, 1):
        assert np.array_equal(a.learned_codes(m), b.learned_codes(m))
    with pytest.raises(ValueError, match="all be class-index vectors or all be multi-hot"):
        AMSH(8, **kw).fit_unpaired([X, T], [ix, onehot[it]])
    with pytest.raises(TypeError, match="names must be a list of 2 modality names"):
        AMSH(8, **kw).fit_unpaired([X, T], [ix, it], names="ab")


@pytest.mark.parametrize("margins", [True, False])
def test_fused_stage2_pass_equals_the_steps(margins, monkeypatch):
    """HashStage.run (one pass over phi per iteration: fitted values, objective, margins and
    the next right-hand side per cache block, chunks on parallel threads) gives the iterates of
    update_F(); objective(); update_M() in turn, up to the float32 rounding of the right-hand
    side products (~1e-6 relative: the same W to 1e-5, the same codes, the same objectives to
    1e-6), with any number of threads and any chunking."""
    import cmhash.methods.amsh as amsh
    rng = np.random.default_rng(21)
    X = rng.standard_normal((700, 12))
    phi = RBFAnchorFeatures(60, random_state=0).fit_transform(X)
    B = sign(phi[:, :9] @ rng.standard_normal((9, 9))).astype(np.float64)
    steps = HashStage(phi, B, 0.01, margins=margins, exact_products=False)
    objs = []
    for _ in range(6):
        steps.update_F()
        objs.append(steps.objective())
        steps.update_M()
    fused = HashStage(phi, B, 0.01, margins=margins, exact_products=False)
    W, fobjs = fused.run(6)
    np.testing.assert_allclose(W, steps.W, rtol=1e-5, atol=1e-5 * np.abs(steps.W).max())
    np.testing.assert_allclose(fobjs, objs, rtol=1e-6)
    np.testing.assert_array_equal(sign(phi @ W.astype(np.float32)),
                                  sign(phi @ steps.W.astype(np.float32)))
    np.testing.assert_allclose(fused.M, steps.M, atol=1e-5)
    if margins:
        assert np.count_nonzero(fused.M) > 0 and np.all(np.diff(fobjs) <= 1e-9 * fobjs[0])
    # threads and chunking do not change the result
    monkeypatch.setattr(amsh, "HASH_CHUNK_ROWS", 97)
    W1, o1 = HashStage(phi, B, 0.01, margins=margins, exact_products=False).run(6, workers=1)
    W2, o2 = HashStage(phi, B, 0.01, margins=margins, exact_products=False).run(6, workers=2)
    np.testing.assert_array_equal(W1, W2)
    assert o1 == o2
