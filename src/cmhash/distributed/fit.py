"""Fitting the shallow two-step kernel methods out-of-core on Dask (issue 15; cost model,
deployment: docs/scale.md): BATCH and ASFOH here, ASCMH in :mod:`.fit_ascmh`, AMSH in
:mod:`.fit_amsh`, all from the shared pieces of :mod:`.blocks`, and the dispatch
(:func:`fit_on_dask`) that ``hasher.fit(dask arrays)`` and ``cmhash ... --cluster`` use.

The in-memory fits touch the n rows only through row-block products (``A^T B`` sums,
``phi U^T`` maps) and solve r x r / q x q systems. Here every row-block function is the same
shared one (cmhash.kernel block pass, cmhash.solvers.gram_and_cross / cross_product,
orthogonal_zero_mean's Cholesky-QR2 written as two reductions), run by Dask where the blocks
live; the small matrices come back by a tree reduction and the r x r / q x q algebra runs on
the client with the in-memory solvers. The n x r latents and codes stay on the workers as
persisted row-chunked dask arrays.

Same numbers as the in-memory fit: the anchors come from the same seeded draw, the random
initialisation is drawn on the client from the same Generator stream block by block (numpy's
normal stream does not depend on how a draw is split) and scattered, sigma and the kernel mean
come from reductions of the same moments. What differs is only summation order in the
reductions, so the codes agree up to rounding ties (tests/test_distributed_fit.py).

Kernel features: persisted on the workers when they take at most ``PERSIST_FRACTION`` of the
workers' memory limit, else recomputed from X in each pass (``persist_features`` or the Dask
config ``cmhash.kernel-features`` override; docs/scale.md).
"""
from __future__ import annotations

import numpy as np

from ..labels import normalize_rows
from ..solvers import cross_product, sign, solve_psd
from .blocks import (FEATURES_CONFIG, PERSIST_FRACTION, TREE_FANIN, block_reduce,  # noqa: F401
                     compute, decide_persist, draw_blocks, fit_kernel, hash_functions,
                     iterations, latent_step, log, log_iteration, map_rows, polar_zero_mean,
                     prepare, reduce_rows, tree_sum)

__all__ = ["fit_batch", "fit_asfoh", "fit_ascmh", "fit_amsh", "fit_on_dask", "DASK_FITS",
           "decide_persist"]


def _more_bits_than_samples(hasher):
    return lambda ns: hasher._check_fewer_bits_than_samples(ns[0])


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
    from ..methods.batch import _Constants, _code_products
    fi = prepare(hasher, [image, text], labels, client=client, block_rows=block_rows,
                 persist_features=persist_features, check_n=_more_bits_than_samples(hasher))
    client, chunks, rng, phis, L = fi.client, fi.chunks, fi.rng, fi.phis, fi.labels[0]
    r = hasher.n_bits
    G = client.persist(L.map_blocks(normalize_rows, dtype=np.float64))
    consts = _Constants.__new__(_Constants)
    GtG, L_sq, phi_sq = compute(
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

    VtV, VtL, *Vt_phis = reduce_rows(latent_stats, V, L, *phis)
    hasher.objective_ = []
    for it in iterations(hasher):
        VtV_rho = VtV + hasher.rho * np.eye(r)
        Us = [solve_psd(VtV_rho, Vt_phi) for Vt_phi in Vt_phis]
        U_l = solve_psd(VtV_rho, VtL)
        GtB = reduce_rows(lambda g, b: g.T @ b, G, B)
        K = np.vstack([r * GtB, hasher.eta_label * U_l.T])
        maps = [(eta * U.T).astype(np.float32) for eta, U in zip(etas, Us)]

        def z_block(g, lab, b, *ps):
            z = np.hstack([g, lab]) @ K
            z += omega * b
            for p, m in zip(ps, maps):
                z += p @ m
            return z

        V = latent_step(client, map_rows(client, z_block, G, L, B, *phis, cols=r,
                                         persist=False), rng)
        GtV = reduce_rows(lambda g, v: g.T @ v, G, V)
        B = map_rows(client, lambda g, v: sign(g @ (r * GtV) + omega * v).astype(np.float64),
                     G, V, cols=r)

        def all_stats(b, v, g, lab, *ps):
            return (_code_products(b, v, g),) + latent_stats(v, lab, *ps)

        code_products, VtV, VtL, *Vt_phis = reduce_rows(all_stats, B, V, G, L, *phis)
        hasher.objective_.append(hasher._objective(code_products, VtV, VtL, consts, Vt_phis,
                                                   Us, U_l))
        log_iteration(hasher, it, hasher.n_iter, hasher.objective_[-1])

    codes = client.persist(B.astype(np.int8))
    hasher.latent_, hasher.codes_ = V, codes
    hasher.n_iter_ = hasher.n_iter
    hasher.projections_ = hash_functions(phis, codes, [hasher.xi] * len(phis))
    hasher.paired_ = True
    return hasher


# ------------------------------------------------------------------ ASFOH
def fit_asfoh(hasher, image, text, labels, *, client=None, block_rows=None,
              persist_features=None):
    """Fit a :class:`cmhash.methods.asfoh.ASFOH` (constraints "both", kernel features) on
    Dask; as :func:`fit_batch` (codes_ and latent_ persisted dask arrays). The label operators
    ``D H`` / ``D^T R`` (cmhash.methods.asfoh._Labels) are built from c x c / c x k reductions
    and applied per row block with the in-memory operation order."""
    from ..methods import asfoh as A
    if hasher.constraints != "both" or not hasher.use_kernel:
        raise ValueError("the Dask ASFOH fit supports constraints='both' with kernel features "
                         "(the ablations need all of Q at once: fit them in memory)")
    k, nv = hasher.n_bits, 2

    def check_n(ns):
        if ns[0] <= k:
            raise ValueError(f"ASFOH needs more training samples than bits: n={ns[0]}, "
                             f"n_bits={k}")

    fi = prepare(hasher, [image, text], labels, client=client, block_rows=block_rows,
                 persist_features=persist_features, check_n=check_n)
    client, chunks, rng, phis, L = fi.client, fi.chunks, fi.rng, fi.phis, fi.labels[0]
    n = L.shape[0]
    xis = A._per_modality(hasher.xi, nv, "xi")
    Yn = client.persist(L.map_blocks(normalize_rows, dtype=np.float64))

    lab = A._Labels.__new__(A._Labels)
    C, YtYn, Yt1, YnYn, s1, phi_sq = compute(
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

    alpha, R, Ps, Js, Thetas = A.random_start(rng, nv, c, k, qs, nuclear)
    B = draw_blocks(rng, chunks, k, client, lambda z: sign(z).astype(np.float64))
    H = draw_blocks(rng, chunks, k, client)
    B, H = client.persist([B, H])
    delta = float(hasher.delta0)

    def h_stats(h, yn, *ps):
        # HtH, Y~^T H, 1^T H, H^T phi_v
        return (h.T @ h, yn.T @ h, h.sum(axis=0)) + tuple(cross_product(h, p) for p in ps)

    def d_matmul(YnH, Hsum):
        return 2.0 * lab.YtYn @ YnH - np.outer(lab.Yt1, Hsum)

    HtH, YnH, Hsum, *HtPhis = reduce_rows(h_stats, H, Yn, *phis)
    DH = d_matmul(YnH, Hsum)
    YtB = reduce_rows(lambda y, b: y.T @ b, L, B)
    hasher.objective_, hasher.alpha_history_ = [], []
    for it in iterations(hasher):
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

        H = latent_step(client, map_rows(client, q_block, Yn, B, *phis, cols=k, persist=False),
                        rng)
        HtH, YnH, Hsum, *HtPhis = reduce_rows(h_stats, H, Yn, *phis)
        DH = d_matmul(YnH, Hsum)
        etaR = eta * R
        B = map_rows(client,
                     lambda y, h: sign(_semantic_target(y, etaR, omega, h)).astype(np.float64),
                     L, H, cols=k)
        YtB, HB = reduce_rows(lambda y, b, h: (y.T @ b, float(np.einsum("ij,ij->", h, b))),
                              L, B, H)
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
        log_iteration(hasher, it, hasher.n_iter, hasher.objective_[-1])

    codes = client.persist(B.astype(np.int8))
    hasher.n_iter_ = hasher.n_iter
    hasher.alpha_, hasher.rotation_, hasher.transforms_, hasher.delta_ = alpha, R, Ps, delta
    hasher.latent_, hasher.codes_ = H, codes
    hasher.projections_ = hash_functions(phis, codes, xis)
    hasher.paired_ = True
    return hasher


def _semantic_target(y, etaR, omega, h):
    """``Y (eta R) + omega H`` for a block of rows (ASFOH's B-step, in-memory order)."""
    t = y @ etaR
    t += omega * h
    return t


def fit_ascmh(hasher, image, text, labels, **kw):
    """:func:`cmhash.distributed.fit_ascmh.fit_ascmh` (imported on use)."""
    from .fit_ascmh import fit_ascmh as fit
    return fit(hasher, image, text, labels, **kw)


def fit_amsh(hasher, views, labels, **kw):
    """:func:`cmhash.distributed.fit_amsh.fit_amsh` (imported on use)."""
    from .fit_amsh import fit_amsh as fit
    return fit(hasher, views, labels, **kw)


#: the methods with a Dask fit (registry name -> function)
DASK_FITS = {"batch": fit_batch, "asfoh": fit_asfoh, "ascmh": fit_ascmh, "amsh": fit_amsh}


def fit_on_dask(hasher, views, labels, names=None, *, client=None, block_rows=None,
                persist_features=None, materialize: bool = False, paired: bool = True):
    """``hasher.fit_views`` (``paired=False``: ``fit_unpaired``, one label matrix per view) on
    Dask arrays (or NumPy arrays sent to the cluster): the method's Dask fit, timed, with the
    training-data fingerprint of the inputs; with ``materialize`` the codes and latents are
    gathered as NumPy arrays (needed to save the model or evaluate it in-process)."""
    import time

    from ..fingerprint import training_data_fingerprint

    name = getattr(hasher, "name", None)
    fit = DASK_FITS.get(name)
    if fit is None:
        raise ValueError(f"{name or type(hasher).__name__} has no Dask fit; methods with one: "
                         f"{sorted(DASK_FITS)}")
    labels = _checked_labels(labels, views, names, paired)
    kw = dict(client=client, block_rows=block_rows, persist_features=persist_features)
    start = time.perf_counter()
    if name == "amsh":           # any number of modalities, paired or unpaired
        fit(hasher, list(views), labels, names=names, paired=paired, **kw)
    else:
        if not paired:
            raise ValueError(f"{name} needs paired training data (no unpaired Dask fit)")
        if len(views) != 2 or (names is not None and list(names) != ["image", "text"]):
            raise ValueError(f"the Dask fit of {name} takes two modalities, image and text")
        fit(hasher, views[0], views[1], labels, **kw)
    hasher.train_seconds_ = time.perf_counter() - start
    if materialize:
        hasher.codes_ = _gathered(hasher.codes_, np.int8)
        hasher.latent_ = _gathered(hasher.latent_, np.float64)
        label_arrays = ([_gathered(y, np.float64) for y in labels] if not paired
                        else _gathered(labels, np.float64))
        hasher.training_data_fingerprint_ = training_data_fingerprint(
            [_gathered(v, None) if hasattr(v, "compute") else v for v in views], label_arrays)
    return hasher


def _checked_labels(labels, views, names, paired):
    """NumPy labels checked (and class indices made multi-hot) as by the in-memory fit;
    dask labels pass unchanged (checking them would be a pass over the data)."""
    from .._validation import check_distinct_label_sets, check_labels
    from ..base import unpaired_label_matrices

    def lazy(a):
        return type(a).__module__.startswith("dask.")

    if paired:
        if lazy(labels):
            return labels
        Y = check_labels(labels, np.shape(views[0])[0], require_labelled_rows=True)
        check_distinct_label_sets([Y])
        return Y
    if any(lazy(y) for y in labels):
        return list(labels)
    names = names or [f"view{v}" for v in range(len(views))]
    Ys = unpaired_label_matrices(labels, [np.shape(v)[0] for v in views], list(names))
    check_distinct_label_sets(Ys)
    return Ys


def _gathered(a, dtype):
    """A dask array (or a list of them) as NumPy."""
    if isinstance(a, (list, tuple)):
        return [_gathered(x, dtype) for x in a]
    a = np.asarray(a.compute() if hasattr(a, "compute") else a)
    return a if dtype is None else a.astype(dtype, copy=False)
