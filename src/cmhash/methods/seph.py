"""SePH: semantics-preserving hashing (Lin, Ding, Hu, Wang, CVPR 2015); SePH-km and SePH-rnd.

Two steps (row-sample convention; derivation and deviations in docs/methods/seph.md)::

    P = Yn Yn^T with a zero diagonal, scaled to sum 1       semantic affinities as probabilities
    step 1:  min_H  Psi(H) = KL(P || Q(H)) + alpha / (r n) || |H| - 1 ||_F^2
             Q_ij = (1 + ||h_i - h_j||^2 / 4)^{-1} / sum_{k != l} (1 + ||h_k - h_l||^2 / 4)^{-1}
             (||h_i - h_j||^2 / 4 is the Hamming distance for +-1 codes), by the released
             code's gradient descent (t-SNE's: momentum, per-entry gains, P exaggerated x4 for
             the first 100 of 1,000 iterations, H re-centred each iteration); H = the best
             iterate, codes B = sign(H) (shared by both modalities)
    step 2:  per modality and bit, kernel logistic regression of B on an RBF kernel of 500
             kernel samples (cmhash.logistic): random training samples (SePH-rnd) or k-means
             centres (SePH-km)

**Memory.** SePH is inherently quadratic: P, Q and the gradient weights are n x n (the released
code forms them densely, and the paper's complexity is O(n^2) per iteration). cmhash holds
``PAIR_MATRICES`` (3) dense n x n matrices (float32 by default, ``precision``); a fit whose
matrices would exceed ``memory_limit`` bytes (2 GiB by default: n <= 13,377 in float32,
9,459 in float64) is refused before any is allocated.
"""
from __future__ import annotations

import numpy as np
from scipy.special import expit

from .._threads import single_threaded_blas_if_small
from .._validation import check_choice, check_int, check_positive
from ..base import TwoStepKernelHasher
from ..labels import normalize_rows
from ..logistic import fit_klr_hash_functions
from ..progress import progress
from ..solvers import sign

__all__ = ["SePH", "SePHKM", "SePHRnd", "seph_probabilities", "seph_objective",
           "seph_gradient", "pair_bytes"]

#: dense n x n float64 matrices a fit holds at once (P, the kernel values, a work buffer)
PAIR_MATRICES = 3
# the released optimiser's settings (tsne_p.m of t-SNE, as minKLD.m uses them)
MOMENTUM, FINAL_MOMENTUM, MOMENTUM_SWITCH = 0.5, 0.8, 250
EXAGGERATION, EXAGGERATION_ITER = 4.0, 100
MIN_GAIN, INIT_SCALE = 0.01, 1e-4
_TINY = np.finfo(np.float64).tiny          # MATLAB's realmin


def pair_bytes(n: int, precision: str = "float32") -> int:
    """Bytes of SePH's pairwise matrices for n training samples."""
    return PAIR_MATRICES * np.dtype(precision).itemsize * int(n) * int(n)


def seph_probabilities(labels, dtype=np.float64) -> np.ndarray:
    """P: cosine similarity of the label vectors (0/1 "same class" for single labels), zero
    diagonal, symmetric, scaled to sum 1, floored at the smallest positive number of
    ``dtype`` (the released code's ``max(P ./ sum(P(:)), realmin)``). n x n."""
    Yn = normalize_rows(labels).astype(dtype)
    P = Yn @ Yn.T
    np.fill_diagonal(P, 0.0)
    total = float(P.sum(dtype=np.float64))
    if not total > 0:
        raise ValueError("SePH needs at least one pair of training samples sharing a label "
                         "(every off-diagonal semantic affinity is 0)")
    P /= P.dtype.type(total)
    np.maximum(P, np.finfo(dtype).tiny, out=P)
    return P


def _kernel_values(H, out) -> np.ndarray:
    """``num_ij = 1 / (1 + ||h_i - h_j||^2 / 4)`` with a zero diagonal, into ``out`` (4 passes
    over the n x n buffer: a product, two vector additions, a reciprocal)."""
    half = np.asarray(H, dtype=out.dtype)
    np.matmul(-0.5 * half, half.T, out=out)                   # -h_i.h_j / 2
    quarter = 0.25 * np.einsum("ij,ij->i", half, half)        # ||h_i||^2 / 4
    out += (1.0 + quarter)[:, None]
    out += quarter[None, :]
    np.reciprocal(out, out=out)
    np.fill_diagonal(out, 0.0)
    return out


def _quantization(H, weight) -> float:
    return weight * float(np.sum((np.abs(H) - 1.0) ** 2))


def seph_objective(H, P, weight: float) -> float:
    """``Psi(H) = sum P log(P / Q) + weight || |H| - 1 ||^2`` (``weight = alpha / (r n)``),
    with ``Q = max(num / sum(num), realmin)`` as in the released code (reference version:
    allocates its own n x n matrices)."""
    H = np.asarray(H, dtype=np.float64)
    d = ((H[:, None, :] - H[None, :, :]) ** 2).sum(-1) / 4.0
    num = 1.0 / (1.0 + d)
    np.fill_diagonal(num, 0.0)
    Q = np.maximum(num / num.sum(), _TINY)
    return float(np.sum(P * np.log(P)) - np.sum(P * np.log(Q))) + _quantization(H, weight)


def seph_gradient(H, P, weight: float, num, work) -> tuple[np.ndarray, float]:
    """``(dPsi/dH, -sum P log Q)`` at H (``num``, ``work``: two n x n buffers of P's dtype);
    the objective is ``sum P log P - sum P log Q + weight || |H| - 1 ||^2``.

    ``dKL/dh_i = sum_j (P_ij - Q_ij) num_ij (h_i - h_j)`` (the t-SNE gradient with the
    Hamming scale 1/4), i.e. ``(diag(L 1) - L) H`` with ``L = (P - Q) o num``; the
    quantization term adds ``2 weight (|H| - 1) o sign(H)``.
    """
    _kernel_values(H, num)
    Z = float(num.sum(dtype=np.float64))
    # -sum P log Q = (sum P) log Z - sum P log num, Q = num / Z off the diagonal (where P is
    # the floor realmin and so is Q: those terms are ~1e-305 and left out)
    np.fill_diagonal(num, 1.0)
    np.log(num, out=work)                                # 0 on the diagonal
    np.fill_diagonal(num, 0.0)
    cross = (float(P.sum(dtype=np.float64)) * np.log(Z)
             - float(np.einsum("ij,ij->", P, work, dtype=np.float64)))
    np.multiply(num, -1.0 / Z, out=work)                 # -Q (0 on the diagonal)
    work += P                                            # P - Q
    work *= num                                          # L (0 on the diagonal)
    Hc = np.asarray(H, dtype=work.dtype)
    grad = (work.sum(axis=1, dtype=np.float64)[:, None] * H
            - np.asarray(work @ Hc, dtype=np.float64))
    sign_h = np.where(H > 0, 1.0, np.where(H < 0, -1.0, 0.0))
    grad += 2.0 * weight * (np.abs(H) - 1.0) * sign_h
    return grad, cross


class SePH(TwoStepKernelHasher):
    """SePH (Lin, Ding, Hu, Wang; CVPR 2015). Use the registered SePH-km / SePH-rnd.

    Parameters
    ----------
    n_bits : int
        Code length r.
    alpha : float
        Weight of the quantization loss, divided by r n (the released ``alpha/bit/trainNum``
        with alpha = 0.01).
    n_iter : int
        Gradient iterations of step 1 (1,000).
    learning_rate : float
        Initial step (100, as t-SNE).
    C : float
        RKHS penalty of the kernel logistic regressions (0.01).
    n_anchors : int or (int, int)
        Kernel samples per modality (500).
    anchor_method : {"kmeans", "random"}
        SePH-km or SePH-rnd.
    klr_max_iter : int
        L-BFGS iterations of each modality's regressions (minFunc's default 500).
    precision : {"float32", "float64"}
        Precision of the n x n matrices (the released code: float64; float32 halves their
        memory and time; H, the gradient and every sum stay float64).
    memory_limit : int or float
        Bytes the n x n matrices may take (``pair_bytes``); larger fits are refused (2 GiB).
    random_state, verbose : see :class:`cmhash.base.CrossModalHasher`.

    Attributes
    ----------
    codes_ : (n, r) int8     learned codes sign(H) (both modalities)
    latent_ : (n, r)          H, the best iterate of step 1
    objective_ : list of float   Psi at every iterate (un-exaggerated P)
    best_iter_ : int          index of the iterate kept
    projections_, kernels_, klr_info_   the KLR hash functions (cmhash.logistic)
    pair_bytes_ : int         bytes of this fit's n x n matrices
    """

    name = ""
    state_shapes = {**TwoStepKernelHasher.state_shapes, "latent_": ("n", "r")}
    #: ``cmhash tune`` search space (cmhash.tune module doc for the syntax)
    SEARCH_SPACE = {"alpha": ("log", 1e-4, 10.0), "C": ("log", 1e-4, 1.0)}
    PRESETS: dict = {}
    VARIANTS: dict = {}

    def __init__(self, n_bits: int = 32, *, alpha: float = 0.01, n_iter: int = 1000,
                 learning_rate: float = 100.0, C: float = 0.01, n_anchors=500,
                 anchor_method: str = "kmeans", klr_max_iter: int = 500,
                 precision: str = "float32", memory_limit=2 ** 31, random_state=None,
                 verbose: bool = False):
        super().__init__(n_bits, random_state=random_state, verbose=verbose)
        self.precision = precision
        self.alpha = alpha
        self.n_iter = n_iter
        self.learning_rate = learning_rate
        self.C = C
        self.n_anchors = n_anchors
        self.anchor_method = anchor_method
        self.klr_max_iter = klr_max_iter
        self.memory_limit = memory_limit

    def _validate_params(self):
        check_positive(self.alpha, "alpha", allow_zero=True)
        check_positive(self.learning_rate, "learning_rate")
        check_positive(self.C, "C", allow_zero=True)
        check_positive(self.memory_limit, "memory_limit")
        check_int(self.n_iter, "n_iter")
        check_int(self.klr_max_iter, "klr_max_iter")
        check_choice(self.anchor_method, "anchor_method", {"kmeans", "random"})
        check_choice(self.precision, "precision", {"float32", "float64"})

    def _check_memory(self, n: int) -> None:
        need = pair_bytes(n, self.precision)
        if need > self.memory_limit:
            size = np.dtype(self.precision).itemsize
            largest = int(np.sqrt(self.memory_limit / (PAIR_MATRICES * size)))
            raise MemoryError(
                f"SePH's probability matrix P over training pairs is n x n: n={n} needs "
                f"{need / 2 ** 30:.2f} GiB ({PAIR_MATRICES} dense n x n {self.precision} "
                f"matrices), above "
                f"memory_limit={self.memory_limit / 2 ** 30:.2f} GiB (at most n={largest}); "
                f"raise memory_limit (bytes) or train on a subset of the samples")

    def _fit(self, views, labels, rng):
        n, r = views[0].shape[0], self.n_bits
        self._check_memory(n)
        self._check_fewer_bits_than_samples(n)
        self.pair_bytes_ = pair_bytes(n, self.precision)
        P = seph_probabilities(labels, self.precision)
        H = self._minimise(P, n, r, rng)
        del P
        self.latent_ = H
        self.codes_ = sign(H)
        self.kernels_, self.projections_, self.klr_info_ = fit_klr_hash_functions(
            views, [self.codes_, self.codes_], [self._anchors_for(v, 2) for v in range(2)],
            self.anchor_method, self.C, rng, max_iter=self.klr_max_iter)

    def _minimise(self, P, n, r, rng) -> np.ndarray:
        """The released optimiser (minKLD.m); returns the iterate with the smallest Psi."""
        weight = float(self.alpha) / (r * n)
        num, work = np.empty_like(P), np.empty_like(P)
        H = INIT_SCALE * rng.standard_normal((n, r))
        np.log(P, out=work)
        plogp = float(np.einsum("ij,ij->", P, work, dtype=np.float64))
        P *= EXAGGERATION                      # "lie about the P-values" for a better optimum
        with single_threaded_blas_if_small(float(n) * n * r):   # latency-bound when small
            return self._descend(P, H, weight, plogp, num, work)

    def _descend(self, P, H, weight, plogp, num, work) -> np.ndarray:
        """The iterations of minKLD.m; records ``objective_`` (the true Psi of every iterate)
        and returns the best iterate."""
        incs, gains = np.zeros_like(H), np.ones_like(H)
        momentum, lr = MOMENTUM, float(self.learning_rate)
        self.objective_ = []
        best, best_H = np.inf, H
        for it in progress(range(self.n_iter + 1), desc=type(self).__name__,
                           verbose=self.verbose):
            exaggerated = it < EXAGGERATION_ITER
            grad, cross = seph_gradient(H, P, weight, num, work)
            if exaggerated:        # the objective is that of the true P (cross is linear in P)
                cross /= EXAGGERATION
            value = plogp + cross + _quantization(H, weight)
            self.objective_.append(value)
            if value < best:
                best, best_H, self.best_iter_ = value, H, it
            if it == self.n_iter:
                break
            # delta-bar-delta gains, momentum step, re-centring (KL is translation invariant)
            same = np.sign(grad) == np.sign(incs)
            gains = np.where(same, gains * 0.8, gains + 0.2)
            np.maximum(gains, MIN_GAIN, out=gains)
            incs = momentum * incs - lr * gains * grad
            H = H + incs
            H -= H.mean(axis=0)
            if it + 1 == MOMENTUM_SWITCH:
                momentum = FINAL_MOMENTUM
            if it + 1 == EXAGGERATION_ITER:
                P /= EXAGGERATION
        self.n_iter_ = self.n_iter
        return best_H

    def encode_unified(self, image, text) -> np.ndarray:
        """SePH's unified code of items observed in both modalities (the paper's retrieval-set
        codes): bit k is +1 when ``p1 p2 > (1 - p1)(1 - p2)`` with ``p_v`` the modality-v
        logistic probability of +1 (``P(pos | V1) P(pos | V2) - P(neg | V1) P(neg | V2)``)."""
        probs = []
        for m, X in enumerate((image, text)):
            X = self._check_query(X, m)
            probs.append(expit(self.kernels_[m].transform(X).astype(np.float64)
                               @ self.projections_[m]))
        p1, p2 = probs
        return sign(p1 * p2 - (1.0 - p1) * (1.0 - p2))


class SePHKM(SePH):
    """SePH-km (Lin et al., CVPR 2015): k-means centres as the KLR kernel samples."""

    name = "seph-km"


class SePHRnd(SePH):
    """SePH-rnd (Lin et al., CVPR 2015): random training samples as the KLR kernel samples."""

    name = "seph-rnd"

    def __init__(self, n_bits: int = 32, *, alpha: float = 0.01, n_iter: int = 1000,
                 learning_rate: float = 100.0, C: float = 0.01, n_anchors=500,
                 anchor_method: str = "random", klr_max_iter: int = 500,
                 precision: str = "float32", memory_limit=2 ** 31, random_state=None,
                 verbose: bool = False):
        super().__init__(n_bits, alpha=alpha, n_iter=n_iter, learning_rate=learning_rate, C=C,
                         n_anchors=n_anchors, anchor_method=anchor_method,
                         klr_max_iter=klr_max_iter, precision=precision,
                         memory_limit=memory_limit,
                         random_state=random_state, verbose=verbose)
