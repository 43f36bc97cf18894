"""The shared pieces of every Dask fit (cmhash.distributed.fit, .fit_ascmh, .fit_amsh; issue 15,
docs/scale.md).

A shallow two-step kernel method touches its n training rows only through

* **maps** -- a function of one row block of aligned arrays that returns a block of a new
  n x k array (``Z``, ``B = sign(...)``, a label operator applied per row): :func:`map_rows`;
* **reductions** -- a function of one row block whose results are summed (``V^T V``,
  ``V^T phi``, objective terms): :func:`reduce_rows`, a tree of ``TREE_FANIN``-way sums;
* both in one pass (AMSH's stage 2 writes the new margins and sums the next right-hand
  side while the block is read once): :func:`map_reduce_rows`;
* the latent step ``max tr(Z^T V) s.t. V^T V = n I, V^T 1 = 0``: :func:`polar_zero_mean`,
  CholeskyQR2 from two r x r reductions, TSQR when it declines, and the in-memory solver's
  random completion (same draws) when Z has numerical rank below r;
* the kernel features, computed blockwise where the rows live (:func:`fit_kernel`), either
  persisted on the workers or recomputed in every pass (:func:`decide_persist`).

:func:`prepare` does the set-up all fits share (row-chunked inputs, labels, kernel features,
the seeded Generator, the dashboard link) and :func:`iterations` the progress of the loop
(``cmhash.progress`` on the client, one log line per iteration).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from .._validation import check_random_state
from ..kernel import SHIFT_RATIO, SHIFT_SAMPLE, RBFAnchorFeatures
from ..progress import progress
from ..solvers import (CHOLESKY_QR_MAX_DEVIATION, _numerical_rank, cholesky_qr2_factor,
                       gram_and_cross, gram_of_product, null_space_basis,
                       positive_diagonal_signs, solve_psd,
                       warn_rank_completion)

log = logging.getLogger("cmhash")

#: persist the kernel features when they use at most this fraction of the workers' memory
PERSIST_FRACTION = 0.25
#: partial sums combined per node of the reduction tree
TREE_FANIN = 8
#: Dask configuration key overriding the persist / recompute choice of the kernel features:
#: "auto" (default, :func:`decide_persist`), "persist" or "recompute"
FEATURES_CONFIG = "cmhash.kernel-features"
#: the key prefix of the kernel-feature tasks (to find them in a task stream)
FEATURES_TOKEN = "kernel-features"


def _dask():
    import dask
    import dask.array as da
    return dask, da


def as_row_chunked(X, block_rows, name, client=None):
    """A dask array chunked by rows only (one chunk across the columns); numpy arrays and
    SciPy sparse matrices (CSR blocks) are cut into ``block_rows`` rows (an int or a tuple of
    row chunks; default 4,096), the blocks scattered to the workers of ``client`` (once, not
    inside every graph; without a client, a ``from_array``)."""
    dask, da = _dask()
    if isinstance(X, da.Array):
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-D, got shape {X.shape}")
        return X.rechunk({0: X.chunks[0] if block_rows is None else block_rows, 1: -1})
    X = sp.csr_matrix(X) if sp.issparse(X) else np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {X.shape}")
    if client is None and not sp.issparse(X):
        return da.from_array(X, chunks=(block_rows or 4096, -1))
    return _scattered_row_blocks(X, block_rows, client)


def _scattered_row_blocks(X, block_rows, client):
    """A dask array of the row blocks of the numpy or CSR ``X``, scattered to the workers in
    one call (sparse blocks are read by the block functions here only: the kernel pass takes
    them)."""
    dask, da = _dask()
    n, d = X.shape
    if isinstance(block_rows, tuple):
        chunks = block_rows
    else:
        step = int(block_rows or 4096)
        chunks = tuple(min(step, n - s) for s in range(0, n, step))
    bounds = np.cumsum((0,) + chunks)
    blocks = [X[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    if client is not None:
        blocks = client.scatter(blocks)
    meta = (sp.csr_matrix((0, 0), dtype=X.dtype) if sp.issparse(X)
            else np.empty((0, 0), dtype=X.dtype))
    parts = [da.from_delayed(dask.delayed(block), (rows, d), dtype=X.dtype, meta=meta)
             for block, rows in zip(blocks, chunks)]
    return da.concatenate(parts, axis=0)


def is_sparse(X) -> bool:
    """Whether the dask array ``X`` holds SciPy sparse blocks."""
    return sp.issparse(getattr(X, "_meta", None))


def gather_rows(X, idx) -> np.ndarray:
    """The rows ``idx`` (sorted) of the row-chunked ``X`` as a dense float64 array, each
    block giving its own rows (sparse blocks densified)."""
    dask, _ = _dask()
    bounds = np.cumsum((0,) + X.chunks[0])
    take = dask.delayed(_take_rows, pure=True)
    parts = []
    for b, block in enumerate(X.to_delayed().ravel()):
        local = idx[(idx >= bounds[b]) & (idx < bounds[b + 1])] - bounds[b]
        if local.size:
            parts.append(take(block, local))
    return np.vstack(compute(parts)[0]) if parts else np.zeros((0, X.shape[1]))


def _take_rows(block, local):
    rows = block[local]
    return np.asarray(rows.toarray() if sp.issparse(rows) else rows, dtype=np.float64)


# ------------------------------------------------------------------ maps and reductions
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


def block_reduce(fn, *arrays, extra=()):
    """``sum_b fn(block_b of each array, *extra)`` over aligned row blocks, as a delayed tree
    sum (``extra``: arguments every block gets, e.g. a scattered future)."""
    dask, _ = _dask()
    blocks = [a.to_delayed().ravel() for a in arrays]
    f = dask.delayed(fn, pure=True)
    return tree_sum([f(*bs, *extra) for bs in zip(*blocks)])


def compute(*items):
    """``dask.compute`` of delayed objects, dask arrays and lists of them, in argument order
    (each wrapped in one delayed: computing delayed objects and arrays together returned them
    grouped by type, not in argument order, with the dask of this environment)."""
    dask, _ = _dask()
    return dask.compute(*[dask.delayed(_identity, pure=True)(x) for x in items])


def _identity(x):
    return x


def reduce_rows(fn, *arrays):
    """``sum_b fn(blocks_b)`` computed (a tree sum; ``fn`` may return a tuple of sums)."""
    return compute(block_reduce(fn, *arrays))[0]


def map_rows(client, fn, *arrays, cols, dtype=np.float64, persist=True):
    """The n x ``cols`` array whose row block b is ``fn(blocks_b of arrays)``, persisted on
    the workers (``persist=False``: lazy)."""
    _, da = _dask()
    out = da.map_blocks(fn, *arrays, chunks=(arrays[0].chunks[0], (cols,)), dtype=dtype)
    return client.persist(out) if persist else out


def map_reduce_rows(client, fn, *arrays, cols, dtype=np.float64):
    """One pass for a map and a reduction: ``fn(blocks_b) -> (out_b, partial_b)``; returns
    the persisted n x ``cols`` array of the ``out_b`` and the sum of the ``partial_b``."""
    dask, da = _dask()
    blocks = [a.to_delayed().ravel() for a in arrays]
    f = dask.delayed(fn, pure=True, nout=2)
    outs = [f(*bs) for bs in zip(*blocks)]
    parts = [da.from_delayed(o[0], (rows, cols), dtype=dtype)
             for o, rows in zip(outs, arrays[0].chunks[0])]
    array, total = client.persist([da.concatenate(parts, axis=0), tree_sum([o[1] for o in outs])])
    return array, total.compute()


# ------------------------------------------------------------------ kernel features
def fit_kernel(fmap: RBFAnchorFeatures, X, rng, client=None):
    """Fit ``fmap`` on the row-chunked dask ``X`` with the in-memory fit's random draws;
    returns the lazy float32 features (n, q) (task keys prefixed ``FEATURES_TOKEN``). The
    fitted map (its q x d anchors) is sent to every worker once (``client.scatter``), not
    inside each graph of the kernel pass."""
    _, da = _dask()
    if fmap.anchors != "random":
        raise ValueError("the Dask fit supports anchors='random' only (k-means anchors need "
                         "Lloyd iterations over a sample: fit in memory)")
    n, d = X.shape
    q = min(fmap.n_anchors, n)
    shift = None                           # sparse input is never shifted (kernel._offset_shift)
    if not is_sparse(X):
        mu, head = da.compute(X.astype(np.float64).mean(axis=0),
                              X[:SHIFT_SAMPLE].astype(np.float64))
        sample = head - mu
        spread = float(np.einsum("ij,ij->", sample, sample)) / sample.shape[0]
        shift = mu if float(mu @ mu) > SHIFT_RATIO * spread else None
    idx = np.sort(rng.choice(n, size=q, replace=False))
    fmap._set_anchors(gather_rows(X, idx), shift)
    fmap.n_features_in_ = d

    def moments(b):
        if sp.issparse(b):
            b = sp.csr_matrix(b, dtype=np.float64)
            return float(b.multiply(b).sum()), np.asarray(b.sum(axis=0)).ravel()
        b = np.asarray(b, dtype=np.float64)
        b = b - shift if shift is not None else b
        return float(np.einsum("ij,ij->", b, b)), b.sum(axis=0)

    x_sq, x_sum = reduce_rows(moments, X)
    fmap._set_sigma(fmap._sigma_from_moments(x_sq / n, x_sum / n))
    shared = client.scatter(fmap, broadcast=True) if client is not None else fmap
    if fmap.center:
        fmap.mean_ = compute(block_reduce(_raw_sums, X, extra=(shared,)))[0] / n
    else:
        fmap.mean_ = np.zeros(q)
    mean = fmap.mean_.astype(fmap.dtype) if fmap.center else None
    return X.map_blocks(_features_block, shared, mean, chunks=(X.chunks[0], (q,)),
                        dtype=fmap.dtype, meta=np.empty((0, 0), dtype=fmap.dtype),
                        token=FEATURES_TOKEN)


def _raw_sums(b, fmap):
    """Column sums of the uncentred kernel features of one block (the kernel mean pass)."""
    return fmap._chunk_raw(b)


def _features_block(b, fmap, mean):
    """The kernel features of one block (float32), minus the training ``mean`` if given."""
    out = np.empty((b.shape[0], fmap.anchors_.shape[0]), dtype=fmap.dtype)
    fmap._chunk_raw(b, out)
    if mean is not None:
        out -= mean
    return out


def worker_memory(client) -> int:
    """The memory the workers may use together: the smallest worker limit times the number of
    workers (the rows spread evenly over the workers); 0 when a worker has no limit."""
    limits = [int(w.get("memory_limit", 0) or 0)
              for w in client.scheduler_info()["workers"].values()]
    return min(limits) * len(limits) if limits and min(limits) > 0 else 0


def decide_persist(feature_bytes: int, client, persist_features=None) -> bool:
    """Persist the kernel features when they take at most ``PERSIST_FRACTION`` of the
    workers' memory (:func:`worker_memory`; no client or no limit -> recompute). An explicit
    ``persist_features`` wins, then the Dask config ``cmhash.kernel-features``
    ("persist" / "recompute" / "auto")."""
    if persist_features is not None:
        return bool(persist_features)
    dask, _ = _dask()
    mode = str(dask.config.get(FEATURES_CONFIG, "auto")).lower()
    if mode not in ("auto", "persist", "recompute"):
        raise ValueError(f"dask config {FEATURES_CONFIG!r} must be 'auto', 'persist' or "
                         f"'recompute', got {mode!r}")
    if mode != "auto":
        return mode == "persist"
    limit = worker_memory(client) if client is not None else 0
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


def polar_zero_mean(Z, rng=None, client=None):
    """:func:`cmhash.solvers.orthogonal_zero_mean` on a row-chunked dask ``Z``: centre by the
    column mean, CholeskyQR2 through two r x r reductions, the polar factor times sqrt(n)
    (the same r x r algebra as ``solvers._polar_via_gram``); when CholeskyQR2 declines (an
    ill-conditioned Z, e.g. a label part of rank c < r dominating), the thin SVD by TSQR
    (:func:`_polar_via_tsqr`), as the in-memory solver falls back to a thin SVD; at numerical
    rank k < r the in-memory solver's random completion from the same draws of ``rng``
    (:func:`_completed_polar`)."""
    n, r = Z.shape
    mu = Z.mean(axis=0).compute()
    Zc = Z - mu
    eye = np.eye(r)
    try:
        R1 = sla.cholesky(reduce_rows(lambda b: b.T @ b, Zc), lower=False)
        R1inv = sla.solve_triangular(R1, eye, lower=False)
        Q = Zc @ R1inv
        C = reduce_rows(lambda b: b.T @ b, Q)
        ok = np.abs(C - eye).max() <= CHOLESKY_QR_MAX_DEVIATION
        R2 = sla.cholesky(C, lower=False) if ok else None
    except np.linalg.LinAlgError:
        ok = False
    if not ok:
        return _polar_via_tsqr(Zc, rng, client)
    U, _, Wt = np.linalg.svd(R2 @ R1)
    return Q @ (np.sqrt(n) * (sla.solve_triangular(R2, eye, lower=False) @ (U @ Wt)))


def _polar_via_tsqr(Zc, rng=None, client=None):
    """``sqrt(n) U W^T`` from ``dask.array.linalg.svd`` (TSQR: a QR per row block, the R
    factors reduced, the SVD of the last r x r R; as accurate as a thin SVD of all of Zc);
    at numerical rank k < r (the in-memory threshold) ``U_k`` and ``W_k`` go to
    :func:`_completed_polar`."""
    _, da = _dask()
    n, r = Zc.shape
    U, s, Wt = da.linalg.svd(Zc)
    s, Wt = compute(s, Wt)
    k = _numerical_rank(s, n, r)
    if k == r:
        return U @ (np.sqrt(n) * Wt)
    warn_rank_completion(k, r)
    U_k = U[:, :k]
    return _completed_polar(client.persist(U_k) if client is not None else U_k, Wt[:k],
                            check_random_state(rng), client)


def _completed_polar(U_k, Wt_k, rng, client=None):
    """``sqrt(n) (U_k W_k^T + P W_null)``: the in-memory solver's completion at numerical rank
    k < r, step for step on row blocks. The n x (r - k) Gaussian is drawn block by block
    (:func:`draw_blocks`: NumPy's Generator fills row-major, so these are the numbers of one
    draw), its first r rows give ``W_null`` (``solvers.null_space_basis``), two classical
    Gram-Schmidt passes against ``1`` and ``U_k`` are one reduction (column sums, U_k^T R) and
    one map each, and CholeskyQR2 (``solvers.cholesky_qr2_factor``) takes two r x r
    reductions; where it declines, TSQR with the signs of a positive-diagonal R."""
    _, da = _dask()
    n, k = U_k.shape
    r = Wt_k.shape[1]
    head = []

    def keep_head(block):                  # the draw's first r rows, on the client
        have = sum(len(h) for h in head)
        if have < r:
            head.append(block[:r - have].copy())
        return block

    R = draw_blocks(rng, U_k.chunks[0], r - k, client, keep_head)
    W_null = null_space_basis(Wt_k, np.vstack(head))
    for _ in range(2):
        colsum, coef = reduce_rows(lambda rb, ub: (rb.sum(axis=0), ub.T @ rb), R, U_k)
        R = da.map_blocks(_projected_block, R, U_k, mean=colsum / n, coef=coef,
                          dtype=np.float64)
        R = client.persist(R) if client is not None else R
    T = cholesky_qr2_factor(reduce_rows(lambda b: b.T @ b, R),
                            lambda T1: reduce_rows(lambda b: gram_of_product(b, T1), R))
    if T is None:
        P, Rr = da.linalg.qr(R)
        P = P * positive_diagonal_signs(Rr.compute())
    else:
        P = R @ T
    return (U_k @ Wt_k + P @ W_null) * np.sqrt(n)


def _projected_block(rb, ub, mean, coef):
    """One row block of a Gram-Schmidt pass: ``R - 1 mean - U_k coef`` (the in-memory order)."""
    out = rb - mean
    out -= ub @ coef
    return out


def latent_step(client, Z, rng=None):
    """``V = polar_zero_mean(Z, rng)`` with Z persisted first (the step reads it three times:
    one pass over the features writes it), V persisted and computed before Z is released (a
    persisted V whose tasks still waited on a released Z lost its dependencies). ``rng``: the
    fit's Generator (the in-memory fit passes it to ``orthogonal_zero_mean`` too: a rank-
    deficient Z draws the same completion from it)."""
    from distributed import wait
    Z = client.persist(Z)
    V = client.persist(polar_zero_mean(Z, rng, client))
    wait(V)
    del Z
    return V


# ------------------------------------------------------------------ shared set-up
@dataclass
class FitInputs:
    """What :func:`prepare` returns: per modality the row-chunked view, its float64 labels
    (same row chunks) and its kernel features (persisted or lazy), plus the client and the
    fit's Generator (the in-memory fit's draws, in the same order)."""

    client: object
    views: list
    labels: list
    phis: list
    rng: np.random.Generator
    persisted: bool

    @property
    def chunks(self):
        """The row chunks of the first modality (all of them in a paired fit)."""
        return self.views[0].chunks[0]


def prepare(hasher, views, labels, *, client=None, block_rows=None, persist_features=None,
            names=("image", "text"), paired=True, check_n=None) -> FitInputs:
    """Validate and chunk the inputs, fit the kernels (``hasher.kernels_``) and give their
    features. ``labels``: one (n, c) array (paired) or one per modality (``paired=False``).
    NumPy / SciPy sparse inputs are scattered to the workers in row blocks (sent once, not
    inside every graph).
    ``check_n(n_rows_of_each_modality)`` runs before the Generator's first draw."""
    from distributed import default_client
    client = client or default_client()
    link = (None if getattr(client, "cmhash_dashboard_logged", False)
            else getattr(client, "dashboard_link", None))       # a user's own client: log it
    log.info("dask %s fit on %d workers%s", hasher.name, len(client.scheduler_info()["workers"]),
             f", dashboard {link}" if link else "")
    if paired:
        rows = [np.shape(a)[0] for a in (*views, labels)]
        if len(set(rows)) != 1:
            raise ValueError(f"{', '.join(names)} and labels need the same number of rows, "
                             f"got {', '.join(map(str, rows))}")
        labels = [labels] * len(views)
    elif len(labels) != len(views):
        raise ValueError(f"unpaired fits take one label matrix per modality: {len(views)} "
                         f"modalities, {len(labels)} label matrices")
    Xs, Ls, chunks = [], [], None
    for name, raw, lab in zip(names, views, labels):
        if not paired and np.shape(lab)[0] != np.shape(raw)[0]:
            raise ValueError(f"labels of {name!r} have {np.shape(lab)[0]} rows, its features "
                             f"{np.shape(raw)[0]}")
        X = as_row_chunked(raw, chunks if paired and chunks is not None else block_rows, name,
                           client)
        chunks = X.chunks[0]
        Xs.append(X)
        Ls.append(Ls[0] if paired and Ls else
                  as_row_chunked(lab, X.chunks[0], f"labels of {name!r}", client)
                  .astype(np.float64))
    c = {L.shape[1] for L in Ls}
    if len(c) != 1:
        raise ValueError(f"every modality's labels need the same classes, got {sorted(c)}")
    Ls = list(client.persist(Ls[:1])) * len(Ls) if paired else list(client.persist(Ls))
    hasher._prepare_fit(Xs, list(names), c.pop())
    if check_n is not None:
        check_n([X.shape[0] for X in Xs])
    rng = check_random_state(hasher.random_state)
    phis, persisted = _kernel_features(hasher, Xs, rng, client, persist_features)
    return FitInputs(client, Xs, Ls, phis, rng, persisted)


def _kernel_features(hasher, views, rng, client, persist_features):
    """The kernels (``hasher.kernels_``) and their features, persisted or lazy."""
    hasher.kernels_, phis = [], []
    for v, Xv in enumerate(views):
        fmap = RBFAnchorFeatures(hasher._anchors_for(v, len(views)),
                                 anchors=getattr(hasher, "anchor_method", "random"),
                                 random_state=rng)
        phis.append(fit_kernel(fmap, Xv, rng, client))
        hasher.kernels_.append(fmap)
    feature_bytes = sum(p.nbytes for p in phis)
    persist = decide_persist(feature_bytes, client, persist_features)
    log.info("dask %s: kernel features %.1f MB, %s (workers' memory %.1f MB)", hasher.name,
             feature_bytes / 2**20, "persisted" if persist else "recomputed each pass",
             worker_memory(client) / 2**20)
    return (list(client.persist(phis)) if persist else phis), persist


def hash_functions(phis, codes, xis):
    """``(phi^T phi + xi I)^{-1} phi^T B`` per modality from one tree-summed pass each
    (``codes``: one array for all modalities or one per modality)."""
    if not isinstance(codes, (list, tuple)):
        codes = [codes] * len(phis)
    out = []
    for p, B, xi in zip(phis, codes, xis):
        Gp, rhs = reduce_rows(lambda a, b: gram_and_cross(a, b.astype(np.float32)), p, B)
        Gp[np.diag_indices_from(Gp)] += xi
        out.append(solve_psd(Gp, rhs))
    return out


def iterations(hasher, n_iter=None, desc=None):
    """The iteration loop of a Dask fit: ``cmhash.progress`` over ``range(n_iter)`` (a bar on
    a terminal, log lines elsewhere; silent unless ``hasher.verbose``)."""
    n_iter = hasher.n_iter if n_iter is None else n_iter
    return progress(range(n_iter), desc=desc or f"{type(hasher).__name__} (Dask)",
                    verbose=bool(getattr(hasher, "verbose", False)))


def log_iteration(hasher, it, n_iter, objective, stage=""):
    log.info("dask %s%s iteration %d/%d: objective %.6g", type(hasher).__name__, stage, it + 1,
             n_iter, objective)
