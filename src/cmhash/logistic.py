"""Kernel logistic regression hash functions (SePH, GSPH): one classifier per bit.

SePH (Lin et al., CVPR 2015) and GSPH (Mandal et al., CVPR 2017) learn the training codes first
and then, for each modality and each bit k, a kernel logistic regression (KLR) from kernel
features to that bit::

    min_w  sum_i log(1 + exp(-b_ik k(x_i)^T w)) + C w^T K0 w          (one bit k)

with ``k(x)`` the RBF kernel values between ``x`` and m kernel samples (anchors) and ``K0`` the
m x m kernel among the anchors (the RKHS norm of ``f(x) = k(x)^T w``; Mark Schmidt's
``penalizedKernelL2`` in the released codes). The kernel is **not** centred and has no bias:
``exp(-||x - a||^2 / (2 sigma))`` with ``sigma`` the mean squared distance between *training
samples* (SePH's released code: ``mean(z(:))`` over the n x n distance matrix, computed here
in O(n d) as ``2 (mean ||x||^2 - ||mean x||^2)``).

The r problems are independent; :func:`fit_kernel_logistic` solves them jointly (one L-BFGS
run over the m x r weight matrix, the sum of the r objectives), which has the same unique
minimiser because each is strictly convex when ``K0`` is positive definite. A bit is then
``sign(k(x)^T w)``, its probability ``sigmoid(k(x)^T w)``.
"""
from __future__ import annotations

import numpy as np
import scipy.optimize as sopt
import scipy.sparse as sp
from scipy.special import expit

from ._threads import single_threaded_blas_if_small
from ._validation import check_int, check_positive
from .kernel import RBFAnchorFeatures

__all__ = ["klr_feature_map", "mean_pairwise_sq_distance", "klr_objective",
           "fit_kernel_logistic"]


def mean_pairwise_sq_distance(X) -> float:
    """``mean_{i,j} ||x_i - x_j||^2`` over all n^2 ordered pairs (i = j included), in O(n d):
    ``2 (mean_i ||x_i||^2 - ||mean_i x_i||^2)``; dense or sparse ``X``."""
    n = X.shape[0]
    if sp.issparse(X):
        mu = np.asarray(X.mean(axis=0), dtype=np.float64).ravel()
        return max(2.0 * (float(X.multiply(X).sum()) / n - float(mu @ mu)), 0.0)
    Xc = np.asarray(X, dtype=np.float64)
    Xc = Xc - Xc.mean(axis=0)              # 2 mean ||x - mean||^2: no cancellation
    return 2.0 * float(np.einsum("ij,ij->", Xc, Xc)) / n


def klr_feature_map(X, n_anchors: int, anchors: str, rng) -> RBFAnchorFeatures:
    """The uncentred RBF map of SePH/GSPH's KLR: ``n_anchors`` kernel samples (``"random"``
    training samples: SePH-rnd; ``"kmeans"`` centres: SePH-km), ``sigma`` the mean squared
    distance between training samples (module doc), fitted on ``X``."""
    fmap = RBFAnchorFeatures(n_anchors, anchors=anchors, center=False, random_state=rng)
    fmap.fit(X)
    sigma = mean_pairwise_sq_distance(X)
    if not sigma > 0:
        raise ValueError("all training samples of a modality coincide: the RBF kernel of the "
                         "logistic hash functions is undefined")
    fmap.sigma_ = sigma
    return fmap


def klr_objective(W, K, K0, B, C: float) -> float:
    """``sum_k [sum_i log(1 + exp(-B_ik (K W)_ik)) + C w_k^T K0 w_k]`` for all bits at once."""
    margins = B * (K @ W)
    return float(np.sum(np.logaddexp(0.0, -margins)) + C * np.sum(W * (K0 @ W)))


def fit_kernel_logistic(K, K0, B, C: float, *, max_iter: int = 500,
                        gtol: float = 1e-5) -> tuple[np.ndarray, dict]:
    """Minimise :func:`klr_objective` over ``W`` (m, r) from ``W = 0``; returns ``(W, info)``.

    ``K`` (n, m) kernel features of the training samples, ``K0`` (m, m) the anchors' kernel,
    ``B`` (n, r) the +-1 training codes, ``C`` the weight of the RKHS penalty. L-BFGS (scipy)
    stops when the largest gradient entry is at most ``gtol`` (minFunc's optTol, 1e-5) or
    after ``max_iter`` iterations (minFunc's default 500). ``info``: ``n_iter``, ``converged``,
    ``objective``, ``max_abs_gradient``.
    """
    C = check_positive(C, "C", allow_zero=True)
    max_iter = check_int(max_iter, "max_iter")
    K = np.asarray(K, dtype=np.float64)
    K0 = np.asarray(K0, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    m, r = K.shape[1], B.shape[1]
    if K.shape[0] != B.shape[0] or K0.shape != (m, m):
        raise ValueError(f"fit_kernel_logistic: K {K.shape}, K0 {K0.shape} and B {B.shape} do "
                         f"not fit (K (n, m), K0 (m, m), B (n, r))")

    def fun(w):
        W = w.reshape(m, r)
        Z = K @ W
        margins = B * Z
        K0W = K0 @ W
        value = float(np.sum(np.logaddexp(0.0, -margins)) + C * np.sum(W * K0W))
        # d/dZ log(1 + exp(-b z)) = -b sigmoid(-b z)
        grad = K.T @ (-B * expit(-margins)) + 2.0 * C * K0W
        return value, grad.ravel()

    # each evaluation is two n x m x r products: latency-bound at small sizes (_threads)
    with single_threaded_blas_if_small(float(K.shape[0]) * m * r):
        res = sopt.minimize(fun, np.zeros(m * r), jac=True, method="L-BFGS-B",
                            options={"maxiter": max_iter, "gtol": gtol, "ftol": 0.0,
                                     "maxcor": 10})
        g = fun(res.x)[1]
    W = res.x.reshape(m, r)
    info = {"n_iter": int(res.nit), "converged": bool(np.abs(g).max() <= gtol),
            "objective": float(res.fun), "max_abs_gradient": float(np.abs(g).max())}
    return W, info


def fit_klr_hash_functions(views, codes, n_anchors, anchors: str, C: float, rng, *,
                           max_iter: int = 500):
    """Stage 2 of SePH / GSPH for every modality: ``(feature_maps, weights, infos)``.

    ``views[v]`` (n, d_v) training features, ``codes[v]`` (n, r) the +-1 codes modality v is
    fitted to (the shared H for SePH, the modality's own codes for GSPH), ``n_anchors[v]`` its
    kernel samples. Modality v's bits are ``sign(feature_maps[v].transform(x) @ weights[v])``.
    """
    fmaps, weights, infos = [], [], []
    for X, B, q in zip(views, codes, n_anchors):
        fmap = klr_feature_map(X, q, anchors, rng)
        K = fmap.transform(X)
        K0 = fmap.transform(fmap.anchors_)
        W, info = fit_kernel_logistic(K, K0, B, C, max_iter=max_iter)
        fmaps.append(fmap)
        weights.append(W)
        infos.append(info)
    return fmaps, weights, infos
