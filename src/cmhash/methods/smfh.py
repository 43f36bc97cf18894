"""SMFH: supervised matrix factorisation hashing (Tang, Wang, Shao, IEEE TIP 2016).

Algorithm (row-sample convention; derivation and deviations in docs/methods/smfh.md)::

    X_m = training features of modality m, centred (no kernel)
    G   = Laplacian of the k-NN graph of X_1 + that of X_2 + the label graph D - Y Y^T
          (sparse k-NN part; the label part applied through Y, never n x n)
    V, U_m, P_m = uniform random in [0, 1)
    repeat n_iter times:
        U_m = (V^T V + (lambda / a_m) I)^{-1} V^T X_m                        U-step
        V   = the solution of  2 gamma G V + V A = N   (a Sylvester equation)  V-step
              A = 2 (sum_m a_m U_m U_m^T + (2 beta + lambda) I),
              N = 2 (sum_m a_m X_m U_m^T + beta sum_m X_m P_m)
        P_m = (X_m^T X_m + (lambda / beta) I)^{-1} X_m^T V                     P-step
    B = sign(V);  encode: sign(X_m(x) P_m)

Every step exactly minimises, over its block, the objective recorded in ``objective_``::

    sum_m a_m ||X_m - V U_m||^2 + beta sum_m ||V - X_m P_m||^2 + gamma tr(V^T G V)
      + lambda (||U_1||^2 + ||U_2||^2 + ||V||^2 + ||P_1||^2 + ||P_2||^2),
    a_image = image_weight, a_text = 1 - image_weight

so it never increases. The V-step rotates V into the eigenbasis of the r x r ``A``, which
splits the Sylvester equation into r sparse symmetric positive definite n x n systems
``(2 gamma G + s_j I) v_j = n_j``, solved by conjugate gradients with matrix-free products
(k-NN part sparse, label part through Y): O(n (k + c) r) per CG step, no n x n matrix. The
k-NN graphs take O(n^2 d) time to build (exact neighbours), O(n k) memory.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, cg
from scipy.spatial import cKDTree

from .._validation import check_int, check_modality_weight, check_positive
from ..base import TwoStepKernelHasher
from ..progress import progress
from ..solvers import gram, sign, solve_psd

__all__ = ["SMFH", "knn_indices", "knn_adjacency", "GraphLaplacian", "smfh_objective"]


def knn_indices(X, k: int) -> np.ndarray:
    """(n, k) indices of each row's k nearest other rows of ``X`` (Euclidean, exact, by
    scipy's k-d tree; the row itself is excluded also when a duplicate ties with it)."""
    X = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)
    n = X.shape[0]
    _, idx = cKDTree(X).query(X, k=k + 1)
    keep = idx != np.arange(n)[:, None]
    keep[keep.all(axis=1), -1] = False      # self not returned (a duplicate did): drop the last
    return idx[keep].reshape(n, k)


def knn_adjacency(X, k: int) -> sp.csr_matrix:
    """Symmetric 0/1 adjacency of the k-nearest-neighbour graph (i ~ j when either is among
    the other's k nearest, :func:`knn_indices`)."""
    n = X.shape[0]
    idx = knn_indices(X, min(k, n - 1))
    A = sp.csr_matrix((np.ones(idx.size), (np.repeat(np.arange(n), idx.shape[1]), idx.ravel())),
                      shape=(n, n))
    A = A.maximum(A.T)
    A.data[:] = 1.0
    return A


class GraphLaplacian:
    """``G = (D_a - A) + (diag(Y Y^T 1) - Y Y^T)``: a sparse graph Laplacian plus the
    Laplacian of the label graph ``W = Y Y^T``, applied without forming ``Y Y^T``."""

    def __init__(self, adjacency, Y):
        A = sp.csr_matrix(adjacency, dtype=np.float64)
        self.sparse = sp.diags(np.asarray(A.sum(axis=1)).ravel()) - A
        self.Y = np.asarray(Y, dtype=np.float64)
        self.label_degree = self.Y @ self.Y.sum(axis=0)          # (Y Y^T 1)
        self.shape = A.shape

    def matmul(self, V) -> np.ndarray:
        V = np.asarray(V, dtype=np.float64)
        D = self.label_degree if V.ndim == 1 else self.label_degree[:, None]
        return self.sparse @ V + D * V - self.Y @ (self.Y.T @ V)

    def quadratic(self, V) -> float:
        """``tr(V^T G V)``."""
        return float(np.sum(V * self.matmul(V)))


def smfh_objective(V, Us, Ps, graph, *, weights, beta, gamma, lam, grams, Vt_Xs) -> float:
    """The SMFH objective (module docstring), with the factorisation and projection terms
    through ``grams[m] = X_m^T X_m`` and ``Vt_Xs[m] = V^T X_m`` (O(d^2 r) each)."""
    V = np.asarray(V, dtype=np.float64)
    VtV = V.T @ V
    v_sq = float(np.trace(VtV))
    total = gamma * graph.quadratic(V) + lam * v_sq
    for a, Gm, VX, U, P in zip(weights, grams, Vt_Xs, Us, Ps):
        total += a * (float(np.trace(Gm)) - 2.0 * float(np.sum(VX * U))
                      + float(np.sum(VtV * (U @ U.T))))
        total += beta * (v_sq - 2.0 * float(np.sum(VX * P.T)) + float(np.sum(P * (Gm @ P))))
        total += lam * (float(np.sum(U * U)) + float(np.sum(P * P)))
    return total


def solve_graph_sylvester(graph, gamma: float, A, N, *, rtol: float = 1e-10, V0=None):
    """``V`` (n, r) with ``2 gamma G V + V A = N`` for the symmetric PSD ``G`` and the
    symmetric positive definite r x r ``A``. With ``A = Q diag(s) Q^T`` and ``W = V Q``,
    column j solves ``(2 gamma G + s_j I) w_j = (N Q)_j``: symmetric positive definite,
    conjugate gradients (warm start ``V0``), relative residual ``rtol``."""
    s, Q = np.linalg.eigh(A)
    NQ = N @ Q
    W0 = None if V0 is None else V0 @ Q
    n = N.shape[0]
    W = np.empty_like(NQ)
    for j in range(NQ.shape[1]):
        op = LinearOperator((n, n), dtype=np.float64,
                            matvec=lambda x, sj=s[j]: 2.0 * gamma * graph.matmul(x) + sj * x)
        w, info = cg(op, NQ[:, j], x0=None if W0 is None else W0[:, j], rtol=rtol,
                     atol=0.0, maxiter=10 * n)
        if info != 0:        # pragma: no cover - SPD systems converge; a guard, not a path
            raise RuntimeError(f"SMFH V-step: conjugate gradients did not converge (info={info})")
        W[:, j] = w
    return W @ Q.T


class SMFH(TwoStepKernelHasher):
    """SMFH (Tang, Wang, Shao; IEEE TIP 2016), as the authors' released code.

    Parameters
    ----------
    n_bits : int
        Code length r.
    image_weight : float
        alpha: weight of the image factorisation; the text one gets 1 - alpha.
    beta : float
        Weight of the projections ``||V - X_m P_m||^2``.
    gamma : float
        Weight of the graph term ``tr(V^T G V)``.
    lam : float
        Ridge lambda on U_m, V and P_m.
    n_neighbors : int
        k of the k-NN graphs of each modality.
    n_iter : int
        Iterations.
    random_state, verbose : see :class:`cmhash.base.CrossModalHasher`.

    Attributes
    ----------
    codes_ : (n, r) int8     sign(V)
    latent_ : (n, r)         V
    factor_loadings_ : list of (r, d_m)    U_m
    projections_ : list of (d_m, r)        hash functions P_m
    kernels_ : list of CenteredFeatures
    objective_ : list of float   objective after each iteration (non-increasing)
    """

    name = "smfh"
    SEARCH_SPACE = {"image_weight": ("float", 0.1, 0.9), "beta": ("log", 1.0, 1e4),
                    "gamma": ("log", 0.01, 100.0), "lam": ("log", 1e-4, 1.0),
                    "n_neighbors": ("int", 3, 20)}
    state_shapes = {**TwoStepKernelHasher.state_shapes, "latent_": ("n", "r"),
                    "factor_loadings_[v]": ("r", "q{v}")}
    PRESETS: dict = {}
    VARIANTS: dict = {}

    def __init__(self, n_bits: int = 32, *, image_weight: float = 0.5, beta: float = 100.0,
                 gamma: float = 1.0, lam: float = 0.01, n_neighbors: int = 5, n_iter: int = 10,
                 random_state=None, verbose: bool = False):
        super().__init__(n_bits, random_state=random_state, verbose=verbose)
        self.image_weight = image_weight
        self.beta = beta
        self.gamma = gamma
        self.lam = lam
        self.n_neighbors = n_neighbors
        self.n_iter = n_iter

    def _uses_anchors(self) -> bool:
        return False

    def _validate_params(self):
        check_modality_weight(self.image_weight, "image_weight", open_interval=True)
        check_positive(self.beta, "beta")
        check_positive(self.gamma, "gamma", allow_zero=True)
        check_positive(self.lam, "lam")
        check_int(self.n_neighbors, "n_neighbors")
        check_int(self.n_iter, "n_iter")

    def _fit(self, views, labels, rng):
        n, r = views[0].shape[0], self.n_bits
        Xs = self._kernelize(views, rng, use_kernel=False)       # centred raw features
        adjacency = knn_adjacency(Xs[0], self.n_neighbors) + knn_adjacency(Xs[1], self.n_neighbors)
        graph = GraphLaplacian(adjacency, labels)
        weights = (float(self.image_weight), 1.0 - float(self.image_weight))
        beta, gamma, lam = float(self.beta), float(self.gamma), float(self.lam)
        hp = dict(weights=weights, beta=beta, gamma=gamma, lam=lam)
        grams = [gram(X) for X in Xs]
        P_systems = [Gm + (lam / beta) * np.eye(Gm.shape[0]) for Gm in grams]
        eye = np.eye(r)

        V = rng.random((n, r))                      # uniform starts, as the released code
        Ps = [rng.random((X.shape[1], r)) for X in Xs]
        Vt_Xs = [gram(V, X) for X in Xs]
        self.objective_ = []
        for _ in progress(range(self.n_iter), desc="SMFH", verbose=self.verbose):
            VtV = V.T @ V
            Us = [solve_psd(VtV + (lam / a) * eye, VX) for a, VX in zip(weights, Vt_Xs)]
            A = 2.0 * ((2.0 * beta + lam) * eye + sum(a * (U @ U.T) for a, U in zip(weights, Us)))
            N = 2.0 * sum(np.asarray(X @ (a * U.T + beta * P).astype(X.dtype), dtype=np.float64)
                          for a, X, U, P in zip(weights, Xs, Us, Ps))
            V = solve_graph_sylvester(graph, gamma, A, N, V0=V)                    # V-step
            Vt_Xs = [gram(V, X) for X in Xs]
            Ps = [solve_psd(S, VX.T) for S, VX in zip(P_systems, Vt_Xs)]          # P-step
            self.objective_.append(smfh_objective(V, Us, Ps, graph, grams=grams,
                                                  Vt_Xs=Vt_Xs, **hp))
        self.latent_ = V
        self.codes_ = sign(V)
        self.factor_loadings_ = Us
        self.projections_ = Ps
        self.n_iter_ = self.n_iter
