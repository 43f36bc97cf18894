"""Discrete (binary) block solvers shared by the baselines (DCH, and any SDH-style method).

* :func:`dcc` -- discrete cyclic coordinate descent (Shen et al., SDH, CVPR 2015, Sec. 3.3;
  DCH's B-step): ``min_B ||B W||^2 - 2 tr(B^T Q)`` over ``B in {-1, +1}^{n x r}``, one column
  (bit) at a time, each column update the exact minimiser given the others.

Kept apart from :mod:`cmhash.solvers` (the continuous closed-form solvers).
"""
from __future__ import annotations

import numpy as np



def dcc_objective(B, Q, W) -> float:
    """``||B W||^2 - 2 tr(B^T Q)``: the B-dependent part of ``||L - B W||^2 + nu ||B - F||^2``
    for ``Q = L W^T + nu F`` (``||B||^2 = n r`` is constant on the binary set)."""
    B = np.asarray(B, dtype=np.float64)
    return float(np.sum((B @ W) ** 2) - 2.0 * np.sum(B * Q))


def dcc(B, Q, W, n_sweeps: int = 10) -> tuple[np.ndarray, int]:
    """Discrete cyclic coordinate descent on ``min ||B W||^2 - 2 tr(B^T Q)``, ``B`` binary.

    ``B`` (n, r) is the start (+-1), ``Q`` (n, r), ``W`` (r, c). With ``b_k`` the k-th column
    of ``B`` and ``w_k`` the k-th row of ``W``, the objective restricted to ``b_k`` is
    ``n ||w_k||^2 + 2 b_k^T (B_{-k} W_{-k} w_k^T - q_k) + const``, minimised by
    ``b_k = sign(q_k - B_{-k} W_{-k} w_k^T) = sign(q_k - B P_k + b_k P_kk)`` with
    ``P = W W^T`` (0 maps to -1: both values are optimal there). Each column update therefore
    never increases the objective. Sweeps over the r columns repeat until a sweep changes no
    bit (a fixed point: further sweeps would not change anything either) or ``n_sweeps``
    sweeps have run. ``B P`` is formed once (O(n r^2)) and then updated for the flipped bits
    only, so a sweep costs O(n r + flips x r).

    Returns ``(B, sweeps)``: the new codes as float64 +-1 and the number of sweeps run.
    """
    B = np.array(B, dtype=np.float64)
    Q = np.asarray(Q, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    if B.shape != Q.shape or W.shape[0] != B.shape[1]:
        raise ValueError(f"dcc: B {B.shape}, Q {Q.shape} and W {W.shape} do not fit "
                         f"(B and Q (n, r), W (r, c))")
    P = W @ W.T
    # work on transposes (r x n, C order) so that each bit's column is contiguous
    Bt, Qt = np.ascontiguousarray(B.T), np.ascontiguousarray(Q.T)
    BPt = P @ Bt            # kept equal to (B P)^T: entries of flipped bits updated in place
    sweeps = 0
    for sweeps in range(1, n_sweeps + 1):
        changed = False
        for k in range(Bt.shape[0]):
            col = Bt[k]
            new = np.where(Qt[k] - BPt[k] + col * P[k, k] > 0, 1.0, -1.0)   # sign, 0 -> -1
            rows = np.flatnonzero(new != col)
            if rows.size:
                changed = True
                BPt[:, rows] += np.outer(P[k], new[rows] - col[rows])
                col[rows] = new[rows]
        if not changed:
            break
    B = np.ascontiguousarray(Bt.T)
    return B, sweeps
