"""ASCMH: asymmetric scalable cross-modal hashing (Li & Pun), made consistent.

Algorithm (row-sample convention; the derivation of every step, and every deviation from the
paper's Section 3.3, is in docs/methods/ascmh.md)::

    phi_t = kernel features of modality t (500 image / 1,000 text anchors)   Sec. 3.1
    G     = labels with unit-norm rows                                       Eq. 2
    V = argmax tr(N^T V) s.t. V^T V = n I, V^T 1 = 0 for N ~ randn(n, r)     (random feasible V)
    R = random r x r rotation, B = sign(randn(n, r))
    repeat n_iter times:                                                     Algorithm 1
        P_t = (V^T V)^{-1} V^T phi_t            (= V^T phi_t / n)             Eq. 9-10
        A   = V R
        M   = (L^T L)^+ (r (L^T G)(G^T A) + omega L^T B) (A^T A + omega I)^{-1}
                                                (= ... / (n + omega))         Eq. 11-12
        R   = procrustes(V^T G (G^T L) M)                                     Eq. 13-16
        Z   = r G ((G^T L) M) R^T + sum_t lambda_t phi_t P_t^T
        V   = argmax tr(Z^T V) s.t. V^T V = n I, V^T 1 = 0                    Eq. 17-20
        B   = sign(L M)                                                       Eq. 21-22
    W_t = (phi_t^T phi_t + lambda_h I)^{-1} phi_t^T B                         Eq. 23-25

Every step exactly minimises, over its block, the objective recorded in ``objective_``::

    ||A (L M)^T - r G G^T||^2 + omega ||B - L M||^2 + sum_t lambda_t ||phi_t - V P_t||^2
    s.t. A = V R, R^T R = I, V^T V = n I, V^T 1 = 0, B in {-1, +1}^{n x r}          (Eq. 7)

so the objective never increases. The n x n matrix ``r G G^T`` is only applied through its
factors (``G (G^T X)``, r x c and c x c products): one iteration costs
O(n (q_x + q_y) r + n c r + n r^2), linear in n (Section 3.5).
"""
from __future__ import annotations

import time

import numpy as np

from .._phases import phase
from .._threads import single_threaded_blas
from .._validation import check_int, check_positive
from ..base import TwoStepKernelHasher
from ..labels import normalize_rows
from ..progress import progress
from ..solvers import (cross_product, orthogonal_zero_mean, procrustes, ridge_regression, sign,
                       solve_psd, tall_cross, tall_product)

__all__ = ["ASCMH", "ascmh_objective", "objective_constants"]


# ----------------------------------------------------------------------------- the steps
def _pinv_psd(S, rel_tol: float = 1e-12) -> np.ndarray:
    """Moore-Penrose pseudo-inverse of a small symmetric PSD matrix (eigendecomposition)."""
    w, Q = np.linalg.eigh(np.asarray(S, dtype=np.float64))
    keep = w > rel_tol * max(float(w[-1]), 1e-300)
    return (Q[:, keep] / w[keep]) @ Q[:, keep].T


def update_P(V, Vt_phi, *, VtV=None) -> np.ndarray:
    """P-step (Eq. 8-10): ``P_t = argmin ||phi_t - V P_t||^2 = (V^T V)^{-1} V^T phi_t``.

    ``Vt_phi`` is ``V^T phi_t`` (r, q_t). Under ``V^T V = n I`` this is the paper's
    ``V^T phi_t / n``; the general normal-equation form is used so that the step is exact
    even when ``V^T V`` carries rounding error. ``VtV``: ``V^T V`` when already computed.
    """
    if VtV is None:
        V = np.asarray(V, dtype=np.float64)
        VtV = V.T @ V
    return solve_psd(VtV, np.asarray(Vt_phi, dtype=np.float64))


def update_M(A, L, G, B, omega: float, r: int, *, LtL_pinv=None, LtG=None, GtA=None,
             AtA=None, LtB=None) -> np.ndarray:
    """M-step (Eq. 11-12, corrected): minimiser of ``||A (L M)^T - r G G^T||^2 + omega ||B - L M||^2``.

    Setting the gradient ``2 L^T L M A^T A - 2 r L^T G G^T A + 2 omega (L^T L M - L^T B)`` to
    zero gives ``L^T L M (A^T A + omega I) = r (L^T G)(G^T A) + omega L^T B``; the right-hand
    side lies in the range of ``L^T``, so ``M = (L^T L)^+ K (A^T A + omega I)^{-1}`` zeroes the
    gradient exactly even when ``L^T L`` is singular (the minimum-norm minimiser; ``L M`` is
    unique). With ``A^T A = n I`` this is ``(L^T L)^+ K / (n + omega)``. Cost O(n c r), or
    O(c^2 r + r^2 c) when the products ``G^T A``, ``A^T A`` and ``L^T B`` are given (then ``A``
    is not used).
    """
    if LtL_pinv is None:
        LtL_pinv = _pinv_psd(L.T @ L)
    if LtG is None:
        LtG = L.T @ G
    if GtA is None or AtA is None:
        A = np.asarray(A, dtype=np.float64)
        GtA, AtA = G.T @ A, A.T @ A
    if LtB is None:
        LtB = L.T @ np.asarray(B, dtype=np.float64)
    K = r * (LtG @ GtA) + omega * LtB                                        # c x r
    AtA = np.array(AtA, dtype=np.float64)
    AtA[np.diag_indices_from(AtA)] += omega
    # M S = LtL^+ K with S = A^T A + omega I symmetric (= (n + omega) I for feasible A)
    return solve_psd(AtA, (LtL_pinv @ K).T).T


def update_R(V, G, LM_c, r: int, *, GtV=None) -> np.ndarray:
    """R-step (Eq. 13-16): ``argmin_{R^T R = I} ||V R (L M)^T - r G G^T||^2``.

    With ``V^T V = n I`` the quadratic term ``||V R (LM)^T||^2 = n ||L M||^2`` does not depend
    on ``R``, so the problem is exactly ``max tr(R^T K)`` with ``K = V^T G G^T L M`` (r x r),
    an orthogonal Procrustes problem: ``R = U W^T`` for ``K = U S W^T``. ``LM_c`` is
    ``G^T L M`` (c x r), so ``K = (V^T G) LM_c`` costs O(n c r) (O(c r^2) with ``GtV`` =
    ``G^T V`` given).
    """
    if GtV is None:
        GtV = G.T @ np.asarray(V, dtype=np.float64)
    K = r * (GtV.T @ LM_c)
    return procrustes(K)


def v_step_target(G, LM_c, R, phis, Ps, lambdas, r: int) -> np.ndarray:
    """``Z`` of the V-step (Eq. 18): ``r G (G^T L M) R^T + sum_t lambda_t phi_t P_t^T`` (n x r).

    Expanding Eq. 17 with ``V^T V = n I`` and ``R^T R = I`` leaves
    ``-2 tr(Z^T V) + const``; the constant holds ``n ||L M||^2`` and ``n lambda_t ||P_t||^2``.
    """
    with single_threaded_blas():      # n x c x r: thin, memory-bound, one BLAS thread
        Z = tall_product(G, r * (LM_c @ np.asarray(R).T))
    with phase("products"):
        for lam, phi, P in zip(lambdas, phis, Ps):
            if lam:
                Z += phi @ (lam * P.T).astype(phi.dtype)
    return Z


def ascmh_objective(V, R, M, B, Ps, L, G, phis, lambdas, omega: float, r: int, *,
                    phi_sq=None, Vt_phis=None, terms: bool = False, VtV=None, GtV=None,
                    LtB=None, constants=None, B_sq=None):
    """Eq. 7 at the given point from r x r, c x r and r x q products (no n x n matrix).

    With ``A = V R`` and ``N = L M``:
    ``||A N^T - r G G^T||^2 = <R^T V^T V R, M^T L^T L M> - 2 r <G^T V R, G^T L M>
    + r^2 ||G^T G||^2``, ``||B - N||^2 = ||B||^2 - 2 <L^T B, M> + <L^T L, M M^T>`` and
    ``||phi - V P||^2 = ||phi||^2 - 2 <V^T phi, P> + <V^T V, P P^T>``. The n-sized products
    ``V^T V``, ``G^T V``, ``L^T B`` (O(n (r + c) r)) and ``V^T phi`` (O(n q r)) may be passed
    when already computed, and ``constants`` (:func:`objective_constants`) holds the label
    products that do not change during a fit; with all of them and ``B_sq`` (``||B||^2``)
    given, ``V``, ``B``, ``L``, ``G`` and ``phis`` are not used (the Dask fit passes their
    sums over row blocks).
    Returns the total, or with ``terms=True`` a dict of the three terms and the total.
    """
    if VtV is None or GtV is None or Vt_phis is None:
        V = np.asarray(V, dtype=np.float64)
    if LtB is None or B_sq is None:
        B = np.asarray(B, dtype=np.float64)
    k = objective_constants(L, G) if constants is None else constants
    VtV = V.T @ V if VtV is None else VtV
    GtV = G.T @ V if GtV is None else GtV
    LtB = L.T @ B if LtB is None else LtB
    B_sq = float(np.einsum("ij,ij->", B, B)) if B_sq is None else B_sq
    AtA = R.T @ VtV @ R
    NtN = M.T @ k["LtL"] @ M
    sim = (float(np.sum(AtA * NtN)) - 2.0 * r * float(np.sum((GtV @ R) * (k["GtL"] @ M)))
           + r * r * k["GtG_sq"])
    quant = omega * (B_sq - 2.0 * float(np.sum(LtB * M))
                     + float(np.sum(k["LtL"] * (M @ M.T))))
    fact = 0.0
    for t, (lam, P) in enumerate(zip(lambdas, Ps)):
        phi = None if phis is None else phis[t]
        sq = (float(np.einsum("ij,ij->", phi, phi, dtype=np.float64)) if phi_sq is None
              else phi_sq[t])
        Vp = cross_product(V, phi) if Vt_phis is None else Vt_phis[t]
        fact += lam * (sq - 2.0 * float(np.sum(Vp * P)) + float(np.sum(VtV * (P @ P.T))))
    total = sim + quant + fact
    if terms:
        return {"similarity": sim, "quantization": quant, "factorization": fact, "total": total}
    return total


def objective_constants(L, G) -> dict:
    """The label products of :func:`ascmh_objective` that are fixed during a fit:
    ``L^T L``, ``G^T L`` (c x c) and ``||G^T G||^2``."""
    GtG = G.T @ G
    return {"LtL": L.T @ L, "GtL": G.T @ L, "GtG_sq": float(np.sum(GtG * GtG))}


# ----------------------------------------------------------------------------- estimator
class ASCMH(TwoStepKernelHasher):
    """ASCMH (Li & Pun), the objective of Eq. 7 with a consistent alternating minimisation.

    Parameters
    ----------
    n_bits : int
        Code length r (must be smaller than the number of training samples).
    omega : float
        Weight of the label-projection quantisation ``||B - L M||^2`` (paper: [0, 1], 0.01
        best on MIRFlickr-25K).
    lambda_image, lambda_text : float
        Weights lambda_1, lambda_2 of the collective matrix factorisation terms
        ``||phi_t - V P_t||^2`` (paper: 0.5 each).
    lambda_h : float or (float, float)
        Ridge of the two-step hash functions (Eq. 23-24); a pair gives (image, text) ridges
        (the two hash functions are independent ridge regressions onto the same B).
    n_anchors : int or (int, int)
        Kernel anchors per modality (paper: 500 image, 1,000 text).
    n_iter : int
        Alternating iterations (Algorithm 1).
    anchor_method : {"random", "kmeans"}
        How the kernel anchors are picked (paper: random training points).
    random_state, verbose : see :class:`cmhash.base.CrossModalHasher`.

    Attributes
    ----------
    codes_ : (n, r) int8          learned training codes B (shared by both modalities)
    latent_ : (n, r) float64      V (V^T V = n I, V^T 1 = 0)
    rotation_ : (r, r) float64    R
    label_projection_ : (c, r) float64   M
    factor_loadings_ : list of (r, q_t) float64   P_t (paper's P^(t), transposed)
    projections_ : list of (q_t, r) float64       hash functions P_h per modality
    kernels_ : list of RBFAnchorFeatures
    objective_ : list of float    Eq. 7 after each iteration (non-increasing)
    n_iter_ : int
    timings_ : dict               seconds spent in kernel features / iterations / hash functions
    """

    name = "ascmh"
    state_shapes = {**TwoStepKernelHasher.state_shapes, "latent_": ("n", "r"),
                    "rotation_": ("r", "r"), "label_projection_": ("c", "r"),
                    "factor_loadings_[v]": ("r", "q{v}")}

    #: hyper-parameters the paper gives (Sec. 4.3: MIRFlickr-25K) and the Wiki values selected
    #: on a validation split of the Wiki training set (docs/methods/ascmh.md, "Wiki preset")
    #: ``cmhash tune`` search space (cmhash.tune module doc); lambda_h = (image, text) ridge
    SEARCH_SPACE = {"omega": ("log", 1e-4, 1.0), "lambda_image": ("log", 1e-2, 1e4),
                    "lambda_text": ("log", 1e-2, 1e4),
                    "lambda_h": [("log", 1e-6, 10.0), ("log", 1e-6, 10.0)]}
    PRESETS = {
        # benchmarks/ascmh_wiki.py select: lambda_h = (image ridge, text ridge)
        "wiki": {"omega": 0.01, "lambda_image": 5000.0, "lambda_text": 5000.0,
                 "n_anchors": [1000, 1000], "anchor_method": "random", "lambda_h": [0.3, 1e-5]},
        "mirflickr25k": {"omega": 0.01, "lambda_image": 0.5, "lambda_text": 0.5},
    }
    #: the paper reports no ablation variants
    VARIANTS: dict = {}

    def __init__(self, n_bits: int = 32, *, omega: float = 0.01, lambda_image: float = 0.5,
                 lambda_text: float = 0.5, lambda_h: float = 0.01, n_anchors=(500, 1000),
                 n_iter: int = 10, anchor_method: str = "random", random_state=None,
                 verbose: bool = False):
        super().__init__(n_bits, random_state=random_state, verbose=verbose)
        self.omega = omega
        self.lambda_image = lambda_image
        self.lambda_text = lambda_text
        self.lambda_h = lambda_h
        self.n_anchors = n_anchors
        self.n_iter = n_iter
        self.anchor_method = anchor_method

    def _validate_params(self):
        for p in ("omega", "lambda_image", "lambda_text"):
            check_positive(getattr(self, p), p, allow_zero=True)
        if isinstance(self.lambda_h, (list, tuple)):
            if len(self.lambda_h) != 2:
                raise ValueError(f"lambda_h must be a number or an (image, text) pair, "
                                 f"got {self.lambda_h!r}")
            for x in self.lambda_h:
                check_positive(x, "lambda_h", allow_zero=True)
        else:
            check_positive(self.lambda_h, "lambda_h", allow_zero=True)
        check_int(self.n_iter, "n_iter")
        if self.anchor_method not in ("random", "kmeans"):
            raise ValueError(f"anchor_method must be 'random' or 'kmeans', got {self.anchor_method!r}")

    def _fit(self, views, labels, rng):
        n, r = views[0].shape[0], self.n_bits
        self._check_fewer_bits_than_samples(n)
        t0 = time.perf_counter()
        phis = self._kernelize(views, rng)
        t1 = time.perf_counter()
        L = labels                                  # n x c multi-hot
        G = normalize_rows(L)                       # n x c, unit rows (Eq. 2)
        LtL_pinv = _pinv_psd(L.T @ L)               # c x c
        LtG = L.T @ G                               # c x c
        GtL = LtG.T
        lambdas = (self.lambda_image, self.lambda_text)
        phi_sq = [float(np.einsum("ij,ij->", phi, phi, dtype=np.float64)) for phi in phis]

        # random feasible start (Algorithm 1, line 2)
        V = orthogonal_zero_mean(rng.standard_normal((n, r)), rng)
        R = procrustes(rng.standard_normal((r, r)))
        B = sign(rng.standard_normal((n, r)), np.float64)
        Vt_phis = [cross_product(V, phi) for phi in phis]              # r x q_t each
        consts = objective_constants(L, G)
        with phase("latent"), single_threaded_blas():
            VtV, GtV, LtB = V.T @ V, G.T @ V, L.T @ B                  # n-sized, once per V / B

        self.objective_ = []
        for _ in progress(range(self.n_iter), desc="ASCMH", verbose=self.verbose):
            Ps = [update_P(V, Vp, VtV=VtV) for Vp in Vt_phis]           # P-step
            M = update_M(None, L, G, B, self.omega, r, LtL_pinv=LtL_pinv, LtG=LtG,
                         GtA=GtV @ R, AtA=R.T @ VtV @ R, LtB=LtB)      # M-step (A = V R)
            LM_c = GtL @ M                                              # G^T L M, c x r
            R = update_R(V, G, LM_c, r, GtV=GtV)                        # R-step
            with phase("latent"):
                Z = v_step_target(G, LM_c, R, phis, Ps, lambdas, r)     # V-step
            V = orthogonal_zero_mean(Z, rng)                            # (polar factor of Zc)
            del Z
            with phase("latent"), single_threaded_blas():
                B = sign(tall_product(L, M), np.float64)         # B-step
                VtV, GtV, LtB = tall_cross(V, V), tall_cross(G, V), tall_cross(L, B)
            Vt_phis = [cross_product(V, phi) for phi in phis]           # reused by next P-step
            with phase("objective"), single_threaded_blas():
                self.objective_.append(ascmh_objective(
                    V, R, M, B, Ps, L, G, phis, lambdas, self.omega, r, phi_sq=phi_sq,
                    Vt_phis=Vt_phis, VtV=VtV, GtV=GtV, LtB=LtB, constants=consts))
        t2 = time.perf_counter()
        self.latent_ = V
        self.rotation_ = R
        self.label_projection_ = M
        self.factor_loadings_ = Ps
        self.codes_ = B.astype(np.int8)
        self.n_iter_ = self.n_iter
        lh = (self.lambda_h if isinstance(self.lambda_h, (list, tuple))
              else (self.lambda_h, self.lambda_h))
        self.projections_ = [ridge_regression(phi, self.codes_.astype(np.float32), float(x))
                             for phi, x in zip(phis, lh)]             # Eq. 23-24 per modality
        self.timings_ = {"kernel_features": t1 - t0, "iterations": t2 - t1,
                         "hash_functions": time.perf_counter() - t2}
