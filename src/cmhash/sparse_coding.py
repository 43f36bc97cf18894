"""Sparse coding and dictionary blocks (LSSH; any sparse-coding hashing method).

* :func:`sparse_codes` -- the lasso of every row against a dictionary,
  ``argmin_S ||Y - S G||^2 + lam ||S||_1`` (rows independent), by scikit-learn's coordinate
  descent :class:`sklearn.linear_model.Lasso` on the precomputed k x k Gram matrix of the
  dictionary (one target per row of ``Y``).
* :func:`unit_ball_least_squares` -- a dictionary / basis block,
  ``argmin_D ||X - S D||^2`` subject to ``||D_j||^2 <= 1`` for every row (atom) ``D_j``:
  the Lagrange dual of Lee, Battle, Raina, Ng ("Efficient sparse coding algorithms", NIPS
  2006), maximised over the multipliers by SciPy's L-BFGS-B.

Both work on k x k and k x d matrices beside the n x k codes: nothing is n x n.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg as sla
from scipy.optimize import minimize

from ._threads import single_threaded_blas_if_small

__all__ = ["sparse_codes", "unit_ball_least_squares", "lasso_objective"]


def lasso_objective(Y, S, G, lam: float) -> float:
    """``||Y - S G||^2 + lam ||S||_1``."""
    return float(np.sum((Y - S @ G) ** 2) + lam * np.abs(S).sum())


def sparse_codes(Y, G, lam: float, *, init=None, tol: float = 1e-6,
                 max_iter: int = 5000) -> np.ndarray:
    """``argmin_S ||Y - S G||^2 + lam ||S||_1`` for ``Y`` (n, m) and the dictionary ``G``
    (k, m): each row ``s_i`` of the (n, k) result solves its own lasso
    ``min_s ||y_i - s G||^2 + lam ||s||_1``.

    scikit-learn's :class:`~sklearn.linear_model.Lasso` minimises
    ``(1 / (2 m)) ||y - G^T s||^2 + alpha ||s||_1``, so ``alpha = lam / (2 m)``; coordinate
    descent (cyclic, on the k x k Gram matrix) stops when its duality gap, relative to
    ``||y_i||^2``, is below ``tol``, starting from ``init`` (n, k) when given (warm start),
    else from 0. The optimality (KKT) condition
    of each row is ``2 (y_i - s_i G) G^T in lam * subgradient(||s_i||_1)``.
    """
    Lasso, ConvergenceWarning = _sklearn_lasso()
    Y = np.asarray(Y, dtype=np.float64)
    G = np.asarray(G, dtype=np.float64)
    n, m = Y.shape
    k = G.shape[0]
    if n == 0:
        return np.zeros((0, k))
    model = Lasso(alpha=lam / (2.0 * m), fit_intercept=False, precompute=G @ G.T,
                  max_iter=max_iter, tol=tol, warm_start=init is not None, selection="cyclic")
    if init is not None:
        model.coef_ = np.array(init, dtype=np.float64, order="C").reshape(n, k)
    with warnings.catch_warnings():
        # a row that needs more than max_iter sweeps keeps its last iterate (an objective no
        # worse than the start's); the callers' objective traces show it
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(np.asfortranarray(G.T), Y.T if n > 1 else Y[0])
    return np.asarray(model.coef_, dtype=np.float64).reshape(n, k)


def _sklearn_lasso():
    """scikit-learn's Lasso and ConvergenceWarning (an optional dependency: the sparse codes of
    LSSH are its only user in the shallow methods)."""
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import Lasso
    except ImportError as exc:
        raise ImportError("LSSH's sparse coding needs scikit-learn: pip install 'cmhash[deep]' "
                          "or pip install scikit-learn") from exc
    return Lasso, ConvergenceWarning


def unit_ball_least_squares(S, X, previous, *, multipliers=None, tol: float = 1e-12):
    """``argmin_D ||X - S D||^2`` s.t. ``||D_j||^2 <= 1`` for every row ``D_j`` of D (k, d).

    The Lagrangian ``||X - S D||^2 + sum_j lam_j (||D_j||^2 - 1)`` is minimised by
    ``D(lam) = (S^T S + diag(lam))^{-1} S^T X``; the dual
    ``g(lam) = ||X||^2 - tr(C^T (S^T S + diag(lam))^{-1} C) - sum_j lam_j`` (``C = S^T X``) is
    concave with ``dg / dlam_j = ||D_j(lam)||^2 - 1`` and is maximised over ``lam >= 0`` by
    L-BFGS-B. At the maximum the KKT conditions hold: stationarity by construction,
    ``lam_j >= 0``, ``||D_j|| <= 1`` and ``lam_j (||D_j||^2 - 1) = 0``; rows left a rounding
    error outside the ball are scaled onto it.

    Atoms that no sample uses (a zero column of S) do not enter the objective: they keep their
    ``previous`` value (any row in the ball is optimal for them). ``multipliers`` (k,): a start
    for the dual (the previous call's, in an alternating loop), else 0. Returns ``(D, lam)``.
    """
    S = np.asarray(S, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    D = np.array(previous, dtype=np.float64)
    k = S.shape[1]
    lam = np.zeros(k)
    StS = S.T @ S
    used = np.flatnonzero(np.diag(StS) > 0)
    if used.size == 0:
        return D, lam
    G = StS[np.ix_(used, used)]
    C = S[:, used].T @ X
    # a relative 1e-13 floor keeps the factorisation defined where lam_j = 0 meets a singular
    # S^T S (two atoms used by the same samples in the same proportions)
    floor = 1e-13 * max(float(np.max(np.diag(G))), 1.0)

    def solve(lam_used):
        factor = sla.cho_factor(G + np.diag(lam_used + floor), lower=True, check_finite=False)
        return sla.cho_solve(factor, C, check_finite=False)

    def negative_dual(lam_used):
        Du = solve(lam_used)
        value = -float(np.sum(C * Du)) - float(lam_used.sum())
        grad = np.sum(Du * Du, axis=1) - 1.0
        return -value, -grad

    kk = used.size
    with single_threaded_blas_if_small(kk ** 3 / 3 + kk * kk * C.shape[1]):
        start = np.zeros(kk) if multipliers is None else \
            np.maximum(np.asarray(multipliers, dtype=np.float64)[used], 0.0)
        res = minimize(negative_dual, start, jac=True, method="L-BFGS-B",
                       bounds=[(0.0, None)] * kk,
                       options={"ftol": tol, "gtol": 1e-10, "maxiter": 1000})
        Du = solve(res.x)
    norms = np.linalg.norm(Du, axis=1)
    Du /= np.maximum(norms, 1.0)[:, None]
    D[used] = Du
    lam[used] = res.x
    return D, lam
