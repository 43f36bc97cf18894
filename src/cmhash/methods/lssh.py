"""LSSH: latent semantic sparse hashing (Zhou, Ding, Guo; ACM SIGIR 2014).

Unsupervised: the labels given to ``fit`` are validated like every method's but not used.
Algorithm (row-sample convention; derivation and deviations in docs/methods/lssh.md)::

    X = image features, centred, projected on their n_pca leading principal axes, rows scaled
        to unit norm;   T = text features, centred, rows scaled to unit norm
    D (k, p) dictionary, U (r, d_t) text basis, R (k, r) map: Gaussian, rows scaled to norm 1
    S = lasso codes of X against D
    repeat n_iter (20) times:
        A = (mu T U^T + gamma S R)(mu U U^T + gamma I)^{-1}                  A-step (text latent)
        U = argmin ||T - A U||^2, ||U_i|| <= 1                               U-step
        S = argmin ||X - S D||^2 + gamma ||A - S R||^2 + lam ||S||_1         S-step (lasso)
        D = argmin ||X - S D||^2, ||D_j|| <= 1                                D-step
        R = argmin ||A - S R||^2, ||R_j|| <= 1                                R-step
    training codes: sign of the A-step with S = the lasso codes of the images alone
    encode image x: sign(s(x) R), s(x) = argmin ||x - s D||^2 + lam ||s||_1
    encode text t:  sign(mu t U^T (mu U U^T + gamma I)^{-1})

Every step exactly minimises, over its block, the objective recorded in ``objective_``::

    ||X - S D||^2 + lam ||S||_1 + mu ||T - A U||^2 + gamma ||A - S R||^2
        s.t. every row of D, U and R in the unit ball

so it never increases. The constrained blocks are solved through their Lagrange duals
(:func:`cmhash.sparse_coding.unit_ball_least_squares`), the lasso by scikit-learn
(:func:`cmhash.sparse_coding.sparse_codes`). Cost per iteration: the lasso of n rows against k
atoms, O(n k (p + r + d_t)) products and k x k duals; memory O(n (k + d_t)); nothing is n x n.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .._validation import check_int, check_positive
from ..base import CrossModalHasher
from ..progress import progress
from ..solvers import gram, sign, solve_psd
from ..sparse_coding import lasso_objective, sparse_codes, unit_ball_least_squares

__all__ = ["LSSH", "lssh_objective"]


def _unit_rows(X) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float64."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def _rows_in_unit_ball(M) -> np.ndarray:
    norms = np.linalg.norm(M, axis=1, keepdims=True)
    return M / np.maximum(norms, 1.0)


def lssh_objective(X, T, S, A, D, U, R, *, lam, mu, gamma) -> float:
    """The LSSH objective (module docstring)."""
    return (lasso_objective(X, S, D, lam) + mu * float(np.sum((T - A @ U) ** 2))
            + gamma * float(np.sum((A - S @ R) ** 2)))


def text_latent(T, S, U, R, *, mu, gamma) -> np.ndarray:
    """A-step: ``argmin_A mu ||T - A U||^2 + gamma ||A - S R||^2``
    ``= (mu T U^T + gamma S R)(mu U U^T + gamma I)^{-1}`` (``S R`` left out when S is None:
    the text-only encoding)."""
    rhs = mu * (T @ U.T)
    if S is not None:
        rhs += gamma * (S @ R)
    return solve_psd(mu * (U @ U.T) + gamma * np.eye(U.shape[0]), rhs.T).T


class LSSH(CrossModalHasher):
    """LSSH (Zhou, Ding, Guo; SIGIR 2014), unsupervised: image sparse coding + text MF.

    Sparse coding of the images, matrix factorisation of the texts, a linear map between the
    two latent spaces.

    Parameters
    ----------
    n_bits : int
        Code length r (the dimension of the text latent space).
    n_atoms : int
        Dictionary size k of the image sparse coding (512, the released code).
    n_pca : int or None
        Image features are projected on their ``n_pca`` leading principal axes first (64, the
        released code; at most the feature count); None keeps all.
    lam : float
        Weight of ``||S||_1`` (the paper's lambda; see docs/methods/lssh.md for the released
        code's per-sample relative form).
    mu : float
        Weight of the text factorisation ``||T - A U||^2`` (0.5, the released code).
    gamma : float
        Weight of the latent map ``||A - S R||^2`` (1, the released code's ``lambda``).
    n_iter : int
        Outer iterations (20).
    lasso_tol : float
        Relative duality-gap tolerance of each lasso.
    random_state, verbose : see :class:`cmhash.base.CrossModalHasher`.

    Attributes
    ----------
    codes_ : (n, r) int8       training codes
    image_mean_, image_components_ : (d_x,), (p, d_x)   centring and principal axes
    text_mean_ : (d_t,)
    dictionary_ : (k, p)       D
    text_basis_ : (r, d_t)     U
    latent_map_ : (k, r)       R
    objective_ : list of float   objective after each iteration (non-increasing)
    sparsity_ : float          fraction of zero entries of the learned S
    """

    name = "lssh"
    state_shapes = {"image_mean_": ("d0",), "image_components_": ("p", "d0"),
                    "text_mean_": ("d1",), "dictionary_": ("k", "p"),
                    "text_basis_": ("r", "d1"), "latent_map_": ("k", "r")}
    SEARCH_SPACE = {"lam": ("log", 0.05, 2.0), "mu": ("log", 0.05, 5.0),
                    "gamma": ("log", 0.1, 10.0), "n_atoms": ("cat", [128, 256, 512])}
    PRESETS: dict = {}
    VARIANTS: dict = {}

    def __init__(self, n_bits: int = 32, *, n_atoms: int = 512, n_pca: int | None = 64,
                 lam: float = 0.45, mu: float = 0.5, gamma: float = 1.0, n_iter: int = 20,
                 lasso_tol: float = 1e-6, random_state=None, verbose: bool = False):
        super().__init__(n_bits, random_state=random_state, verbose=verbose)
        self.n_atoms = n_atoms
        self.n_pca = n_pca
        self.lam = lam
        self.mu = mu
        self.gamma = gamma
        self.n_iter = n_iter
        self.lasso_tol = lasso_tol

    def _validate_params(self):
        check_int(self.n_atoms, "n_atoms")
        if self.n_pca is not None:
            check_int(self.n_pca, "n_pca")
        check_positive(self.lam, "lam")
        check_positive(self.mu, "mu")
        check_positive(self.gamma, "gamma")
        check_int(self.n_iter, "n_iter")
        check_positive(self.lasso_tol, "lasso_tol")

    # ------------------------------------------------------------ features
    def _image_features(self, X) -> np.ndarray:
        X = X.toarray() if sp.issparse(X) else np.asarray(X)
        return _unit_rows((X - self.image_mean_) @ self.image_components_.T)

    def _text_features(self, T) -> np.ndarray:
        T = T.toarray() if sp.issparse(T) else np.asarray(T)
        return _unit_rows(T - self.text_mean_)

    def _fit_preprocessing(self, X, T) -> None:
        X = X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)
        T = T.toarray() if sp.issparse(T) else np.asarray(T, dtype=np.float64)
        self.image_mean_ = X.mean(axis=0)
        self.text_mean_ = T.mean(axis=0)
        d = X.shape[1]
        p = d if self.n_pca is None else min(int(self.n_pca), d)
        evals, evecs = np.linalg.eigh(gram(X - self.image_mean_))     # ascending
        self.image_components_ = np.ascontiguousarray(evecs[:, ::-1][:, :p].T)

    def _image_codes(self, X) -> np.ndarray:
        """Lasso codes of preprocessed images against the dictionary alone (encoding)."""
        return sparse_codes(X, self.dictionary_, float(self.lam), tol=float(self.lasso_tol))

    # ----------------------------------------------------------------- fit
    def _fit(self, views, labels, rng):
        r, k = self.n_bits, int(self.n_atoms)
        lam, mu, gamma = float(self.lam), float(self.mu), float(self.gamma)
        tol = float(self.lasso_tol)
        self._fit_preprocessing(*views)
        X = self._image_features(views[0])
        T = self._text_features(views[1])
        p = X.shape[1]
        D = _rows_in_unit_ball(rng.standard_normal((k, p)))
        U = _rows_in_unit_ball(rng.standard_normal((r, T.shape[1])))
        R = _rows_in_unit_ball(rng.standard_normal((k, r)))
        self.dictionary_ = D
        S = self._image_codes(X)
        root = np.sqrt(gamma)
        self.objective_ = []
        mult_u = mult_d = mult_r = None            # the duals' multipliers, warm starts
        for _ in progress(range(self.n_iter), desc="LSSH", verbose=self.verbose):
            A = text_latent(T, S, U, R, mu=mu, gamma=gamma)                    # A-step
            U, mult_u = unit_ball_least_squares(A, T, U, multipliers=mult_u)   # U-step
            S = sparse_codes(np.hstack([X, root * A]), np.hstack([D, root * R]), lam,
                             init=S, tol=tol)                                    # S-step
            D, mult_d = unit_ball_least_squares(S, X, D, multipliers=mult_d)   # D-step
            R, mult_r = unit_ball_least_squares(S, A, R, multipliers=mult_r)   # R-step
            self.objective_.append(lssh_objective(X, T, S, A, D, U, R, lam=lam, mu=mu,
                                                  gamma=gamma))
        self.dictionary_, self.text_basis_, self.latent_map_ = D, U, R
        self.sparsity_ = float(np.mean(S == 0))
        # the released code's training codes: the A-step with the images' own lasso codes
        S_images = self._image_codes(X)
        self.codes_ = sign(text_latent(T, S_images, U, R, mu=mu, gamma=gamma))
        self.n_iter_ = self.n_iter

    # -------------------------------------------------------------- encode
    def _encode(self, X, m, task):
        if m == 0:
            return sign(self._image_codes(self._image_features(X)) @ self.latent_map_)
        return sign(text_latent(self._text_features(X), None, self.text_basis_, None,
                                mu=float(self.mu), gamma=float(self.gamma)))
