"""SCRATCH: scalable discrete matrix factorisation hashing (Li et al., ACM MM 2018).

Algorithm (row-sample convention; derivation and deviations in docs/methods/scratch.md)::

    phi_x, phi_y = kernel features (500 anchors per modality)
    V = randn(n, r), R = random r x r rotation
    repeat n_iter (20) times:
        B   = sign(V R^T)                                                  B-step
        U_m = (V^T V + (gamma / lambda_m) I)^{-1} V^T phi_m     m = x, y     U-step
        G   = (V^T V + (gamma / alpha) I)^{-1} V^T L                         G-step
        W_m = (phi_m^T phi_m + (gamma / mu) I)^{-1} phi_m^T V               W-step
        V   = (sum_m lambda_m phi_m U_m^T + mu sum_m phi_m W_m + alpha L G^T + B R)
              (sum_m lambda_m U_m U_m^T + alpha G G^T + (1 + 2 mu + gamma) I)^{-1}   V-step
        R   = procrustes(B^T V)                                              R-step
    hash functions: sign(phi_m(x) W_m R^T)                                  (one step)

Every step exactly minimises, over its block, the objective recorded in ``objective_``::

    lambda_x ||phi_x - V U_x||^2 + lambda_y ||phi_y - V U_y||^2 + alpha ||L - V G||^2
      + ||B - V R^T||^2 + mu ||V - phi_x W_x||^2 + mu ||V - phi_y W_y||^2
      + gamma (||U_x||^2 + ||U_y||^2 + ||G||^2 + ||W_x||^2 + ||W_y||^2 + ||V||^2)
    s.t. R^T R = I, B in {-1, +1}^{n x r}

so it never increases. Nothing is n x n: one iteration costs O(n (q_x + q_y + c) r + n r^2).
"""
from __future__ import annotations

import numpy as np

from .._validation import check_int, check_modality_weight, check_positive
from ..base import TwoStepKernelHasher
from ..progress import progress
from ..solvers import gram, procrustes, sign, solve_psd

__all__ = ["SCRATCH", "scratch_objective"]


def scratch_objective(B, V, R, Us, G, Ws, L, *, lambdas, alpha, mu, gamma, grams,
                      Vt_phis) -> float:
    """The SCRATCH objective (module docstring) at the given point, without n x n matrices.

    Every feature term goes through ``grams[m] = phi_m^T phi_m`` and ``Vt_phis[m] = V^T phi_m``:
    ``||phi - V U||^2 = tr(phi^T phi) - 2 <V^T phi, U> + <V^T V, U U^T>`` and
    ``||V - phi W||^2 = ||V||^2 - 2 <V^T phi, W^T> + <W, phi^T phi W>``, O(q^2 r) each.
    """
    V = np.asarray(V, dtype=np.float64)
    VtV = V.T @ V
    v_sq = float(np.trace(VtV))
    total = 0.0
    for lam, Gm, Vp, U, W in zip(lambdas, grams, Vt_phis, Us, Ws):
        total += lam * (float(np.trace(Gm)) - 2.0 * float(np.sum(Vp * U))
                        + float(np.sum(VtV * (U @ U.T))))
        total += mu * (v_sq - 2.0 * float(np.sum(Vp * W.T)) + float(np.sum(W * (Gm @ W))))
        total += gamma * (float(np.sum(U * U)) + float(np.sum(W * W)))
    total += alpha * float(np.sum((L - V @ G) ** 2)) + gamma * float(np.sum(G * G))
    total += float(np.sum((np.asarray(B, dtype=np.float64) - V @ R.T) ** 2))
    total += gamma * v_sq
    return total


def update_V(phis, Us, Ws, G, B, R, L, *, lambdas, alpha, mu, gamma) -> np.ndarray:
    """V-step: the stationary point of the objective in V (a strictly convex quadratic).

    Setting the gradient to zero gives ``V M = N`` with the r x r
    ``M = sum_m lambda_m U_m U_m^T + alpha G G^T + R^T R + (2 mu + gamma) I`` (``R^T R = I``)
    and ``N = sum_m (lambda_m phi_m U_m^T + mu phi_m W_m) + alpha L G^T + B R``. O(n (q + c) r).
    """
    r = B.shape[1]
    M = alpha * (G @ G.T) + R.T @ R + (len(phis) * mu + gamma) * np.eye(r)
    N = alpha * (L @ G.T) + np.asarray(B, dtype=np.float64) @ R
    for lam, phi, U, W in zip(lambdas, phis, Us, Ws):
        M += lam * (U @ U.T)
        N += np.asarray(phi @ (lam * U.T + mu * W).astype(phi.dtype), dtype=np.float64)
    return solve_psd(M, N.T).T          # M symmetric: V = N M^{-1}


class SCRATCH(TwoStepKernelHasher):
    """SCRATCH (Li et al., ACM MM 2018), as in the authors' released code.

    Parameters
    ----------
    n_bits : int
        Code length r.
    lambda_image : float
        Weight lambda_x of the image factorisation term; the text term gets 1 - lambda_x.
    alpha : float
        Weight of the label factorisation ``||L - V G||^2``.
    mu : float
        Weight of each hash-function term ``||V - phi_m W_m||^2``.
    gamma : float
        Ridge on every factor (U_x, U_y, G, W_x, W_y and V).
    n_anchors : int or (int, int)
        Kernel anchors per modality.
    n_iter : int
        Alternating iterations.
    random_state, verbose : see :class:`cmhash.base.CrossModalHasher`.

    Attributes
    ----------
    codes_ : (n, r) int8          learned training codes B (shared by both modalities)
    latent_ : (n, r) float64      V
    rotation_ : (r, r) float64    R (R^T R = I)
    factor_loadings_ : list of (r, q_m)  U_m;   label_loadings_ : (r, c)  G
    feature_maps_ : list of (q_m, r)     W_m (phi_m W_m ~ V)
    projections_ : list of (q_m, r)      W_m R^T: the hash function sign(phi_m(x) W_m R^T)
    kernels_ : list of RBFAnchorFeatures
    objective_ : list of float    objective after each iteration (non-increasing)
    """

    name = "scratch"
    SEARCH_SPACE = {"lambda_image": ("float", 0.1, 0.9), "alpha": ("log", 1.0, 1e4),
                    "mu": ("log", 1.0, 1e4), "gamma": ("log", 0.01, 100.0)}
    state_shapes = {**TwoStepKernelHasher.state_shapes, "latent_": ("n", "r"),
                    "rotation_": ("r", "r"), "factor_loadings_[v]": ("r", "q{v}"),
                    "label_loadings_": ("r", "c"), "feature_maps_[v]": ("q{v}", "r")}
    #: the released demo (Main_Wiki.m) uses these values on every dataset
    PRESETS: dict = {}
    VARIANTS: dict = {}

    def __init__(self, n_bits: int = 32, *, lambda_image: float = 0.5, alpha: float = 500.0,
                 mu: float = 1000.0, gamma: float = 5.0, n_anchors=(500, 500), n_iter: int = 20,
                 random_state=None, verbose: bool = False):
        super().__init__(n_bits, random_state=random_state, verbose=verbose)
        self.lambda_image = lambda_image
        self.alpha = alpha
        self.mu = mu
        self.gamma = gamma
        self.n_anchors = n_anchors
        self.n_iter = n_iter

    def _validate_params(self):
        check_modality_weight(self.lambda_image, "lambda_image")
        check_positive(self.alpha, "alpha", allow_zero=True)
        check_positive(self.mu, "mu")
        check_positive(self.gamma, "gamma")     # > 0: every U-, G-, W- and V-step stays unique
        check_int(self.n_iter, "n_iter")

    def _fit(self, views, labels, rng):
        n, r = views[0].shape[0], self.n_bits
        phis = self._kernelize(views, rng)
        L = np.asarray(labels, dtype=np.float64)
        lambdas = (float(self.lambda_image), 1.0 - float(self.lambda_image))
        hp = dict(lambdas=lambdas, alpha=float(self.alpha), mu=float(self.mu),
                  gamma=float(self.gamma))
        grams = [gram(phi) for phi in phis]                         # phi_m^T phi_m, once
        eye = np.eye(r)
        W_systems = [Gm + (hp["gamma"] / hp["mu"]) * np.eye(Gm.shape[0]) for Gm in grams]

        V = rng.standard_normal((n, r))
        R = procrustes(rng.standard_normal((r, r)))                 # random rotation
        Vt_phis = [gram(V, phi) for phi in phis]                    # V^T phi_m (r x q_m)
        self.objective_ = []
        for _ in progress(range(self.n_iter), desc="SCRATCH", verbose=self.verbose):
            B = sign(V @ R.T).astype(np.float64)                                      # B-step
            VtV = V.T @ V
            Us = [solve_psd(lam * VtV + hp["gamma"] * eye, lam * Vp)                 # U-step
                  for lam, Vp in zip(lambdas, Vt_phis)]
            G = solve_psd(hp["alpha"] * VtV + hp["gamma"] * eye, hp["alpha"] * (V.T @ L))
            # W-step: ridge regressions of V on phi_m, (phi^T phi + gamma/mu I) W = phi^T V
            Ws = [solve_psd(A, Vp.T) for A, Vp in zip(W_systems, Vt_phis)]
            V = update_V(phis, Us, Ws, G, B, R, L, **hp)                             # V-step
            R = procrustes(B.T @ V)                                                  # R-step
            Vt_phis = [gram(V, phi) for phi in phis]   # serves the objective and the next steps
            self.objective_.append(scratch_objective(B, V, R, Us, G, Ws, L, grams=grams,
                                                     Vt_phis=Vt_phis, **hp))
        self.codes_ = B.astype(np.int8)
        self.latent_ = V
        self.rotation_ = R
        self.factor_loadings_ = Us
        self.label_loadings_ = G
        self.feature_maps_ = Ws
        self.projections_ = [W @ R.T for W in Ws]
        self.n_iter_ = self.n_iter
