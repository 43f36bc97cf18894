"""The shared solvers solve their problems (checked against feasible competitors)."""
import warnings

import numpy as np
import pytest

from cmhash import NumericalFallbackWarning
from cmhash.solvers import (gram, orthogonal_zero_mean, procrustes, ridge_regression, sign,
                            solve_psd, svt)


def _fallback_warnings(func, *args):
    """``(func(*args), [messages of the NumericalFallbackWarnings it raised])``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = func(*args)
    return out, [str(w.message) for w in caught if w.category is NumericalFallbackWarning]


def _random_feasible(n, r, rng):
    """A random V with V^T V = n I and V^T 1 = 0."""
    M = rng.standard_normal((n, r))
    M -= M.mean(axis=0)
    Q, _ = np.linalg.qr(M)
    return np.sqrt(n) * Q


@pytest.mark.parametrize("rank_deficit", [0, 3])
def test_orthogonal_zero_mean_feasible_and_optimal(rank_deficit):
    rng = np.random.default_rng(0)
    n, r = 200, 8
    Z = rng.standard_normal((n, r))
    if rank_deficit:
        Z[:, -rank_deficit:] = Z[:, :rank_deficit] * 2.0  # rank r - rank_deficit
    V, caught = _fallback_warnings(orthogonal_zero_mean, Z, rng)
    # the random completion of the missing directions is announced, and only then
    assert len(caught) == (1 if rank_deficit else 0)
    if rank_deficit:
        assert f"numerical rank {r - rank_deficit} < r = {r}" in caught[0]
    assert np.allclose(V.T @ V, n * np.eye(r), atol=1e-8 * n)
    assert np.allclose(V.sum(axis=0), 0, atol=1e-8 * n)
    best = np.trace(Z.T @ V)
    for _ in range(200):
        assert np.trace(Z.T @ _random_feasible(n, r, rng)) <= best + 1e-9
    # local optimality: feasible perturbations along the constraint manifold do not improve
    for _ in range(20):
        A = rng.standard_normal((r, r)) * 1e-3
        Rot = np.linalg.matrix_power(np.eye(r) + (A - A.T) / 2, 1)
        Rot, _ = np.linalg.qr(Rot)
        assert np.trace(Z.T @ (V @ Rot)) <= best + 1e-9


def test_orthogonal_zero_mean_matches_svd_solution():
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((150, 6)) + 3.0  # large mean: must be removed
    V = orthogonal_zero_mean(Z)
    Zc = Z - Z.mean(axis=0)
    U, _, Wt = np.linalg.svd(Zc, full_matrices=False)
    assert np.allclose(V, np.sqrt(150) * U @ Wt, atol=1e-8)


@pytest.mark.parametrize("log_cond", [0, 2, 4.5, 6])  # singular-value spread of Zc: 1 .. 1e6
def test_orthogonal_zero_mean_gram_route_equals_svd_route(log_cond, monkeypatch):
    """The fast Cholesky-QR route and the SVD route give the same maximiser to ~eps cond(Zc)
    (the documented accuracy; a route whose error grows like eps cond(Zc)^2, e.g. the SVD of
    R1 R2 instead of R2 R1, is ~1e-8 off at cond 3e4); ill-conditioned Z (spread 1e6, i.e.
    cond(Zc^T Zc) = 1e12) falls back to the SVD."""
    import cmhash.solvers as solvers
    rng = np.random.default_rng(3)
    n, r = 400, 32
    U, _ = np.linalg.qr(rng.standard_normal((n, r)))
    W, _ = np.linalg.qr(rng.standard_normal((r, r)))
    Z = (U * np.logspace(0, log_cond, r)) @ W.T * 50.0 + 7.0
    taken = []
    real = solvers._polar_via_gram
    monkeypatch.setattr(solvers, "_polar_via_gram", lambda Zc, **kw: taken.append(real(Zc, **kw)) or taken[-1])
    V = orthogonal_zero_mean(Z)
    assert (taken[0] is not None) == (log_cond < 5)
    monkeypatch.setattr(solvers, "_polar_via_gram", lambda Zc, **kw: None)  # force the SVD route
    monkeypatch.setattr(solvers, "_svd_via_shifted_cholesky", lambda Zc, **kw: None)
    V_svd = orthogonal_zero_mean(Z)
    assert np.allclose(V.T @ V, n * np.eye(r), atol=1e-10 * n)
    assert np.allclose(V.sum(axis=0), 0, atol=1e-9 * n)
    eps_cond = np.finfo(float).eps * np.sqrt(n) * 10 ** log_cond   # V is sqrt(n) x orthonormal
    assert np.allclose(V, V_svd, rtol=0, atol=10 * eps_cond)
    assert np.trace(Z.T @ V) >= np.trace(Z.T @ V_svd) - 1e-9 * abs(np.trace(Z.T @ V_svd))


def test_orthogonal_zero_mean_rejects_bad_shapes():
    with pytest.raises(ValueError, match="n > r"):
        orthogonal_zero_mean(np.ones((4, 4)))


def test_procrustes_beats_random_rotations():
    rng = np.random.default_rng(2)
    M = rng.standard_normal((6, 6))
    R = procrustes(M)
    assert np.allclose(R.T @ R, np.eye(6), atol=1e-10)
    best = np.trace(R.T @ M)
    for _ in range(500):
        Q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
        assert np.trace(Q.T @ M) <= best + 1e-10


def test_svt_is_the_nuclear_norm_prox():
    rng = np.random.default_rng(3)
    M = rng.standard_normal((7, 5))
    tau = 0.8
    X = svt(M, tau)

    def f(Y):
        return tau * np.linalg.svd(Y, compute_uv=False).sum() + 0.5 * np.sum((Y - M) ** 2)

    fx = f(X)
    for scale in (1e-1, 1e-2, 1e-3):
        for _ in range(100):
            assert f(X + scale * rng.standard_normal(M.shape)) >= fx - 1e-12
    # thresholding of the singular values
    s = np.linalg.svd(M, compute_uv=False)
    assert np.allclose(np.linalg.svd(X, compute_uv=False), np.maximum(s - tau, 0), atol=1e-10)
    with pytest.raises(ValueError):
        svt(M, -1.0)


def test_ridge_regression_zeroes_gradient_and_chunked_gram():
    rng = np.random.default_rng(4)
    A = rng.standard_normal((1000, 12)).astype(np.float32)
    Y = rng.standard_normal((1000, 3))
    alpha = 0.3
    W = ridge_regression(A, Y, alpha)
    A64 = A.astype(np.float64)
    grad = 2 * A64.T @ (A64 @ W - Y) + 2 * alpha * W
    assert np.abs(grad).max() < 1e-6 * np.abs(A64.T @ Y).max()
    exact = A64.T @ A64
    assert np.abs(gram(A, chunk=97) - exact).max() < 1e-5 * np.abs(exact).max()


def test_solve_psd_and_sign():
    G = np.array([[2.0, 0.5], [0.5, 1.0]])
    R = np.array([[1.0], [2.0]])
    X, caught = _fallback_warnings(solve_psd, G, R)
    assert np.allclose(G @ X, R) and not caught
    # a singular G: the minimum-norm least-squares solution, with a NumericalFallbackWarning
    S = np.array([[1.0, 1.0], [1.0, 1.0]])
    X, caught = _fallback_warnings(solve_psd, S, R)
    assert np.allclose(X, np.linalg.pinv(S) @ R)
    assert len(caught) == 1 and "not numerically positive definite" in caught[0]
    assert sign(np.array([-0.1, 0.0, 2.0])).tolist() == [-1, -1, 1]
    assert sign(np.array([0.0])).dtype == np.int8


def test_single_threaded_blas_limits_and_restores():
    import scipy.linalg  # noqa: F401  (its BLAS is one of those limited)
    from threadpoolctl import threadpool_info

    from cmhash._threads import (LATENCY_BOUND_FLOPS, single_threaded_blas,
                                 single_threaded_blas_if_small)
    blas = lambda: [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    before = blas()
    assert before, "no BLAS library found by threadpoolctl"
    with single_threaded_blas():
        assert all(n == 1 for n in blas())
    assert blas() == before
    with single_threaded_blas_if_small(LATENCY_BOUND_FLOPS):       # small work: one thread
        assert all(n == 1 for n in blas())
    with single_threaded_blas_if_small(2 * LATENCY_BOUND_FLOPS):   # large work: untouched
        assert blas() == before
    assert blas() == before


@pytest.mark.parametrize("case", ["zero", "constant", "rank1+mean", "one zero column",
                                  "n = r + 1, rank 1", "tiny", "huge", "r = 1, zero"])
def test_orthogonal_zero_mean_stays_feasible_on_degenerate_z(case):
    """Z of rank < r (down to Z = 0, or a constant Z, whose centred part is 0): the random
    completion keeps V^T V = n I and V^T 1 = 0; scale does not matter (1e-300 .. 1e150)."""
    rng = np.random.default_rng(5)
    n, r = 60, 6
    Z = {"zero": np.zeros((n, r)), "constant": np.full((n, r), 3.0),
         "rank1+mean": np.outer(rng.standard_normal(n), rng.standard_normal(r)) + 5.0,
         "one zero column": np.hstack([rng.standard_normal((n, r - 1)), np.zeros((n, 1))]),
         "n = r + 1, rank 1": np.outer(rng.standard_normal(r + 1), np.ones(r)),
         "tiny": rng.standard_normal((n, r)) * 1e-300,
         "huge": rng.standard_normal((n, r)) * 1e150,
         "r = 1, zero": np.zeros((n, 1))}[case]
    V, caught = _fallback_warnings(orthogonal_zero_mean, Z, rng)
    m, k = Z.shape
    assert len(caught) == (0 if case in ("tiny", "huge") else 1), caught   # full rank: silent
    assert np.isfinite(V).all()
    assert np.allclose(V.T @ V, m * np.eye(k), atol=1e-10 * m)
    assert np.allclose(V.sum(axis=0), 0, atol=1e-10 * m)


def test_procrustes_and_svt_on_degenerate_inputs():
    # singular, zero and tall rank-1 M: R still has orthonormal columns
    for M in (np.outer([1.0, 2, 3], [1.0, 0, 1]), np.zeros((4, 4)),
              np.outer(np.arange(6.0), np.ones(3))):
        R = procrustes(M)
        assert R.shape == M.shape and np.allclose(R.T @ R, np.eye(M.shape[1]), atol=1e-12)
    # a wide M has no R with R^T R = I (it returned one with R^T R != I); NaN failed in LAPACK
    with pytest.raises(ValueError, match=r"a >= b .* got shape \(2, 4\)"):
        procrustes(np.ones((2, 4)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        procrustes(np.full((3, 3), np.nan))
    M = np.random.default_rng(6).standard_normal((5, 7))
    assert np.allclose(svt(M, 0.0), M, atol=1e-12)              # tau = 0: the identity
    for tau in (1e300, np.inf):                                 # tau >= s_max: zero
        assert np.array_equal(svt(M, tau), np.zeros_like(M))
    assert np.array_equal(svt(np.zeros((3, 4)), 1.0), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="tau must be >= 0, got nan"):   # returned NaN
        svt(M, np.nan)


def test_ridge_regression_degenerate_systems_and_bad_alpha():
    rng = np.random.default_rng(7)
    Y = rng.standard_normal((10, 2))
    # alpha = 0 with a singular Gram matrix (constant or zero columns, n < q): lstsq fallback
    for A in (np.ones((10, 3), np.float32), np.zeros((10, 3)),
              rng.standard_normal((10, 30)).astype(np.float32)):
        W, caught = _fallback_warnings(ridge_regression, A, Y, 0.0)
        assert np.isfinite(W).all()
        assert len(caught) == 1 and "least-squares" in caught[0]   # was silent
    for bad in (np.nan, np.inf, -1.0):   # NaN gave a NaN W
        with pytest.raises(ValueError, match="alpha must be finite and >= 0"):
            ridge_regression(np.ones((10, 3)), Y, bad)


def test_orthogonal_zero_mean_is_scale_invariant_to_the_ends_of_float64():
    # the solution depends only on the directions of Z; |Z| ~ 1e155 overflowed Zc^T Zc (numpy
    # overflow warnings, then LAPACK failures near 1e307), |Z| ~ 1e-160 underflowed it (subnormal inputs have lost digits already: not tested)
    import warnings
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((60, 8)) + 3.0
    V = orthogonal_zero_mean(Z)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no overflow / underflow warnings either
        for scale in (2.0 ** 520, 2.0 ** 1000, 2.0 ** -530, 2.0 ** -1000):  # all normal floats
            np.testing.assert_allclose(orthogonal_zero_mean(Z * scale), V,
                                       atol=1e-10, err_msg=str(scale))
    Z[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        orthogonal_zero_mean(Z)


# ------------------------------------------------- tall products: float64 Gram, float32 blocks
U32 = np.finfo(np.float32).eps / 2      # unit roundoff of float32 (6e-8)
U64 = np.finfo(np.float64).eps / 2


def _gamma(k, u):
    """Higham's gamma_k = k u / (1 - k u): a sum of k products computed in any order with unit
    roundoff u is within gamma_k (sum of |products|) of the exact sum."""
    return k * u / (1 - k * u)


@pytest.mark.parametrize("chunk", [4096, 97, 1])
def test_gram_is_the_float64_product_within_its_rounding_bound(chunk):
    """gram(A) for float32 / float64 / sparse A equals A^T A computed exactly (from float64
    copies, sums in float128 where available) within 2 gamma_n(u64) |A|^T |A| entrywise --
    the float64 bound, ~1e-16 n relative, 8 decades below what float32 accumulation gives."""
    import scipy.sparse as sp
    from cmhash.solvers import gram_and_cross
    rng = np.random.default_rng(11)
    n, q = 1500, 23
    A = (rng.standard_normal((n, q)) + 3.0).astype(np.float32)   # large mean: large entries
    exact = A.astype(np.longdouble).T @ A.astype(np.longdouble)
    bound = 2 * _gamma(n, U64) * (np.abs(A).astype(np.float64).T @ np.abs(A).astype(np.float64))
    for M in (A, A.astype(np.float64), sp.csr_matrix(A)):
        G = gram(M, chunk=chunk)
        assert G.dtype == np.float64 and np.array_equal(G, G.T)
        assert np.all(np.abs(G - exact) <= bound)
    Y = rng.standard_normal((n, 4))
    G2, C = gram_and_cross(A, Y, chunk=chunk)
    assert np.array_equal(G2, gram(A, chunk=chunk))
    exact_c = A.astype(np.longdouble).T @ Y.astype(np.longdouble)
    bound_c = 2 * _gamma(n, U64) * (np.abs(A).astype(np.float64).T @ np.abs(Y))
    assert np.all(np.abs(C - exact_c) <= bound_c)
    assert np.array_equal(gram(A, Y, chunk=chunk), C)


def test_gram_keeps_the_small_ridge_definite():
    """The conditioning that made gram float64: at n = 184,577 rows, entries ~1e5 and a Gram
    matrix whose smallest eigenvalue (1.8e-3) is far below the 0.01 ridge, float32 products of
    4,096-row blocks (even accumulated in float64) leave ||E||_2 ~ 0.02 and make
    A^T A + 0.01 I indefinite; gram's float64 blocks keep its smallest eigenvalue at
    lambda_min(A^T A) + 0.01 to ~1e-9."""
    import scipy.linalg as sla
    rng = np.random.default_rng(0)
    n, q = 184577, 48
    base = (rng.random(n, dtype=np.float32) * 0.5 + 0.5)[:, None]
    A = base + np.float32(1e-4) * rng.standard_normal((n, q), dtype=np.float32)
    ridge = 0.01 * np.eye(q)
    G = gram(A)
    lam = np.linalg.eigvalsh(G + ridge)[0]
    sla.cholesky(G + ridge)                                  # definite
    A64 = A.astype(np.float64)
    exact_min = np.linalg.eigvalsh(A64.T @ A64 + ridge)[0]   # another float64 evaluation
    assert 0.011 < exact_min and abs(lam - exact_min) < 1e-7
    # the test has teeth: the float32 block products that gram does not use fail here
    G32 = np.zeros((q, q))
    for s in range(0, n, 4096):
        a = A[s:s + 4096]
        G32 += (a.T @ a).astype(np.float64)
    assert np.linalg.eigvalsh(G32 + ridge)[0] < 0
    with pytest.raises(np.linalg.LinAlgError):
        sla.cholesky(G32 + ridge)


@pytest.mark.parametrize("block_rows", [16384, 333, 1])
def test_cross_product_is_within_the_float32_block_bound(block_rows):
    """cross_product(A, B) with a float32 operand: A rounded to float32 (u32 relative per
    entry), float32 sums inside blocks of ``block_rows`` rows (gamma_b(u32)), float64 across
    blocks (gamma_{n/b}(u64)): |C - A^T B| <= (u32 + gamma_b(u32) + gamma_{n/b}(u64) +
    u32 gamma_b(u32)) |A|^T |B| entrywise. The same bound with b = n is what one float32 BLAS
    call over all rows would need; the blocks make it b / n times smaller."""
    from cmhash.solvers import cross_product
    rng = np.random.default_rng(12)
    n, r, q = 20000, 7, 30
    A = rng.standard_normal((n, r)) * 10.0                 # float64 latent (V, H)
    B = (rng.random((n, q)) - 0.3).astype(np.float32)      # float32 features
    C = cross_product(A, B, block_rows=block_rows)
    exact = A.astype(np.longdouble).T @ B.astype(np.longdouble)
    b = min(block_rows, n)
    rel = U32 + _gamma(b, U32) + _gamma(-(-n // b), U64) + U32 * _gamma(b, U32)
    assert C.dtype == np.float64
    assert np.all(np.abs(C - exact) <= rel * (np.abs(A).T @ np.abs(B).astype(np.float64)))
    # both operands float64: a float64 product (the float64 bound)
    C64 = cross_product(A, B.astype(np.float64), block_rows=block_rows)
    bound64 = 2 * _gamma(n, U64) * (np.abs(A).T @ np.abs(B).astype(np.float64))
    assert np.all(np.abs(C64 - exact) <= bound64)


def test_cross_product_accumulates_blocks_in_float64():
    """Many blocks of a sum that float32 cannot hold: 2^20 rows of 1 + 2^-20 in float32 each
    sum to 2^20 + 1 (exactly representable in float64, not in float32's 24 bits at that
    magnitude: float32 partial sums drop the 2^-20 parts). Blocks of 1,024 rows sum to
    1,024 + 2^-10 exactly in float32; their float64 sum is exact."""
    from cmhash.solvers import cross_product
    n = 2 ** 20
    A = np.ones((n, 1))
    B = np.full((n, 1), 1 + 2.0 ** -20, dtype=np.float32)
    assert cross_product(A, B, block_rows=1024)[0, 0] == n + 1
    whole = float((A.astype(np.float32).T @ B)[0, 0])
    assert whole != n + 1                                   # what float32 accumulation gives


def test_block_functions_sum_to_the_tall_products():
    """gram / cross_product are sums of gram_block / cross_block over row_blocks (the pieces a
    chunked caller maps over its own blocks)."""
    from cmhash.solvers import cross_block, cross_product, gram_block, row_blocks
    rng = np.random.default_rng(13)
    A = rng.standard_normal((1000, 9)).astype(np.float32)
    V = rng.standard_normal((1000, 3))
    blocks = row_blocks(1000, 300)
    assert [(s.start, s.stop) for s in blocks] == [(0, 300), (300, 600), (600, 900), (900, 1000)]
    assert np.allclose(sum(gram_block(A[s]) for s in blocks), gram(A), rtol=1e-13)
    np.testing.assert_array_equal(sum(cross_block(V[s], A[s]) for s in blocks),
                                  cross_product(V, A, block_rows=300))
    with pytest.raises(ValueError, match="rows"):
        cross_product(V, A[:10])
    with pytest.raises(ValueError, match="rows"):
        gram(A, V[:10])


@pytest.mark.parametrize("log_cond", [6, 8, 10])   # beyond Cholesky-QR2 (cond <~ 1.4e5)
def test_orthogonal_zero_mean_shifted_cholesky_route_equals_svd_route(log_cond, monkeypatch):
    """Ill-conditioned full-rank Z (singular-value spread 1e6 .. 1e10, as ASFOH's and BATCH's
    label-dominated Z) takes the shifted Cholesky-QR route: r x r decompositions only, the
    same maximiser as the thin SVD of the n x r Zc to ~eps cond(Zc) (the accuracy of the SVD
    route itself), feasible to machine precision, and no worse in the objective."""
    import cmhash.solvers as solvers
    rng = np.random.default_rng(4)
    n, r = 600, 24
    U, _ = np.linalg.qr(rng.standard_normal((n, r)))
    W, _ = np.linalg.qr(rng.standard_normal((r, r)))
    Z = (U * np.logspace(0, log_cond, r)) @ W.T * 30.0 - 4.0
    taken = []
    real = solvers._svd_via_shifted_cholesky
    monkeypatch.setattr(solvers, "_svd_via_shifted_cholesky",
                        lambda Zc, **kw: taken.append(real(Zc, **kw)) or taken[-1])
    V = orthogonal_zero_mean(Z)
    assert len(taken) == 1 and taken[0] is not None     # Cholesky-QR2 declined, shifted taken
    monkeypatch.setattr(solvers, "_svd_via_shifted_cholesky", lambda Zc, **kw: None)
    V_svd = orthogonal_zero_mean(Z)
    assert np.allclose(V.T @ V, n * np.eye(r), atol=1e-11 * n)
    # V^T 1 = 0 holds to ~eps cond(Zc) on either route (the centring's rounding, amplified)
    assert np.abs(V.sum(axis=0)).max() <= 10 * np.abs(V_svd.sum(axis=0)).max() + 1e-10 * n
    eps_cond = np.finfo(float).eps * np.sqrt(n) * 10 ** log_cond
    assert np.abs(V - V_svd).max() <= eps_cond
    Zc = Z - Z.mean(axis=0)
    assert np.trace(Zc.T @ V) >= np.trace(Zc.T @ V_svd) * (1 - 1e-13)
    # a rank-deficient Z: the route's singular values show the rank (the completion follows),
    # or the route declines (LAPACK's thin SVD then)
    Z[:, -2:] = Z[:, :2]
    factors = real(Z - Z.mean(axis=0))
    assert factors is None or solvers._numerical_rank(factors[2], n, r) == r - 2


def _rank_deficient_z(rng, n, r, k, log_cond, noise=0.0):
    """A centred Z of rank k (singular values 1 .. 10^log_cond) plus a column mean, as ASFOH's
    label-dominated Z at fewer classes than bits; the other directions are rounding, or
    ``noise`` (relative) below the numerical-rank threshold."""
    U, _ = np.linalg.qr(rng.standard_normal((n, k)))
    U -= U.mean(axis=0)
    W, _ = np.linalg.qr(rng.standard_normal((r, k)))
    Z = (U * np.logspace(log_cond, 0, k)) @ W.T * 1e3 + rng.standard_normal(r)
    return Z + noise * np.abs(Z).max() * rng.standard_normal(Z.shape)


@pytest.mark.parametrize("k, log_cond, noise, shifted", [
    (5, 0, 0.0, True), (12, 3, 1e-14, True), (12, 10, 1e-14, True), (5, 6, 0.0, False),
    (0, 0, 0.0, False)])
def test_orthogonal_zero_mean_rank_deficient_routes_agree(k, log_cond, noise, shifted,
                                                           monkeypatch):
    """Rank k < r (well- or ill-conditioned within its k directions, and Z = constant): the
    shifted Cholesky-QR route's thin SVD, LAPACK's thin SVD, and Householder QR instead of
    CholeskyQR2 for the completion all give the same V for the same seed -- the completion
    depends on Zc's null space and the seed only, not on the factorisation's free basis of
    the null space -- feasible, optimal on the determined part, deterministic per seed."""
    import cmhash.solvers as solvers
    rng = np.random.default_rng(11)
    n, r = 500, 16
    Z = _rank_deficient_z(rng, n, r, k, log_cond, noise) if k else np.full((n, r), 2.0)
    taken = []
    real = solvers._svd_via_shifted_cholesky
    monkeypatch.setattr(solvers, "_svd_via_shifted_cholesky",
                        lambda Zc, **kw: taken.append(real(Zc, **kw)) or taken[-1])
    V, caught = _fallback_warnings(orthogonal_zero_mean, Z, np.random.default_rng(3))
    assert len(caught) == 1 and f"numerical rank {k} < r = {r}" in caught[0]
    # the shifted route gave the SVD (exactly rank-deficient ill-conditioned Zc: it declines)
    assert (taken[0] is not None) == shifted
    monkeypatch.setattr(solvers, "_svd_via_shifted_cholesky", lambda Zc, **kw: None)
    V_lapack, _ = _fallback_warnings(orthogonal_zero_mean, Z, np.random.default_rng(3))
    monkeypatch.setattr(solvers, "cholesky_qr2_factor", lambda C, g: None)   # Householder
    V_householder, _ = _fallback_warnings(orthogonal_zero_mean, Z, np.random.default_rng(3))
    monkeypatch.undo()
    tol = max(1e-10, 10 * np.finfo(float).eps * 10 ** log_cond) * np.sqrt(n)   # ~eps cond
    for other in (V_lapack, V_householder):
        np.testing.assert_allclose(V, other, rtol=0, atol=tol)
    assert np.allclose(V.T @ V, n * np.eye(r), atol=1e-11 * n)
    # V^T 1 = 0 to ~eps cond(Zc), as on LAPACK's route (the centring's rounding, amplified)
    assert np.abs(V.sum(axis=0)).max() <= 10 * np.abs(V_lapack.sum(axis=0)).max() + 1e-10 * n
    # the determined part: V = sqrt(n) U_k W_k^T + (completion orthogonal to U_k and to W_k)
    Zc = Z - Z.mean(axis=0)
    U, s, Wt = np.linalg.svd(Zc, full_matrices=False)
    np.testing.assert_allclose(U[:, :k].T @ V, np.sqrt(n) * Wt[:k], atol=tol)
    assert np.trace(Zc.T @ V) == pytest.approx(np.sqrt(n) * s[:k].sum(), rel=1e-12, abs=1e-9)
    # deterministic per seed; another seed changes only the completion
    same, _ = _fallback_warnings(orthogonal_zero_mean, Z, np.random.default_rng(3))
    np.testing.assert_array_equal(V, same)
    other, _ = _fallback_warnings(orthogonal_zero_mean, Z, np.random.default_rng(4))
    assert np.abs(other - V).max() > 0.1
    np.testing.assert_allclose(U[:, :k].T @ other, U[:, :k].T @ V, atol=tol)


def test_completion_pieces_are_the_unique_factors():
    """positive_qr and CholeskyQR2 give the same Q (the unique one with diag(R) > 0), and the
    null-space basis is orthonormal, orthogonal to W_k and the same for any basis of W_k's
    span (only the projector enters)."""
    from cmhash.solvers import (cholesky_qr2_factor, gram_of_product, null_space_basis,
                                positive_qr)
    rng = np.random.default_rng(2)
    R = rng.standard_normal((300, 7))
    Q = positive_qr(R)
    assert np.allclose(Q.T @ Q, np.eye(7), atol=1e-14)
    assert (np.diagonal(Q.T @ R) > 0).all()
    T = cholesky_qr2_factor(R.T @ R, lambda T1: gram_of_product(R, T1))
    np.testing.assert_allclose(R @ T, Q, atol=1e-13)
    Wt_k = np.linalg.qr(rng.standard_normal((10, 3)))[0].T
    G = rng.standard_normal((10, 7))
    X = null_space_basis(Wt_k, G)
    assert np.allclose(X @ X.T, np.eye(7), atol=1e-14) and np.abs(X @ Wt_k.T).max() < 1e-14
    projected = G - Wt_k.T @ (Wt_k @ G)
    assert np.abs(np.tril(X @ projected, -1)).max() < 1e-13     # X^T's R factor: triangular,
    assert (np.diagonal(X @ projected) > 0).all()                # with a positive diagonal
    rotation = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    np.testing.assert_allclose(null_space_basis(rotation @ Wt_k, G), X, atol=1e-13)
