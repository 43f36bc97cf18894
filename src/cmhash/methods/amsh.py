"""AMSH: adaptive marginalized semantic hashing, paired and unpaired (Luo et al.).

Algorithm (row-sample convention: L_t (n_t, c), V_t and B_t (n_t, r), phi_t (n_t, q); the
paper's column-sample matrices are the transposes -- see docs/methods/amsh.md)::

    phi_t   = kernel features of modality t (1,500 random anchors, RBFAnchorFeatures)
    Lh_t    = L_t with unit-norm rows (L^ / L~ in the paper), R_t = 2 L_t - 1, E_t = 0
    V_t     = phi_t W_t, W_t = top-r principal directions of 1,000 random rows of phi_t
    B_t     = sign(V_t)
    stage 1, n_iter (15) times:                                          (Sec. III-C)
        P_t = T_t^T V_t (V_t^T V_t)^{-1},   T_t = L_t + R_t o E_t         Eq. 12 (all t)
        for i = 1..m (Gauss-Seidel: V_j is the newest one)                Eq. 13-15
            Z_i = T_i P_i + eta B_i + lam r Lh_i (Lh_i^T B_i)
                  + beta r sum_{j != i} Lh_i (Lh_j^T V_j)
            V_i = argmax tr(Z_i^T V) s.t. V^T V = n_i I, V^T 1 = 0    (orthogonal_zero_mean)
        B_t = sign(eta V_t + lam r Lh_t (Lh_t^T V_t))                     Eq. 18
        E_t = max(R_t o (V_t P_t^T - L_t), 0)                              Eq. 21
    stage 2, n_iter_hash (15) times, per modality:                        (Sec. III-D)
        W_t = (phi_t^T phi_t + xi I)^{-1} phi_t^T (B_t + B_t o M_t)        Eq. 26 (F_t = W_t^T)
        M_t = max(B_t o (phi_t W_t - B_t), 0)                              Eq. 27
    encode: sign(phi_t(x) W_t)

Every step exactly minimises, over its block, the objective recorded in ``objective_``::

    sum_t ||L_t + R_t o E_t - V_t P_t^T||^2 + eta ||B_t - V_t||^2
          + lam ||B_t V_t^T - r Lh_t Lh_t^T||^2
    + beta sum_{i<j} ||V_i V_j^T - r Lh_i Lh_j^T||^2                       (Eq. 10)

(one term per unordered pair: that is the objective whose V-step is the paper's Z with
coefficient beta r; the paper's sum over ordered pairs i != j would need 2 beta r). The
n_i x n_j matrices are never formed: every norm is expanded through r x r, c x r and c x c
products, so a fit costs O(n (q + c) r) time and O(n (q + c + r)) memory.
Stage 2 records ``objective_hash_``: sum_t ||B_t + B_t o M_t - phi_t W_t||^2 + xi ||W_t||^2.
"""
from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import scipy.linalg as sla

from .._phases import phase
from .._threads import parallel_map, single_threaded, single_threaded_blas
from .._validation import check_bool, check_int, check_positive, warn_numerical_fallback
from ..base import TwoStepKernelHasher
from ..labels import normalize_rows
from ..progress import progress
from ..solvers import cross_product, gram, orthogonal_zero_mean, row_blocks, sign, solve_psd

#: rows per task of the stage-2 pass (HashStage.run): tasks run on parallel threads,
#: each in blocks of at most HASH_BLOCK_ELEMENTS float32 features (2 MiB: the block is read
#: from memory once and used twice while in cache; 256-512-row blocks of 1,000-1,500 columns
#: ran the thin products fastest on the project's machine)
HASH_CHUNK_ROWS = 8192
HASH_BLOCK_ELEMENTS = 1 << 19

_DEFAULTS = {"eta": 1.0, "lam": 1e-3, "beta": 1e-3, "n_anchors": 1500, "n_iter": 15,
             "n_iter_hash": 15}


class AMSH(TwoStepKernelHasher):
    """Adaptive Marginalized Semantic Hashing (Luo et al.), paired and unpaired.

    Parameters
    ----------
    n_bits : int
        Code length r.
    eta : float
        Weight of the quantisation term ``||B_t - V_t||^2`` (1).
    lam : float
        Weight lambda of the intra-modal similarity term ``||B_t V_t^T - r S^(tt)||^2`` (1e-3).
    beta : float
        Weight of the inter-modal similarity terms ``||V_i V_j^T - r S^(ij)||^2`` (1e-3).
    xi : float
        Ridge of the hash functions, ``(phi^T phi + xi I)^{-1}`` (0.01; Eq. 26 has none).
    n_anchors : int or list of int
        Kernel anchors per modality (1,500).
    n_iter, n_iter_hash : int
        Iterations of stage 1 (codes) and stage 2 (hash functions), 15 each.
    n_init_samples : int
        Rows of phi_t whose covariance gives the initial principal directions (1,000).
    intra_modal, inter_modal, kernel, margins : bool
        Ablations of Table V: ``intra_modal=False`` is AMSH-s (no lambda term),
        ``inter_modal=False`` AMSH-t (no beta term), ``kernel=False`` AMSH-k (centred raw
        features instead of RBF kernel features), ``margins=False`` AMSH-m (E_t = 0 and
        M_t = 0: plain regression targets in both stages).
    n_jobs : None or int
        None (default): BLAS keeps the process's thread settings for the large products
        (stage 1's thin n x c x r / r x r products run with one BLAS thread, its V-steps with
        one while n r^2 <= 1e8, where they are latency-bound) and the modalities' stage 2 runs
        sequentially, each on all cores (row blocks on threads). An int k: the whole fit runs with one BLAS
        thread and the independent per-modality stage 2 in min(k, m) threads -- on small
        machines (2 cores) and Wiki-sized data this is the fastest setting (docs/methods/amsh.md,
        "Time per fit"). The learned codes and hash functions do not depend on it.
    random_state, verbose : see :class:`cmhash.base.CrossModalHasher`.

    Attributes
    ----------
    codes_ : list of (n_t, r) int8       learned codes B_t, one matrix per modality
    latent_ : list of (n_t, r) float64   latent representations V_t
    projections_ : list of (q_t, r) float64   hash functions W_t = F_t^T
    kernels_ : list of RBFAnchorFeatures (or CenteredFeatures for AMSH-k)
    objective_ : list of float   Eq. 10 after each stage-1 iteration
    objective_hash_ : list of float   stage-2 objective after each F-step
    n_iter_ : int
    """

    name = "amsh"
    state_shapes = {**TwoStepKernelHasher.state_shapes, "latent_[v]": ("n{v}", "r")}
    supports_unpaired = True
    min_views, max_views = 2, float("inf")

    #: Section IV-B: the same values on every dataset; "wiki" selected on a validation split
    #: of the Wiki training set (benchmarks/amsh_wiki.py --select), see docs/methods/amsh.md.
    #: ``cmhash tune`` search space (cmhash.tune module doc)
    SEARCH_SPACE = {"eta": ("log", 1e-3, 10.0), "lam": ("log", 1e-5, 1.0),
                    "beta": ("log", 1e-5, 1.0), "xi": ("log", 1e-4, 1.0)}
    PRESETS = {
        "wiki": {**_DEFAULTS, "eta": 0.1},
        "mirflickr25k": dict(_DEFAULTS),
        "nuswide": dict(_DEFAULTS),
        "iapr-tc12": dict(_DEFAULTS),
    }
    #: Table V
    VARIANTS = {
        "AMSH": {},
        "AMSH-s": {"intra_modal": False},
        "AMSH-t": {"inter_modal": False},
        "AMSH-k": {"kernel": False},
        "AMSH-m": {"margins": False},
    }

    def __init__(self, n_bits: int = 32, *, eta: float = 1.0, lam: float = 1e-3,
                 beta: float = 1e-3, xi: float = 0.01, n_anchors=1500, n_iter: int = 15,
                 n_iter_hash: int = 15, n_init_samples: int = 1000, intra_modal: bool = True,
                 inter_modal: bool = True, kernel: bool = True, margins: bool = True,
                 n_jobs=None, random_state=None, verbose: bool = False):
        super().__init__(n_bits, random_state=random_state, verbose=verbose)
        self.eta = eta
        self.lam = lam
        self.beta = beta
        self.xi = xi
        self.n_anchors = n_anchors
        self.n_iter = n_iter
        self.n_iter_hash = n_iter_hash
        self.n_init_samples = n_init_samples
        self.intra_modal = intra_modal
        self.inter_modal = inter_modal
        self.kernel = kernel
        self.margins = margins
        self.n_jobs = n_jobs

    def _uses_anchors(self) -> bool:
        return bool(self.kernel)   # n_anchors is unused (and unchecked) with kernel=False

    def _validate_params(self):
        for p in ("eta", "lam", "beta", "xi"):
            check_positive(getattr(self, p), p, allow_zero=True)
        check_int(self.n_iter, "n_iter")
        check_int(self.n_iter_hash, "n_iter_hash")
        check_int(self.n_init_samples, "n_init_samples", minimum=2)
        if self.n_jobs is not None:
            check_int(self.n_jobs, "n_jobs")
        for p in ("intra_modal", "inter_modal", "kernel", "margins"):
            check_bool(getattr(self, p), p)
        if self.eta == 0 and (self.lam == 0 or not self.intra_modal):
            raise ValueError("B_t = sign(eta V_t + lam r Lh_t Lh_t^T V_t) is 0, so every code is "
                             f"-1, with eta = 0 and no intra-modal term (eta={self.eta!r}, "
                             f"lam={self.lam!r}, intra_modal={self.intra_modal!r}); set eta > 0")

    # -------------------------------------------------------------------- fit
    def _fit(self, views, labels, rng):
        # paired data: every modality carries the same labels; AMSH still learns one V_t, B_t
        # per modality (the paired case is the unpaired one with n_1 = ... = n_m, L_t = L)
        self._fit_unpaired(views, [labels] * len(views), rng)

    def _fit_unpaired(self, views, labels, rng):
        if self.n_jobs is None:
            return self._fit_codes_and_hash_functions(views, labels, rng)
        with single_threaded_blas():  # parallelism from n_jobs threads, one BLAS thread each
            return self._fit_codes_and_hash_functions(views, labels, rng)

    def _fit_codes_and_hash_functions(self, views, labels, rng):
        r = self.n_bits
        for name, L in zip(self.modality_names_, labels):
            if L.shape[0] <= r:
                raise ValueError(f"modality {name!r} has {L.shape[0]} training samples; AMSH "
                                 f"needs more than n_bits={r} (V_t^T V_t = n_t I, V_t^T 1 = 0)")
        phis = self._kernelize(views, rng, use_kernel=self.kernel)
        V0 = [_pca_init(phi, r, self.n_init_samples, rng) for phi in phis]

        # ---- stage 1: codes (Eq. 10-21)
        s1 = Stage1(labels, V0, n_bits=r, eta=self.eta,
                    lam=self.lam if self.intra_modal else 0.0,
                    beta=self.beta if self.inter_modal else 0.0,
                    margins=self.margins, rng=rng)
        self.objective_ = []
        # n x r x r and n x c x r work only: the thin products run with one BLAS thread
        # (Stage1's steps), the V-steps' solver by its own latency rule
        for _ in progress(range(self.n_iter), desc="AMSH codes", verbose=self.verbose):
            with phase("latent"):
                s1.iterate()
            with phase("objective"):
                self.objective_.append(s1.objective())
        self.codes_ = [B.astype(np.int8) for B in s1.B]
        self.latent_ = s1.V
        self.n_iter_ = self.n_iter

        # ---- stage 2: hash functions with adaptive margins (Eq. 25-27); the modalities are
        # independent here, so they may run in parallel threads (n_jobs; BLAS releases the GIL)
        n_hash = self.n_iter_hash if self.margins else 1  # without M one ridge solve is exact

        def run_stage(t):
            st = HashStage(phis[t], s1.B[t], self.xi, margins=self.margins,
                           exact_products=not self.kernel)
            steps = progress(range(n_hash), desc=f"AMSH hash ({self.modality_names_[t]})",
                             verbose=self.verbose and n_jobs == 1)
            if not st.exact_products:   # kernel features: one pass over phi per iteration
                return st.run(n_hash, steps=steps, workers=None if n_jobs == 1 else 1)
            objs = []
            for _ in steps:
                st.update_F()
                with phase("objective"):
                    objs.append(st.objective())
                with phase("latent"):
                    st.update_M()
            return st.W, objs

        n_jobs = min(self.n_jobs or 1, len(phis))
        if n_jobs > 1:
            with ThreadPoolExecutor(max_workers=n_jobs) as pool:
                results = list(pool.map(run_stage, range(len(phis))))
        else:
            results = [run_stage(t) for t in range(len(phis))]
        self.projections_ = [W for W, _ in results]
        self.objective_hash_ = [float(sum(o)) for o in zip(*(objs for _, objs in results))]


def _pca_init(phi, r: int, n_samples: int, rng) -> np.ndarray:
    """``V = phi W`` with W the top-r eigenvectors of the covariance of random rows of phi.

    Computed on the smaller of the k x k Gram matrix and the q x q covariance (same
    eigenvectors: W = S^T U diag(s)^-1). When fewer than r directions exist (q < r, e.g.
    AMSH-k on 10-D text, or a sample whose covariance has numerical rank < r, e.g. data with
    a few distinct rows) the missing columns are Gaussian (from ``rng``). A direction exists
    when its eigenvalue exceeds ``max(k, q) eps`` times the largest (``PCA_RANK_RTOL``); below
    that it is rounding noise, and the Gram route's ``S^T u / sqrt(lam)`` of such a direction
    was huge (lam ~ 0) or overflowed float32 (lam < 0, clamped to 1e-300): NaN in the fit.
    """
    n, q = phi.shape
    idx = pca_sample(n, n_samples, rng)
    W = principal_directions(np.asarray(phi[idx], dtype=np.float64), r)
    with phase("products"):
        V = np.asarray(phi @ W.astype(phi.dtype), dtype=np.float64)
    if W.shape[1] < r:
        V = np.hstack([V, rng.standard_normal((n, r - W.shape[1]))])
    return V


def pca_sample(n: int, n_samples: int, rng) -> np.ndarray:
    """The sorted rows of phi whose covariance gives :func:`_pca_init`'s directions."""
    return np.sort(rng.choice(n, size=min(n_samples, n), replace=False))


def principal_directions(S, r: int) -> np.ndarray:
    """The top min(r, k - 1, q) principal directions (q, p) of the k sample rows ``S``
    (float64; centred here in place), those above the numerical-rank threshold only,
    in descending variance (:func:`_pca_init`)."""
    k, q = S.shape
    S -= S.mean(axis=0)
    p = min(r, k - 1, q)  # a centred k-sample covariance has rank <= k - 1
    with phase("small"):  # one (min(k, q))^2 eigendecomposition, LAPACK-bound
        if k < q:
            lam, U = sla.eigh(S @ S.T, subset_by_index=[k - p, k - 1])
        else:
            lam, U = sla.eigh(S.T @ S, subset_by_index=[q - p, q - 1])
    keep = lam > PCA_RANK_RTOL * max(k, q) * max(float(lam[-1]), 0.0)
    lam, U = lam[keep], U[:, keep]
    W = S.T @ (U / np.sqrt(lam)) if k < q else U
    return W[:, ::-1]  # descending variance


#: :func:`_pca_init` keeps principal directions whose variance exceeds this times max(k, q)
#: times the largest one (the numerical-rank threshold of the covariance eigenvalues)
PCA_RANK_RTOL = np.finfo(np.float64).eps


class Stage1:
    """Stage-1 state of AMSH (Eq. 10) for m modalities; one method per closed-form step.

    ``labels[t]`` (n_t, c) multi-hot, ``V0[t]`` (n_t, r) initial latent matrices. ``lam = 0``
    removes the intra-modal term (AMSH-s), ``beta = 0`` the inter-modal one (AMSH-t),
    ``margins=False`` keeps E_t = 0 (AMSH-m).
    """

    def __init__(self, labels, V0, *, n_bits, eta, lam, beta, margins=True, rng=None):
        self.r = int(n_bits)
        self.eta, self.lam, self.beta = float(eta), float(lam), float(beta)
        self.margins = bool(margins)
        self.rng = rng
        self.L = [np.asarray(L, dtype=np.float64) for L in labels]
        self.Lh = [normalize_rows(L) for L in self.L]          # L^_t, unit-norm rows
        self.R = [2.0 * L - 1.0 for L in self.L]                  # R_t (Eq. 3)
        self.E = [np.zeros_like(L) for L in self.L]               # E_t >= 0
        self.V = [np.asarray(V, dtype=np.float64) for V in V0]
        self.B = [sign(V, np.float64) for V in self.V]
        self.P = [None] * len(self.L)
        self.LhtLh = [Lh.T @ Lh for Lh in self.Lh]                # c x c
        self.m = len(self.L)

    def targets(self, t) -> np.ndarray:
        """T_t = L_t + R_t o E_t, the marginalised regression target."""
        return margin_targets(self.L[t], self.E[t], self.R[t])

    # ----------------------------------------------------------------- steps
    @single_threaded
    def update_P(self, t=None):
        """Eq. 12: P_t = T_t^T V_t (V_t^T V_t)^{-1} (c x r), the least-squares minimiser."""
        for t in (range(self.m) if t is None else [t]):
            V = self.V[t]
            self.P[t] = solve_psd(V.T @ V, V.T @ self.targets(t)).T

    @single_threaded
    def z_matrix(self, i) -> np.ndarray:
        """Z_i of Eq. 13: the objective restricted to feasible V_i is const - 2 tr(Z_i^T V_i)."""
        acc = self.label_coupling(i, self.Lh[i].T @ self.B[i],
                                  [self.Lh[j].T @ self.V[j] if self.beta and j != i else None
                                   for j in range(self.m)])
        return z_block(self.targets(i), self.P[i], self.B[i], self.Lh[i], acc, self.eta, self.r)

    def label_coupling(self, i, LhtB_i, LhtV) -> np.ndarray:
        """``lam Lh_i^T B_i + beta sum_{j != i} Lh_j^T V_j`` (c x r) of Z_i from the sums
        ``Lh_i^T B_i`` and ``LhtV[j] = Lh_j^T V_j`` (the newest V_j)."""
        acc = self.lam * LhtB_i                                                  # c x r
        if self.beta:
            acc += self.beta * sum(LhtV[j] for j in range(self.m) if j != i)
        return acc

    def update_V(self, i=None):
        """Eq. 13-15 for V_i (all modalities in turn, each using the newest V_j)."""
        for i in (range(self.m) if i is None else [i]):
            self.V[i] = orthogonal_zero_mean(self.z_matrix(i), self.rng)

    @single_threaded
    def update_B(self, t=None):
        """Eq. 18: B_t = sign(eta V_t + lam r Lh_t (Lh_t^T V_t))."""
        for t in (range(self.m) if t is None else [t]):
            V, Lh = self.V[t], self.Lh[t]
            self.B[t] = code_step(V, Lh, Lh.T @ V, self.eta, self.lam, self.r)

    @single_threaded
    def update_E(self, t=None):
        """Eq. 21: E_t = max(R_t o (V_t P_t^T - L_t), 0), elementwise minimiser of Eq. 19/20."""
        if not self.margins:
            return
        for t in (range(self.m) if t is None else [t]):
            self.E[t] = margin_step(self.V[t], self.P[t], self.L[t], self.R[t])

    def iterate(self):
        """One iteration in the reference order: P (all), V_1..V_m, B (all), E (all)."""
        self.update_P()
        self.update_V()
        self.update_B()
        self.update_E()

    # ------------------------------------------------------------- objective
    @single_threaded
    def terms(self) -> dict:
        """The terms of Eq. 10 at the current state, O(n (c + r) r), no n x n matrix (and no
        n x r temporary: ``||B - V||^2 = ||B||^2 + tr(V^T V) - 2 <B, V>``)."""
        stats = [objective_stats(self.V[t], self.B[t], self.Lh[t], self.targets(t), self.P[t])
                 for t in range(self.m)]
        return combine_terms(stats, self.LhtLh, self.r)

    def objective(self) -> float:
        """Eq. 10 (inter-modal term over unordered pairs i < j)."""
        t = self.terms()
        return float(t["regression"] + self.eta * t["quantization"] + self.lam * t["intra"]
                     + self.beta * t["inter"])


# ------------------------------------------------------------- row-block steps of stage 1
# (functions of the rows of one block; the in-memory Stage1 applies them to all rows, the Dask
# fit, cmhash.distributed.fit_amsh, to each row block)
def margin_targets(L, E, R=None) -> np.ndarray:
    """``T = L + R o E`` with ``R = 2 L - 1`` (given or formed from ``L``)."""
    return L + (2.0 * L - 1.0 if R is None else R) * E


def z_block(T, P, B, Lh, acc, eta: float, r: int) -> np.ndarray:
    """Z of Eq. 13: ``T P + eta B + r Lh acc`` (``acc``: :meth:`Stage1.label_coupling`)."""
    Z = T @ P + eta * B
    return Z + r * (Lh @ acc)


def code_step(V, Lh, LhtV, eta: float, lam: float, r: int) -> np.ndarray:
    """Eq. 18: ``B = sign(eta V + lam r Lh (Lh^T V))`` from the c x r sum ``LhtV``."""
    return sign(eta * V + lam * r * (Lh @ LhtV), np.float64)


def margin_step(V, P, L, R=None) -> np.ndarray:
    """Eq. 21: ``E = max(R o (V P^T - L), 0)``."""
    H = V @ P.T - L
    return np.maximum((2.0 * L - 1.0 if R is None else R) * H, 0.0)


def objective_stats(V, B, Lh, T, P) -> tuple:
    """The sums over rows of Eq. 10's terms for one modality: ``(||T - V P^T||^2, ||B||^2,
    <B, V>, V^T V, B^T B, Lh^T B, Lh^T V)`` (block sums add up to the full ones)."""
    residual = T - V @ P.T                                                      # n x c
    return (float(np.einsum("ij,ij->", residual, residual)), float(np.einsum("ij,ij->", B, B)),
            float(np.einsum("ij,ij->", B, V)), V.T @ V, B.T @ B, Lh.T @ B, Lh.T @ V)


def combine_terms(stats, LhtLh, r: int) -> dict:
    """The terms of Eq. 10 from :func:`objective_stats` of every modality and the constant
    ``Lh_t^T Lh_t`` (c x c): r x r, c x r and c x c algebra only."""
    reg = quant = intra = inter = 0.0
    for (res_sq, B_sq, B_dot_V, VtV, BtB, LhtB, LhtV), LL in zip(stats, LhtLh):
        reg += res_sq
        quant += B_sq + float(np.trace(VtV)) - 2.0 * B_dot_V
        # ||B V^T - r Lh Lh^T||^2 = <B^T B, V^T V> - 2r <Lh^T B, Lh^T V> + r^2 ||Lh^T Lh||^2
        intra += (float(np.sum(BtB * VtV)) - 2 * r * float(np.sum(LhtB * LhtV))
                  + r * r * float(np.sum(LL ** 2)))
    m = len(stats)
    for i in range(m):
        for j in range(i + 1, m):
            # ||V_i V_j^T - r Lh_i Lh_j^T||^2 through r x r and c x r / c x c products
            inter += (float(np.sum(stats[i][3] * stats[j][3]))
                      - 2 * r * float(np.sum(stats[i][6] * stats[j][6]))
                      + r * r * float(np.sum(LhtLh[i] * LhtLh[j])))
    return {"regression": reg, "quantization": quant, "intra": intra, "inter": inter}


def _psd_pinv_solver(G):
    """``R -> G^+ R`` for a symmetric (semi-definite) ``G``, eigenvalues below
    ``q eps max|lambda|`` treated as 0 (the minimum-norm least-squares solution)."""
    lam, Q = np.linalg.eigh(G)
    keep = lam > G.shape[0] * np.finfo(np.float64).eps * max(float(np.abs(lam).max()), 1e-300)
    Qk, inv = Q[:, keep], 1.0 / lam[keep]
    return lambda R: Qk @ (inv[:, None] * (Qk.T @ R))


def ridge_solver(G, xi: float):
    """``R -> G^{-1} R`` for ``G = phi^T phi + xi I`` from one factorisation: Cholesky, LU if
    rounding made ``G`` indefinite, the pseudo-inverse if it is singular (a warning)."""
    try:
        return partial(sla.cho_solve, sla.cho_factor(G, check_finite=False), check_finite=False)
    except np.linalg.LinAlgError:
        # a tiny xi against eigenvalues ~ n can leave phi^T phi + xi I numerically
        # indefinite; solve the same system by LU, as MATLAB's backslash does
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sla.LinAlgWarning)
            lu = sla.lu_factor(G, check_finite=False)
        if np.isfinite(lu[0]).all() and np.all(np.diag(lu[0]) != 0):
            return partial(sla.lu_solve, lu, check_finite=False)
        # exactly singular (xi = 0 and linearly dependent features, e.g. duplicated
        # training rows as anchors): LU gave inf / NaN W and one code for every query;
        # take the minimum-norm least-squares solution instead (solvers.solve_psd's
        # fallback), from one eigendecomposition of the symmetric G
        warn_numerical_fallback(
            f"AMSH stage 2: phi^T phi + xi I ({G.shape[0]} x {G.shape[0]}, xi={xi!r}) is "
            f"singular; the hash functions are the minimum-norm least-squares solution "
            f"(pseudo-inverse). Usual causes: xi = 0 with duplicated training rows or "
            f"linearly dependent features; set xi > 0.")
        return _psd_pinv_solver(G)


class HashStage:
    """Stage 2 for one modality: ``min_{W, M >= 0} ||B + B o M - phi W||^2 + xi ||W||^2``.

    The Gram matrix ``phi^T phi + xi I`` is accumulated (float64, :func:`solvers.gram`) and
    Cholesky-factorised once (LU if rounding made it indefinite); each F-step is then two
    triangular solves (Eq. 26, the same minimiser as :func:`solvers.ridge_regression`).

    ``exact_products=False`` forms the right-hand side ``phi^T (B + B o M)`` from float32
    BLAS products of row blocks added in float64 (:func:`solvers.cross_product`, or the fused
    pass of :meth:`run`) instead of the float64 :func:`solvers.gram`. AMSH uses it for RBF
    kernel features only: their entries are bounded (|phi| <= 1), so the rhs error is
    <~5e-6 relative and reaches the fitted values ``phi W`` through
    ``||phi (phi^T phi + xi I)^{-1}|| <= 1 / (2 sqrt(xi))`` (5 for xi = 0.01): no code changes
    in practice. Raw features (AMSH-k) are unbounded and keep the exact product.
    """

    def __init__(self, phi, B, xi: float, *, margins: bool = True, exact_products: bool = True):
        self.phi = phi
        self.exact_products = bool(exact_products)
        self.B = np.asarray(B, dtype=np.float64)
        self.xi = float(xi)
        self.margins = bool(margins)
        self.M = np.zeros_like(self.B)
        G = gram(phi)
        G[np.diag_indices_from(G)] += self.xi
        with phase("small"):
            self._factorise(G)
        self.W = None
        self._fitted = None  # phi W, reused by the M-step and the objective

    def _factorise(self, G) -> None:
        """``self._solve``: R -> (phi^T phi + xi I)^{-1} R from one factorisation of ``G``."""
        self._solve = ridge_solver(G, self.xi)

    def target(self) -> np.ndarray:
        return self.B + self.B * self.M

    def update_F(self):
        """Eq. 26 (with ridge xi): W = (phi^T phi + xi I)^{-1} phi^T (B + B o M)."""
        T = self.target()
        rhs = gram(self.phi, T) if self.exact_products else cross_product(self.phi, T)
        with phase("small"):
            self.W = self._solve(rhs)
        with phase("products"):
            self._fitted = np.asarray(self.phi @ self.W.astype(self.phi.dtype), dtype=np.float64)

    def update_M(self):
        """Eq. 27: M = max(B o (phi W - B), 0), the elementwise minimiser given W."""
        if self.margins:
            self.M = np.maximum(self.B * (self._fitted - self.B), 0.0)

    def objective(self) -> float:
        residual = self.target()
        residual -= self._fitted
        return float(np.einsum("ij,ij->", residual, residual) + self.xi * np.sum(self.W ** 2))

    def run(self, n_iter: int, *, workers=None, steps=None):
        """``n_iter`` iterations of the F-, objective and M-steps with one pass over ``phi``
        per iteration; returns ``(W, objectives)``. ``steps``: an iterable of ``n_iter`` items
        to loop over instead of ``range(n_iter)`` (a progress bar).

        The same iterates as ``update_F(); objective(); update_M()`` in turn: each pass takes
        cache-sized blocks of rows, computes their fitted values ``phi_b W`` (float32 BLAS),
        their share of the objective, their new margins ``M_b`` and, while the block is still
        in cache, their share ``phi_b^T (B_b + B_b o M_b)`` of the next right-hand side
        (float32 products added in float64, as :func:`solvers.cross_product`). Reading the
        n x q features once instead of twice per iteration halves the memory traffic of the
        stage, which is bandwidth-bound at r = 32 (2 r flops per 4-byte feature). The chunks
        of ``CHUNK_ROWS`` rows run on ``workers`` threads (default: all cores; their partial
        sums are added in order, so the result does not depend on the thread count).
        """
        objs = []
        rhs = cross_product(self.phi, self.target())
        self._fitted = np.empty_like(self.B)
        chunks = row_blocks(self.phi.shape[0], HASH_CHUNK_ROWS)
        for it, _ in enumerate(range(n_iter) if steps is None else steps):
            with phase("small"):
                self.W = self._solve(rhs)
            W32 = self.W.astype(self.phi.dtype)
            need_rhs = it < n_iter - 1
            with phase("products"):
                parts = parallel_map(lambda rows: self._pass(rows, W32, need_rhs), chunks,
                                     workers=workers)
            obj = self.xi * float(np.sum(self.W ** 2))
            rhs = np.zeros_like(rhs)
            for part_obj, part_rhs in parts:
                obj += part_obj
                if need_rhs:
                    rhs += part_rhs
            objs.append(obj)
        return self.W, objs

    def _pass(self, rows, W32, need_rhs: bool):
        """One chunk of :meth:`run`'s pass: (objective share, rhs share or None)."""
        q = self.phi.shape[1]
        block = max(1, HASH_BLOCK_ELEMENTS // max(q, 1))
        obj, rhs = 0.0, (np.zeros((q, self.B.shape[1])) if need_rhs else None)
        for sub in row_blocks(rows.stop - rows.start, block):
            b = slice(rows.start + sub.start, rows.start + sub.stop)
            self._fitted[b], self.M[b], o, part = hash_block(self.phi[b], self.B[b], self.M[b],
                                                              W32, self.margins, need_rhs)
            obj += o
            if need_rhs:
                rhs += part
        return obj, rhs


def hash_block(phi_b, B_b, M_b, W32, margins: bool, need_rhs: bool):
    """Stage 2 on one cache-sized block of rows (:meth:`HashStage.run`): ``(fitted, new M,
    objective share, share of the next right-hand side or None)``."""
    fitted = np.asarray(phi_b @ W32, dtype=np.float64)
    residual = B_b + B_b * M_b
    residual -= fitted
    obj = float(np.einsum("ij,ij->", residual, residual))
    if margins:
        M_b = np.maximum(B_b * (fitted - B_b), 0.0)
    rhs = None
    if need_rhs:
        T = (B_b + B_b * M_b).astype(phi_b.dtype)
        rhs = np.asarray(phi_b.T @ T, dtype=np.float64)
    return fitted, M_b, obj, rhs
