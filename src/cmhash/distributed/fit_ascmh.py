"""ASCMH (cmhash.methods.ascmh) fitted on Dask from the shared pieces of :mod:`.blocks`.

The in-memory Algorithm 1 touches the n rows through the sums ``V^T V``, ``G^T V``, ``L^T B``,
``V^T phi_t`` (after each V / B update), the constants ``L^T L``, ``L^T G``, ``||G^T G||^2``,
``||phi_t||^2``, and the row maps ``Z = v_step_target(G, ...)`` and ``B = sign(L M)``; the P-,
M- and R-steps and the objective are r x r / c x r algebra. Here the sums are tree
reductions, the maps run per row block with the in-memory functions themselves
(:func:`cmhash.methods.ascmh.v_step_target`), and the small steps are the in-memory ones on
the client (docs/scale.md).
"""
from __future__ import annotations

import time

import numpy as np

from ..labels import normalize_rows
from ..solvers import cross_product, procrustes, sign
from .blocks import (block_reduce, compute, draw_blocks, hash_functions, iterations,
                     latent_step, log_iteration, map_rows, prepare, reduce_rows)

__all__ = ["fit_ascmh"]


def fit_ascmh(hasher, image, text, labels, *, client=None, block_rows=None,
              persist_features=None):
    """Fit a :class:`cmhash.methods.ascmh.ASCMH` on Dask; as
    :func:`cmhash.distributed.fit.fit_batch` (``codes_`` and ``latent_`` persisted
    row-chunked dask arrays, everything else numpy). Random anchors only (k-means anchors are
    refused by name)."""
    from ..methods import ascmh as A
    t0 = time.perf_counter()
    fi = prepare(hasher, [image, text], labels, client=client, block_rows=block_rows,
                 persist_features=persist_features,
                 check_n=lambda ns: hasher._check_fewer_bits_than_samples(ns[0]))
    client, chunks, rng, phis, L = fi.client, fi.chunks, fi.rng, fi.phis, fi.labels[0]
    n, r = L.shape[0], hasher.n_bits
    G = client.persist(L.map_blocks(normalize_rows, dtype=np.float64))
    LtL, LtG, GtL, GtG, phi_sq = compute(
        block_reduce(lambda l: l.T @ l, L), block_reduce(lambda l, g: l.T @ g, L, G),
        block_reduce(lambda g, l: g.T @ l, G, L), block_reduce(lambda g: g.T @ g, G),
        [block_reduce(lambda p: float(np.einsum("ij,ij->", p, p, dtype=np.float64)), p)
         for p in phis])
    LtL_pinv = A._pinv_psd(LtL)
    consts = {"LtL": LtL, "GtL": GtL, "GtG_sq": float(np.sum(GtG * GtG))}
    lambdas = (float(hasher.lambda_image), float(hasher.lambda_text))
    omega = float(hasher.omega)
    t1 = time.perf_counter()

    # random feasible start, the in-memory draws in their order: N (n x r), R, then B
    V = latent_step(client, draw_blocks(rng, chunks, r, client), rng)
    R = procrustes(rng.standard_normal((r, r)))
    B = client.persist(draw_blocks(rng, chunks, r, client, lambda z: sign(z, np.float64)))

    def stats(v, g, lab, b, *ps):
        # V^T V, G^T V, L^T B (n-sized, once per V / B) and V^T phi_t
        return (v.T @ v, g.T @ v, lab.T @ b) + tuple(cross_product(v, p) for p in ps)

    VtV, GtV, LtB, *Vt_phis = reduce_rows(stats, V, G, L, B, *phis)
    hasher.objective_ = []
    for it in iterations(hasher):
        Ps = [A.update_P(None, Vp, VtV=VtV) for Vp in Vt_phis]              # P-step
        M = A.update_M(None, None, None, None, omega, r, LtL_pinv=LtL_pinv, LtG=LtG,
                       GtA=GtV @ R, AtA=R.T @ VtV @ R, LtB=LtB)            # M-step (A = V R)
        LM_c = LtG.T @ M                                                   # G^T L M, c x r
        R = A.update_R(None, None, LM_c, r, GtV=GtV)                       # R-step
        R_now, Ps_now = R, Ps

        def z_block(g, *ps):
            return A.v_step_target(g, LM_c, R_now, ps, Ps_now, lambdas, r)

        V = latent_step(client, map_rows(client, z_block, G, *phis, cols=r, persist=False), rng)
        B = map_rows(client, lambda lab: sign(lab @ M, np.float64), L, cols=r)   # B-step
        VtV, GtV, LtB, *Vt_phis = reduce_rows(stats, V, G, L, B, *phis)
        hasher.objective_.append(A.ascmh_objective(
            None, R, M, None, Ps, None, None, None, lambdas, omega, r, phi_sq=phi_sq,
            Vt_phis=Vt_phis, VtV=VtV, GtV=GtV, LtB=LtB, constants=consts, B_sq=float(n * r)))
        log_iteration(hasher, it, hasher.n_iter, hasher.objective_[-1])
    t2 = time.perf_counter()

    codes = client.persist(B.astype(np.int8))
    hasher.latent_, hasher.codes_ = V, codes
    hasher.rotation_, hasher.label_projection_, hasher.factor_loadings_ = R, M, Ps
    hasher.n_iter_ = hasher.n_iter
    lh = (hasher.lambda_h if isinstance(hasher.lambda_h, (list, tuple))
          else (hasher.lambda_h, hasher.lambda_h))
    hasher.projections_ = hash_functions(phis, codes, [float(x) for x in lh])
    hasher.paired_ = True
    hasher.timings_ = {"kernel_features": t1 - t0, "iterations": t2 - t1,
                       "hash_functions": time.perf_counter() - t2}
    return hasher
