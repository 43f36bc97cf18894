"""AMSH (cmhash.methods.amsh) fitted on Dask from the shared pieces of :mod:`.blocks`, paired
or unpaired (each modality has its own rows, labels and row chunks).

Stage 1 runs the in-memory row-block steps of :mod:`cmhash.methods.amsh`
(``margin_targets``, ``z_block``, ``code_step``, ``margin_step``, ``objective_stats``) on each
block of each modality; the c x r / r x r sums they need (``V^T V``, ``V^T T``, ``Lh^T B``,
``Lh^T V``) are tree reductions, the P-step, the label coupling of Z and ``combine_terms`` run
on the client. Stage 2 (hash functions with margins) factorises the tree-summed
``phi^T phi + xi I`` once (``ridge_solver``) and then makes one pass over the features per
iteration (``hash_block``: fitted values, objective share, new margins and the next
right-hand side), as the in-memory fused pass does.
"""
from __future__ import annotations

import numpy as np

from ..labels import normalize_rows
from ..solvers import cross_product, gram, sign, solve_psd
from .blocks import (_dask, block_reduce, compute, draw_blocks, gather_rows, iterations,
                     latent_step, log_iteration, map_reduce_rows, map_rows, prepare,
                     reduce_rows)

__all__ = ["fit_amsh"]


def fit_amsh(hasher, views, labels, *, names=None, paired=True, client=None, block_rows=None,
             persist_features=None):
    """Fit a :class:`cmhash.methods.amsh.AMSH` on Dask. ``views``: m >= 2 arrays (n_t, d_t)
    (dask or numpy); ``labels``: one (n, c) array (paired) or one per modality
    (``paired=False``, n_t may differ). ``codes_`` and ``latent_`` become lists of persisted
    row-chunked dask arrays; kernels and hash functions are numpy. AMSH-k (``kernel=False``)
    is refused (fit it in memory)."""
    from ..methods import amsh as A
    if not hasher.kernel:
        raise ValueError("the Dask AMSH fit needs kernel features (kernel=True); AMSH-k "
                         "(centred raw features) fits in memory")
    m = len(views)
    if m < 2:
        raise ValueError(f"AMSH takes at least 2 modalities, got {m}")
    names = list(names) if names is not None else (
        ["image", "text"] if m == 2 else [f"view{v}" for v in range(m)])
    r = hasher.n_bits

    def check_n(ns):
        for name, n in zip(names, ns):
            if n <= r:
                raise ValueError(f"modality {name!r} has {n} training samples; AMSH needs "
                                 f"more than n_bits={r} (V_t^T V_t = n_t I, V_t^T 1 = 0)")

    fi = prepare(hasher, views, labels, client=client, block_rows=block_rows,
                 persist_features=persist_features, names=names, paired=paired,
                 check_n=check_n)
    client, rng, phis, Ls = fi.client, fi.rng, fi.phis, fi.labels
    Lhs = list(client.persist([L.map_blocks(normalize_rows, dtype=np.float64) for L in Ls]))
    V = [_pca_init(client, phi, r, hasher.n_init_samples, rng) for phi in phis]

    # ---- stage 1 (Eq. 10-21): the in-memory Stage1 as the small-matrix state on the client
    s1 = A.Stage1.__new__(A.Stage1)
    s1.r, s1.m = r, m
    s1.eta, s1.margins = float(hasher.eta), bool(hasher.margins)
    s1.lam = float(hasher.lam) if hasher.intra_modal else 0.0
    s1.beta = float(hasher.beta) if hasher.inter_modal else 0.0
    s1.LhtLh = list(compute([block_reduce(lambda h: h.T @ h, Lh) for Lh in Lhs])[0])
    E = [map_rows(client, np.zeros_like, L, cols=L.shape[1]) for L in Ls]
    B = [map_rows(client, lambda v: sign(v, np.float64), v, cols=r) for v in V]
    eta, lam = s1.eta, s1.lam
    LhtB = [reduce_rows(lambda h, b: h.T @ b, Lh, b) for Lh, b in zip(Lhs, B)]
    LhtV = [reduce_rows(lambda h, v: h.T @ v, Lh, v) for Lh, v in zip(Lhs, V)]
    hasher.objective_ = []
    for it in iterations(hasher, desc="AMSH codes (Dask)"):
        P = []                                                          # Eq. 12
        for t in range(m):
            VtV, VtT = reduce_rows(lambda v, l, e: (v.T @ v, v.T @ A.margin_targets(l, e)),
                                   V[t], Ls[t], E[t])
            P.append(solve_psd(VtV, VtT).T)
        for i in range(m):                                              # Eq. 13-15
            acc, Pi = s1.label_coupling(i, LhtB[i], LhtV), P[i]
            Z = map_rows(client, lambda l, e, b, h: A.z_block(A.margin_targets(l, e), Pi, b, h,
                                                               acc, eta, r),
                         Ls[i], E[i], B[i], Lhs[i], cols=r, persist=False)
            V[i] = latent_step(client, Z, rng)
            LhtV[i] = reduce_rows(lambda h, v: h.T @ v, Lhs[i], V[i])
        for t in range(m):                                              # Eq. 18, 21
            G_t = LhtV[t]
            B[t] = map_rows(client, lambda v, h: A.code_step(v, h, G_t, eta, lam, r),
                            V[t], Lhs[t], cols=r)
            if s1.margins:
                Pt = P[t]
                E[t] = map_rows(client, lambda v, l: A.margin_step(v, Pt, l), V[t], Ls[t],
                                cols=Ls[t].shape[1])
        stats = []
        for t in range(m):
            Pt = P[t]
            stats.append(reduce_rows(
                lambda v, b, h, l, e: A.objective_stats(v, b, h, A.margin_targets(l, e), Pt),
                V[t], B[t], Lhs[t], Ls[t], E[t]))
            LhtB[t] = stats[-1][5]
        terms = A.combine_terms(stats, s1.LhtLh, r)
        hasher.objective_.append(float(terms["regression"] + s1.eta * terms["quantization"]
                                       + s1.lam * terms["intra"] + s1.beta * terms["inter"]))
        log_iteration(hasher, it, hasher.n_iter, hasher.objective_[-1], " stage 1")
    hasher.codes_ = [client.persist(b.astype(np.int8)) for b in B]
    hasher.latent_ = V
    hasher.n_iter_ = hasher.n_iter

    # ---- stage 2 (Eq. 25-27): hash functions with adaptive margins, per modality
    n_hash = hasher.n_iter_hash if hasher.margins else 1
    results = [_hash_stage(client, hasher, phi, b, n_hash, names[t])
               for t, (phi, b) in enumerate(zip(phis, B))]
    hasher.projections_ = [W for W, _ in results]
    hasher.objective_hash_ = [float(sum(o)) for o in zip(*(objs for _, objs in results))]
    hasher.paired_ = bool(paired)
    return hasher


def _pca_init(client, phi, r, n_samples, rng):
    """:func:`cmhash.methods.amsh._pca_init` on row-chunked features: the same sampled rows
    (gathered), the same principal directions, ``phi W`` per block, the same Gaussian
    completion when fewer than r directions exist."""
    from ..methods.amsh import pca_sample, principal_directions
    _, da = _dask()
    n = phi.shape[0]
    idx = pca_sample(n, n_samples, rng)
    W = principal_directions(gather_rows(phi, idx), r)
    W32 = W.astype(phi.dtype)
    V = map_rows(client, lambda p: np.asarray(p @ W32, dtype=np.float64), phi, cols=W.shape[1],
                 persist=False)
    if W.shape[1] < r:
        V = da.concatenate([V, draw_blocks(rng, phi.chunks[0], r - W.shape[1], client)], axis=1)
    return client.persist(V.rechunk({1: -1}))


def _hash_stage(client, hasher, phi, B, n_hash, name):
    """Stage 2 of one modality: ``(W, objectives)`` as :meth:`HashStage.run` (one pass over
    the features per iteration; the margins M persisted row-chunked between passes)."""
    from ..methods.amsh import hash_block, ridge_solver
    xi, margins = float(hasher.xi), bool(hasher.margins)
    Gp = reduce_rows(lambda p: gram(p), phi)
    Gp[np.diag_indices_from(Gp)] += xi
    solve = ridge_solver(Gp, xi)
    rhs = reduce_rows(lambda p, b: cross_product(p, b), phi, B)
    M = map_rows(client, np.zeros_like, B, cols=B.shape[1])
    objs = []
    for it in iterations(hasher, n_hash, desc=f"AMSH hash ({name}, Dask)"):
        W = solve(rhs)
        W32 = W.astype(phi.dtype)
        need_rhs = it < n_hash - 1

        def block(p, b, mb):
            _, m_new, obj, part = hash_block(p, b, mb, W32, margins, need_rhs)
            return m_new, (obj, part if need_rhs else 0.0)

        M, (obj, rhs_next) = map_reduce_rows(client, block, phi, B, M, cols=B.shape[1])
        objs.append(xi * float(np.sum(W ** 2)) + obj)
        rhs = rhs_next
        log_iteration(hasher, it, n_hash, objs[-1], f" stage 2 ({name})")
    return W, objs
