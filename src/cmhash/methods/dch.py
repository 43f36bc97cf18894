"""DCH: discrete cross-modal hashing (Xu et al., IEEE TIP 2017), as the authors' released code.

Algorithm (row-sample convention; derivation and deviations in docs/methods/dch.md)::

    phi_m = centred raw features (released code) or RBF anchor kernel features (kernel=True)
    B     = sign(randn(n, r))
    W     = (B^T B + lambda_w I)^{-1} B^T L                      G-step: linear classifier
    P_m   = (phi_m^T phi_m + xi I)^{-1} phi_m^T B                F-step: hash functions
    repeat n_iter (5) times:
        B = DCC on ||B W||^2 - 2 tr(B^T Q),  Q = L W^T + nu sum_m phi_m P_m     B-step
        W = (B^T B + lambda_w I)^{-1} B^T L                                     G-step
        P_m = (phi_m^T phi_m + xi I)^{-1} phi_m^T B                             F-step
    encode: sign(phi_m(x) P_m)

Each step minimises, over its block, the objective recorded in ``objective_``::

    ||L - B W||^2 + lambda_w ||W||^2 + nu sum_m (||B - phi_m P_m||^2 + xi ||P_m||^2)
    s.t. B in {-1, +1}^{n x r}

(DCC, :func:`cmhash.solvers_discrete.dcc`, bit by bit), so it never increases. With ``nu = 0``
(the released scripts) the codes depend on the labels only and the hash functions are fitted
to them afterwards (two-step). Cost per iteration O(n (c + q) r + n r^2 sweeps); no n x n matrix.
"""
from __future__ import annotations

import numpy as np

from .._validation import check_bool, check_int, check_positive
from ..base import TwoStepKernelHasher
from ..progress import progress
from ..solvers import gram, sign, solve_psd
from ..solvers_discrete import dcc

__all__ = ["DCH", "dch_objective"]


def dch_objective(B, W, Ps, L, *, lambda_w, nu, xi, grams=None, phit_Bs=None) -> float:
    """The DCH objective (module docstring). The hash-function terms use ``grams[m] =
    phi_m^T phi_m`` and ``phit_Bs[m] = phi_m^T B``: ``||B - phi P||^2 = ||B||^2 - 2 <phi^T B, P>
    + <P, phi^T phi P>`` (needed only when ``nu > 0``)."""
    B = np.asarray(B, dtype=np.float64)
    total = float(np.sum((L - B @ W) ** 2)) + lambda_w * float(np.sum(W * W))
    if nu:
        b_sq = float(np.sum(B * B))
        for Gm, FB, P in zip(grams, phit_Bs, Ps):
            total += nu * (b_sq - 2.0 * float(np.sum(FB * P)) + float(np.sum(P * (Gm @ P)))
                           + xi * float(np.sum(P * P)))
    return total


class DCH(TwoStepKernelHasher):
    """DCH (Xu, Shen, Yang, Shen, Li; IEEE TIP 2017), the released code's algorithm.

    Parameters
    ----------
    n_bits : int
        Code length r.
    lambda_w : float
        Ridge of the linear classifier W (``gmap.lambda`` = 1 in the released code).
    nu : float
        Weight of the hash-function terms ``||B - phi_m P_m||^2`` in the B-step
        (``Fmap.nu`` = ``Fmap.mu`` = 0 in the released scripts: codes from the labels alone).
    xi : float
        Ridge of the hash functions P_m (``Fmap.lambda`` = 1e-2).
    kernel : bool
        RBF anchor kernel features (``n_anchors`` per modality) instead of the centred raw
        features the released scripts use (``islinear = true``).
    n_anchors : int or (int, int)
        Anchors per modality when ``kernel=True``.
    n_iter : int
        Outer iterations (``maxItr`` = 5).
    n_sweeps : int
        Maximum DCC sweeps over the bits per B-step (stops earlier at a fixed point).
    random_state, verbose : see :class:`cmhash.base.CrossModalHasher`.

    Attributes
    ----------
    codes_ : (n, r) int8     learned training codes B (shared by both modalities)
    classifier_ : (r, c)     W
    projections_ : list of (q_m, r)   hash functions P_m
    kernels_ : list of RBFAnchorFeatures or CenteredFeatures
    objective_ : list of float   objective after each iteration (non-increasing)
    dcc_sweeps_ : list of int    DCC sweeps run in each B-step
    """

    name = "dch"
    SEARCH_SPACE = {"lambda_w": ("log", 1e-3, 100.0), "nu": ("cat", [0.0, 1e-4, 1e-2, 1.0]),
                    "xi": ("log", 1e-4, 1.0)}
    state_shapes = {**TwoStepKernelHasher.state_shapes, "classifier_": ("r", "c")}
    PRESETS: dict = {}
    VARIANTS = {"DCH-kernel": {"kernel": True}}

    def __init__(self, n_bits: int = 32, *, lambda_w: float = 1.0, nu: float = 0.0,
                 xi: float = 1e-2, kernel: bool = False, n_anchors=1000, n_iter: int = 5,
                 n_sweeps: int = 10, random_state=None, verbose: bool = False):
        super().__init__(n_bits, random_state=random_state, verbose=verbose)
        self.lambda_w = lambda_w
        self.nu = nu
        self.xi = xi
        self.kernel = kernel
        self.n_anchors = n_anchors
        self.n_iter = n_iter
        self.n_sweeps = n_sweeps

    def _uses_anchors(self) -> bool:
        return bool(self.kernel)     # n_anchors is unused (and unchecked) with kernel=False

    def _validate_params(self):
        check_positive(self.lambda_w, "lambda_w")
        check_positive(self.nu, "nu", allow_zero=True)
        check_positive(self.xi, "xi", allow_zero=True)
        check_bool(self.kernel, "kernel")
        check_int(self.n_iter, "n_iter")
        check_int(self.n_sweeps, "n_sweeps")

    def _fit(self, views, labels, rng):
        n, r = views[0].shape[0], self.n_bits
        phis = self._kernelize(views, rng, use_kernel=self.kernel)
        L = np.asarray(labels, dtype=np.float64)
        lam, nu, xi = float(self.lambda_w), float(self.nu), float(self.xi)
        grams = [gram(phi) for phi in phis]
        systems = [Gm + xi * np.eye(Gm.shape[0]) for Gm in grams]
        eye = np.eye(r)

        def classifier(B):                                               # G-step
            return solve_psd(B.T @ B + lam * eye, B.T @ L)

        def hash_functions(B):                                           # F-step
            phit_Bs = [gram(phi, B) for phi in phis]
            return [solve_psd(A, FB) for A, FB in zip(systems, phit_Bs)], phit_Bs

        B = sign(rng.standard_normal((n, r))).astype(np.float64)
        W = classifier(B)
        Ps, _ = hash_functions(B)
        self.objective_, self.dcc_sweeps_ = [], []
        for _ in progress(range(self.n_iter), desc="DCH", verbose=self.verbose):
            Q = L @ W.T                                                      # B-step
            if nu:
                for phi, P in zip(phis, Ps):
                    Q += nu * np.asarray(phi @ P.astype(phi.dtype), dtype=np.float64)
            B, sweeps = dcc(B, Q, W, self.n_sweeps)
            W = classifier(B)
            Ps, phit_Bs = hash_functions(B)
            self.dcc_sweeps_.append(sweeps)
            self.objective_.append(dch_objective(B, W, Ps, L, lambda_w=lam, nu=nu, xi=xi,
                                                 grams=grams, phit_Bs=phit_Bs))
        self.codes_ = B.astype(np.int8)
        self.classifier_ = W
        self.projections_ = Ps
        self.n_iter_ = self.n_iter
