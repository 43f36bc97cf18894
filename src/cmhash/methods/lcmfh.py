"""LCMFH: label consistent matrix factorisation hashing (Wang, Gao, Wang, He; IEEE TPAMI 2019).

Algorithm (row-sample convention; derivation and deviations in docs/methods/lcmfh.md)::

    X_m = training features of modality m, centred (no kernel)
    L~  = labels with unit-norm rows (n, c);   the latent is tied to them: V = L~ Z, Z (c, r)
    U_m, Z, P_m = uniform random in [0, 1)
    repeat n_iter (20) times:
        U_m = (V^T V + (gamma / a_m) I)^{-1} V^T X_m                          U-step
        Z   = (L~^T L~)^{-1} L~^T N M^{-1},                                    Z-step
              M = sum_m a_m U_m U_m^T + (2 mu + gamma) I,
              N = sum_m a_m X_m U_m^T + mu sum_m X_m P_m
        P_m = (X_m^T X_m + (gamma / mu) I)^{-1} X_m^T V                        P-step
    B = sign(V - mean(V));   encode: sign(X_m(x) P_m)

Every step exactly minimises, over its block, the objective recorded in ``objective_``::

    sum_m a_m ||X_m - V U_m||^2 + mu sum_m ||V - X_m P_m||^2
        + gamma (sum_m ||U_m||^2 + ||V||^2 + sum_m ||P_m||^2),   V = L~ Z,
    a_image = image_weight, a_text = 1 - image_weight

so it never increases. Every product with the n rows goes through ``L~^T X_m`` (c x d_m) and
``L~^T L~`` (c x c), formed once: an iteration costs O(c d_m r + d_m r^2 + d_m^2 r), independent
of n; the set-up O(n (d_x + d_y)(c + d)). Nothing is n x n.
"""
from __future__ import annotations

import numpy as np

from .._validation import check_modality_weight
from ..labels import normalize_rows
from ..progress import progress
from ..solvers import gram, sign, solve_psd
from .cmfh import CMFH

__all__ = ["LCMFH", "lcmfh_objective"]


def lcmfh_objective(Z, Us, Ps, *, weights, mu, gamma, LtL, grams, Lt_Xs) -> float:
    """The LCMFH objective (module docstring) through the small matrices: with ``V = L~ Z``,
    ``V^T V = Z^T (L~^T L~) Z`` and ``V^T X_m = Z^T (L~^T X_m)``;
    ``||X - V U||^2 = tr(X^T X) - 2 <V^T X, U> + <V^T V, U U^T>`` and
    ``||V - X P||^2 = ||V||^2 - 2 <V^T X, P^T> + <P, X^T X P>``."""
    VtV = Z.T @ LtL @ Z
    v_sq = float(np.trace(VtV))
    total = gamma * v_sq
    for a, Gm, LX, U, P in zip(weights, grams, Lt_Xs, Us, Ps):
        VX = Z.T @ LX
        total += a * (float(np.trace(Gm)) - 2.0 * float(np.sum(VX * U))
                      + float(np.sum(VtV * (U @ U.T))))
        total += mu * (v_sq - 2.0 * float(np.sum(VX * P.T)) + float(np.sum(P * (Gm @ P))))
        total += gamma * (float(np.sum(U * U)) + float(np.sum(P * P)))
    return total


def update_Z(LtL, Lt_Xs, Us, Ps, *, weights, mu, gamma) -> np.ndarray:
    """Z-step: zero gradient of the objective in Z, ``L~^T (L~ Z M - N) = 0``, i.e.
    ``Z = (L~^T L~)^{-1} (L~^T N) M^{-1}`` with ``L~^T N = sum_m (L~^T X_m)(a_m U_m^T + mu P_m)``
    (``M``, ``N`` in the module docstring)."""
    r = Us[0].shape[0]
    M = (2.0 * mu + gamma) * np.eye(r)
    LtN = 0.0
    for a, LX, U, P in zip(weights, Lt_Xs, Us, Ps):
        M += a * (U @ U.T)
        LtN = LtN + LX @ (a * U.T + mu * P)
    return solve_psd(M, solve_psd(LtL, LtN).T).T


class LCMFH(CMFH):
    """LCMFH (Wang, Gao, Wang, He; IEEE TPAMI 2019), as the authors' released code.

    Parameters
    ----------
    n_bits : int
        Code length r.
    image_weight : float
        lambda of the paper and the code: weight a_image of the image factorisation; the text
        one gets 1 - image_weight (0.5).
    mu : float
        Weight of the projections ``||V - X_m P_m||^2`` (10).
    gamma : float
        Ridge on U_m, V and P_m (0.001).
    n_iter : int
        Iterations (the code's maxIter, 20).
    random_state, verbose : see :class:`cmhash.base.CrossModalHasher`.

    Attributes
    ----------
    codes_ : (n, r) int8     sign(V - mean(V))
    latent_ : (n, r)         V = L~ Z
    label_map_ : (c, r)      Z
    factor_loadings_ : list of (r, d_m)   U_m
    projections_ : list of (d_m, r)       hash functions P_m
    kernels_ : list of CenteredFeatures    the training means
    objective_ : list of float   objective after each iteration (non-increasing)
    """

    name = "lcmfh"
    state_shapes = {**CMFH.state_shapes, "label_map_": ("c", "r")}
    SEARCH_SPACE = {"image_weight": ("float", 0.1, 0.9), "mu": ("log", 0.1, 1e3),
                    "gamma": ("log", 1e-5, 1e-1)}

    def __init__(self, n_bits: int = 32, *, image_weight: float = 0.5, mu: float = 10.0,
                 gamma: float = 0.001, n_iter: int = 20, random_state=None,
                 verbose: bool = False):
        super().__init__(n_bits, image_weight=image_weight, mu=mu, gamma=gamma, n_iter=n_iter,
                         random_state=random_state, verbose=verbose)

    def _validate_params(self):
        super()._validate_params()        # CMFH's parameters, and a_m > 0 (U-step: gamma / a_m)
        check_modality_weight(self.image_weight, "image_weight", open_interval=True)

    def _fit(self, views, labels, rng):
        r = self.n_bits
        Xs = self._kernelize(views, rng, use_kernel=False)       # centred raw features
        Ln = normalize_rows(labels)
        weights = (float(self.image_weight), 1.0 - float(self.image_weight))
        mu, gamma = float(self.mu), float(self.gamma)
        hp = dict(weights=weights, mu=mu, gamma=gamma)
        grams = [gram(X) for X in Xs]
        Lt_Xs = [gram(Ln, X) for X in Xs]                         # L~^T X_m, c x d_m
        LtL = Ln.T @ Ln
        P_systems = [Gm + (gamma / mu) * np.eye(Gm.shape[0]) for Gm in grams]
        eye = np.eye(r)

        Z = rng.random((Ln.shape[1], r))                          # uniform starts, as the code
        Ps = [rng.random((X.shape[1], r)) for X in Xs]
        self.objective_ = []
        for _ in progress(range(self.n_iter), desc="LCMFH", verbose=self.verbose):
            VtV = Z.T @ LtL @ Z
            Us = [solve_psd(VtV + (gamma / a) * eye, Z.T @ LX)                 # U-step
                  for a, LX in zip(weights, Lt_Xs)]
            Z = update_Z(LtL, Lt_Xs, Us, Ps, **hp)                             # Z-step
            Ps = [solve_psd(A, LX.T @ Z) for A, LX in zip(P_systems, Lt_Xs)]   # P-step
            self.objective_.append(lcmfh_objective(Z, Us, Ps, LtL=LtL, grams=grams,
                                                   Lt_Xs=Lt_Xs, **hp))
        V = Ln @ Z
        self.latent_ = V
        self.label_map_ = Z
        self.codes_ = sign(V - V.mean(axis=0))
        self.factor_loadings_ = Us
        self.projections_ = Ps
        self.n_iter_ = self.n_iter
