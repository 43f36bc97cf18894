"""FSH: fusion similarity hashing (Liu, Ji, Wu, Huang, Zhang, CVPR 2017). Unsupervised.

The labels given to ``fit`` are validated like every method's but not used. Algorithm
(row-sample convention; derivation, the graph's memory and every deviation from the released
re-implementation in docs/methods/fsh.md)::

    X_m = training rows of modality m scaled to unit L2 norm, centred by their mean
    m anchor pairs (a^x_p, a^y_p): random training pairs, or k-means centres of [X, Y]
    W_x[p, q] = exp(-||a^x_p - a^x_q|| / (2 sigma^2)),  W_y likewise       anchor affinities
    Nx(i), Ny(i): the k nearest image / text anchors of sample i
    Nx(a), Ny(a): the k nearest image / text anchors of anchor a
    A1[i, a] = mean_{p in Nx(i), q in Ny(a)} W_x[p, q]      image neighbourhood of i against
    A2[i, a] = mean_{p in Ny(i), q in Nx(a)} W_y[p, q]      the text neighbourhood of a, and
    D = eta A1 + (1 - eta) A2                                vice versa: the fused n x m graph
    repeat n_iter (100) times:
        B   = sign( (D Bs + lam (X W_x + Y W_y)) (Bs^T Bs + 2 lam I)^{-1} )    relaxed B-step
        Bs  = sign(D^T B)                                                       anchor codes
        W_m = (X_m^T X_m + xi I)^{-1} X_m^T B                                   hash functions
        eta = argmin_{eta in [0, 1]} ||eta A1 + (1 - eta) A2 - B Bs^T||^2       graph weight
    encode: sign(X_m(x) W_m)

for the objective ``J = ||D(eta) - B Bs^T||^2 + lam sum_m ||B - X_m W_m||^2 (+ xi ||W_m||^2)``.

**Memory.** FSH is graph-based: it needs the fused similarity graph between the n training
samples and the m anchors, three dense n x m float64 matrices (A1, A2, D); with m = n (every
sample an anchor, the un-anchored graph) that is quadratic. ``memory_limit`` (bytes) bounds
them: a fit whose graph would exceed it is refused before anything is allocated.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.preprocessing import normalize as _unit_rows

from .._threads import single_threaded_blas_if_small
from .._validation import check_choice, check_int, check_positive
from ..base import TwoStepKernelHasher
from ..kernel import CenteredFeatures, _kmeans_anchors
from ..progress import progress
from ..solvers import ridge_regression, sign, solve_psd

__all__ = ["FSH", "fsh_objective", "fusion_graphs", "graph_bytes"]

#: dense n x m float64 matrices held at once by the graph (A1, A2 and D)
GRAPH_MATRICES = 3
#: rows per chunk when finding the samples' nearest anchors
_CHUNK = 4096


def graph_bytes(n: int, n_anchor_pairs: int) -> int:
    """Bytes of FSH's fused graph: ``GRAPH_MATRICES`` dense n x m float64 matrices."""
    return GRAPH_MATRICES * 8 * int(n) * int(n_anchor_pairs)


def _sq_dist(X, A):
    """Squared Euclidean distances (rows of X, rows of A), clipped at 0."""
    xx = (np.asarray(X.multiply(X).sum(axis=1)).ravel() if sp.issparse(X)
          else np.einsum("ij,ij->i", X, X))
    D = xx[:, None] + np.einsum("ij,ij->i", A, A)[None, :] - 2.0 * np.asarray(X @ A.T)
    return np.maximum(D, 0.0)


def _nearest(X, A, k: int) -> np.ndarray:
    """(n, k) indices of the k nearest rows of A for each row of X (chunked, any order)."""
    out = np.empty((X.shape[0], k), dtype=np.intp)
    for s in range(0, X.shape[0], _CHUNK):
        D = _sq_dist(X[s:s + _CHUNK], A)
        out[s:s + _CHUNK] = np.argpartition(D, k - 1, axis=1)[:, :k]
    return out


def _affinity(A, sigma: float) -> np.ndarray:
    """Anchor affinities ``exp(-||a_p - a_q|| / (2 sigma^2))`` (m x m; the distance itself, not
    its square, as in the released code)."""
    return np.exp(-np.sqrt(_sq_dist(A, A)) / (2.0 * sigma * sigma))


def fusion_graphs(Xs, anchors, k: int, sigma: float):
    """``(A1, A2)``: the two asymmetric n x m cross-modal diffusion graphs (module doc).

    ``Xs = [X, Y]`` the (unit-row) training features, ``anchors = [a^x, a^y]`` (m, d_m) each.
    ``A1 = (1/k^2) M_x (W_x N_y^T)`` with ``M_x`` the n x m indicator of each sample's k nearest
    image anchors and ``N_y`` the m x m indicator of each anchor's k nearest text anchors, so
    a row costs k gathered rows of an m x m matrix: O(n k m) time, n x m memory.
    """
    (X, Y), (ax, ay) = Xs, anchors
    Wx, Wy = _affinity(ax, sigma), _affinity(ay, sigma)
    graphs = []
    for F, W, a_same, a_other in ((X, Wx, ax, ay), (Y, Wy, ay, ax)):
        near_samples = _nearest(F, a_same, k)              # Nx(i) for A1, Ny(i) for A2
        near_anchors = _nearest(a_other, a_other, k)       # Ny(a) for A1, Nx(a) for A2
        # G[p, a] = sum_{q in N(a)} W[p, q]
        G = W[:, near_anchors].sum(axis=2) / (k * k)
        A = np.empty((F.shape[0], a_same.shape[0]))
        for s in range(0, F.shape[0], _CHUNK // 4):        # row chunks: no n x m temporary
            A[s:s + _CHUNK // 4] = G[near_samples[s:s + _CHUNK // 4]].sum(axis=1)
        graphs.append(A)
    return graphs


def fsh_objective(D, B, Bs, Xs, Ws, lam: float, xi: float) -> float:
    """``||D - B Bs^T||^2 + lam sum_m (||B - X_m W_m||^2 + xi ||W_m||^2)`` for the fused graph
    ``D``, without an n x m temporary: ``||D||^2 - 2 <D^T B, Bs> + <B^T B, Bs^T Bs>``."""
    B = np.asarray(B, dtype=np.float64)
    Bs = np.asarray(Bs, dtype=np.float64)
    value = (float(np.einsum("ij,ij->", D, D)) - 2.0 * float(np.sum((D.T @ B) * Bs))
             + float(np.sum((B.T @ B) * (Bs.T @ Bs))))
    for X, W in zip(Xs, Ws):
        value += lam * (float(np.sum((B - np.asarray(X @ W, dtype=np.float64)) ** 2))
                        + xi * float(np.sum(W * W)))
    return value


def relaxed_b(D, Bs, projections, lam: float, data_weight: float) -> np.ndarray:
    """Minimiser over real B of ``||D - B Bs^T||^2 + lam ||B - P_x||^2 + lam ||B - P_y||^2``
    (``data_weight = 1``), ``B = (D Bs + lam (P_x + P_y)) (Bs^T Bs + 2 lam I)^{-1}``;
    ``data_weight = 2`` is the released code's right-hand side ``2 lam (P_x + P_y)``."""
    Bs = np.asarray(Bs, dtype=np.float64)
    rhs = D @ Bs + data_weight * lam * (projections[0] + projections[1])
    M = Bs.T @ Bs + 2.0 * lam * np.eye(Bs.shape[1])
    return solve_psd(M, rhs.T).T


def best_eta(A2, delta, B, Bs) -> float:
    """``argmin_{eta in [0, 1]} ||A2 + eta delta - B Bs^T||^2`` (a 1-D quadratic; ``delta =
    A1 - A2``, so ``A2 + eta delta = eta A1 + (1 - eta) A2``), from
    ``<delta, B Bs^T> = <delta^T B, Bs>`` without forming ``B Bs^T``."""
    denom = float(np.einsum("ij,ij->", delta, delta))
    if denom == 0.0:
        return 0.5
    num = float(np.sum((delta.T @ B) * Bs)) - float(np.einsum("ij,ij->", delta, A2))
    return float(np.clip(num / denom, 0.0, 1.0))


class FSH(TwoStepKernelHasher):
    """FSH (Liu, Ji, Wu, Huang, Zhang; CVPR 2017): unsupervised fusion similarity hashing.

    Parameters
    ----------
    n_bits : int
        Code length r.
    n_anchor_pairs : int
        Anchor pairs m (50 in the released demo).
    n_neighbors : int
        k of the neighbourhoods of the diffusion graph (10 in the demo).
    lam : float
        Weight of the hash-function terms ``||B - X_m W_m||^2`` (300 in the demo).
    sigma : float
        Bandwidth of the anchor affinities (1 in the code, on unit-norm rows).
    xi : float
        Ridge of the hash functions (the code has none; needed for rank-deficient features).
    eta : None or float
        None learns the graph weight (the eta-step); a number in [0, 1] keeps it fixed.
    anchor_method : {"random", "kmeans"}
        Random training pairs (the demo) or k-means centres of the concatenated features.
    released_b_step : bool
        Use the released code's B-step right-hand side ``2 lam (X W_x + Y W_y)`` instead of
        the stationary point's ``lam (...)``.
    n_iter : int
        Iterations (100 in the demo).
    memory_limit : int or float
        Bytes the fused graph may take (``graph_bytes``); larger fits are refused (2 GiB).
    random_state, verbose : see :class:`cmhash.base.CrossModalHasher`.

    Attributes
    ----------
    codes_ : (n, r) int8           learned codes B (shared by both modalities)
    anchor_codes_ : (m, r) int8    Bs
    anchors_ : [(m, d_x), (m, d_y)]  anchor pairs (in the centred unit-row space)
    projections_ : list of (d_m, r)  hash functions W_m
    kernels_ : list of CenteredFeatures   training means of the unit-norm rows
    eta_ : float                    final graph weight
    objective_ : list of float      J after each iteration
    graph_bytes_ : int              bytes of the fused graph of this fit
    """

    name = "fsh"
    state_shapes = {**TwoStepKernelHasher.state_shapes, "anchor_codes_": ("m", "r"),
                    "anchors_[v]": ("m", "d{v}")}
    #: ``cmhash tune`` search space (cmhash.tune module doc for the syntax)
    SEARCH_SPACE = {"lam": ("log", 1.0, 1e4), "sigma": ("log", 0.1, 10.0),
                    "n_neighbors": ("int", 2, 20), "n_anchor_pairs": ("int", 20, 500)}
    PRESETS: dict = {}
    VARIANTS = {"FSH": {}, "FSH-code": {"released_b_step": True}}

    def __init__(self, n_bits: int = 32, *, n_anchor_pairs: int = 50, n_neighbors: int = 10,
                 lam: float = 300.0, sigma: float = 1.0, xi: float = 1e-3, eta=None,
                 anchor_method: str = "random", released_b_step: bool = False,
                 n_iter: int = 100, memory_limit=2 ** 31, random_state=None,
                 verbose: bool = False):
        super().__init__(n_bits, random_state=random_state, verbose=verbose)
        self.n_anchor_pairs = n_anchor_pairs
        self.n_neighbors = n_neighbors
        self.lam = lam
        self.sigma = sigma
        self.xi = xi
        self.eta = eta
        self.anchor_method = anchor_method
        self.released_b_step = released_b_step
        self.n_iter = n_iter
        self.memory_limit = memory_limit

    def _uses_anchors(self) -> bool:
        return False            # one anchor count shared by the modalities, checked below

    def _validate_params(self):
        check_int(self.n_anchor_pairs, "n_anchor_pairs")
        k = check_int(self.n_neighbors, "n_neighbors")
        if k > self.n_anchor_pairs:
            raise ValueError(f"n_neighbors={k} must be at most "
                             f"n_anchor_pairs={self.n_anchor_pairs}")
        check_positive(self.lam, "lam")
        check_positive(self.sigma, "sigma")
        check_positive(self.xi, "xi", allow_zero=True)
        check_positive(self.memory_limit, "memory_limit")
        if self.eta is not None:
            eta = check_positive(self.eta, "eta", allow_zero=True)
            if eta > 1:
                raise ValueError(f"eta must be None (learned) or in [0, 1], got {self.eta}")
        if not isinstance(self.released_b_step, (bool, np.bool_)):
            raise TypeError(f"released_b_step must be True or False, got "
                            f"{self.released_b_step!r}")
        check_choice(self.anchor_method, "anchor_method", {"random", "kmeans"})
        check_int(self.n_iter, "n_iter")

    def _check_memory(self, n: int) -> int:
        m = min(self.n_anchor_pairs, n)
        need = graph_bytes(n, m)
        if need > self.memory_limit:
            raise MemoryError(
                f"FSH's fused similarity graph is n x m dense ({GRAPH_MATRICES} float64 "
                f"matrices): n={n} samples x m={m} anchors need {need / 2 ** 30:.2f} GiB, above "
                f"memory_limit={self.memory_limit / 2 ** 30:.2f} GiB; lower n_anchor_pairs or "
                f"raise memory_limit (bytes)")
        return m

    def _features(self, X, m_index: int):
        return self.kernels_[m_index].transform(_unit_rows(X, copy=True))

    def _anchors(self, Xs, m: int, rng):
        if self.anchor_method == "random":
            idx = np.sort(rng.choice(Xs[0].shape[0], size=m, replace=False))
            return [np.asarray(X[idx], dtype=np.float64) for X in Xs]
        joint = np.hstack(Xs)                                   # litekmeans on [X; Y]
        C = _kmeans_anchors(joint, m, rng)
        return [C[:, :Xs[0].shape[1]], C[:, Xs[0].shape[1]:]]

    def _fit(self, views, labels, rng):
        n, r = views[0].shape[0], self.n_bits
        m = self._check_memory(n)
        self._check_fewer_bits_than_samples(n)
        self.graph_bytes_ = graph_bytes(n, m)
        units = [_unit_rows(X, copy=True) for X in views]
        self.kernels_ = [CenteredFeatures().fit(U) for U in units]
        Xs = [np.asarray(f.transform(U), dtype=np.float64) for f, U in zip(self.kernels_, units)]
        anchors = self._anchors(Xs, m, rng)                     # centred like the samples
        delta, A2 = fusion_graphs(Xs, anchors, self.n_neighbors, self.sigma)
        delta -= A2                                 # A1 - A2, in place: D = A2 + eta delta
        eta = 0.5 if self.eta is None else float(self.eta)

        # the released initialisation (opt.cca = 0): random W, real-valued B and Bs
        Ws = [rng.standard_normal((X.shape[1], r)) for X in Xs]
        Bs = anchors[1] @ Ws[1]
        grams = [X.T @ X for X in Xs]
        # every product below is n x (d or m) x r: latency-bound at Wiki size (_threads)
        work = float(n) * (sum(X.shape[1] for X in Xs) + m) * r
        with single_threaded_blas_if_small(work):
            B, Bs, Ws, eta = self._iterate(A2, delta, Xs, Ws, Bs, grams, eta)
        self.codes_ = B.astype(np.int8)
        self.anchor_codes_ = Bs.astype(np.int8)
        self.anchors_ = anchors
        self.projections_ = Ws
        self.eta_ = eta
        self.n_iter_ = self.n_iter

    def _iterate(self, A2, delta, Xs, Ws, Bs, grams, eta):
        """The alternating steps (module doc); records ``objective_`` and ``eta_trace_``.
        ``D = A2 + eta delta`` is rebuilt in one preallocated n x m buffer."""
        lam, xi = float(self.lam), float(self.xi)
        data_weight = 2.0 if self.released_b_step else 1.0
        self.objective_, self.eta_trace_ = [], []
        D = np.empty_like(A2)
        for _ in progress(range(self.n_iter), desc="FSH", verbose=self.verbose):
            np.multiply(delta, eta, out=D)
            D += A2
            B = sign(relaxed_b(D, Bs, [X @ W for X, W in zip(Xs, Ws)], lam,
                               data_weight)).astype(np.float64)
            Bs = sign(D.T @ B).astype(np.float64)
            Ws = [ridge_regression(X, B, xi, gram_matrix=G) for X, G in zip(Xs, grams)]
            if self.eta is None:
                eta = best_eta(A2, delta, B, Bs)
                np.multiply(delta, eta, out=D)
                D += A2
            self.eta_trace_.append(eta)
            self.objective_.append(fsh_objective(D, B, Bs, Xs, Ws, lam, xi))
        return B, Bs, Ws, eta

    def _encode_and_flag(self, X, m, task):
        # unit-norm rows before the centring (linear features: no far-from-training flag)
        return sign(self._features(X, m) @ self.projections_[m].astype(np.float32)), None
