"""ITQ: iterative quantization (Gong & Lazebnik, CVPR 2011 / TPAMI 2013), numpy only.

Finds the rotation ``R`` (d x d, ``R^T R = I``) that minimises the quantization loss

    Q(B, R) = ||B - Zc R||_F^2,   B in {-1, +1}^{n x d},   Zc = Z - 1 mean(Z)

by alternating two exact block minimisations (row-sample convention)::

    R = random orthogonal (QR of a Gaussian matrix, drawn from random_state)
    repeat n_iter times:
        B = sign(Zc R)                 # exact minimiser over B for fixed R
        R = procrustes(Zc^T B)         # max tr(R^T Zc^T B) s.t. R^T R = I, exact for fixed B
        record Q(B, R)                 # non-increasing: both steps minimise Q over their block

The PCA projection of the original ITQ is not part of this class: SDCH (and anyone else using
it) passes an already low-dimensional ``Z`` (the fc4 outputs), so ``d`` is the code length.
The data are centred by their mean (``center=True``, as ITQ does after PCA) so that the codes
are balanced; pass ``center=False`` to rotate ``Z`` as given.
"""
from __future__ import annotations

import numpy as np

from ._validation import check_features, check_int, check_random_state
from .solvers import procrustes, sign


class ITQ:
    """Iterative quantization: a learned rotation followed by ``sign``.

    Parameters
    ----------
    n_iter : int, default 50
        Alternating (B, R) iterations.
    center : bool, default True
        Subtract the training mean before rotating (ITQ's zero-centred PCA data).
    random_state : None, int or numpy Generator
        Seed of the initial random rotation.

    Attributes
    ----------
    rotation_ : (d, d) float64        R
    mean_ : (d,) float64              training mean (zeros when ``center=False``)
    quantization_loss_ : list of float  ||B - Zc R||_F^2 after each iteration (non-increasing)
    n_iter_ : int
    """

    def __init__(self, n_iter: int = 50, *, center: bool = True, random_state=None):
        self.n_iter = n_iter
        self.center = center
        self.random_state = random_state

    def fit(self, Z) -> "ITQ":
        """Learn the rotation from ``Z`` of shape (n, d)."""
        check_int(self.n_iter, "n_iter", minimum=0)
        Z = check_features(Z, "Z", allow_sparse=False, dtype=np.float64)
        rng = check_random_state(self.random_state)
        d = Z.shape[1]
        self.mean_ = Z.mean(axis=0) if self.center else np.zeros(d)
        Zc = Z - self.mean_
        R, _ = np.linalg.qr(rng.standard_normal((d, d)))   # random orthogonal start
        self.quantization_loss_ = []
        for _ in range(self.n_iter):
            B = sign(Zc @ R).astype(np.float64)              # B-step
            R = procrustes(Zc.T @ B)                         # R-step
            self.quantization_loss_.append(float(np.sum((B - Zc @ R) ** 2)))
        self.rotation_ = R
        self.n_iter_ = self.n_iter
        return self

    def transform(self, Z) -> np.ndarray:
        """Codes ``sign((Z - mean_) R)`` as (n, d) int8 in {-1, +1}."""
        if not hasattr(self, "rotation_"):
            raise ValueError("ITQ is not fitted yet; call fit(Z) first")
        Z = check_features(Z, "Z", allow_sparse=False, dtype=np.float64)
        if Z.shape[1] != self.rotation_.shape[0]:
            raise ValueError(f"Z has {Z.shape[1]} columns but ITQ was fitted on "
                             f"{self.rotation_.shape[0]}")
        return sign((Z - self.mean_) @ self.rotation_)

    def fit_transform(self, Z) -> np.ndarray:
        return self.fit(Z).transform(Z)
