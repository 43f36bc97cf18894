"""Closed-form solvers shared by every method.

Each solver is written once here and reused by BATCH, ASCMH, ASFOH and AMSH:

* :func:`orthogonal_zero_mean` -- ``max tr(Z^T V) s.t. V^T V = n I, V^T 1 = 0``
  (SCRATCH/BATCH Eq. "V-step"; ASCMH Eq. 18-20; ASFOH Eq. 20-21; AMSH's V-steps).
* :func:`procrustes` -- ``max tr(R^T M) s.t. R^T R = I`` (ASCMH Eq. 14-16).
* :func:`svt` -- singular value thresholding, the proximal operator of ``tau ||.||_*``
  (ASFOH Eq. 28); :func:`nuclear_norm`.
* :func:`ridge_regression` / :func:`gram` -- ``(A^T A + alpha I)^{-1} A^T Y`` with a chunked,
  float64-accumulated Gram matrix (every two-step hash function).
* :func:`cross_product` -- ``A^T B`` of tall matrices as float32 block products accumulated
  in float64 (``V^T phi`` and the like, solved against well-conditioned matrices).

The tall products are sums over row blocks (:func:`row_blocks`, :func:`gram_block`,
:func:`cross_block`), so chunked or distributed callers can reuse the block functions and
add the results.
* :func:`sign` -- sign with 0 mapped to -1, as the reference codes do.
"""
from __future__ import annotations

import functools

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.linalg.blas import dgemm as _dgemm
from scipy.linalg.blas import dsyrk as _dsyrk

from ._phases import timed
from ._threads import (LATENCY_BOUND_FLOPS, leaf_map, single_threaded,
                       single_threaded_blas_if_small)
from ._validation import check_random_state, warn_numerical_fallback

#: rows per float64 block when accumulating Gram matrices of tall matrices (:func:`gram`)
GRAM_CHUNK = 4096
#: rows per float32 block of :func:`cross_product` (float64 accumulation across blocks): large
#: enough for two BLAS threads to run at their GEMM rate on (rows, q) x (rows, r) blocks
#: (4,096-row blocks reached 60 % of it), small enough that the float32 rounding inside a
#: block stays ~u32 sqrt(rows) (see cross_product)
BLOCK_ROWS = 16384


def _latency_bound(flops):
    """Decorator: run the solver with one BLAS thread when ``flops(*args)`` (its work) is small
    enough to be latency-bound (``_threads.LATENCY_BOUND_FLOPS``)."""
    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with single_threaded_blas_if_small(flops(*args, **kwargs)):
                return func(*args, **kwargs)
        return wrapper
    return decorate


def _tall_flops(M, *args, **kwargs) -> float:
    """a b^2 for an (a, b) matrix: an SVD / QR / Gram of it."""
    a, b = (np.shape(M) + (1,))[:2]
    return float(a) * b * b


def _svd_flops(M, *args, **kwargs) -> float:
    """~4 a b^2 for the singular values / thin SVD of an (a, b) matrix (a >= b or transposed)."""
    a, b = (np.shape(M) + (1,))[:2]
    return 4.0 * max(a, b) * min(a, b) ** 2


def _solve_flops(G, R, *args, **kwargs) -> float:
    """Cholesky of the k x k ``G`` plus two triangular solves with the columns of ``R``."""
    k, m = np.shape(G)[0], (np.shape(R) + (1,))[1]
    return k ** 3 / 3.0 + 2.0 * k * k * m


def sign(X, dtype=np.int8) -> np.ndarray:
    """Elementwise sign as codes in {-1, +1} (int8, or ``dtype``); zeros (and NaN) map to -1
    (``B(B==0) = -1``). Two passes over X (the comparison and the selection), no temporary
    wider than the result: ``sign(Z, np.float64)`` is the float64 code matrix of a B-step."""
    positive = np.asarray(X) > 0
    dtype = np.dtype(dtype)
    return np.where(positive, dtype.type(1), dtype.type(-1))


@timed("latent")
@single_threaded
def orthogonal_zero_mean(Z, random_state=None) -> np.ndarray:
    """Solve ``max_V tr(Z^T V)  s.t.  V^T V = n I_r,  V^T 1 = 0`` for ``V`` of shape (n, r).

    Since ``V^T 1 = 0``, ``tr(Z^T V) = tr(Zc^T V)`` with ``Zc = Z - 1 mean(Z)``. With the thin
    SVD ``Zc = U S W^T`` (O(n r^2)), the maximiser is ``V = sqrt(n) [U_k, P_bar] W^T`` where
    ``k`` is the numerical rank of ``Zc``. This is the SCRATCH/BATCH solution
    ``sqrt(n) [Zc Q Omega^{-1/2}, P_bar][Q, Q_bar]^T`` (``Zc^T Zc = Q Omega Q^T``), computed from
    the SVD of ``Zc`` instead of the eigendecomposition of ``Zc^T Zc`` so that badly conditioned
    ``Z`` (ASFOH's, whose label part is 1e5-1e8 times larger than the rest) keeps its weak
    directions to machine precision instead of losing them to the squared condition number.
    Well-conditioned ``Zc`` takes the equivalent Cholesky-QR route (:func:`_polar_via_gram`,
    checked against the SVD route in the tests), which is several times faster for r >= 64;
    ill-conditioned or rank-deficient ``Zc`` the thin SVD computed by the shifted
    Cholesky-QR route (:func:`_svd_via_shifted_cholesky`: BLAS-3 passes over Zc and an r x r
    SVD, ~3-6x faster than LAPACK's thin SVD of the n x r matrix; tested against it), and
    LAPACK's thin SVD where that route declines.

    When ``k < r`` the completion is ``sqrt(n) P W_null``
    (``V = sqrt(n) [U_k, P] [W_k, W_null^T]^T``):
    ``P`` is the thin QR factor (positive-diagonal R) of an n x (r - k) Gaussian draw ``R``
    from ``random_state`` projected twice (classical Gram-Schmidt) off ``1`` and ``U_k``
    (the released BATCH code omits the orthogonality to ``1``), orthonormalised by
    CholeskyQR2 (``R`` is well conditioned, cond ~ 1 + sqrt((r - k) / n); Householder QR with
    fixed signs if it declines); ``W_null`` the null-space basis of :func:`null_space_basis`
    (the projection of ``R``'s first r rows), not the thin SVD's arbitrary one. Each piece is
    unique given Zc and the seed, so the Dask fit (``distributed.blocks.polar_zero_mean``)
    reproduces it from the same draws with row-block reductions. At n = 184,577, r = 64 and
    rank 12 (ASFOH's Z on nuswide-like data) this step took ~1 s against ~3 s with LAPACK's
    thin SVD and a Householder QR of the completion.

    Runs with one BLAS thread at every size: its n x r x r products are memory-bound for
    r <= 64, and its r x r LAPACK calls alternate NumPy's and SciPy's OpenBLAS, whose idle
    worker threads spin: with two threads each, the thin SVD of a 100,000 x 32 Z took 0.8 s
    inside a fit against 0.15 s on one thread.
    """
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2:
        raise ValueError(f"Z must be 2-D (n, r), got shape {Z.shape}")
    n, r = Z.shape
    if n <= r:
        raise ValueError(f"orthogonal_zero_mean needs n > r (V^T 1 = 0 leaves n - 1 dimensions), "
                         f"got n={n}, r={r}")
    top = _abs_max(Z)
    if not np.isfinite(top):                   # NaN propagates through max / min
        raise ValueError("orthogonal_zero_mean: Z contains NaN or infinite values")
    Z = _power_of_two_rescaled(Z, top)         # the mean of |Z| ~ 1e308 would overflow
    Zc = Z - Z.mean(axis=0, keepdims=True)
    Zc = _power_of_two_rescaled(Zc)
    G = tall_cross(Zc, Zc)                     # shared by both Cholesky-QR routes
    root_n = np.sqrt(n)
    V = _polar_via_gram(Zc, gram=G, scale=root_n)
    if V is not None:
        return V
    factors = _svd_via_shifted_cholesky(Zc, gram=G)
    del G
    if factors is None:
        U, s, Wt = np.linalg.svd(Zc, full_matrices=False)
        Q, U_R = U, np.eye(r)                  # Zc = U diag(s) Wt
    else:
        Q, U_R, s, Wt = factors                # Zc = (Q U_R) diag(s) Wt
    del Zc
    k = _numerical_rank(s, n, r)
    if k == r:                                 # sqrt(n) folded into the r x r factor
        return tall_product(Q, U_R @ (root_n * Wt), out=Q)
    warn_rank_completion(k, r)
    U_k = tall_product(Q, U_R[:, :k])
    del Q
    rng = check_random_state(random_state)
    R = rng.standard_normal((n, r - k))
    W_null = null_space_basis(Wt[:k], R[:r])   # before R is projected in place
    for _ in range(2):                         # classical Gram-Schmidt against [1, U_k], twice
        mean, coef = R.mean(axis=0, keepdims=True), tall_cross(U_k, R)
        R -= mean
        R -= tall_product(U_k, coef)
    P = _orthonormal_columns(R)
    V = tall_product(U_k, root_n * Wt[:k])
    V += tall_product(P, root_n * W_null)
    return V


def warn_rank_completion(k: int, r: int) -> None:
    """The warning of a latent step whose centred Z has numerical rank ``k < r``."""
    warn_numerical_fallback(
        f"orthogonal_zero_mean: the centred Z has numerical rank {k} < r = {r}, so "
        f"{r - k} column(s) of V are a random orthonormal completion (not determined by the "
        f"objective; they depend on the seed). Usual causes: fewer classes than bits with "
        f"small weights on the other terms, or duplicated / constant training data.")


def null_space_basis(Wt_k, G) -> np.ndarray:
    """The (r - k) x r orthonormal rows completing the k orthonormal rows ``Wt_k`` to a basis of
    R^r, made unique: the Q factor with a positive-diagonal R of ``(I - Wt_k^T Wt_k) G`` for the
    r x (r - k) matrix ``G`` (the completion's Gaussian draw's first r rows), transposed.

    The thin SVD leaves the right singular vectors of a zero singular value free (any
    orthonormal basis of the null space; LAPACK's choice follows rounding noise, so two
    factorisations of the same Zc -- in memory and on Dask -- pick different ones). Deriving the
    basis from the null-space projector makes the completion ``P W_null`` a function of Zc's
    null space and the seed only."""
    G = np.array(G, dtype=np.float64)
    for _ in range(2):                         # projector applied twice, as Gram-Schmidt
        G -= Wt_k.T @ (Wt_k @ G)
    return positive_qr(G).T


def positive_qr(M) -> np.ndarray:
    """The orthonormal Q of ``M = Q R`` with ``diag(R) >= 0`` (Householder QR, columns' signs
    fixed): the unique thin QR factor of a full-rank ``M``, which CholeskyQR also gives."""
    Q, R = np.linalg.qr(M)
    Q *= positive_diagonal_signs(R)
    return Q


def positive_diagonal_signs(R) -> np.ndarray:
    """The column signs that turn a QR factorisation ``Q R`` into the one with ``diag(R) >= 0``
    (``Q * signs``): shared by :func:`positive_qr` and the Dask fit's TSQR fallback."""
    return np.where(np.diagonal(R) < 0, -1.0, 1.0)


def cholesky_qr2_factor(C1, gram2):
    """The r x r algebra of CholeskyQR2 (the in-memory solver and the Dask fit share it):
    ``C1 = R^T R`` the Gram matrix of the columns, ``gram2(T1)`` the Gram matrix of
    ``R T1`` (``T1 = chol(C1)^{-1}``). Returns ``T = T1 T2`` with ``R T`` orthonormal, or None
    when a Cholesky factorisation fails or the first pass leaves ``max |Q^T Q - I|`` above
    ``CHOLESKY_QR_MAX_DEVIATION``. The triangular factors have positive diagonals: ``R T`` is
    the unique thin QR factor (:func:`positive_qr`)."""
    m = C1.shape[0]
    eye = np.eye(m)
    try:
        T1 = sla.solve_triangular(sla.cholesky(C1, lower=False, check_finite=False), eye,
                                  lower=False, check_finite=False)
        C2 = gram2(T1)
        if not np.abs(C2 - eye).max() <= CHOLESKY_QR_MAX_DEVIATION:
            return None
        T2 = sla.solve_triangular(sla.cholesky(C2, lower=False, check_finite=False), eye,
                                  lower=False, check_finite=False)
    except np.linalg.LinAlgError:
        return None
    return T1 @ T2


def _orthonormal_columns(R) -> np.ndarray:
    """The thin QR factor of the Gram-Schmidt-projected Gaussian ``R`` (positive-diagonal R):
    CholeskyQR2 (two (n, m) x (m, m) products; cond(R) ~ 1 + sqrt(m / n) for a projected
    Gaussian), Householder QR with fixed signs when CholeskyQR2 declines (n close to r).
    The row-block passes (:func:`tall_cross`, the Gram of ``R T1`` block by block as on
    Dask, :func:`tall_product`) run on all cores."""
    T = cholesky_qr2_factor(tall_cross(R, R), lambda T1: _gram_of_tall_product(R, T1))
    return positive_qr(R) if T is None else tall_product(R, T, out=R)


def _gram_of_tall_product(A, T) -> np.ndarray:
    """``(A T)^T (A T)`` without the n x m product: :func:`gram_of_product` of each row block
    (in cache), summed in block order on all cores."""
    blocks = _tall_blocks(A.shape[0], 2.0 * A.shape[0] * A.shape[1] * T.shape[1])
    return _sum_in_order(leaf_map(lambda rows: gram_of_product(A[rows], T), blocks))


def gram_of_product(A, T) -> np.ndarray:
    """``(A T)^T (A T)``: CholeskyQR's second Gram matrix (of one row block on Dask)."""
    AT = A @ T
    return AT.T @ AT


#: orthogonal_zero_mean rescales Zc by a power of two when max |Zc| is outside
#: [2^-RESCALE_EXPONENT, 2^RESCALE_EXPONENT]: the solution depends only on the directions of
#: Zc, the rescaling is exact, and Zc^T Zc then neither overflows (|Zc| ~ 1e155 did) nor
#: underflows; ordinary inputs are never touched
RESCALE_EXPONENT = 300


def _abs_max(Z) -> float:
    """``max |Z|`` without an n x r temporary (NaN if Z has one)."""
    return max(float(Z.max()), -float(Z.min())) if Z.size else 0.0


def _power_of_two_rescaled(Zc, top=None):
    top = _abs_max(Zc) if top is None else top
    if top == 0.0 or 2.0 ** -RESCALE_EXPONENT <= top <= 2.0 ** RESCALE_EXPONENT:
        return Zc
    return np.ldexp(Zc, -np.frexp(top)[1])   # max |Zc| in [0.5, 1), exactly


def _numerical_rank(s, n: int, r: int) -> int:
    """Singular values ``s`` (descending) above ``max(n, r) eps s[0]``: the numerical rank."""
    return int(np.count_nonzero(s > max(n, r) * np.finfo(np.float64).eps * max(s[0], 1e-300)))


def _svd_via_shifted_cholesky(Zc, gram=None):
    """The thin SVD ``Zc = (Q U_R) diag(s) Wt`` of an ill-conditioned ``Zc`` through its QR
    factors, as ``(Q, U_R, s, Wt)``, or None.

    Shifted CholeskyQR3 (Fukaya, Kannan, Nakatsukasa, Yamamoto, Yanagisawa, SIAM J. Sci.
    Comput. 2020): ``R1 = chol(Zc^T Zc + s I)`` with the shift
    ``s = 11 (n r + r (r + 1)) u ||Zc||_F^2`` (>= their bound with ||Zc||_2) makes
    ``Q1 = Zc R1^{-1}`` well enough conditioned (cond <~ u^{-1/2}) for two plain Cholesky-QR
    passes, which leave ``Zc = Q R`` with ``Q`` orthonormal to ~u and a residual ~u ||Zc||
    for cond(Zc) up to ~u^{-1} -- and for a numerically rank-deficient Zc, whose tiny singular
    values are rounding noise of that size. The SVD ``R = U_R diag(s) Wt`` of the r x r ``R``
    then gives a thin SVD of Zc, backward stable as LAPACK's: the polar factor is
    ``Q U_R Wt``, and at numerical rank k < r ``U_k = Q U_R[:, :k]``. A final
    ``max |Q^T Q - I|`` above ``CHOLESKY_QR_MAX_DEVIATION`` or a failed Cholesky factorisation
    returns None (LAPACK's thin SVD of Zc). Work: three passes of an n x r syrk and an
    n x r x r product plus one check, all BLAS-3: at n = 184,577, r = 64 (ASFOH's Z at
    numerical rank 12) 0.4 s against 1.2 s for LAPACK's thin SVD.

    ``gram``: ``Zc^T Zc`` when the caller has it. Each pass ``Q <- Q R_k^{-1}`` computes the
    next ``Q^T Q`` block by block in the same pass (:func:`tall_product_and_gram`, all cores):
    three passes over n x r, the last one's Gram the final check.
    """
    n, r = Zc.shape
    eye = np.eye(r)
    G = tall_cross(Zc, Zc) if gram is None else gram
    shift = 11.0 * (n * r + r * (r + 1)) * (np.finfo(np.float64).eps / 2) * float(np.trace(G))
    try:
        R = sla.cholesky(G + shift * eye, lower=False, check_finite=False)
        Q, C = tall_product_and_gram(
            Zc, sla.solve_triangular(R, eye, lower=False, check_finite=False))
        for _ in range(2):
            Rk = sla.cholesky(C, lower=False, check_finite=False)
            Q, C = tall_product_and_gram(
                Q, sla.solve_triangular(Rk, eye, lower=False, check_finite=False), out=Q)
            R = Rk @ R
    except np.linalg.LinAlgError:
        return None
    if not np.abs(C - eye).max() <= CHOLESKY_QR_MAX_DEVIATION:
        return None
    U, sv, Wt = np.linalg.svd(R)
    return Q, U, sv, Wt


#: orthogonal_zero_mean takes the Cholesky-QR route when the first pass leaves
#: ``max |Q^T Q - I|`` at most this (~5 eps cond(Zc)^2: cond(Zc) <~ 1.4e5)
CHOLESKY_QR_MAX_DEVIATION = 1e-7


def _polar_via_gram(Zc, gram=None, scale: float = 1.0):
    """Orthonormal polar factor ``U W^T`` of ``Zc = U S W^T`` through r x r matrices, or None.

    CholeskyQR2 -- two passes of ``Q <- Q R_k^{-1}`` with ``R_k = chol(Q^T Q)`` -- gives
    ``Zc = Q R`` with ``Q`` orthonormal to machine precision and a backward-stable residual
    as long as ``cond(Zc)`` is moderate. The first pass measures that for free: it leaves
    ``|Q^T Q - I| ~ eps cond(Zc)^2``; beyond ``CHOLESKY_QR_MAX_DEVIATION`` (or if a Cholesky
    factorisation fails) the function returns None and the caller uses the thin SVD. The
    polar factor is then ``Q U_R W_R^T`` from the SVD of the r x r ``R``: as accurate as the
    thin SVD of ``Zc`` (both ~eps cond(Zc); tested), built from n x r x r BLAS-3 products,
    about twice as fast at r = 128.

    ``gram``: ``Zc^T Zc`` when the caller has it; ``scale``: a factor folded into the r x r
    matrix of the last product (``orthogonal_zero_mean``'s ``sqrt(n)``). The first pass
    computes ``Q^T Q`` block by block as it writes ``Q`` (:func:`tall_product_and_gram`).
    """
    r = Zc.shape[1]
    eye = np.eye(r)
    try:
        R1 = sla.cholesky(tall_cross(Zc, Zc) if gram is None else gram, lower=False,
                          check_finite=False)
        Q, C = tall_product_and_gram(
            Zc, sla.solve_triangular(R1, eye, lower=False, check_finite=False))
        if not np.abs(C - eye).max() <= CHOLESKY_QR_MAX_DEVIATION:
            return None
        R2 = sla.cholesky(C, lower=False, check_finite=False)
    except np.linalg.LinAlgError:
        return None
    # second pass folded into the last product: polar = (Q R2^{-1}) U_R W_R^T, R = R2 R1
    U, _, Wt = np.linalg.svd(R2 @ R1)
    T = sla.solve_triangular(R2, eye, lower=False, check_finite=False) @ (U @ Wt)
    return tall_product(Q, scale * T, out=Q)


@timed("small")
@_latency_bound(_tall_flops)
def procrustes(M) -> np.ndarray:
    """Solve ``max_R tr(R^T M)  s.t.  R^T R = I`` for ``M`` of shape (a, b), a >= b.

    ``R = U W^T`` for the thin SVD ``M = U S W^T`` (square ``M``: an orthogonal rotation;
    tall ``M``: orthonormal columns). A wide ``M`` (a < b) has no such ``R`` (a ValueError), and
    neither has a non-finite one.
    """
    M = np.asarray(M, dtype=np.float64)
    if M.ndim != 2 or M.shape[0] < M.shape[1]:
        raise ValueError(f"procrustes needs a 2-D (a, b) matrix with a >= b (R^T R = I_b), "
                         f"got shape {M.shape}")
    if not np.isfinite(M).all():
        raise ValueError("procrustes: M contains NaN or infinite values")
    U, _, Wt = np.linalg.svd(M, full_matrices=False)
    return U @ Wt


@timed("small")
@_latency_bound(_svd_flops)
def svt(M, tau: float):
    """Singular value thresholding: ``argmin_X tau ||X||_* + 1/2 ||X - M||_F^2``.

    Returns ``U diag(max(s - tau, 0)) W^T``.
    """
    if not tau >= 0:   # also NaN
        raise ValueError(f"tau must be >= 0, got {tau}")
    M = np.asarray(M, dtype=np.float64)
    U, s, Wt = np.linalg.svd(M, full_matrices=False)
    s = np.maximum(s - tau, 0.0)
    k = int(np.count_nonzero(s))
    return (U[:, :k] * s[:k]) @ Wt[:k]


def row_blocks(n: int, rows: int):
    """``slice`` objects covering ``range(n)`` in consecutive blocks of at most ``rows`` rows
    (the row blocks of every tall product here; a chunked / Dask caller maps the ``*_block``
    functions over its own blocks and sums the results)."""
    rows = max(int(rows), 1)
    return [slice(start, min(start + rows, n)) for start in range(0, n, rows)]


#: rows per block of the threaded tall products (:func:`tall_product`, :func:`tall_cross`,
#: :func:`tall_product_and_gram`): 8,192 x 64 float64 is 4 MiB, a block and its product stay
#: in cache between the two halves of a fused pass
TALL_BLOCK_ROWS = 8192


def _tall_blocks(n: int, work: float):
    """The fixed row blocks of a tall product of ``work`` flops: one block of all rows when it
    is small enough to be one BLAS call in the caller's thread (``LATENCY_BOUND_FLOPS``:
    Wiki-size fits keep one call). The blocks depend on the shape only, so the result does
    not depend on how many threads run them."""
    if work > LATENCY_BOUND_FLOPS and n > TALL_BLOCK_ROWS:
        return row_blocks(n, TALL_BLOCK_ROWS)
    return [slice(0, n)]


def tall_product(A, T, out=None) -> np.ndarray:
    """``A @ T`` for a tall float64 ``A`` (n, k) and a small ``T`` (k, m), into ``out`` when
    given (it may be ``A`` itself when k == m).

    Large products run on row blocks on all cores, one BLAS thread each
    (:func:`cmhash._threads.leaf_map`): an n x r x r product with r <= 128 has too short an
    inner dimension for a multi-threaded BLAS to pay (one BLAS thread at n = 184,577,
    r = 64: 49 ms; two BLAS threads: 26 ms but idle threads spin into the next call; two
    single-threaded row blocks: 25 ms)."""
    n = A.shape[0]
    if out is None:
        out = np.empty((n, T.shape[1]), dtype=np.result_type(A, T))
    leaf_map(lambda rows: np.matmul(A[rows], T, out=out[rows]),
             _tall_blocks(n, 2.0 * n * A.shape[1] * T.shape[1]))
    return out


def tall_cross(A, B) -> np.ndarray:
    """``A^T B`` (float64, (k, m)) for tall ``A`` (n, k) and ``B`` (n, m): the sum of the
    row blocks' products in block order on all cores (:func:`tall_product`); ``A^T A`` when
    ``B`` is ``A`` (BLAS syrk per block)."""
    n = A.shape[0]
    same = B is A
    return _sum_in_order(leaf_map(lambda rows: A[rows].T @ (A[rows] if same else B[rows]),
                                  _tall_blocks(n, 2.0 * n * A.shape[1] * B.shape[1])))


def _sum_in_order(parts):
    """The sum of the row blocks' partial results, added in block order (so the result does
    not depend on which thread finished first)."""
    total = parts[0]
    for part in parts[1:]:
        total += part
    return total


def tall_product_and_gram(A, T, out=None):
    """``(Q, Q^T Q)`` for ``Q = A @ T`` (:func:`tall_product`) in one pass: each row block's
    product is multiplied by its own transpose while it is in cache (CholeskyQR's
    ``Q <- Q R^{-1}`` then ``Q^T Q``: one read of A and one write of Q instead of three
    passes over n x r). ``out`` may be ``A`` itself."""
    n, m = A.shape[0], T.shape[1]
    if out is None:
        out = np.empty((n, m))

    def block(rows):
        q = np.matmul(A[rows], T, out=out[rows])
        return q.T @ q
    return out, _sum_in_order(leaf_map(block, _tall_blocks(n, 2.0 * n * A.shape[1] * m)))


def _check_rows(A, B, what: str) -> None:
    if B.shape[0] != A.shape[0]:
        raise ValueError(f"{what}: A has {A.shape[0]} rows but B has {B.shape[0]}")


def _syrk_update(out, block64) -> None:
    """``out += block64^T block64`` on the upper triangle of the Fortran-ordered float64 ``out``,
    in place (one BLAS dsyrk: n q^2 flops for a (n, q) block, no q x q temporary)."""
    _dsyrk(1.0, block64.T, beta=1.0, c=out, trans=0, lower=0, overwrite_c=1)


def _symmetrized(upper) -> np.ndarray:
    """The symmetric matrix whose upper triangle is ``upper``'s (C order, float64)."""
    out = np.triu(upper)
    out += np.triu(upper, 1).T
    return out


def gram_block(a) -> np.ndarray:
    """``a^T a`` of one row block, float64-exact (the block is promoted to float64; dsyrk)."""
    if sp.issparse(a):
        prod = _as_float64(a).T @ _as_float64(a)
        return np.asarray(prod.toarray() if sp.issparse(prod) else prod, dtype=np.float64)
    upper = np.zeros((a.shape[1],) * 2, order="F")
    _syrk_update(upper, np.asarray(a, dtype=np.float64))
    return _symmetrized(upper)


@timed("small")
@_latency_bound(_svd_flops)
def nuclear_norm(M) -> float:
    """``||M||_*``, the sum of the singular values (one LAPACK call; one BLAS thread when small,
    where a multi-threaded BLAS only adds latency: 0.2 s instead of 0.6 ms for 32 x 1,200 on a
    loaded 2-core machine)."""
    return float(np.linalg.svd(np.asarray(M, dtype=np.float64), compute_uv=False).sum())


@timed("gram")
def gram(A, B=None, chunk: int = GRAM_CHUNK) -> np.ndarray:
    """``A^T B`` (``B`` defaults to ``A``) in float64, accumulated over row blocks.

    Inputs may be float32 (kernel features are stored that way) or sparse; each block of
    ``chunk`` rows is promoted to float64 (one reused buffer) before its product, so memory is
    O(chunk x q) beyond the q x q result and the result is as accurate as a float64 product.
    ``A^T A`` is one in-place BLAS dsyrk per block (n q^2 flops, half those of a general
    product); the float64 work runs at the float64 GEMM rate of the machine.

    Why float64 (docs/architecture.md, "dtypes"): float32 block products are not accurate
    enough for a Gram matrix that gets a small ridge. At n = 184,577 their rounding (~1e-3
    relative to entries ~1e4) exceeded the 0.01 ridge of the hash functions and made
    ``phi^T phi + 0.01 I`` numerically indefinite; float32 products over blocks of 4,096 rows
    accumulated in float64 still leave ``||E||_2`` ~ 0.1 there (tests/test_solvers.py,
    ``test_gram_keeps_the_small_ridge_definite``). Cross products that are *not* solved
    against a small ridge use :func:`cross_product` (float32 blocks, float64 accumulation).
    """
    if B is not None and B is not A:
        return gram_and_cross(A, B, chunk=chunk, gram_matrix=False)[1]
    n, q = A.shape
    if sp.issparse(A):
        out = np.zeros((q, q))
        for rows in row_blocks(n, chunk):
            out += gram_block(A[rows])
        return out
    upper = np.zeros((q, q), order="F")
    for block in _float64_blocks(A, n, chunk):
        _syrk_update(upper, block)
    return _symmetrized(upper)


@timed("gram")
def gram_and_cross(A, Y, chunk: int = GRAM_CHUNK, *, gram_matrix: bool = True):
    """``(A^T A, A^T Y)`` in float64 from one pass over the row blocks of ``A``.

    Each block of ``A`` is promoted to float64 once and serves both products (the Gram by
    dsyrk, the cross product by dgemm), so the right-hand side of a ridge regression costs no
    second pass over the n x q features. ``gram_matrix=False`` skips the Gram (returns None).
    """
    _check_rows(A, Y, "gram")
    n, q = A.shape
    Y = Y if sp.issparse(Y) else np.asarray(Y)
    cross = np.zeros((q, Y.shape[1]))
    upper = np.zeros((q, q), order="F") if gram_matrix else None
    if sp.issparse(A):
        for rows in row_blocks(n, chunk):
            a = _as_float64(A[rows])
            if gram_matrix:
                upper += gram_block(a)
            prod = a.T @ _as_float64(Y[rows])
            cross += prod.toarray() if sp.issparse(prod) else prod
        return upper, cross
    if sp.issparse(Y):
        for rows, block in zip(row_blocks(n, chunk), _float64_blocks(A, n, chunk)):
            if gram_matrix:
                _syrk_update(upper, block)
            cross += np.asarray((_as_float64(Y[rows]).T @ block).T)
        return (_symmetrized(upper) if gram_matrix else None), cross
    # both products through SciPy's BLAS (dsyrk, dgemm accumulating in place): alternating
    # it with NumPy's BLAS block by block left the idle threads of one library spinning
    # while the other's worked (4x slower Gram blocks in a fit on a 2-core machine)
    cross = np.asfortranarray(cross)
    for rows, block in zip(row_blocks(n, chunk), _float64_blocks(A, n, chunk)):
        if gram_matrix:
            _syrk_update(upper, block)
        y = np.asarray(Y[rows], dtype=np.float64)
        _dgemm(1.0, block.T, y.T, beta=1.0, c=cross, trans_a=0, trans_b=1, overwrite_c=1)
    return (_symmetrized(upper) if gram_matrix else None), np.ascontiguousarray(cross)


def _float64_blocks(A, n: int, chunk: int):
    """The row blocks of dense ``A`` as float64: views when ``A`` is float64, else copies
    into one reused (chunk, q) buffer (valid until the next block)."""
    if A.dtype == np.float64:
        for rows in row_blocks(n, chunk):
            yield A[rows]
        return
    buf = np.empty((min(chunk, n), A.shape[1]))
    for rows in row_blocks(n, chunk):
        block = buf[:rows.stop - rows.start]
        np.copyto(block, A[rows])
        yield block


def cross_block(a, b) -> np.ndarray:
    """``a^T b`` of one row block as float64; a float32 product when either is float32 (the
    other is rounded to float32: a thin (rows, r) block, a cheap copy).

    The wider operand goes first (``(b^T a)^T`` when ``b`` has more columns): OpenBLAS
    splits the rows of the result between its threads, and a product whose result has only
    r = 16..128 rows (``V^T phi``) ran at 1/8 of the rate of the same product with q rows
    (``(phi^T V)^T``) with two threads (8.6 against 67 GFLOP per CPU second, n = 100,000,
    q = 1,000, r = 32); single-threaded the two are equal."""
    dtype = np.float32 if np.float32 in (a.dtype, b.dtype) else np.float64
    a = np.asarray(a, dtype=dtype)
    b = np.asarray(b, dtype=dtype)
    if b.shape[1] > a.shape[1]:
        return np.asarray(b.T @ a, dtype=np.float64).T
    return np.asarray(a.T @ b, dtype=np.float64)


@timed("products")
def cross_product(A, B, *, block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """``A^T B`` for tall ``A`` (n, a) and ``B`` (n, b), e.g. ``V^T phi``, ``phi^T T``: float32
    products on blocks of ``block_rows`` rows when either input is float32, accumulated in
    float64 across blocks. Returns float64 (a, b).

    Accuracy (docs/architecture.md, "dtypes"): the float64 input (V, H, codes) is rounded to
    float32 (relative 6e-8 per entry) and each block's sum of ``block_rows`` products
    accumulates float32 rounding, ~``u32 sqrt(block_rows)`` relative to the sum of the
    products' magnitudes (u32 = 6e-8; ~8e-6 for 16,384 rows; at most ``gamma_block_rows(u32)``);
    the float64 sum over blocks adds nothing measurable. That is ample for products solved against a well-conditioned matrix
    (``V^T V = n I``: BATCH's U-step, ASCMH's P-step, ASFOH's P-step) and for AMSH's stage 2
    on bounded kernel features; Gram matrices that get a small ridge use :func:`gram`.
    """
    _check_rows(A, B, "cross_product")
    out = np.zeros((A.shape[1], B.shape[1]))
    for rows in row_blocks(A.shape[0], block_rows):
        out += cross_block(A[rows], B[rows])
    return out


def _as_float64(X):
    return X.astype(np.float64) if sp.issparse(X) else np.asarray(X, dtype=np.float64)


@timed("small")
@_latency_bound(_solve_flops)
def solve_psd(G, R) -> np.ndarray:
    """Solve ``G X = R`` for symmetric positive (semi)definite ``G`` (Cholesky, lstsq fallback)."""
    G = np.asarray(G, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    try:
        return sla.cho_solve(sla.cho_factor(G, lower=False, check_finite=False), R,
                             check_finite=False)
    except np.linalg.LinAlgError:
        warn_numerical_fallback(
            f"solve_psd: the {G.shape[0]} x {G.shape[0]} system matrix is not numerically "
            f"positive definite (Cholesky failed); using the minimum-norm least-squares solution "
            f"instead. Usual causes: a ridge of 0 with linearly dependent or constant features.")
        return np.linalg.lstsq(G, R, rcond=None)[0]


def ridge_regression(A, Y, alpha: float, *, gram_matrix=None) -> np.ndarray:
    """``W = (A^T A + alpha I)^{-1} A^T Y``: the minimiser of ``||A W - Y||^2 + alpha ||W||^2``.

    ``A`` (n, q) may be float32 or sparse; ``Y`` (n, r). ``gram_matrix`` lets callers reuse a
    precomputed ``A^T A``. Both products are float64 (:func:`gram_and_cross`: one pass over
    the row blocks of ``A``). Cost O(n q^2 + n q r + q^3), memory O(q^2 + chunk q).
    """
    if not 0 <= alpha < np.inf:   # also NaN
        raise ValueError(f"alpha must be finite and >= 0, got {alpha}")
    if gram_matrix is None:
        G, rhs = gram_and_cross(A, Y)
    else:
        G, rhs = np.array(gram_matrix, dtype=np.float64), gram(A, Y)
    G[np.diag_indices_from(G)] += alpha
    return solve_psd(G, rhs)
