"""CMFH: collective matrix factorisation hashing (Ding, Guo, Zhou, CVPR 2014; journal version).

Unsupervised: the labels given to ``fit`` are validated like every method's but not used.
Algorithm (row-sample convention; derivation and deviations in docs/methods/cmfh.md)::

    X_m = training features of modality m, centred by their mean (no kernel)
    V, P_m = uniform random in [0, 1)
    repeat n_iter (25) times:
        U_m = (V^T V + gamma I)^{-1} V^T X_m                                  U-step
        V   = (sum_m a_m X_m (U_m^T + mu P_m)) (sum_m a_m U_m U_m^T + (mu + gamma) I)^{-1}
        P_m = (X_m^T X_m + (gamma / mu) I)^{-1} X_m^T V                        P-step
    V = the V-step once more with the final U, P;   B = sign(V)
    encode: sign(X_m(x) P_m)

Every step exactly minimises, over its block, the objective recorded in ``objective_``::

    sum_m a_m (||X_m - V U_m||^2 + mu ||V - X_m P_m||^2 + gamma ||U_m||^2 + gamma ||P_m||^2)
        + gamma ||V||^2,          a_image = image_weight, a_text = 1 - image_weight

so it never increases. Cost per iteration O(n (d_x + d_y) r + n r^2); nothing is n x n.
"""
from __future__ import annotations

import numpy as np

from .._validation import check_int, check_modality_weight, check_positive
from ..base import TwoStepKernelHasher
from ..progress import progress
from ..solvers import gram, sign, solve_psd

__all__ = ["CMFH", "cmfh_objective"]


def cmfh_objective(V, Us, Ps, *, weights, mu, gamma, grams, Vt_Xs) -> float:
    """The CMFH objective (module docstring) from ``grams[m] = X_m^T X_m`` and
    ``Vt_Xs[m] = V^T X_m``: ``||X - V U||^2 = tr(X^T X) - 2 <V^T X, U> + <V^T V, U U^T>`` and
    ``||V - X P||^2 = ||V||^2 - 2 <V^T X, P^T> + <P, X^T X P>``; O(d^2 r) per modality."""
    V = np.asarray(V, dtype=np.float64)
    VtV = V.T @ V
    v_sq = float(np.trace(VtV))
    total = gamma * v_sq
    for a, Gm, VX, U, P in zip(weights, grams, Vt_Xs, Us, Ps):
        fact = float(np.trace(Gm)) - 2.0 * float(np.sum(VX * U)) + float(np.sum(VtV * (U @ U.T)))
        proj = v_sq - 2.0 * float(np.sum(VX * P.T)) + float(np.sum(P * (Gm @ P)))
        total += a * (fact + mu * proj + gamma * (float(np.sum(U * U)) + float(np.sum(P * P))))
    return total


def update_V(Xs, Us, Ps, *, weights, mu, gamma) -> np.ndarray:
    """V-step: zero gradient of the objective in V,
    ``V (sum_m a_m U_m U_m^T + (mu + gamma) I) = sum_m a_m X_m (U_m^T + mu P_m)`` (with
    ``sum_m a_m = 1``)."""
    r = Us[0].shape[0]
    M = (mu + gamma) * np.eye(r)
    N = 0.0
    for a, X, U, P in zip(weights, Xs, Us, Ps):
        M += a * (U @ U.T)
        N = N + a * np.asarray(X @ (U.T + mu * P).astype(X.dtype), dtype=np.float64)
    return solve_psd(M, np.asarray(N).T).T


class CMFH(TwoStepKernelHasher):
    """CMFH (Ding, Guo, Zhou; CVPR 2014), as the authors' released code (v2.0).

    Parameters
    ----------
    n_bits : int
        Code length r.
    image_weight : float
        Weight a_image of the image terms (the ``alphas`` of the code, 0.5 / 0.5); the text
        terms get 1 - image_weight.
    mu : float
        Weight of the linear projections ``||V - X_m P_m||^2`` against the factorisation.
    gamma : float
        Ridge on U_m, P_m and V.
    n_iter : int
        Iterations (the code stops after 25).
    random_state, verbose : see :class:`cmhash.base.CrossModalHasher`.

    Attributes
    ----------
    codes_ : (n, r) int8     learned training codes sign(V)
    latent_ : (n, r)         V after the final V-step
    factor_loadings_ : list of (r, d_m)   U_m
    projections_ : list of (d_m, r)       hash functions P_m
    kernels_ : list of CenteredFeatures    the training means
    objective_ : list of float   objective after each iteration (non-increasing)
    """

    name = "cmfh"
    SEARCH_SPACE = {"image_weight": ("float", 0.1, 0.9), "mu": ("log", 1.0, 1e4),
                    "gamma": ("log", 1e-4, 1.0)}
    state_shapes = {**TwoStepKernelHasher.state_shapes, "latent_": ("n", "r"),
                    "factor_loadings_[v]": ("r", "q{v}")}
    PRESETS: dict = {}
    VARIANTS: dict = {}

    def __init__(self, n_bits: int = 32, *, image_weight: float = 0.5, mu: float = 100.0,
                 gamma: float = 0.01, n_iter: int = 25, random_state=None,
                 verbose: bool = False):
        super().__init__(n_bits, random_state=random_state, verbose=verbose)
        self.image_weight = image_weight
        self.mu = mu
        self.gamma = gamma
        self.n_iter = n_iter

    def _uses_anchors(self) -> bool:
        return False              # raw features: CMFH has no kernel

    def _validate_params(self):
        check_modality_weight(self.image_weight, "image_weight")
        check_positive(self.mu, "mu")
        check_positive(self.gamma, "gamma")
        check_int(self.n_iter, "n_iter")

    def _fit(self, views, labels, rng):
        n, r = views[0].shape[0], self.n_bits
        Xs = self._kernelize(views, rng, use_kernel=False)       # centred raw features
        weights = (float(self.image_weight), 1.0 - float(self.image_weight))
        hp = dict(weights=weights, mu=float(self.mu), gamma=float(self.gamma))
        grams = [gram(X) for X in Xs]
        P_systems = [Gm + (hp["gamma"] / hp["mu"]) * np.eye(Gm.shape[0]) for Gm in grams]
        eye = np.eye(r)

        V = rng.random((n, r))                                    # uniform start, as the code
        Ps = [rng.random((X.shape[1], r)) for X in Xs]
        Vt_Xs = [gram(V, X) for X in Xs]
        self.objective_ = []
        for _ in progress(range(self.n_iter), desc="CMFH", verbose=self.verbose):
            VtV = V.T @ V
            Us = [solve_psd(VtV + hp["gamma"] * eye, VX) for VX in Vt_Xs]        # U-step
            V = update_V(Xs, Us, Ps, **hp)                                      # V-step
            Vt_Xs = [gram(V, X) for X in Xs]
            Ps = [solve_psd(A, VX.T) for A, VX in zip(P_systems, Vt_Xs)]        # P-step
            self.objective_.append(cmfh_objective(V, Us, Ps, grams=grams, Vt_Xs=Vt_Xs, **hp))
        # the released CMFH_compress recomputes V with the final U, P before taking its sign;
        # it subtracts mean(V) first, which is 0 here: V is a product of centred features
        V = update_V(Xs, Us, Ps, **hp)
        self.latent_ = V
        self.codes_ = sign(V)
        self.factor_loadings_ = Us
        self.projections_ = Ps
        self.n_iter_ = self.n_iter
