"""Fitting BATCH and ASFOH out-of-core on Dask (issue 15; cost model, deployment:
docs/scale.md).

The in-memory fit (cmhash.methods.batch) touches the n rows only through row-block products
(``A^T B`` sums, ``phi U^T`` maps) and solves r x r / q x q systems. Here every row-block
function is the same shared one (cmhash.kernel block pass, cmhash.solvers.gram_and_cross,
orthogonal_zero_mean's Cholesky-QR2 written as two reductions), run by Dask where the blocks
live; the small matrices come back by a tree reduction (``TREE_FANIN`` partial sums per node)
and the r x r / q x q algebra runs on the client with the same solvers. The n x r latent V and
codes B stay on the workers as persisted row-chunked dask arrays.

Same numbers as the in-memory fit: the anchors come from the same seeded draw (row indices,
then a gather of q rows), the random initialisation is drawn on the client from the same
Generator stream block by block (numpy's normal stream does not depend on how a draw is split;
the whole n x r matrix never exists on the client) and scattered, sigma and the kernel mean come from
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


def _compute(*items):
    """``dask.compute`` of delayed objects, dask arrays and lists of them, in argument order
    (each wrapped in one delayed: computing delayed objects and arrays together returned them
    grouped by type, not in argument order, with the dask of this environment)."""
    dask, _ = _dask()
    return dask.compute(*[dask.delayed(_identity, pure=True)(x) for x in items])


def _identity(x):
    return x


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
    from ..methods.batch import _Constants
    from distributed import default_client
    _, da = _dask()
    client = client or default_client()
    X, T, L, chunks = _paired_inputs(hasher, image, text, labels, block_rows, client)
    n = X.shape[0]
    r = hasher.n_bits
    hasher._check_fewer_bits_than_samples(n)
    rng = check_random_state(hasher.random_state)
    phis = _kernel_features(hasher, (X, T), rng, client, persist_features)
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
    hasher.projections_ = _hash_functions(phis, codes, [hasher.xi] * len(phis))
    hasher.paired_ = True
    return hasher


# ------------------------------------------------------------------ shared set-up
def _paired_inputs(hasher, image, text, labels, block_rows, client):
    """Row-chunked X, T, float64 labels with the same row chunks; validates and prepares.
    Numpy inputs are persisted on the workers (sent once, not inside every graph)."""
    rows = [np.shape(a)[0] for a in (image, text, labels)]
    if len(set(rows)) != 1:
        raise ValueError(f"image, text and labels need the same number of rows, got "
                         f"{rows[0]}, {rows[1]}, {rows[2]}")
    X = _as_row_chunked(image, block_rows, "image")
    chunks = X.chunks[0]
    T = _as_row_chunked(text, chunks, "text")
    L = _as_row_chunked(labels, chunks, "labels").astype(np.float64)
    hasher._prepare_fit([X, T], ["image", "text"], L.shape[1])
    _, da = _dask()
    X, T = [client.persist(a) if not isinstance(raw, da.Array) else a
            for a, raw in ((X, image), (T, text))]
    return X, T, L, chunks


def _kernel_features(hasher, views, rng, client, persist_features):
    """The kernels (``hasher.kernels_``) and their features, persisted or lazy."""
    hasher.kernels_, phis = [], []
    for v, Xv in enumerate(views):
        fmap = RBFAnchorFeatures(hasher._anchors_for(v, len(views)), random_state=rng)
        phis.append(fit_kernel(fmap, Xv, rng))
        hasher.kernels_.append(fmap)
    feature_bytes = sum(p.nbytes for p in phis)
    persist = decide_persist(feature_bytes, client, persist_features)
    log.info("dask %s: kernel features %.1f MB, %s", hasher.name, feature_bytes / 2**20,
             "persisted" if persist else "recomputed each pass")
    return list(client.persist(phis)) if persist else phis


def _hash_functions(phis, codes, xis):
    """``(phi^T phi + xi I)^{-1} phi^T B`` per modality from one tree-summed pass each."""
    out = []
    for p, xi in zip(phis, xis):
        Gp, rhs = _compute(block_reduce(
            lambda a, b: gram_and_cross(a, b.astype(np.float32)), p, codes))[0]
        Gp[np.diag_indices_from(Gp)] += xi
        out.append(solve_psd(Gp, rhs))
    return out


# ------------------------------------------------------------------ ASFOH
def fit_asfoh(hasher, image, text, labels, *, client=None, block_rows=None,
              persist_features=None):
    """Fit a :class:`cmhash.methods.asfoh.ASFOH` (constraints "both", kernel features) on
    Dask; as :func:`fit_batch` (codes_ and latent_ persisted dask arrays). The label operators
    ``D H`` / ``D^T R`` (cmhash.methods.asfoh._Labels) are built from c x c / c x k reductions
    and applied per row block with the in-memory operation order."""
    from distributed import default_client
    from ..methods import asfoh as A
    _, da = _dask()
    if hasher.constraints != "both" or not hasher.use_kernel:
        raise ValueError("the Dask ASFOH fit supports constraints='both' with kernel features "
                         "(the ablations need all of Q at once: fit them in memory)")
    client = client or default_client()
    X, T, L, chunks = _paired_inputs(hasher, image, text, labels, block_rows, client)
    n, k, nv = X.shape[0], hasher.n_bits, 2
    if n <= k:
        raise ValueError(f"ASFOH needs more training samples than bits: n={n}, n_bits={k}")
    xis = A._per_modality(hasher.xi, nv, "xi")
    rng = check_random_state(hasher.random_state)
    phis = _kernel_features(hasher, (X, T), rng, client, persist_features)
    Yn = L.map_blocks(normalize_rows, dtype=np.float64)
    L, Yn = client.persist([L, Yn])

    lab = A._Labels.__new__(A._Labels)
    C, YtYn, Yt1, YnYn, s1, phi_sq = _compute(
        block_reduce(lambda y: y.T @ y, L), block_reduce(lambda y, yn: y.T @ yn, L, Yn),
        L.sum(axis=0), block_reduce(lambda yn: yn.T @ yn, Yn), Yn.sum(axis=0),
        [block_reduce(lambda p: float(np.einsum("ij,ij->", p, p, dtype=np.float64)), p)
         for p in phis])
    lab.C, lab.C_pinv, lab.YtYn, lab.Yt1 = C, A.psd_pinv(C), YtYn, np.asarray(Yt1)
    lab.S_sq = 4.0 * np.sum(YnYn * YnYn) - 4.0 * float(s1 @ s1) + float(n) * n
    c = C.shape[0]
    eta = float(hasher.eta) if hasher.semantic_projection else 0.0
    nuclear = hasher.regularizer == "nuclear"
    gamma, omega = float(hasher.gamma), float(hasher.omega)
    qs = [p.shape[1] for p in phis]

    alpha = np.full(nv, 1.0 / nv)
    R = rng.standard_normal((c, k))
    Ps = [rng.standard_normal((k, q)) for q in qs]
    Js = [rng.standard_normal((k, q)) for q in qs] if nuclear else None
    Thetas = [rng.standard_normal((k, q)) for q in qs] if nuclear else None
    B = draw_blocks(rng, chunks, k, client, lambda z: sign(z).astype(np.float64))
    H = draw_blocks(rng, chunks, k, client)
    B, H = client.persist([B, H])
    delta = float(hasher.delta0)

    def h_stats(h, yn, *ps):
        # HtH, Y~^T H, 1^T H, H^T phi_v
        return (h.T @ h, yn.T @ h, h.sum(axis=0)) + tuple(cross_product(h, p) for p in ps)

    def d_matmul(YnH, Hsum):
        return 2.0 * lab.YtYn @ YnH - np.outer(lab.Yt1, Hsum)

    HtH, YnH, Hsum, *HtPhis = _compute(block_reduce(h_stats, H, Yn, *phis))[0]
    DH = d_matmul(YnH, Hsum)
    YtB = _compute(block_reduce(lambda y, b: y.T @ b, L, B))[0]
    hasher.objective_, hasher.alpha_history_ = [], []
    for it in range(hasher.n_iter):
        Delta = np.array([hasher._residual(sq, HtPhi, HtH, P)
                          for sq, HtPhi, P in zip(phi_sq, HtPhis, Ps)])
        alpha = A.modality_weights(Delta, gamma)
        a = A.weight_powers(alpha, gamma)
        R = A.update_R(lab.C_pinv, DH, YtB, HtH, k, eta, hasher.rho)
        kR = k * R
        left, offset = 2.0 * (lab.YtYn.T @ kR), lab.Yt1 @ kR
        maps = [(av * P.T).astype(np.float32) for av, P in zip(a, Ps)]

        def q_block(yn, b, *ps):
            q = yn @ left                  # D^T (k R), as _Labels.Dt_matmul
            q -= offset[None, :]
            q += omega * b
            for p, m in zip(ps, maps):
                q += p @ m
            return q

        Q = client.persist(da.map_blocks(q_block, Yn, B, *phis, chunks=(chunks, (k,)),
                                         dtype=np.float64))
        H = client.persist(polar_zero_mean(Q))
        del Q
        HtH, YnH, Hsum, *HtPhis = _compute(block_reduce(h_stats, H, Yn, *phis))[0]
        DH = d_matmul(YnH, Hsum)
        etaR = eta * R
        B = client.persist(da.map_blocks(
            lambda y, h: sign(_semantic_target(y, etaR, omega, h)).astype(np.float64),
            L, H, chunks=(chunks, (k,)), dtype=np.float64))
        YtB, HB = _compute(block_reduce(
            lambda y, b, h: (y.T @ b, float(np.einsum("ij,ij->", h, b))), L, B, H))[0]
        if nuclear:
            Ps = [A.update_P(HtH, HtPhi, J, Th, av, delta)
                  for HtPhi, J, Th, av in zip(HtPhis, Js, Thetas, a)]
            Js = [A.update_J(P, Th, hasher.beta, delta) for P, Th in zip(Ps, Thetas)]
            Thetas = [Th + 2 * delta * (P - J) for Th, P, J in zip(Thetas, Ps, Js)]
            delta = min(float(hasher.delta_max), float(hasher.tau) * delta)
        else:
            Ps = [A.update_P_frobenius(HtH, HtPhi, av, hasher.beta)
                  for HtPhi, av in zip(HtPhis, a)]
        hasher.alpha_history_.append(alpha.copy())
        hasher.objective_.append(hasher._objective(lab, phi_sq, alpha, R, H, HtH, HtPhis, B,
                                                   Ps, eta, DH=DH, YtB=YtB, HB=HB))
        log.info("dask ASFOH iteration %d/%d: objective %.6g", it + 1, hasher.n_iter,
                 hasher.objective_[-1])

    codes = client.persist(B.astype(np.int8))
    hasher.n_iter_ = hasher.n_iter
    hasher.alpha_, hasher.rotation_, hasher.transforms_, hasher.delta_ = alpha, R, Ps, delta
    hasher.latent_, hasher.codes_ = H, codes
    hasher.projections_ = _hash_functions(phis, codes, xis)
    hasher.paired_ = True
    return hasher


def _semantic_target(y, etaR, omega, h):
    """``Y (eta R) + omega H`` for a block of rows (ASFOH's B-step, in-memory order)."""
    t = y @ etaR
    t += omega * h
    return t


#: the methods with a Dask fit (registry name -> function)
DASK_FITS = {"batch": fit_batch, "asfoh": fit_asfoh}


def fit_on_dask(hasher, views, labels, names=None, *, client=None, block_rows=None,
                persist_features=None, materialize: bool = False):
    """``hasher.fit_views`` on Dask arrays (or NumPy arrays sent to the cluster): the method's
    Dask fit, timed, with the training-data fingerprint of the inputs; with ``materialize``
    the codes and latents are gathered as NumPy arrays (needed to save the model)."""
    import time

    from ..fingerprint import training_data_fingerprint

    fit = DASK_FITS.get(getattr(hasher, "name", None))
    if fit is None:
        raise ValueError(f"{getattr(hasher, 'name', type(hasher).__name__)} has no Dask fit; "
                         f"methods with one: {sorted(DASK_FITS)}")
    if len(views) != 2 or (names is not None and list(names) != ["image", "text"]):
        raise ValueError("the Dask fits take two modalities, image and text")
    start = time.perf_counter()
    fit(hasher, views[0], views[1], labels, client=client, block_rows=block_rows,
        persist_features=persist_features)
    hasher.train_seconds_ = time.perf_counter() - start
    if materialize:
        hasher.codes_ = np.asarray(hasher.codes_.compute()).astype(np.int8)
        if hasattr(hasher.latent_, "compute"):
            hasher.latent_ = np.asarray(hasher.latent_.compute())
        hasher.training_data_fingerprint_ = training_data_fingerprint(
            [np.asarray(v.compute() if hasattr(v, "compute") else v) for v in views],
            np.asarray(labels.compute() if hasattr(labels, "compute") else labels,
                       dtype=np.float64))
    return hasher
