"""Fitting BATCH out-of-core on Dask (issue 15; cost model and deployment: docs/scale.md).

The in-memory fit (cmhash.methods.batch) touches the n rows only through row-block products
(``A^T B`` sums, ``phi U^T`` maps) and solves r x r / q x q systems. Here every row-block
function is the same shared one (cmhash.kernel block pass, cmhash.solvers.gram_and_cross,
orthogonal_zero_mean's Cholesky-QR2 written as two reductions), run by Dask where the blocks
live; the small matrices come back by a tree reduction (``TREE_FANIN`` partial sums per node)
and the r x r / q x q algebra runs on the client with the same solvers. The n x r latent V and
codes B stay on the workers as persisted row-chunked dask arrays.

Same numbers as the in-memory fit: the anchors come from the same seeded draw (row indices,
then a gather of q rows), the random initialisation is drawn on the client from the same
Generator stream block by block (numpy's normal stream does not depend on how a draw is split:
one n x r block never exists on the client) and scattered, sigma and the kernel mean come from
reductions of the same moments. What differs is only summation order in the reductions, so
the codes agree up to rounding ties (tests/test_distributed_fit.py).

Kernel features: persisted on the workers when they take at most ``PERSIST_FRACTION`` of the
workers' total memory limit, else recomputed from X in each pass (``persist_features``
overrides; docs/scale.md).
"""
from __future__ import annotations

import logging

import numpy as np
import scipy.linalg as sla

from .._validation import check_random_state
from ..kernel import SHIFT_RATIO, SHIFT_SAMPLE, RBFAnchorFeatures
from ..labels import normalize_rows
from ..solvers import (CHOLESKY_QR_MAX_DEVIATION, cross_product, gram_and_cross, sign,
                       solve_psd)

log = logging.getLogger("cmhash")

#: persist the kernel features when they use at most this fraction of the workers' memory
PERSIST_FRACTION = 0.25
#: partial sums combined per node of the reduction tree
TREE_FANIN = 8


def _dask():
    import dask
    import dask.array as da
    return dask, da


def _as_row_chunked(X, block_rows, name):
    """A dask array chunked by rows only (one chunk across the columns)."""
    dask, da = _dask()
    if isinstance(X, da.Array):
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-D, got shape {X.shape}")
        return X.rechunk({0: X.chunks[0] if block_rows is None else block_rows, 1: -1})
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {X.shape}")
    return da.from_array(X, chunks=(block_rows or 4096, -1))


def tree_sum(parts):
    """Sum a list of delayed partial results by a tree of ``TREE_FANIN``-way additions."""
    dask, _ = _dask()
    add = dask.delayed(lambda *xs: _add_all(xs), pure=True)
    while len(parts) > 1:
        parts = [add(*parts[i:i + TREE_FANIN]) for i in range(0, len(parts), TREE_FANIN)]
    return parts[0]


def _add_all(xs):
    if isinstance(xs[0], tuple):
        return tuple(_add_all([x[k] for x in xs]) for k in range(len(xs[0])))
    total = xs[0].copy() if isinstance(xs[0], np.ndarray) else xs[0]
    for x in xs[1:]:
        total = total + x
    return total


def block_reduce(fn, *arrays):
    """``sum_b fn(block_b of each array)`` over aligned row blocks, as a delayed tree sum."""
    dask, _ = _dask()
    blocks = [a.to_delayed().ravel() for a in arrays]
    f = dask.delayed(fn, pure=True)
    return tree_sum([f(*bs) for bs in zip(*blocks)])


def _compute(*delayeds):
    dask, _ = _dask()
    return dask.compute(*delayeds)


# ------------------------------------------------------------------ kernel features
def fit_kernel(fmap: RBFAnchorFeatures, X, rng):
    """Fit ``fmap`` on the row-chunked dask ``X`` with the in-memory fit's random draws;
    returns the lazy float32 features (n, q)."""
    _, da = _dask()
    if fmap.anchors != "random":
        raise ValueError("the Dask fit supports anchors='random' only (k-means anchors need "
                         "Lloyd iterations over a sample: fit in memory)")
    n, d = X.shape
    q = min(fmap.n_anchors, n)
    mu = X.astype(np.float64).mean(axis=0)
    head = X[:SHIFT_SAMPLE].astype(np.float64)
    idx = np.sort(rng.choice(n, size=q, replace=False))
    mu, head, A = da.compute(mu, head, X[idx])
    sample = head - mu
    spread = float(np.einsum("ij,ij->", sample, sample)) / sample.shape[0]
    shift = mu if float(mu @ mu) > SHIFT_RATIO * spread else None
    fmap._set_anchors(np.asarray(A, dtype=np.float64), shift)
    fmap.n_features_in_ = d

    def moments(b):
        b = np.asarray(b, dtype=np.float64)
        b = b - shift if shift is not None else b
        return float(np.einsum("ij,ij->", b, b)), b.sum(axis=0)

    x_sq, x_sum = _compute(block_reduce(moments, X))[0]
    fmap._set_sigma(fmap._sigma_from_moments(x_sq / n, x_sum / n))
    if fmap.center:
        acc = _compute(block_reduce(lambda b: fmap._chunk_raw(b), X))[0]
        fmap.mean_ = acc / n
    else:
        fmap.mean_ = np.zeros(q)
    mean = fmap.mean_.astype(fmap.dtype)

    def features(b):
        out = np.empty((b.shape[0], q), dtype=fmap.dtype)
        fmap._chunk_raw(b, out)
        if fmap.center:
            out -= mean
        return out

    return X.map_blocks(features, chunks=(X.chunks[0], (q,)), dtype=fmap.dtype)


def _worker_memory(client) -> int:
    workers = client.scheduler_info()["workers"].values()
    return int(sum(w.get("memory_limit", 0) or 0 for w in workers))


def decide_persist(feature_bytes: int, client, persist_features=None) -> bool:
    """Persist the kernel features when they take at most ``PERSIST_FRACTION`` of the
    workers' total memory limit (None: no client or no limit -> recompute); an explicit
    ``persist_features`` wins."""
    if persist_features is not None:
        return bool(persist_features)
    limit = _worker_memory(client) if client is not None else 0
    return limit > 0 and feature_bytes <= PERSIST_FRACTION * limit


# ------------------------------------------------------------------ the n x r pieces
def draw_blocks(rng, chunks, r, client, transform=None):
    """``rng.standard_normal((n, r))`` drawn block by block (the same numbers as one draw),
    each block sent to the workers as it is drawn; a dask array with row ``chunks``."""
    dask, da = _dask()
    parts = []
    for rows in chunks:
        block = rng.standard_normal((rows, r))
        if transform is not None:
            block = transform(block)
        data = client.scatter(block) if client is not None else block
        parts.append(da.from_delayed(dask.delayed(data), (rows, r), dtype=block.dtype))
    return da.concatenate(parts, axis=0)


def polar_zero_mean(Z):
    """:func:`cmhash.solvers.orthogonal_zero_mean` on a row-chunked dask ``Z``: centre by the
    column mean, CholeskyQR2 through two r x r reductions, the polar factor times sqrt(n)
    (the same r x r algebra as ``solvers._polar_via_gram``); when CholeskyQR2 declines (an
    ill-conditioned Z, e.g. a label part of rank c < r dominating), the thin SVD by TSQR
    (:func:`_polar_via_tsqr`), as the in-memory solver falls back to LAPACK's thin SVD."""
    n, r = Z.shape
    mu = Z.mean(axis=0).compute()
    Zc = Z - mu
    eye = np.eye(r)
    try:
        R1 = sla.cholesky(_compute(block_reduce(lambda b: b.T @ b, Zc))[0], lower=False)
        R1inv = sla.solve_triangular(R1, eye, lower=False)
        Q = Zc @ R1inv
        C = _compute(block_reduce(lambda b: b.T @ b, Q))[0]
        ok = np.abs(C - eye).max() <= CHOLESKY_QR_MAX_DEVIATION
        R2 = sla.cholesky(C, lower=False) if ok else None
    except np.linalg.LinAlgError:
        ok = False
    if not ok:
        return _polar_via_tsqr(Zc)
    U, _, Wt = np.linalg.svd(R2 @ R1)
    return Q @ (np.sqrt(n) * (sla.solve_triangular(R2, eye, lower=False) @ (U @ Wt)))


def _polar_via_tsqr(Zc):
    """``sqrt(n) U W^T`` from ``dask.array.linalg.svd`` (TSQR: a QR per row block, the R
    factors reduced, the SVD of the last r x r R; as accurate as a thin SVD of all of Zc).
    A numerical rank below r is refused: the in-memory solver completes V with a random
    orthonormal basis drawn n x (r - k) at once, which this path does not reproduce."""
    _, da = _dask()
    n, r = Zc.shape
    U, s, Wt = da.linalg.svd(Zc)
    s, Wt = _compute(s, Wt)
    k = int(np.count_nonzero(s > max(n, r) * np.finfo(np.float64).eps * max(s[0], 1e-300)))
    if k < r:
        raise ValueError(f"the Dask fit's latent step met a centred Z of numerical rank {k} < "
                         f"r = {r} (the in-memory fit completes V at random there): fit in "
                         f"memory, use fewer bits, or raise the weights of the non-label terms")
    return U @ (np.sqrt(n) * Wt)


# ------------------------------------------------------------------ BATCH
def fit_batch(hasher, image, text, labels, *, client=None, block_rows=None,
              persist_features=None):
    """Fit a :class:`cmhash.methods.batch.BATCH` on Dask; returns the hasher.

    ``image``, ``text`` (n, d), ``labels`` (n, c) multi-hot: dask or numpy arrays (numpy is
    chunked by ``block_rows``). ``client``: a distributed.Client (default: the current one).
    Afterwards ``hasher.codes_`` (int8) and ``hasher.latent_`` are persisted row-chunked dask
    arrays; the hash functions and kernels are ordinary numpy, so ``encode`` and ``save``
    work as after an in-memory fit.
    """
    from ..methods.batch import BATCH, _Constants  # noqa: F401  (the method's own pieces)
    from distributed import default_client
    _, da = _dask()
    client = client or default_client()
    rows = [np.shape(a)[0] for a in (image, text, labels)]
    if len(set(rows)) != 1:
        raise ValueError(f"image, text and labels need the same number of rows, got "
                         f"{rows[0]}, {rows[1]}, {rows[2]}")
    X = _as_row_chunked(image, block_rows, "image")
    chunks = X.chunks[0]
    T = _as_row_chunked(text, chunks, "text")
    L = _as_row_chunked(labels, chunks, "labels").astype(np.float64)
    n = X.shape[0]
    hasher._prepare_fit([X, T], ["image", "text"], L.shape[1])
    r = hasher.n_bits
    hasher._check_fewer_bits_than_samples(n)
    rng = check_random_state(hasher.random_state)

    hasher.kernels_, phis = [], []
    for v, Xv in enumerate((X, T)):
        fmap = RBFAnchorFeatures(hasher._anchors_for(v, 2), random_state=rng)
        phis.append(fit_kernel(fmap, Xv, rng))
        hasher.kernels_.append(fmap)
    feature_bytes = sum(p.nbytes for p in phis)
    persist = decide_persist(feature_bytes, client, persist_features)
    log.info("dask BATCH: kernel features %.1f MB, %s", feature_bytes / 2**20,
             "persisted" if persist else "recomputed each pass")
    if persist:
        phis = list(client.persist(phis))
    G = L.map_blocks(normalize_rows, dtype=np.float64)
    L, G = client.persist([L, G])
    consts = _Constants.__new__(_Constants)
    GtG, L_sq, phi_sq = _compute(
        block_reduce(lambda g: g.T @ g, G), (L ** 2).sum(),
        [(p.astype(np.float64) ** 2).sum() for p in phis])
    consts.GtG_sq, consts.L_sq = float(np.sum(GtG * GtG)), float(L_sq)
    consts.phi_sq = [float(s) for s in phi_sq]

    B = draw_blocks(rng, chunks, r, client, lambda z: sign(z).astype(np.float64))
    V = draw_blocks(rng, chunks, r, client)
    B, V = client.persist([B, V])
    etas = (hasher.eta_image, hasher.eta_text)
    omega = float(hasher.omega)        # the block functions capture numbers, not the hasher

    def latent_stats(v, lab, *ps):
        return (v.T @ v, v.T @ lab) + tuple(cross_product(v, p) for p in ps)

    VtV, VtL, *Vt_phis = _compute(block_reduce(latent_stats, V, L, *phis))[0]
    hasher.objective_ = []
    for it in range(hasher.n_iter):
        VtV_rho = VtV + hasher.rho * np.eye(r)
        Us = [solve_psd(VtV_rho, Vt_phi) for Vt_phi in Vt_phis]
        U_l = solve_psd(VtV_rho, VtL)
        GtB = _compute(block_reduce(lambda g, b: g.T @ b, G, B))[0]
        K = np.vstack([r * GtB, hasher.eta_label * U_l.T])
        maps = [(eta * U.T).astype(np.float32) for eta, U in zip(etas, Us)]

        def z_block(g, lab, b, *ps):
            z = np.hstack([g, lab]) @ K
            z += omega * b
            for p, m in zip(ps, maps):
                z += p @ m
            return z

        Z = da.map_blocks(z_block, G, L, B, *phis, chunks=(chunks, (r,)), dtype=np.float64)
        # Z is read by the three passes of the latent step: one pass over the features
        # writes it (n x r float64 on the workers), then it is dropped
        Z = client.persist(Z)
        V = client.persist(polar_zero_mean(Z))
        del Z
        GtV = _compute(block_reduce(lambda g, v: g.T @ v, G, V))[0]
        B = client.persist(da.map_blocks(
            lambda g, v: sign(g @ (r * GtV) + omega * v).astype(np.float64),
            G, V, chunks=(chunks, (r,)), dtype=np.float64))

        def all_stats(b, v, g, lab, *ps):
            from ..methods.batch import _code_products
            return (_code_products(b, v, g),) + latent_stats(v, lab, *ps)

        (code_products, VtV, VtL, *Vt_phis), = _compute(block_reduce(all_stats, B, V, G, L,
                                                                      *phis))
        hasher.objective_.append(hasher._objective(code_products, VtV, VtL, consts, Vt_phis,
                                                   Us, U_l))
        log.info("dask BATCH iteration %d/%d: objective %.6g", it + 1, hasher.n_iter,
                 hasher.objective_[-1])

    codes = client.persist(B.astype(np.int8))
    hasher.latent_, hasher.codes_ = V, codes
    hasher.n_iter_ = hasher.n_iter
    hasher.projections_ = []
    for p in phis:
        Gp, rhs = _compute(block_reduce(
            lambda a, b: gram_and_cross(a, b.astype(np.float32)), p, codes))[0]
        Gp[np.diag_indices_from(Gp)] += hasher.xi
        hasher.projections_.append(solve_psd(Gp, rhs))
    hasher.paired_ = True
    return hasher
