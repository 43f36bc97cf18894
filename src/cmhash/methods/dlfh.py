"""DLFH and KDLFH: discrete latent factor model hashing (Jiang & Li, IEEE TIP 2019).

Algorithm (row-sample convention; derivation and deviations in docs/methods/dlfh.md)::

    S_ij = 1[labels of i and j share a class]      (never formed whole: n x m blocks)
    U, V = sign(randn(n, r))                         image / text codes
    repeat n_iter times:                             (30 DLFH, 50 KDLFH)
        C = m random columns (m = n_samples, default r, as the released code)
        for k = 1..r:  U_k = sign(p),  p = (lambda / r) (S_{:,C} - sigmoid(Theta)) V_{C,k}
                                          + m lambda^2 / (4 r^2) U_k,  Theta = lambda/r U V_C^T
        for k = 1..r:  the same for V_k with the roles of U and V swapped (rows C of U)
    DLFH:  W_m = (X_m^T X_m + gamma I)^{-1} X_m^T B_m on the raw features, sign(X_m(x) W_m)
    KDLFH: kernel logistic regression of each bit on RBF features of 500 random anchors

Each column update maximises a minorizer of the log-likelihood
``sum_{i, j in C} S_ij Theta_ij - log(1 + exp(Theta_ij))`` (the second derivative of each
term is >= -1/4), so it never decreases that likelihood; ``objective_`` records the negative
log-likelihood of each iteration's sampled n x m block. With ``n_samples = n`` the block is the
whole (n x n) likelihood and the trace never increases.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from .._validation import check_int, check_positive
from ..base import TwoStepKernelHasher
from ..kernel import CenteredFeatures, RBFAnchorFeatures
from ..progress import progress
from ..solvers import gram, sign, solve_psd

__all__ = ["DLFH", "KDLFH", "similarity_block", "update_columns", "negative_log_likelihood",
           "kernel_logistic_regression"]


def similarity_block(L, rows) -> np.ndarray:
    """``S[:, rows]`` (n x m, float64) with ``S_ij = 1`` when items i and j share a label."""
    L = np.asarray(L, dtype=np.float64)
    return (L @ L[rows].T > 0).astype(np.float64)


def negative_log_likelihood(U, Vs, S, scale: float) -> float:
    """``-sum_ij S_ij Theta_ij - log(1 + exp(Theta_ij))``, ``Theta = scale / r U Vs^T``."""
    theta = (scale / U.shape[1]) * (U @ Vs.T)
    return float(np.sum(np.logaddexp(0.0, theta)) - np.sum(S * theta))


def update_columns(U, Vs, S, scale: float) -> np.ndarray:
    """One pass of DLFH's column-wise updates of the binary ``U`` (n, r) against the sampled
    rows ``Vs`` (m, r) of the other modality's codes and the similarity block ``S`` (n, m).

    For column k the log-likelihood ``l(U)`` satisfies, with ``u0 = U_k``,
    ``l(u) >= l(u0) + g^T (u - u0) - m scale^2 / (8 r^2) ||u - u0||^2``,
    ``g = scale / r (S - sigmoid(Theta)) Vs_k``, because every term's second derivative in
    Theta is >= -1/4. On the binary set ``||u||^2 = n``, so the bound is maximised by
    ``u = sign(g + m scale^2 / (4 r^2) u0)`` (0 -> +1, as the released code), and
    ``l(new U) >= bound(new) >= bound(u0) = l(U)``. Theta and ``S - sigmoid(Theta)`` are kept
    up to date for the rows whose bit changed, so a pass costs O(r n m). Returns the new U
    (float64).
    """
    U = np.array(U, dtype=np.float64)
    Vs = np.asarray(Vs, dtype=np.float64)
    n, r = U.shape
    m = Vs.shape[0]
    step = scale / r
    theta = step * (U @ Vs.T)
    residual = S - expit(theta)                     # S - sigmoid(Theta), n x m
    curvature = m * scale ** 2 / (4.0 * r ** 2)
    for k in range(r):
        p = step * (residual @ Vs[:, k]) + curvature * U[:, k]
        new = np.where(p < 0, -1.0, 1.0)
        rows = np.flatnonzero(new != U[:, k])
        if rows.size:
            theta[rows] += step * np.outer(new[rows] - U[rows, k], Vs[:, k])
            residual[rows] = S[rows] - expit(theta[rows])
            U[rows, k] = new[rows]
    return U


def kernel_logistic_regression(K, H, K0, C: float, *, max_iter: int = 500, tol: float = 1e-5):
    """``W`` (q, r) minimising ``sum_ik log(1 + exp(-H_ik (K W)_ik)) + C/2 tr(W^T K0 W)``.

    ``K`` (n, q) are kernel features of the training items against q anchors, ``K0`` (q, q)
    the anchors' kernel matrix, ``H`` (n, r) the +-1 targets: one problem per column, solved
    jointly (the sum is separable, so the joint minimiser is every column's minimiser).

    L-BFGS (scipy) in preconditioned variables ``W = P Y``, ``P = A^{-1/2}`` for the Hessian at
    ``W = 0``, ``A = K^T K / 4 + C K0`` (one q x q eigendecomposition): the same minimiser, but
    on Wiki it converges in about 50 iterations where the original variables need thousands
    (the ``K0``-weighted ridge is badly conditioned). Eigenvalues of ``A`` below 1e-12 of the
    largest are dropped (W stays in the span where the problem is strictly convex). Stops when
    the largest gradient entry (in Y) falls below ``tol`` times its value at ``Y = 0``, or after
    ``max_iter`` iterations. Returns ``(W, result)`` (scipy's ``OptimizeResult``).
    """
    K = np.asarray(K, dtype=np.float64)
    H = np.asarray(H, dtype=np.float64)
    K0 = np.asarray(K0, dtype=np.float64)
    s, Q = np.linalg.eigh(gram(K) / 4.0 + C * K0)
    keep = s > 1e-12 * s[-1]
    P = Q[:, keep] / np.sqrt(s[keep])                     # W = P Y
    F = K @ P                                             # preconditioned features (n, q')
    R = P.T @ K0 @ P                                      # the ridge's metric in Y
    q, r = F.shape[1], H.shape[1]

    def fun(y):
        Y = y.reshape(q, r)
        margin = H * (F @ Y)
        RY = R @ Y
        value = float(np.sum(np.logaddexp(0.0, -margin))) + 0.5 * C * float(np.sum(Y * RY))
        grad = -(F.T @ (H * expit(-margin))) + C * RY
        return value, grad.ravel()

    start = np.zeros(q * r)
    g0 = float(np.abs(fun(start)[1]).max())
    res = minimize(fun, start, jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "gtol": tol * g0, "ftol": 0.0, "maxcor": 20})
    return P @ res.x.reshape(q, r), res


class DLFH(TwoStepKernelHasher):
    """DLFH (Jiang & Li, TIP 2019), as the authors' released code.

    Parameters
    ----------
    n_bits : int
        Code length r.
    lambda_scale : float
        lambda in ``Theta_ij = lambda / r u_i^T v_j`` (8 in the released code).
    n_samples : int or None
        Columns of S sampled per iteration (None: r, the released code's ``num_samples = bit``).
    gamma : float
        Ridge of the linear hash functions (1e-6 in the released code).
    n_iter : int
        Iterations (30).
    random_state, verbose : see :class:`cmhash.base.CrossModalHasher`.

    Attributes
    ----------
    codes_ : [(n, r) int8, (n, r) int8]   learned codes U (image) and V (text)
    projections_ : list of (d_m, r)        linear hash functions W_m
    kernels_ : list of CenteredFeatures with a zero mean (the raw features, as the code)
    objective_ : list of float   negative log-likelihood of each iteration's sampled block
    """

    name = "dlfh"
    SEARCH_SPACE = {"lambda_scale": ("log", 1.0, 64.0), "gamma": ("log", 1e-8, 1e-2)}
    PRESETS: dict = {}
    VARIANTS: dict = {}

    def __init__(self, n_bits: int = 32, *, lambda_scale: float = 8.0, n_samples=None,
                 gamma: float = 1e-6, n_iter: int = 30, random_state=None,
                 verbose: bool = False):
        super().__init__(n_bits, random_state=random_state, verbose=verbose)
        self.lambda_scale = lambda_scale
        self.n_samples = n_samples
        self.gamma = gamma
        self.n_iter = n_iter

    def _uses_anchors(self) -> bool:
        return False

    def _validate_params(self):
        self._validate_code_params()
        check_positive(self.gamma, "gamma", allow_zero=True)

    def _validate_code_params(self):
        """The parameters of the discrete latent factor model (shared with KDLFH)."""
        check_positive(self.lambda_scale, "lambda_scale")
        if self.n_samples is not None:
            check_int(self.n_samples, "n_samples")
        check_int(self.n_iter, "n_iter")

    def _n_columns(self, n: int) -> int:
        m = self.n_bits if self.n_samples is None else int(self.n_samples)
        if m > n:
            raise ValueError(f"n_samples={m} exceeds the number of training samples ({n})")
        return m

    def _learn_codes(self, L, rng):
        """The discrete latent factor model: returns the image and text codes U, V."""
        n, r = L.shape[0], self.n_bits
        m = self._n_columns(n)
        scale = float(self.lambda_scale)
        U = sign(rng.standard_normal((n, r))).astype(np.float64)
        V = sign(rng.standard_normal((n, r))).astype(np.float64)
        self.objective_ = []
        for _ in progress(range(self.n_iter), desc=type(self).__name__, verbose=self.verbose):
            cols = rng.choice(n, size=m, replace=False)
            S = similarity_block(L, cols)                        # S[:, C] = S[C, :]^T
            U = update_columns(U, V[cols], S, scale)
            V = update_columns(V, U[cols], S, scale)
            self.objective_.append(negative_log_likelihood(U, V[cols], S, scale))
        self.n_iter_ = self.n_iter
        return U, V

    def _fit(self, views, labels, rng):
        U, V = self._learn_codes(labels, rng)
        self.codes_ = [U.astype(np.int8), V.astype(np.int8)]
        self._fit_out_of_sample(views, rng)

    def _fit_out_of_sample(self, views, rng):
        # the released code regresses the codes on the raw features, uncentred and without an
        # intercept: an identity map (a CenteredFeatures whose mean is 0, so that it is saved
        # and applied like every feature map)
        self.kernels_ = []
        for X in views:
            fmap = CenteredFeatures(dtype=np.float64).fit(X)
            fmap.mean_ = np.zeros_like(fmap.mean_)
            self.kernels_.append(fmap)
        Xs = [fmap.transform(X) for fmap, X in zip(self.kernels_, views)]
        self.projections_ = []
        for X, B in zip(Xs, self.codes_):
            A = gram(X)
            A[np.diag_indices_from(A)] += self.gamma
            self.projections_.append(solve_psd(A, gram(X, B.astype(np.float64))))


class KDLFH(DLFH):
    """KDLFH (Jiang & Li, TIP 2019): DLFH's codes, kernel logistic regression hash functions.

    Parameters (besides DLFH's; ``gamma`` is unused)
    ----------
    n_anchors : int or (int, int)
        Random training items used as kernel anchors (500 in the released code).
    eta : float
        Weight C of the kernel ridge ``C/2 w^T K0 w`` of each bit's logistic regression (1e-2).
    klr_max_iter : int
        L-BFGS iterations of the logistic regressions (minFunc's default 500).

    Attributes (besides DLFH's)
    ----------
    kernels_ : list of RBFAnchorFeatures (uncentred: the logistic regressions have no bias)
    projections_ : list of (q_m, r)   the logistic regression weights
    klr_iterations_ : list of int     L-BFGS iterations per modality
    """

    name = "kdlfh"
    SEARCH_SPACE = {"lambda_scale": ("log", 1.0, 64.0), "eta": ("log", 1e-4, 1.0)}

    def __init__(self, n_bits: int = 32, *, lambda_scale: float = 8.0, n_samples=None,
                 n_anchors=500, eta: float = 1e-2, n_iter: int = 50, klr_max_iter: int = 500,
                 random_state=None, verbose: bool = False):
        TwoStepKernelHasher.__init__(self, n_bits, random_state=random_state, verbose=verbose)
        self.lambda_scale = lambda_scale
        self.n_samples = n_samples
        self.n_anchors = n_anchors
        self.eta = eta
        self.n_iter = n_iter
        self.klr_max_iter = klr_max_iter

    def _uses_anchors(self) -> bool:
        return True

    def _validate_params(self):
        self._validate_code_params()
        check_positive(self.eta, "eta")
        check_int(self.klr_max_iter, "klr_max_iter")

    def _fit_out_of_sample(self, views, rng):
        self.kernels_, self.projections_, self.klr_iterations_ = [], [], []
        for v, (X, B) in enumerate(zip(views, self.codes_)):
            fmap = RBFAnchorFeatures(self._anchors_for(v, len(views)), center=False,
                                     random_state=rng)
            K = fmap.fit_transform(X)
            K0 = fmap.transform(fmap.anchors_).astype(np.float64)
            W, res = kernel_logistic_regression(K, B, K0, float(self.eta),
                                                max_iter=self.klr_max_iter)
            self.kernels_.append(fmap)
            self.projections_.append(W)
            self.klr_iterations_.append(int(res.nit))
