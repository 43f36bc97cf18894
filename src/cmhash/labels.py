"""Label helpers: normalised labels and products with label similarities, never n x n.

A label similarity such as ``S = 2 Y~ Y~^T - 1 1^T`` (ASFOH), ``r G G^T`` (BATCH, ASCMH) or
``L^_1^T L^_2`` (AMSH) is only ever applied to a thin matrix through its factors:
``S X = 2 Y~ (Y~^T X) - 1 (1^T X)``, cost O(n c r) instead of O(n^2 r).
"""
from __future__ import annotations

import numpy as np


def normalize_rows(L) -> np.ndarray:
    """Rows scaled to unit L2 norm (``G`` in BATCH/ASCMH, ``L^`` in AMSH, ``Y~`` in ASFOH).

    All-zero rows (unlabelled samples) stay zero.
    """
    L = np.asarray(L, dtype=np.float64)
    norms = np.linalg.norm(L, axis=1, keepdims=True)
    return L / np.where(norms > 0, norms, 1.0)


def pm_one_similarity_matmul(Yn, X) -> np.ndarray:
    """``(2 Yn Yn^T - 1 1^T) @ X`` in O(n c r): ASFOH's ``S`` applied to a thin ``X``."""
    X = np.asarray(X, dtype=np.float64)
    return 2.0 * (Yn @ (Yn.T @ X)) - X.sum(axis=0, keepdims=True)


def pm_one_similarity_left(Y, Yn) -> np.ndarray:
    """``Y^T (2 Yn Yn^T - 1 1^T)`` as a (c, n) matrix, i.e. ``2 (Y^T Yn) Yn^T - (Y^T 1) 1^T``."""
    Y = np.asarray(Y, dtype=np.float64)
    return 2.0 * ((Y.T @ Yn) @ Yn.T) - Y.sum(axis=0)[:, None]
