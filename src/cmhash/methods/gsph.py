"""GSPH: generalized semantic preserving hashing (Mandal, Chaudhury, Biswas, CVPR 2017).

Two steps (row-sample convention; derivation and deviations in docs/methods/gsph.md)::

    S = Ya Yb^T     cosine similarity of the label vectors (0/1 "same class" for single labels)
                    of the image samples (Ya) and the text samples (Yb): the same samples when
                    paired, two unrelated labelled sets when unpaired (fit_unpaired)
    step 1:  min_{A, B in {-1,+1}^{n x r}}  J(A, B) = ||S - (1/r) A B^T||_F^2
             A = image codes, B = text codes, from random signs; alternately
               A <- DCC sweeps on J(., B)     (element-wise exact updates, the paper's solver)
               B <- DCC sweeps on J(A, .)
             until J stops decreasing (relative change <= tol) or n_iter rounds
    step 2:  per modality and bit, kernel logistic regression (cmhash.logistic) of the
             modality's codes (image -> A, text -> B) on an RBF kernel of n_anchors samples

``S`` is never formed: ``S X = Ya (Yb^T X)`` and ``||S||^2 = <Ya^T Ya, Yb^T Yb>``, so step 1 costs
O(n r (c + r)) per sweep and O(n (r + c)) memory. The authors' later code (TIP version) replaces
the element-wise updates by projected gradient steps on the box [-1, 1]^{n x r}
(``solver="projected_gradient"``).
"""
from __future__ import annotations

import numpy as np

from .._validation import check_choice, check_int, check_positive
from ..base import TwoStepKernelHasher
from ..labels import normalize_rows
from ..logistic import fit_klr_hash_functions
from ..progress import progress
from ..solvers import sign
from ..solvers_discrete import dcc

__all__ = ["GSPH", "gsph_objective"]


def gsph_objective(A, B, Ya, Yb=None) -> float:
    """``||Ya Yb^T - (1/r) A B^T||_F^2`` (``Yb = Ya`` when paired) in O(n r (r + c)) without
    the n_a x n_b matrices: ``<Ya^T Ya, Yb^T Yb> - (2/r) <Ya^T A, Yb^T B> + (1/r^2) <A^T A,
    B^T B>``; ``Ya``, ``Yb`` the row-normalised labels of A's and B's samples."""
    Yb = Ya if Yb is None else Yb
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    r = A.shape[1]
    return float(np.sum((Ya.T @ Ya) * (Yb.T @ Yb)) - 2.0 / r * np.sum((Ya.T @ A) * (Yb.T @ B))
                 + np.sum((A.T @ A) * (B.T @ B)) / (r * r))


def _dcc_step(A, B, Ya, Yb, n_sweeps):
    """Minimise J(A, B) over A (B fixed) by DCC: J = ||A W||^2 - 2 tr(A^T Q) + const with
    ``W = B^T / r`` (so ``W W^T = B^T B / r^2``) and ``Q = S B / r = Ya (Yb^T B) / r``."""
    r = B.shape[1]
    return dcc(A, Ya @ (Yb.T @ B) / r, B.T / r, n_sweeps=n_sweeps)[0]


def _projected_gradient_step(A, B, Ya, Yb):
    """One step of the released code's solver on ``||r S - A B^T||^2 = r^2 J`` over A in the
    box: gradient ``2 A B^T B - 2 r S B``, step ``1 / (2 lambda_max(B^T B))``, clip to [-1, 1]."""
    r = B.shape[1]
    BtB = B.T @ B
    step = 1.0 / (2.0 * np.linalg.eigvalsh(BtB)[-1] + np.finfo(np.float64).eps)
    grad = 2.0 * A @ BtB - 2.0 * r * (Ya @ (Yb.T @ B))
    return np.clip(A - step * grad, -1.0, 1.0)


class GSPH(TwoStepKernelHasher):
    """GSPH (Mandal, Chaudhury, Biswas, CVPR 2017): paired or unpaired two-modality data.

    Parameters
    ----------
    n_bits : int
        Code length r.
    solver : {"coordinate", "projected_gradient"}
        Step 1 solver: the paper's exact element-wise (bit-wise DCC) updates, or the released
        (TIP) code's projected gradient on the box with a final sign.
    n_iter : int
        Alternating rounds of step 1 (the released code: at most 100).
    tol : float
        Stop when the relative decrease of J in a round is at most ``tol`` (1e-6 as the code).
    n_sweeps : int
        DCC sweeps per block update (``solver="coordinate"``); each stops early at a fixed
        point.
    C : float
        Weight of the RKHS penalty of the kernel logistic regressions (0.01 as SePH).
    n_anchors : int or (int, int)
        Kernel samples per modality (500).
    anchor_method : {"random", "kmeans"}
        Random training samples or k-means centres as kernel samples.
    klr_max_iter : int
        L-BFGS iterations of the logistic regressions (minFunc's default 500).
    random_state, verbose : see :class:`cmhash.base.CrossModalHasher`.

    Attributes
    ----------
    codes_ : [A, B], (n, r) int8 each   learned image and text codes
    projections_ : list of (q_v, r)       KLR weights per modality
    kernels_ : list of RBFAnchorFeatures  uncentred RBF maps (cmhash.logistic)
    objective_ : list of float            J after each round (of the signed codes)
    klr_info_ : list of dict              convergence of each modality's regressions
    """

    name = "gsph"
    state_shapes = {**TwoStepKernelHasher.state_shapes}
    supports_unpaired = True
    #: ``cmhash tune`` search space (cmhash.tune module doc for the syntax)
    SEARCH_SPACE = {"C": ("log", 1e-4, 1.0), "n_anchors": [("int", 100, 1000),
                                                           ("int", 100, 1000)]}
    PRESETS: dict = {}
    VARIANTS = {"GSPH": {}, "GSPH-code": {"solver": "projected_gradient"}}

    def __init__(self, n_bits: int = 32, *, solver: str = "coordinate", n_iter: int = 100,
                 tol: float = 1e-6, n_sweeps: int = 10, C: float = 0.01, n_anchors=500,
                 anchor_method: str = "random", klr_max_iter: int = 500, random_state=None,
                 verbose: bool = False):
        super().__init__(n_bits, random_state=random_state, verbose=verbose)
        self.solver = solver
        self.n_iter = n_iter
        self.tol = tol
        self.n_sweeps = n_sweeps
        self.C = C
        self.n_anchors = n_anchors
        self.anchor_method = anchor_method
        self.klr_max_iter = klr_max_iter

    def _validate_params(self):
        check_choice(self.solver, "solver", {"coordinate", "projected_gradient"})
        check_choice(self.anchor_method, "anchor_method", {"random", "kmeans"})
        check_int(self.n_iter, "n_iter")
        check_int(self.n_sweeps, "n_sweeps")
        check_int(self.klr_max_iter, "klr_max_iter")
        check_positive(self.tol, "tol", allow_zero=True)
        check_positive(self.C, "C", allow_zero=True)

    def _fit(self, views, labels, rng):
        self._fit_unpaired(views, [labels, labels], rng)

    def _fit_unpaired(self, views, labels, rng):
        """Step 1 on S = Ya Yb^T between the image and the text samples (the same samples
        when paired; any two labelled sets when unpaired, the paper's N-label setting)."""
        r = self.n_bits
        Ya, Yb = (normalize_rows(L) for L in labels)
        A = sign(rng.standard_normal((Ya.shape[0], r))).astype(np.float64)
        B = sign(rng.standard_normal((Yb.shape[0], r))).astype(np.float64)
        self.objective_ = []
        previous = gsph_objective(A, B, Ya, Yb)
        for _ in progress(range(self.n_iter), desc="GSPH", verbose=self.verbose):
            if self.solver == "coordinate":
                A = _dcc_step(A, B, Ya, Yb, self.n_sweeps)
                B = _dcc_step(B, A, Yb, Ya, self.n_sweeps)
                current = gsph_objective(A, B, Ya, Yb)
            else:
                A = _projected_gradient_step(A, B, Ya, Yb)
                B = _projected_gradient_step(B, A, Yb, Ya)
                current = gsph_objective(sign(A), sign(B), Ya, Yb)
            self.objective_.append(current)
            # the released code tests its stopping rule only after its fifth round (the
            # signed objective of the projected gradient need not decrease monotonically)
            warm = self.solver == "coordinate" or len(self.objective_) >= 5
            if warm and previous - current <= self.tol * abs(current):
                break
            previous = current
        self.n_iter_ = len(self.objective_)
        self.codes_ = [sign(A), sign(B)]
        self.kernels_, self.projections_, self.klr_info_ = fit_klr_hash_functions(
            views, self.codes_, [self._anchors_for(v, 2) for v in range(2)],
            self.anchor_method, self.C, rng, max_iter=self.klr_max_iter)
