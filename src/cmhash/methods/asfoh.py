"""ASFOH: asymmetric supervised fusion-oriented hashing (Yang et al., IEEE TCYB 2024).

Algorithm 1 (row-sample convention, as in the paper; derivations in docs/methods/asfoh.md)::

    phi_v = kernel features of modality v (q = 1,200 random anchors), v = 1..V
    Y~ = labels with unit-norm rows;  S = 2 Y~ Y~^T - 1 1^T   (never formed)
    C = Y^T Y,  D = Y^T S = 2 (Y^T Y~) Y~^T - (Y^T 1) 1^T    (kept factored: c x c, c)
    alpha = 1/V;  R, P^v, J^v, Theta^v, B, H ~ N(0, 1);  delta = delta0
    repeat n_iter times:
        alpha_v = Delta_v^{1/(1-gamma)} / sum_u Delta_u^{1/(1-gamma)}         (Eq. 15)
                  Delta_v = ||phi_v - H P^v||^2
        R   = C^+ (k D H + eta Y^T B) (H^T H + (eta + rho) I)^{-1}          (Eq. 18)
        H   = argmax tr(Q^T H)  s.t. H^T H = n I, H^T 1 = 0    (Eq. 20-21, solvers.orthogonal_zero_mean)
              Q = sum_v alpha_v^gamma phi_v P^v^T + k D^T R + omega B
        B   = sign(eta Y R + omega H)                                         (Eq. 24)
        P^v = (2 a_v H^T H + 2 delta I)^{-1} (2 a_v H^T phi_v + 2 delta J^v - Theta^v)   (Eq. 27)
        J^v = SVT(P^v + Theta^v / (2 delta), beta / (2 delta))               (Eq. 28, see below)
        Theta^v += 2 delta (P^v - J^v);   delta = min(delta_max, tau delta)
    W_v = (phi_v^T phi_v + xi_v I)^{-1} phi_v^T B    (Eq. 30; xi_v = xi or xi[v])

with ``a_v = alpha_v^gamma``. The objective recorded per iteration in ``objective_`` is Eq. 11::

    sum_v (a_v ||phi_v - H P^v||^2 + beta ||P^v||_*) + ||Y R H^T - k S||^2
        + eta ||Y R - B||^2 + omega ||H - B||^2 + rho ||Y R||^2

with ``||Y R H^T - k S||^2 = tr(R^T C R H^T H) - 2k tr(R^T D H) + k^2 ||S||^2`` expanded through
the labels: every product with ``S`` or ``D`` costs O(n c k), so time and memory are linear in n.

Deviations from the paper (each explained in the doc page):

* Eq. 28 is the J/Theta update of the augmented Lagrangian with penalty ``(delta/2)||P - J||^2``;
  Eq. 12 and Eq. 27 use ``delta ||P - J||^2``. We keep Eq. 12/27 and minimise Eq. 12 over J
  exactly: ``J = SVT(P + Theta/(2 delta), beta/(2 delta))``, ``Theta += 2 delta (P - J)``.
* ``C^{-1}`` is the Moore-Penrose pseudo-inverse: Y^T Y is singular when two classes always
  co-occur; the right-hand side lies in range(C), so ``C^+`` still gives an exact minimiser.
* Theta^v is k x q (the shape of P^v), not q x k.
* Eq. 21's "SVD of Q Delta Q^T" (n x n) is the k x k decomposition of Qc^T Qc. The H-step is the
  shared :func:`cmhash.solvers.orthogonal_zero_mean`: Cholesky-QR2 through k x k factors when
  Qc is well conditioned, the thin SVD of the n x k Qc otherwise. ASFOH's Q (a label part
  1e5-1e8 times larger than the rest) takes the SVD route, which keeps its weak directions.

Ablations of Table VI are options: ``use_kernel=False`` (ASFOH-K), ``regularizer="frobenius"``
(ASFOH-NN, P^v in closed form), ``semantic_projection=False`` (ASFOH-SR, drops
``eta ||YR - B||^2``), ``constraints`` in {"none", "balance", "decorrelation"} (ASFOH-B / -BB /
-BD, each H-step solved exactly), ``gamma=0`` (equal modality weights).
"""
from __future__ import annotations

import numpy as np

from .._validation import check_bool, check_choice, check_int, check_positive
from ..base import TwoStepKernelHasher
from ..labels import normalize_rows
from ..progress import progress
from .._phases import phase
from .._threads import single_threaded_blas
from ..solvers import (cross_product, nuclear_norm, orthogonal_zero_mean, procrustes,
                       ridge_regression, sign, solve_psd, svt, tall_cross, tall_product)

CONSTRAINTS = ("both", "balance", "decorrelation", "none")
REGULARIZERS = ("nuclear", "frobenius")


# ----------------------------------------------------------------------------------------
# Closed-form block updates (module level so that tests check the exact code path)
# ----------------------------------------------------------------------------------------
def modality_weights(Delta, gamma) -> np.ndarray:
    """Eq. 15: ``alpha = argmin sum_v alpha_v^gamma Delta_v  s.t. sum alpha = 1, alpha >= 0``.

    For gamma > 1 the problem is convex and the KKT point is ``alpha_v propto
    Delta_v^{1/(1-gamma)}`` (computed in log space). Modalities with ``Delta_v = 0`` take all
    the weight (the limit of that formula). ``gamma = 0`` gives equal weights (the paper's
    "same contribution" setting; then ``alpha_v^gamma = 1``).
    """
    Delta = np.asarray(Delta, dtype=np.float64)
    V = Delta.size
    if gamma == 0:
        return np.full(V, 1.0 / V)
    zero = Delta <= 0
    if np.any(zero):
        return zero / zero.sum()
    logw = np.log(Delta) / (1.0 - gamma)
    w = np.exp(logw - logw.max())
    return w / w.sum()


def weight_powers(alpha, gamma) -> np.ndarray:
    """``alpha_v^gamma`` with the convention 0^0 = 1 (gamma = 0: every modality weighs 1)."""
    alpha = np.asarray(alpha, dtype=np.float64)
    return np.ones_like(alpha) if gamma == 0 else alpha ** gamma


def psd_pinv(C, rel_tol: float = 1e-12) -> np.ndarray:
    """Moore-Penrose pseudo-inverse of a symmetric PSD matrix (used for ``C = Y^T Y``)."""
    lam, U = np.linalg.eigh(np.asarray(C, dtype=np.float64))
    keep = lam > rel_tol * max(lam.max(), 1e-300)
    return (U[:, keep] / lam[keep]) @ U[:, keep].T


def update_R(C_pinv, DH, YtB, HtH, k, eta, rho) -> np.ndarray:
    """Eq. 18: ``R = C^+ (k D H + eta Y^T B)(H^T H + (eta + rho) I)^{-1}``.

    Minimises ``||Y R H^T - k S||^2 + eta ||Y R - B||^2 + rho ||Y R||^2`` (Eq. 16); setting the
    gradient ``2 [C R (H^T H + (eta + rho) I) - k D H - eta Y^T B]`` to zero gives Eq. 18.
    ``DH`` = D H (c x k), ``YtB`` = Y^T B (c x k), ``HtH`` = H^T H (k x k).
    """
    rhs = k * DH + eta * YtB
    M = HtH + (eta + rho) * np.eye(HtH.shape[0])
    # X M = rhs  <=>  M^T X^T = rhs^T (M symmetric PSD)
    return C_pinv @ solve_psd(M, rhs.T).T


def update_H(Q, constraints, M=None, rng=None) -> np.ndarray:
    """H-step for the constraint set of the variant (Eq. 19-21 and the ablations).

    The H-terms of Eq. 11 are ``tr(H M H^T) - 2 tr(H^T Q)`` + const with ``Q`` as in Eq. 20 and
    ``M = sum_v a_v P^v P^v^T + R^T C R + omega I`` (k x k).

    * ``"both"`` (ASFOH): ``H^T H = n I`` makes ``tr(H M H^T) = n tr(M)`` constant, so
      ``max tr(Q^T H) s.t. H^T H = n I, H^T 1 = 0`` (:func:`cmhash.solvers.orthogonal_zero_mean`).
    * ``"decorrelation"`` (ASFOH-BD): ``H^T H = n I`` only: ``H = sqrt(n) U W^T`` for the thin
      SVD ``Q = U S W^T`` (orthogonal Procrustes on an n x k matrix).
    * ``"balance"`` (ASFOH-BB): ``H^T 1 = 0`` only; the Lagrangian gives
      ``H = (Q - 1 mean(Q)) M^{-1}``.
    * ``"none"`` (ASFOH-B): unconstrained quadratic, ``H = Q M^{-1}``.
    """
    n = Q.shape[0]
    if constraints == "both":
        return orthogonal_zero_mean(Q, rng)
    if constraints == "decorrelation":
        return np.sqrt(n) * procrustes(Q)
    if constraints == "balance":
        Q = Q - Q.mean(axis=0, keepdims=True)
    return solve_psd(M, Q.T).T


def update_P(HtH, HtPhi, J, Theta, a, delta) -> np.ndarray:
    """Eq. 27: ``P = (2 a H^T H + 2 delta I)^{-1} (2 a H^T phi + 2 delta J - Theta)``.

    Minimiser of ``a ||phi - H P||^2 + delta ||P - J||^2 + <Theta, P - J>`` (Eq. 25).
    """
    k = HtH.shape[0]
    return solve_psd(2 * a * HtH + 2 * delta * np.eye(k), 2 * a * HtPhi + 2 * delta * J - Theta)


def update_P_frobenius(HtH, HtPhi, a, beta) -> np.ndarray:
    """ASFOH-NN: ``P = (a H^T H + beta I)^{-1} a H^T phi``, minimiser of
    ``a ||phi - H P||^2 + beta ||P||_F^2`` (no splitting needed)."""
    k = HtH.shape[0]
    return solve_psd(a * HtH + beta * np.eye(k), a * HtPhi)


def update_J(P, Theta, beta, delta) -> np.ndarray:
    """J-step: ``argmin_J beta ||J||_* + delta ||P - J||^2 + <Theta, P - J>``.

    Completing the square: ``delta ||J - (P + Theta/(2 delta))||^2`` + const, so
    ``J = SVT(P + Theta/(2 delta), beta/(2 delta))`` (the proximal operator of the nuclear
    norm; Eq. 28 written for the penalty of Eq. 12).
    """
    return svt(P + Theta / (2 * delta), beta / (2 * delta))


def random_start(rng, V: int, c: int, k: int, qs, nuclear: bool):
    """Algorithm 1, lines 2-4, the small blocks: ``alpha = 1/V`` and standard normal ``R``
    (c x k), ``P_v``, and with the nuclear regulariser ``J_v``, ``Theta_v`` (k x q_v), drawn
    from ``rng`` in this order (the in-memory and the Dask fit both start here, then draw B
    and H)."""
    alpha = np.full(V, 1.0 / V)
    R = rng.standard_normal((c, k))
    Ps = [rng.standard_normal((k, q)) for q in qs]
    Js = [rng.standard_normal((k, q)) for q in qs] if nuclear else None
    Thetas = [rng.standard_normal((k, q)) for q in qs] if nuclear else None
    return alpha, R, Ps, Js, Thetas


def _per_modality(value, V: int, name: str) -> list:
    """A scalar hyper-parameter repeated V times, or a per-modality list of length V."""
    if isinstance(value, (list, tuple)):
        if len(value) != V:
            raise ValueError(f"{name} lists {len(value)} values but there are {V} modalities: "
                             f"{value!r}")
        return [float(x) for x in value]
    return [float(value)] * V


class _Labels:
    """Products with ``S = 2 Y~ Y~^T - 1 1^T`` and ``D = Y^T S`` through the labels (O(n c k))."""

    def __init__(self, Y):
        self.Y = np.asarray(Y, dtype=np.float64)
        self.Yn = normalize_rows(self.Y)                       # Y~
        self.C = self.Y.T @ self.Y                             # C = Y^T Y (c x c)
        self.C_pinv = psd_pinv(self.C)
        self.YtYn = self.Y.T @ self.Yn                         # Y^T Y~  (c x c)
        self.Yt1 = self.Y.sum(axis=0)                          # Y^T 1   (c,)
        n = self.Y.shape[0]
        G = self.Yn.T @ self.Yn
        s1 = self.Yn.sum(axis=0)
        # ||S||_F^2 = sum_ij (2 y~_i.y~_j - 1)^2 = 4||Y~^T Y~||^2 - 4||Y~^T 1||^2 + n^2
        self.S_sq = 4.0 * np.sum(G * G) - 4.0 * float(s1 @ s1) + float(n) * n

    def D_matmul(self, H):
        """``D H = 2 (Y^T Y~)(Y~^T H) - (Y^T 1)(1^T H)`` (c x k)."""
        return 2.0 * self.YtYn @ tall_cross(self.Yn, H) - np.outer(self.Yt1, H.sum(axis=0))

    def Dt_matmul(self, R):
        """``D^T R = S Y R = 2 Y~ ((Y^T Y~)^T R) - 1 ((Y^T 1)^T R)`` (n x k, one n-sized
        product and one in-place subtraction)."""
        out = tall_product(self.Yn, 2.0 * (self.YtYn.T @ R))
        out -= (self.Yt1 @ R)[None, :]
        return out


class ASFOH(TwoStepKernelHasher):
    """ASFOH (Yang et al., IEEE TCYB 2024): Eq. 11 solved by Algorithm 1, V >= 2 modalities.

    Parameters
    ----------
    n_bits : int
        Code length k (4-7 bits is the paper's "extremely short" setting, Table II).
    gamma : float
        Exponent of the adaptive modality weights ``alpha_v^gamma`` (Eq. 3); the paper requires
        gamma >= 2; any gamma > 1 is a valid convex problem; ``gamma = 0`` gives equal weights.
    beta : float
        Weight of the nuclear norm ``||P^v||_*`` (or of ``||P^v||_F^2`` for ASFOH-NN).
    eta : float
        Weight of the semantic projection term ``||Y R - B||^2``.
    rho : float
        Weight of the regulariser ``||Y R||^2``.
    omega : float
        Weight of the quantisation term ``||H - B||^2``.
    xi : float or list of float
        Ridge of the hash functions (Eq. 30); a list gives one ridge per modality (the hash
        functions W_v are V independent ridge regressions, so each may take its own ridge).
    n_anchors : int or list of int
        Kernel anchors q per modality (1,200 in the paper; 5,000 on NUS-WIDE).
    n_iter : int
        Iterations of Algorithm 1 (the paper's varrho; it reports convergence in 3-5).
    delta0, tau, delta_max : float
        ADMM penalty schedule ``delta <- min(delta_max, tau delta)`` (1e-3, 1.1, 1e4).
    use_kernel : bool
        False: raw (centred) features instead of kernel features (ASFOH-K).
    regularizer : {"nuclear", "frobenius"}
        Penalty of P^v; "frobenius" is ASFOH-NN.
    semantic_projection : bool
        False drops ``eta ||Y R - B||^2`` (ASFOH-SR).
    constraints : {"both", "balance", "decorrelation", "none"}
        Constraints kept on H: both (ASFOH), ``H^T 1 = 0`` only (ASFOH-BB), ``H^T H = n I``
        only (ASFOH-BD), none: binary codes only (ASFOH-B).
    anchor_method : {"random", "kmeans"}
        Anchor selection (the paper: random training samples).
    random_state, verbose : see :class:`cmhash.base.CrossModalHasher`.

    Attributes
    ----------
    codes_ : (n, k) int8         learned training codes B (shared by all modalities)
    latent_ : (n, k) float64     common latent representation H
    rotation_ : (c, k) float64   semantic projection R
    transforms_ : list of (k, q_v) float64   P^v
    alpha_ : (V,) float64        modality weights
    projections_ : list of (q_v, k) float64  hash functions W^v
    kernels_ : list of feature maps
    objective_ : list of float   Eq. 11 after each iteration
    alpha_history_ : list of (V,) arrays
    n_iter_ : int
    """

    name = "asfoh"
    state_shapes = {**TwoStepKernelHasher.state_shapes, "latent_": ("n", "r"),
                    "rotation_": ("c", "r"), "transforms_[v]": ("r", "q{v}"),
                    "alpha_": ("V",), "alpha_history_[*]": ("V",)}
    min_views, max_views = 2, 64

    #: ``cmhash tune`` search space (cmhash.tune module doc); xi = (image, text) ridge
    SEARCH_SPACE = {"gamma": ("float", 1.5, 5.0), "beta": ("log", 1e-3, 10.0),
                    "eta": ("log", 1e-3, 1e3), "rho": ("log", 1e-4, 1.0),
                    "omega": ("log", 1e-6, 1.0), "xi": [("log", 1e-6, 10.0), ("log", 1e-6, 10.0)]}
    PRESETS = {
        # Sec. IV-C, "Implementation Details"
        "mirflickr25k": {"gamma": 3, "beta": 1e-1, "eta": 1e-1, "rho": 1e-3, "omega": 1e-5,
                         "xi": 1e-3, "n_anchors": 1200},
        "nuswide": {"gamma": 2, "beta": 1e0, "eta": 1e3, "rho": 1e-3, "omega": 1e-4,
                    "xi": 1e-3, "n_anchors": 5000},
        "iapr-tc12": {"gamma": 4, "beta": 1e-1, "eta": 1e3, "rho": 1e0, "omega": 1e0,
                      "xi": 1e-3, "n_anchors": 1200},
        # selected on a validation split of the Wiki training set
        # (benchmarks/asfoh_wiki.py --select; see docs/methods/asfoh.md)
        # xi = (image ridge, text ridge)
        "wiki": {"gamma": 2, "beta": 1e-1, "eta": 1e-1, "rho": 1e-3, "omega": 1e-5,
                 "xi": [0.3, 1e-5], "n_anchors": [1200, 1200], "anchor_method": "kmeans"},
    }

    VARIANTS = {
        "ASFOH": {},
        "ASFOH-K": {"use_kernel": False},
        "ASFOH-NN": {"regularizer": "frobenius"},
        "ASFOH-SR": {"semantic_projection": False},
        "ASFOH-B": {"constraints": "none"},
        "ASFOH-BB": {"constraints": "balance"},
        "ASFOH-BD": {"constraints": "decorrelation"},
        "ASFOH-gamma0": {"gamma": 0},
    }

    def __init__(self, n_bits: int = 32, *, gamma: float = 3, beta: float = 0.1,
                 eta: float = 0.1, rho: float = 1e-3, omega: float = 1e-5, xi: float = 1e-3,
                 n_anchors=1200, n_iter: int = 10, delta0: float = 1e-3, tau: float = 1.1,
                 delta_max: float = 1e4, use_kernel: bool = True, regularizer: str = "nuclear",
                 semantic_projection: bool = True, constraints: str = "both",
                 anchor_method: str = "random", random_state=None, verbose: bool = False):
        super().__init__(n_bits, random_state=random_state, verbose=verbose)
        self.gamma = gamma
        self.beta = beta
        self.eta = eta
        self.rho = rho
        self.omega = omega
        self.xi = xi
        self.n_anchors = n_anchors
        self.n_iter = n_iter
        self.delta0 = delta0
        self.tau = tau
        self.delta_max = delta_max
        self.use_kernel = use_kernel
        self.regularizer = regularizer
        self.semantic_projection = semantic_projection
        self.constraints = constraints
        self.anchor_method = anchor_method

    # ------------------------------------------------------------------ params
    def _validate_params(self):
        g = check_positive(self.gamma, "gamma", allow_zero=True)
        if not (g == 0 or g > 1):
            raise ValueError(f"gamma must be 0 (equal modality weights) or > 1 (Eq. 15 needs "
                             f"gamma > 1; the paper uses gamma >= 2), got {self.gamma!r}")
        for p in ("beta", "eta", "rho", "omega"):
            check_positive(getattr(self, p), p, allow_zero=True)
        if isinstance(self.xi, (list, tuple)):
            if not self.xi:
                raise ValueError(f"xi must be a number or one number per modality, got {self.xi!r}")
            for x in self.xi:
                check_positive(x, "xi", allow_zero=True)
        else:
            check_positive(self.xi, "xi", allow_zero=True)
        check_int(self.n_iter, "n_iter")
        check_positive(self.delta0, "delta0")
        if check_positive(self.tau, "tau") < 1:
            raise ValueError(f"tau must be >= 1 (delta is non-decreasing), got {self.tau!r}")
        if check_positive(self.delta_max, "delta_max") < self.delta0:
            raise ValueError(f"delta_max must be >= delta0, got delta_max={self.delta_max!r} "
                             f"< delta0={self.delta0!r}")
        for p in ("use_kernel", "semantic_projection"):
            check_bool(getattr(self, p), p)
        check_choice(self.regularizer, "regularizer", set(REGULARIZERS))
        check_choice(self.constraints, "constraints", set(CONSTRAINTS))
        check_choice(self.anchor_method, "anchor_method", {"random", "kmeans"})
        eta_eff = self.eta if self.semantic_projection else 0.0
        if eta_eff == 0 and self.omega == 0:
            raise ValueError("B = sign(eta Y R + omega H) is undefined with eta = omega = 0 "
                             f"(eta={self.eta!r}, omega={self.omega!r}, semantic_projection="
                             f"{self.semantic_projection!r}); set omega > 0")

    # --------------------------------------------------------------------- fit
    def _fit(self, views, labels, rng):
        n, k, V = views[0].shape[0], self.n_bits, len(views)
        if n <= k:
            raise ValueError(f"ASFOH needs more training samples than bits (H^T 1 = 0 and "
                             f"H^T H = n I leave n - 1 dimensions): n={n}, n_bits={k}")
        xis = _per_modality(self.xi, V, "xi")   # a wrong-length list: before the work
        phis = self._kernelize(views, rng, use_kernel=self.use_kernel)
        lab = _Labels(labels)
        c = lab.Y.shape[1]
        eta = float(self.eta) if self.semantic_projection else 0.0
        nuclear = self.regularizer == "nuclear"
        gamma = float(self.gamma)
        phi_sq = [float(np.einsum("ij,ij->", phi, phi, dtype=np.float64)) for phi in phis]
        qs = [phi.shape[1] for phi in phis]

        # Algorithm 1, lines 2-4: alpha = 1/V; R, P, J, Theta, B, H random (standard normal)
        alpha, R, Ps, Js, Thetas = random_start(rng, V, c, k, qs, nuclear)
        B = sign(rng.standard_normal((n, k)), np.float64)  # B in {-1,+1}
        H = rng.standard_normal((n, k))
        delta = float(self.delta0)

        HtPhis = [cross_product(H, phi) for phi in phis]    # H^T phi_v (k x q_v)
        with phase("latent"), single_threaded_blas():
            HtH = H.T @ H
            DH, YtB = lab.D_matmul(H), lab.Y.T @ B      # n-sized, once per H / B
        self.objective_, self.alpha_history_ = [], []
        trace = getattr(self, "_trace_steps", False)
        self._step_trace = []

        def lagrangian(step):
            if trace:
                self._step_trace.append((step, self._augmented_lagrangian(
                    lab, phis, phi_sq, alpha, R, H, HtH, HtPhis, B, Ps, Js, Thetas, delta, eta)))

        for _ in progress(range(self.n_iter), desc="ASFOH", verbose=self.verbose):
            lagrangian("start")
            # alpha-step (Eq. 15), Delta_v = ||phi_v||^2 - 2 <P^v, H^T phi_v> + <P^v, H^T H P^v>
            Delta = np.array([self._residual(sq, HtPhi, HtH, P)
                              for sq, HtPhi, P in zip(phi_sq, HtPhis, Ps)])
            alpha = modality_weights(Delta, gamma)
            a = weight_powers(alpha, gamma)
            lagrangian("alpha")
            # R-step (Eq. 18)
            R = update_R(lab.C_pinv, DH, YtB, HtH, k, eta, self.rho)
            lagrangian("R")
            # H-step (Eq. 20-21): Q = sum_v a_v phi_v P^v^T + k D^T R + omega B
            with phase("latent"), single_threaded_blas():
                Q = lab.Dt_matmul(k * R)
                Q += self.omega * B
            with phase("products"):
                for av, phi, P in zip(a, phis, Ps):
                    Q += phi @ (av * P.T).astype(np.float32)
            M = None
            if self.constraints in ("balance", "none"):
                M = (sum(av * P @ P.T for av, P in zip(a, Ps)) + R.T @ lab.C @ R
                     + self.omega * np.eye(k))
            H = update_H(Q, self.constraints, M, rng)
            del Q
            with phase("latent"), single_threaded_blas():
                HtH = tall_cross(H, H)
                DH = lab.D_matmul(H)
            HtPhis = [cross_product(H, phi) for phi in phis]
            lagrangian("H")
            # B-step (Eq. 24)
            with phase("latent"), single_threaded_blas():
                T = tall_product(lab.Y, eta * R)
                T += self.omega * H
                B = sign(T, np.float64)
                del T
                YtB = tall_cross(lab.Y, B)
                HB = float(np.einsum("ij,ij->", H, B))
            lagrangian("B")
            # P-step (Eq. 27) and J / Theta (Eq. 28), or ASFOH-NN's closed form
            if nuclear:
                Ps = [update_P(HtH, HtPhi, J, Th, av, delta)
                      for HtPhi, J, Th, av in zip(HtPhis, Js, Thetas, a)]
                lagrangian("P")
                Js = [update_J(P, Th, self.beta, delta) for P, Th in zip(Ps, Thetas)]
                lagrangian("J")
                Thetas = [Th + 2 * delta * (P - J) for Th, P, J in zip(Thetas, Ps, Js)]
                delta = min(float(self.delta_max), float(self.tau) * delta)
            else:
                Ps = [update_P_frobenius(HtH, HtPhi, av, self.beta)
                      for HtPhi, av in zip(HtPhis, a)]
                lagrangian("P")
            self.alpha_history_.append(alpha.copy())
            with phase("objective"), single_threaded_blas():
                self.objective_.append(self._objective(lab, phi_sq, alpha, R, H, HtH, HtPhis, B,
                                                       Ps, eta, DH=DH, YtB=YtB, HB=HB))

        self.n_iter_ = self.n_iter
        self.alpha_ = alpha
        self.rotation_ = R
        self.latent_ = H
        self.transforms_ = Ps
        self.delta_ = delta
        self.codes_ = B.astype(np.int8)
        # step 2: hash functions (Eq. 30), one ridge per modality when xi is a list
        self.projections_ = [ridge_regression(phi, self.codes_.astype(np.float32), x)
                             for phi, x in zip(phis, xis)]
        return self

    # ------------------------------------------------------------ objectives
    @staticmethod
    def _residual(phi_sq, HtPhi, HtH, P) -> float:
        """``||phi - H P||^2`` from k x q products (never the n x q residual)."""
        return max(phi_sq - 2.0 * float(np.sum(P * HtPhi)) + float(np.sum(P * (HtH @ P))), 0.0)

    def _shared_terms(self, lab, R, H, HtH, B, eta, *, DH=None, YtB=None, HB=None) -> float:
        """``||YRH^T - kS||^2 + eta ||YR - B||^2 + omega ||H - B||^2 + rho ||YR||^2`` from
        k x k and c x k products; the n-sized ones (``D H``, ``Y^T B``, ``<H, B>``) may be
        passed when already computed."""
        k, n = self.n_bits, H.shape[0]
        DH = lab.D_matmul(H) if DH is None else DH
        YtB = lab.Y.T @ B if YtB is None else YtB
        HB = float(np.einsum("ij,ij->", H, B)) if HB is None else HB
        RtCR = R.T @ lab.C @ R
        sim = (float(np.sum(RtCR * HtH)) - 2.0 * k * float(np.sum(R * DH))
               + k * k * lab.S_sq)
        yr_sq = float(np.trace(RtCR))
        sem = yr_sq - 2.0 * float(np.sum(R * YtB)) + float(n * k)     # ||B||^2 = n k
        quant = float(np.trace(HtH)) - 2.0 * HB + float(n * k)
        return sim + eta * sem + self.omega * quant + self.rho * yr_sq

    def _objective(self, lab, phi_sq, alpha, R, H, HtH, HtPhis, B, Ps, eta, **products) -> float:
        """Eq. 11 at the current iterate (ASFOH-NN: beta ||P||_F^2; ASFOH-SR: eta = 0)."""
        a = weight_powers(alpha, float(self.gamma))
        val = self._shared_terms(lab, R, H, HtH, B, eta, **products)
        for av, sq, HtPhi, P in zip(a, phi_sq, HtPhis, Ps):
            reg = nuclear_norm(P) if self.regularizer == "nuclear" else float(np.sum(P * P))
            val += av * self._residual(sq, HtPhi, HtH, P) + self.beta * reg
        return float(val)

    def _augmented_lagrangian(self, lab, phis, phi_sq, alpha, R, H, HtH, HtPhis, B, Ps, Js,
                              Thetas, delta, eta) -> float:
        """Eq. 12 (the function every step of an iteration minimises over its block)."""
        a = weight_powers(alpha, float(self.gamma))
        val = self._shared_terms(lab, R, H, HtH, B, eta)
        for v, (av, sq, HtPhi, P) in enumerate(zip(a, phi_sq, HtPhis, Ps)):
            val += av * self._residual(sq, HtPhi, HtH, P)
            if Js is None:
                val += self.beta * float(np.sum(P * P))
            else:
                J, Th = Js[v], Thetas[v]
                val += (self.beta * nuclear_norm(J) + delta * float(np.sum((P - J) ** 2))
                        + float(np.sum(Th * (P - J))))
        return float(val)
