"""SCM-orth and SCM-seq: semantic correlation maximisation (Zhang & Li, AAAI 2014).

Algorithm (row-sample convention; derivation and deviations in docs/methods/scm.md). X is the
text modality and Y the image modality, as in the released code; both centred, no kernel::

    L~  = labels with unit-norm rows;   S = 2 L~ L~^T - 1 1^T   (never formed)
    Cxy = r X^T S Y = r (2 (X^T L~)(L~^T Y) - (X^T 1)(1^T Y))   (d_x x d_y, through labels)
    Cxx = X^T X + lambda I,  Cyy = Y^T Y + lambda I
    SCM-orth: the r leading solutions of  Cxy Cyy^{-1} Cxy^T w = e Cxx w,
              W_x = [w_1..w_r],  W_y = Cyy^{-1} Cxy^T W_x diag(e)^{-1/2}
    SCM-seq:  for t = 1..r: (w_x, w_y) = the leading pair for the current Cxy;
              Cxy <- Cxy - (X^T sign(X w_x)) (Y^T sign(Y w_y))^T
    codes: sign(X W_x), sign(Y W_y) (training items too: SCM learns no separate codes)

SCM-orth maximises ``tr(W_x^T Cxy W_y)`` s.t. ``W_x^T Cxx W_x = W_y^T Cyy W_y = I`` (a
generalised eigenproblem); SCM-seq maximises ``w_x^T Cxy_t w_y`` per bit, with ``Cxy_t = X^T
(r S - sum_{k<t} b_x^k b_y^k^T) Y`` the correlation left by the earlier bits. Everything is
d x d: O(n (d_x + d_y) (c + d) + d^3) per fit, no n x n matrix.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from .._validation import check_bool, check_positive
from ..base import TwoStepKernelHasher
from ..labels import normalize_rows
from ..solvers import gram, sign, solve_psd

__all__ = ["SCMOrth", "SCMSeq", "semantic_cross_covariance", "leading_correlations"]

#: generalised eigenvalues below this fraction of the largest count as zero correlation
ZERO_CORRELATION = 1e-8


def semantic_cross_covariance(X, Y, L, r: int) -> np.ndarray:
    """``r X^T (2 L~ L~^T - 1 1^T) Y`` through the labels (``L~``: unit-norm label rows)."""
    Ln = normalize_rows(L)
    XL, YL = gram(X, Ln), gram(Y, Ln)                       # d_x x c, d_y x c
    sx = np.asarray(X.sum(axis=0), dtype=np.float64).ravel()
    sy = np.asarray(Y.sum(axis=0), dtype=np.float64).ravel()
    return r * (2.0 * XL @ YL.T - np.outer(sx, sy))


def leading_correlations(Cxx, Cyy, Cxy, k: int):
    """The k leading solutions of ``Cxy Cyy^{-1} Cxy^T w = e Cxx w`` (``w^T Cxx w = 1``):
    returns ``(W_x, W_y, e)`` with ``W_y = Cyy^{-1} Cxy^T W_x diag(e)^{-1/2}`` (so that
    ``W_y^T Cyy W_y = I`` and ``W_x^T Cxy W_y = diag(sqrt(e))``), the released trainCCA.m."""
    A = Cxy @ solve_psd(Cyy, Cxy.T)
    A = 0.5 * (A + A.T)
    e, W = sla.eigh(A, Cxx)                                 # ascending, W^T Cxx W = I
    e, W = e[::-1][:k], W[:, ::-1][:, :k]
    Wy = solve_psd(Cyy, Cxy.T @ W) / np.sqrt(np.maximum(e, np.finfo(float).tiny))
    return W, Wy, e


class _SCM(TwoStepKernelHasher):
    """Shared set-up of SCM-orth and SCM-seq (linear, centred features, no iterations)."""

    PRESETS: dict = {}
    VARIANTS: dict = {}

    def __init__(self, n_bits: int = 32, *, ridge: float = 1e-6, random_state=None,
                 verbose: bool = False):
        super().__init__(n_bits, random_state=random_state, verbose=verbose)
        self.ridge = ridge

    def _uses_anchors(self) -> bool:
        return False

    def _validate_params(self):
        check_positive(self.ridge, "ridge")

    def _fit(self, views, labels, rng):
        feats = self._kernelize(views, rng, use_kernel=False)   # centred image, text
        Y, X = feats                                            # the code's X = text, Y = image
        r = self.n_bits
        Cxx = gram(X)
        Cyy = gram(Y)
        Cxx[np.diag_indices_from(Cxx)] += self.ridge
        Cyy[np.diag_indices_from(Cyy)] += self.ridge
        Cxy = semantic_cross_covariance(X, Y, labels, r)
        Wx, Wy = self._projections(X, Y, Cxx, Cyy, Cxy)
        self.projections_ = [Wy, Wx]                            # image, text
        self.codes_ = [sign(Y @ Wy.astype(Y.dtype)), sign(X @ Wx.astype(X.dtype))]


class SCMOrth(_SCM):
    """SCM-orth (Zhang & Li, AAAI 2014): orthogonal projections of maximal semantic correlation.

    Parameters: ``n_bits``; ``ridge`` (lambda added to Cxx and Cyy, 1e-6 as the code).
    At most as many bits as there are non-zero semantic correlations: with centred features
    the rank of Cxy is at most ``min(d_x, d_y, c)`` (``c - 1`` for one label per item); more
    bits are refused (their projections would divide by a
    zero correlation).

    Attributes: ``projections_`` [W_y (image), W_x (text)], ``codes_`` (per modality, the
    training items' codes), ``correlations_`` (the generalised eigenvalues e).
    """

    name = "scm-orth"
    SEARCH_SPACE = {"ridge": ("log", 1e-8, 1.0)}
    state_shapes = {**TwoStepKernelHasher.state_shapes, "correlations_": ("r",)}

    def _projections(self, X, Y, Cxx, Cyy, Cxy):
        r = self.n_bits
        if r > Cxx.shape[0]:
            raise ValueError(f"SCM-orth: n_bits={r} exceeds the text feature dimension "
                             f"({Cxx.shape[0]}); its W_x has orthonormal (Cxx) columns")
        Wx, Wy, e = leading_correlations(Cxx, Cyy, Cxy, r)
        nonzero = int(np.count_nonzero(e > ZERO_CORRELATION * max(e[0], 0.0)))
        if nonzero < r:
            raise ValueError(f"SCM-orth: only {nonzero} non-zero semantic correlations on "
                             f"these data (the rank of X^T S Y is at most min(d_x, d_y, c) for centred features), "
                             f"so n_bits={r} projections cannot be formed; use n_bits <= "
                             f"{nonzero} or SCM-seq")
        self.correlations_ = e
        return Wx, Wy


class SCMSeq(_SCM):
    """SCM-seq (Zhang & Li, AAAI 2014): one projection pair per bit on the residual correlation.

    Parameters
    ----------
    n_bits : int
    ridge : float
        lambda added to Cxx and Cyy (1e-6).
    cca_fallback : bool
        The released code's heuristic: when a bit's leading correlation exceeds the previous
        bit's (the code notes it "rarely happens in last bits"), stop and give the remaining
        bits plain CCA directions. Off by default (the paper learns every bit
        sequentially); with it, ``n_bits`` may not exceed the text dimension (the code's
        ``trainCCA`` has no more directions).

    Attributes: ``projections_`` [W_y, W_x], ``codes_``, ``correlations_`` (per sequential
    bit), ``n_sequential_`` (bits learned sequentially).
    """

    name = "scm-seq"
    SEARCH_SPACE = {"ridge": ("log", 1e-8, 1.0)}
    VARIANTS = {"SCM-seq-code": {"cca_fallback": True}}

    def __init__(self, n_bits: int = 32, *, ridge: float = 1e-6, cca_fallback: bool = False,
                 random_state=None, verbose: bool = False):
        super().__init__(n_bits, ridge=ridge, random_state=random_state, verbose=verbose)
        self.cca_fallback = cca_fallback

    def _validate_params(self):
        super()._validate_params()
        check_bool(self.cca_fallback, "cca_fallback")

    def _projections(self, X, Y, Cxx, Cyy, Cxy):
        r = self.n_bits
        Wx = np.zeros((Cxx.shape[0], r))
        Wy = np.zeros((Cyy.shape[0], r))
        if self.cca_fallback:
            if r > Cxx.shape[0]:
                raise ValueError(f"SCM-seq with cca_fallback=True: n_bits={r} exceeds the text "
                                 f"feature dimension ({Cxx.shape[0]}), the number of CCA "
                                 f"directions the fallback can use")
            # plain CCA for the fallback, in the code's order (reversed leading directions)
            Wx_cca, Wy_cca, _ = leading_correlations(Cxx, Cyy, gram(X, Y), r)
            Wx[:], Wy[:] = Wx_cca[:, ::-1], Wy_cca[:, ::-1]
        self.correlations_ = []
        last = np.inf
        t = 0
        for t in range(r):
            wx, wy, e = leading_correlations(Cxx, Cyy, Cxy, 1)
            if self.cca_fallback and e[0] > last:
                break
            last = e[0]
            Wx[:, t], Wy[:, t] = wx[:, 0], wy[:, 0]
            self.correlations_.append(float(e[0]))
            bx = sign(X @ wx[:, 0].astype(X.dtype)).astype(np.float64)
            by = sign(Y @ wy[:, 0].astype(Y.dtype)).astype(np.float64)
            Cxy = Cxy - np.outer(gram(X, bx[:, None])[:, 0], gram(Y, by[:, None])[:, 0])
        else:
            t = r
        self.n_sequential_ = t
        return Wx, Wy
