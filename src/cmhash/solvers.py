"""Closed-form solvers shared by every method.

Each solver is written once here and reused by BATCH, ASCMH, ASFOH and AMSH:

* :func:`orthogonal_zero_mean` -- ``max tr(Z^T V) s.t. V^T V = n I, V^T 1 = 0``
  (SCRATCH/BATCH Eq. "V-step"; ASCMH Eq. 18-20; ASFOH Eq. 20-21; AMSH's V-steps).
* :func:`procrustes` -- ``max tr(R^T M) s.t. R^T R = I`` (ASCMH Eq. 14-16).
* :func:`svt` -- singular value thresholding, the proximal operator of ``tau ||.||_*``
  (ASFOH Eq. 28).
* :func:`ridge_regression` / :func:`gram` -- ``(A^T A + alpha I)^{-1} A^T Y`` with a chunked,
  float64-accumulated Gram matrix (every two-step hash function).
* :func:`sign` -- sign with 0 mapped to -1, as the reference codes do.
"""
from __future__ import annotations

import functools

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from ._threads import single_threaded_blas_if_small
from ._validation import warn_numerical_fallback

#: rows per chunk when accumulating Gram matrices of tall matrices
GRAM_CHUNK = 4096


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


def _solve_flops(G, R, *args, **kwargs) -> float:
    """Cholesky of the k x k ``G`` plus two triangular solves with the columns of ``R``."""
    k, m = np.shape(G)[0], (np.shape(R) + (1,))[1]
    return k ** 3 / 3.0 + 2.0 * k * k * m


def sign(X) -> np.ndarray:
    """Elementwise sign as int8 codes in {-1, +1}; zeros map to -1 (``B(B==0) = -1``)."""
    return np.where(np.asarray(X) > 0, 1, -1).astype(np.int8)


@_latency_bound(_tall_flops)
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
    checked against the SVD route in the tests), which is several times faster for r >= 64.
    When ``k < r`` the completion ``P_bar`` is a random orthonormal basis orthogonal to both
    ``U_k`` and ``1`` (the released BATCH code omits the orthogonality to ``1``).
    """
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2:
        raise ValueError(f"Z must be 2-D (n, r), got shape {Z.shape}")
    n, r = Z.shape
    if n <= r:
        raise ValueError(f"orthogonal_zero_mean needs n > r (V^T 1 = 0 leaves n - 1 dimensions), "
                         f"got n={n}, r={r}")
    if not np.all(np.isfinite(Z)):
        raise ValueError("orthogonal_zero_mean: Z contains NaN or infinite values")
    Z = _power_of_two_rescaled(Z)              # the mean of |Z| ~ 1e308 would overflow
    Zc = _power_of_two_rescaled(Z - Z.mean(axis=0, keepdims=True))
    V = _polar_via_gram(Zc)
    if V is not None:
        return np.sqrt(n) * V
    U, s, Wt = np.linalg.svd(Zc, full_matrices=False)
    k = int(np.count_nonzero(s > max(n, r) * np.finfo(np.float64).eps * max(s[0], 1e-300)))
    U = U[:, :k]
    if k < r:
        warn_numerical_fallback(
            f"orthogonal_zero_mean: the centred Z has numerical rank {k} < r = {r}, so "
            f"{r - k} column(s) of V are a random orthonormal completion (not determined by the "
            f"objective; they depend on the seed). Usual causes: fewer classes than bits with "
            f"small weights on the other terms, or duplicated / constant training data.")
        rng = (random_state if isinstance(random_state, np.random.Generator)
               else np.random.default_rng(random_state))
        basis = np.hstack([np.full((n, 1), 1.0 / np.sqrt(n)), U])
        R = rng.standard_normal((n, r - k))
        # two passes of classical Gram-Schmidt against [1, U_k] for numerical safety
        for _ in range(2):
            R -= basis @ (basis.T @ R)
        U = np.hstack([U, np.linalg.qr(R)[0]])
    return np.sqrt(n) * (U @ Wt)


#: orthogonal_zero_mean rescales Zc by a power of two when max |Zc| is outside
#: [2^-RESCALE_EXPONENT, 2^RESCALE_EXPONENT]: the solution depends only on the directions of
#: Zc, the rescaling is exact, and Zc^T Zc then neither overflows (|Zc| ~ 1e155 did) nor
#: underflows; ordinary inputs are never touched
RESCALE_EXPONENT = 300


def _power_of_two_rescaled(Zc):
    top = float(np.abs(Zc).max()) if Zc.size else 0.0
    if top == 0.0 or 2.0 ** -RESCALE_EXPONENT <= top <= 2.0 ** RESCALE_EXPONENT:
        return Zc
    return np.ldexp(Zc, -np.frexp(top)[1])   # max |Zc| in [0.5, 1), exactly


#: orthogonal_zero_mean takes the Cholesky-QR route when the first pass leaves
#: ``max |Q^T Q - I|`` at most this (~5 eps cond(Zc)^2: cond(Zc) <~ 1.4e5)
CHOLESKY_QR_MAX_DEVIATION = 1e-7


def _polar_via_gram(Zc):
    """Orthonormal polar factor ``U W^T`` of ``Zc = U S W^T`` through r x r matrices, or None.

    CholeskyQR2 -- two passes of ``Q <- Q R_k^{-1}`` with ``R_k = chol(Q^T Q)`` -- gives
    ``Zc = Q R`` with ``Q`` orthonormal to machine precision and a backward-stable residual
    as long as ``cond(Zc)`` is moderate. The first pass measures that for free: it leaves
    ``|Q^T Q - I| ~ eps cond(Zc)^2``; beyond ``CHOLESKY_QR_MAX_DEVIATION`` (or if a Cholesky
    factorisation fails) the function returns None and the caller uses the thin SVD. The
    polar factor is then ``Q U_R W_R^T`` from the SVD of the r x r ``R``: as accurate as the
    thin SVD of ``Zc`` (both ~eps cond(Zc); tested), built from n x r x r BLAS-3 products,
    about twice as fast at r = 128.
    """
    r = Zc.shape[1]
    eye = np.eye(r)
    try:
        R1 = sla.cholesky(Zc.T @ Zc, lower=False, check_finite=False)
        Q = Zc @ sla.solve_triangular(R1, eye, lower=False, check_finite=False)
        C = Q.T @ Q
        if not np.abs(C - eye).max() <= CHOLESKY_QR_MAX_DEVIATION:
            return None
        R2 = sla.cholesky(C, lower=False, check_finite=False)
    except np.linalg.LinAlgError:
        return None
    # second pass folded into the last product: polar = (Q R2^{-1}) U_R W_R^T, R = R2 R1
    U, _, Wt = np.linalg.svd(R2 @ R1)
    return Q @ (sla.solve_triangular(R2, eye, lower=False, check_finite=False) @ (U @ Wt))


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


def gram(A, B=None, chunk: int = GRAM_CHUNK) -> np.ndarray:
    """``A^T B`` (``B`` defaults to ``A``) in float64, accumulated over row chunks.

    Inputs may be float32 (kernel features are stored that way) or sparse; each chunk is
    promoted to float64 before its product, so memory stays O(chunk x q) and the result is
    as accurate as a float64 product. Float32 chunk products were not: at n = 184,577 their
    rounding (~1e-3 relative to entries ~1e4) exceeded the 0.01 ridge of the hash functions
    and made ``phi^T phi + 0.01 I`` numerically indefinite.
    """
    same = B is None
    B = A if same else B
    n = A.shape[0]
    if B.shape[0] != n:
        raise ValueError(f"gram: A has {n} rows but B has {B.shape[0]}")
    out = np.zeros((A.shape[1], B.shape[1]), dtype=np.float64)
    for start in range(0, n, chunk):
        a = _as_float64(A[start:start + chunk])
        b = a if same else _as_float64(B[start:start + chunk])
        prod = a.T @ b
        out += prod.toarray() if sp.issparse(prod) else prod
    return out


def cross_product(A, B) -> np.ndarray:
    """``A^T B`` for a tall float32 ``A`` or ``B`` (e.g. ``phi^T T``, ``V^T phi``), in one
    float32 BLAS call, returned as float64.

    Only for well-conditioned uses (e.g. BATCH's ``V^T phi``, solved against ``V^T V = n I``):
    float32 accumulation is about twice as fast as :func:`gram` but its ~1e-6 relative error is
    amplified by an ill-conditioned solve, so Gram matrices that get a small ridge, and
    right-hand sides of ridge regressions on unbounded (raw) features, use :func:`gram`. The
    one ridge use is AMSH's stage 2 on bounded RBF kernel features, where the error reaches the
    fitted values only through ``||phi (phi^T phi + xi I)^{-1}|| <= 1 / (2 sqrt(xi))``
    (see :class:`cmhash.methods.amsh.HashStage`).
    """
    dtype = np.float32 if np.float32 in (getattr(A, "dtype", None), getattr(B, "dtype", None)) \
        else np.float64
    return np.asarray(np.asarray(A, dtype=dtype).T @ np.asarray(B, dtype=dtype), dtype=np.float64)


def _as_float64(X):
    return X.astype(np.float64) if sp.issparse(X) else np.asarray(X, dtype=np.float64)


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
    precomputed ``A^T A``. Cost O(n q^2 + n q r + q^3), memory O(q^2 + chunk q).
    """
    if not 0 <= alpha < np.inf:   # also NaN
        raise ValueError(f"alpha must be finite and >= 0, got {alpha}")
    G = gram(A) if gram_matrix is None else np.array(gram_matrix, dtype=np.float64)
    G[np.diag_indices_from(G)] += alpha
    Y = np.asarray(Y)
    rhs = gram(A, Y.astype(A.dtype if A.dtype in (np.float32, np.float64) else np.float64, copy=False))
    return solve_psd(G, rhs)
