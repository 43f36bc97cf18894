"""BATCH: scalable asymmetric discrete cross-modal hashing (Wang et al., IEEE TKDE 2020).

Algorithm (row-sample convention; see docs/methods/batch.md for the derivation)::

    phi_x, phi_y = kernel features (500 image / 1,000 text anchors)
    G = labels with unit-norm rows
    B = sign(randn(n, r)), V = randn(n, r)
    repeat n_iter (6) times:
        U_m = (V^T V + rho I)^{-1} V^T phi_m            m = image, text, labels
        Z   = r G (G^T B) + omega B + eta1 phi_x U_x^T + eta2 phi_y U_y^T + eta0 L U_l^T
        V   = argmax tr(Z^T V)  s.t. V^T V = n I, V^T 1 = 0      (solvers.orthogonal_zero_mean)
        B   = sign(r G (G^T V) + omega V)
    W_m = (phi_m^T phi_m + xi I)^{-1} phi_m^T B        (two-step hash functions)

Each step exactly minimises the objective recorded in ``objective_`` over its block::

    ||B V^T - r G G^T||^2 + omega ||B - V||^2 + eta1 ||phi_x - V U_x||^2
        + eta2 ||phi_y - V U_y||^2 + eta0 ||L - V U_l||^2 + rho sum_m eta_m ||U_m||^2

with the n x n term expanded through labels (never formed).
"""
from __future__ import annotations

import numpy as np

from .._phases import phase
from .._threads import single_threaded_blas
from .._validation import check_int, check_positive
from ..base import TwoStepKernelHasher
from ..labels import normalize_rows
from ..progress import progress
from ..solvers import (cross_product, orthogonal_zero_mean, sign, solve_psd, tall_cross,
                       tall_product)


class BATCH(TwoStepKernelHasher):
    """BATCH (Wang et al., TKDE 2020), as in the authors' released code.

    Parameters
    ----------
    n_bits : int
        Code length r.
    eta_image, eta_text, eta_label : float
        Weights eta1, eta2, eta0 of the image, text and label factorisation terms.
    omega : float
        Weight of the quantisation term ||B - V||^2.
    xi : float
        Ridge of the hash functions.
    rho : float
        Ridge of the latent-to-feature maps U (1e-3 in the reference code).
    n_anchors : int or (int, int)
        Kernel anchors per modality (500 image, 1,000 text).
    n_iter : int
        Alternating iterations (6).
    random_state, verbose : see :class:`cmhash.base.CrossModalHasher`.

    Attributes
    ----------
    codes_ : (n, r) int8       learned training codes B (shared by both modalities)
    latent_ : (n, r) float64    V
    projections_ : list of (q_m, r) float64   hash functions W_m
    kernels_ : list of RBFAnchorFeatures
    objective_ : list of float  objective after each iteration
    """

    #: ``cmhash tune`` search space (cmhash.tune module doc for the syntax)
    SEARCH_SPACE = {"eta_image": ("log", 1e-3, 1.0), "eta_text": ("log", 1e-3, 1.0),
                    "eta_label": ("log", 1e-2, 10.0), "omega": ("log", 1e-4, 1.0),
                    "xi": ("log", 1e-5, 10.0), "rho": ("log", 1e-5, 1.0)}

    name = "batch"
    state_shapes = {**TwoStepKernelHasher.state_shapes, "latent_": ("n", "r")}

    def __init__(self, n_bits: int = 32, *, eta_image: float = 0.05, eta_text: float = 0.05,
                 eta_label: float = 0.9, omega: float = 0.01, xi: float = 0.01,
                 rho: float = 1e-3, n_anchors=(500, 1000), n_iter: int = 6,
                 random_state=None, verbose: bool = False):
        super().__init__(n_bits, random_state=random_state, verbose=verbose)
        self.eta_image = eta_image
        self.eta_text = eta_text
        self.eta_label = eta_label
        self.omega = omega
        self.xi = xi
        self.rho = rho
        self.n_anchors = n_anchors
        self.n_iter = n_iter

    def _validate_params(self):
        for p in ("eta_image", "eta_text", "eta_label", "omega", "xi", "rho"):
            check_positive(getattr(self, p), p, allow_zero=True)
        check_int(self.n_iter, "n_iter")

    def _fit(self, views, labels, rng):
        n, r = views[0].shape[0], self.n_bits
        self._check_fewer_bits_than_samples(n)
        phis = self._kernelize(views, rng)
        L = labels
        G = normalize_rows(L)
        GL = np.hstack([G, L])                          # Z's label part is one GEMM: [G, L] K
        etas = (self.eta_image, self.eta_text)
        consts = _Constants(G, L, phis)

        B = sign(rng.standard_normal((n, r)), np.float64)
        V = rng.standard_normal((n, r))
        Vt_phis = [cross_product(V, phi) for phi in phis]                     # V^T phi_m (r x q_m)
        with single_threaded_blas():
            VtV, VtL = _latent_products(V, L)
        self.objective_ = []
        for _ in progress(range(self.n_iter), desc="BATCH", verbose=self.verbose):
            # U-step: ridge regressions of each modality (and the labels) on V
            VtV_rho = VtV + self.rho * np.eye(r)
            Us = [solve_psd(VtV_rho, Vt_phi) for Vt_phi in Vt_phis]    # U_m (r x q_m)
            U_l = solve_psd(VtV_rho, VtL)                               # r x c
            # V-step: Z = r G (G^T B) + omega B + eta0 L U_l^T + sum_m eta_m phi_m U_m^T
            with phase("latent"), single_threaded_blas():   # thin products: 1 thread
                Z = tall_product(GL, np.vstack([r * tall_cross(G, B), self.eta_label * U_l.T]))
                Z += self.omega * B
            with phase("products"):
                for eta, phi, U in zip(etas, phis, Us):
                    Z += phi @ (eta * U.T).astype(np.float32)
            V = orthogonal_zero_mean(Z, rng)
            del Z
            # B-step
            with phase("latent"), single_threaded_blas():
                B = tall_product(G, r * tall_cross(G, V))
                B += self.omega * V
                B = sign(B, np.float64)
                VtV, VtL = _latent_products(V, L)
            # V^T phi_m at the new V serves the objective now and the next U-step
            Vt_phis = [cross_product(V, phi) for phi in phis]
            with phase("objective"), single_threaded_blas():
                self.objective_.append(self._objective(
                    _code_products(B, V, G), VtV, VtL, consts, Vt_phis, Us, U_l))

        self.latent_ = V
        self.codes_ = B.astype(np.int8)
        self.n_iter_ = self.n_iter
        self._fit_hash_functions(phis, self.codes_, self.xi)

    def _objective(self, code_products, VtV, VtL, consts, Vt_phis, Us, U_l) -> float:
        """The BATCH objective at (B, V, U) from r x r, c x r and r x q products
        (``code_products``: :func:`_code_products`, O(n r (r + c))); no n x n (nor n x q)
        matrix. The Dask fit passes the same products summed over row blocks."""
        BtB, GtB, GtV, B_dot_V, n = code_products
        r = self.n_bits
        sim = np.sum(BtB * VtV) - 2 * r * np.sum(GtB * GtV) + r * r * consts.GtG_sq
        # ||B - V||^2 = ||B||^2 + ||V||^2 - 2 <B, V>, ||B||^2 = n r
        quant = self.omega * (n * r + float(np.trace(VtV)) - 2.0 * B_dot_V)
        fact = 0.0
        for eta, Vt_phi, sq, U in zip((self.eta_image, self.eta_text), Vt_phis, consts.phi_sq, Us):
            cross = float(np.sum(Vt_phi * U))
            fact += eta * (sq - 2 * cross + float(np.sum(U * (VtV @ U))))
        # ||L - V U_l||^2 = ||L||^2 - 2 <V^T L, U_l> + <V^T V, U_l U_l^T>
        fact += self.eta_label * (consts.L_sq - 2.0 * float(np.sum(VtL * U_l))
                                  + float(np.sum(U_l * (VtV @ U_l))))
        # the reference U-step (V^T V + rho I)^{-1} V^T phi_m minimises eta_m ||phi_m - V U_m||^2
        # + eta_m rho ||U_m||^2, so the ridge is weighted by eta_m
        reg = self.rho * (sum(eta * float(np.sum(U * U))
                              for eta, U in zip((self.eta_image, self.eta_text), Us))
                          + self.eta_label * float(np.sum(U_l * U_l)))
        return float(sim + quant + fact + reg)


class _Constants:
    """Quantities of the BATCH objective that do not change during a fit."""

    def __init__(self, G, L, phis):
        GtG = G.T @ G
        self.GtG_sq = float(np.sum(GtG * GtG))                      # ||G^T G||^2
        self.L_sq = float(np.einsum("ij,ij->", L, L))               # ||L||^2
        self.phi_sq = [float(np.einsum("ij,ij->", phi, phi, dtype=np.float64)) for phi in phis]


def _code_products(B, V, G):
    """``(B^T B, G^T B, G^T V, <B, V>, n)`` of the objective; a sum over row blocks."""
    return (_codes_gram(B), tall_cross(G, B), tall_cross(G, V),
            float(np.einsum("ij,ij->", B, V)), B.shape[0])


def _latent_products(V, L):
    """``V^T V`` (r x r) and ``V^T L`` (r x c) of the current V (U-step and objective)."""
    return tall_cross(V, V), tall_cross(V, L)


def _codes_gram(B) -> np.ndarray:
    """``B^T B`` of +-1 codes, exactly: a float32 product of integers whose sums stay below
    2^24 is exact (n < 16,777,216 rows), twice as fast as float64; larger n uses float64."""
    if B.shape[0] < 2 ** 24:
        B32 = B.astype(np.float32)
        return (B32.T @ B32).astype(np.float64)
    return B.T @ B
