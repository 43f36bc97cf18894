"""How close the shallow fits run to this machine's floating-point bound (issue 14).

    python benchmarks/roofline.py [--n 184577] [--bits 32 64] [--methods batch ascmh asfoh amsh]
                                  [--repeats 2] [--seed 0] [--memory cold|warm] [--ceilings]
                                  [--json out.json]

For BATCH, ASCMH, ASFOH and AMSH (default hyper-parameters) on the ``nuswide-like`` synthetic
preset (two sparse bag-of-words modalities, 500-d / 1,000-d, 10 labels), trained on ``n``
items, the script

1. counts the floating-point work of one fit from the shapes, per phase (``flop_model``
   below: explicit formulas, one function per method, 2 flops per multiply-add; a symmetric
   product ``A^T A`` of an (n, q) matrix counts n q (q + 1), the work of BLAS syrk);
2. measures this machine's float32 and float64 GEMM throughput in the same run (numpy matmul
   of ``GEMM_SIZE`` x ``GEMM_SIZE`` matrices, best of ``GEMM_REPEATS``, before every fit; the
   best seen in the run is used, so a loaded moment cannot make a fit look efficient) and its
   memory bandwidth (``c = a + b`` on 2^25 doubles, best of several);
3. fits ``--repeats`` times with phase timing on (:mod:`cmhash._phases`: the methods mark
   their phases; nested phases are exclusive) and keeps the fastest fit;
   ``--memory warm`` keeps the memory a fit frees inside the process (glibc ``mallopt``) and
   times only fits after a warm-up one, so first-touch page faults (expensive on a VM whose host
   reclaims freed pages; ``first_touch_gbs`` of the record) are not in the timing;
   ``--threads N`` restricts the whole run (bounds included) to N cores, ``--clock cpu`` times
   everything in process CPU seconds instead of wall seconds (meaningful with ``--threads 1``
   on a machine shared with other jobs: time-slicing then cancels out of the ratios);
4. reports per phase and overall: seconds, GFLOP, achieved GFLOP/s and
   ``efficiency = (work / seconds) / GEMM throughput``;
5. with ``--ceilings``, times the kernel pass, the thin products and the Gram matrices alone
   with the library calls the fit makes, on the fit's shapes (:func:`library_ceilings`), and
   reports ``ceiling_efficiency``: the whole fit's efficiency if every other phase were free.

Which GEMM throughput: a phase's work is measured against the GEMM of the precision it runs in
(``PHASE_PRECISION``): the products with the float32 kernel features against float32 GEMM,
the float64 Gram matrices of the hash functions (float64 by necessity, see
docs/architecture.md, "dtypes") and all float64 latent / small / objective work against
float64 GEMM. The whole fit's bound is then the time the work would take at those rates,
``sum_p flops_p / gemm_p``; ``gemm_gflops`` of a record is ``flops / that time`` (the
work-weighted harmonic mean of the two) and ``efficiency = (flops / fit_seconds) /
gemm_gflops``. ``efficiency_vs_float32`` measures everything against the float32 GEMM.

Phases (names of :func:`cmhash._phases.phase` in the code):

* ``kernel``: kernel features (the exponent by one sparse-dense product per block -- or a
  GEMM for blocks above the density crossover -- exp, column sums, centring) -- on
  NUS-WIDE-like input a sparse product and elementwise work, not GEMM-shaped;
* ``products``: the n x q x r products with the kernel features (``phi U^T``, ``V^T phi``,
  AMSH's stage 2), float32 BLAS;
* ``gram``: ``phi^T phi`` (+ the ridge right-hand side) of the hash functions, float64 dsyrk;
* ``latent``: n x r x r and n x c x r float64 work (V/H-steps, label products, B-steps);
* ``small``: r x r / q x r / q x q factorisations and solves (LAPACK, latency-bound for r x r);
* ``objective``: the objective recorded per iteration (n x r x r and n x c x r products);
* ``other``: fit time outside every phase (validation, bookkeeping).

Only matrix products and factorisations are counted in ``latent`` / ``objective``; their
elementwise passes (sign, centring, adding terms) are real work that is not counted, so those
phases read low. The kernel phase counts 2 nnz q for the distances (the useful work: the
input's nonzeros times the anchors, whichever product the kernel's cost model picks per
block; a GEMM on a densified block's zeros is not counted) plus ``KERNEL_ELEMENTWISE``
operations per (row, anchor) pair.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone

import numpy as np

GEMM_SIZE = 3072
GEMM_REPEATS = 3
#: repeats of each isolated call of :func:`library_ceilings` (best kept)
CEILING_REPEATS = 3
STREAM_ELEMENTS = 1 << 23
FIRST_TOUCH_BYTES = 1 << 28
#: per (row, anchor) pair of the kernel features (cmhash.kernel, scale folded into the
#: operands): subtract ||x||^2 / (2 sigma), subtract ||a||^2 / (2 sigma), clamp at 0, exp,
#: cast into the output, column sum, centring (exp counted as one)
KERNEL_ELEMENTWISE = 7
PHASE_PRECISION = {"kernel": "float64", "products": "float32", "gram": "float64",
                   "latent": "float64", "small": "float64", "objective": "float64",
                   "other": "float64"}
PHASES = tuple(PHASE_PRECISION)


# ------------------------------------------------------------------------ machine bounds
#: the clock of every measurement: wall time (default) or, with ``--clock cpu``, the process's
#: CPU time (for single-threaded runs on a loaded machine: time-slicing then cancels out)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def gemm_gflops(dtype, size: int = None, repeats: int = None,
                clock=time.perf_counter) -> float:
    """Best GFLOP/s of a size x size numpy matmul in ``dtype`` (2 size^3 flops; default
    ``GEMM_SIZE``, best of ``GEMM_REPEATS``)."""
    size = GEMM_SIZE if size is None else size
    repeats = GEMM_REPEATS if repeats is None else repeats
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    a @ b                                              # warm-up (threads, pages)
    best = np.inf
    for _ in range(repeats):
        t = clock()
        a @ b
        best = min(best, clock() - t)
    return 2.0 * size ** 3 / best / 1e9


def stream_gbs(repeats: int = 5, clock=time.perf_counter) -> float:
    """Best memory bandwidth of ``c = a + b`` on float64 arrays (3 x 8 bytes per element)."""
    a = np.ones(STREAM_ELEMENTS)
    b = np.ones(STREAM_ELEMENTS)
    c = np.empty(STREAM_ELEMENTS)
    best = np.inf
    for _ in range(repeats):
        t = clock()
        np.add(a, b, out=c)
        best = min(best, clock() - t)
    return 24.0 * STREAM_ELEMENTS / best / 1e9


def first_touch_gbs(nbytes: int = None, clock=time.perf_counter) -> float:
    """GB/s of writing freshly allocated memory (page faults included) of ``nbytes``: on a
    virtual machine whose host backs guest pages lazily (or takes freed ones back) this is far
    below :func:`stream_gbs`; it is what a fit pays for every new large array."""
    nbytes = FIRST_TOUCH_BYTES if nbytes is None else nbytes
    t = clock()
    a = np.empty(nbytes // 8)
    a.fill(1.0)
    return nbytes / (clock() - t) / 1e9


def keep_freed_memory() -> bool:
    """glibc only: serve every allocation from the heap (no per-array mmap) and never trim it,
    so the memory a fit frees is reused by the next fit of this process without new page
    faults (``--memory warm``). Returns False where ``mallopt`` is not available."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    # the fits' own scoped reuse (cmhash._memory.ordinary_pages) would restore glibc's
    # thresholds after every fit: keep this process-wide setting instead
    os.environ["CMHASH_MALLOC_REUSE"] = "0"
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2 ** 31 - 1))


class Bounds:
    """The best float32 / float64 GEMM throughput and bandwidth seen so far in this run."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.gflops = {"float32": 0.0, "float64": 0.0}
        self.bandwidth = 0.0
        self.first_touch = []

    def measure(self) -> None:
        for dt in ("float32", "float64"):
            self.gflops[dt] = max(self.gflops[dt], gemm_gflops(np.dtype(dt), clock=self.clock))
        self.bandwidth = max(self.bandwidth, stream_gbs(clock=self.clock))
        self.first_touch.append(first_touch_gbs(clock=self.clock))


# ----------------------------------------------------------------------------- FLOP model
def _kernel_flops(n, q, nnz) -> float:
    """Distances + elementwise work. The distances' product counts the useful work, 2 nnz q
    (nnz: the input's nonzeros, sparse or dense), whichever product a block takes: the
    kernel's cost model multiplies sparse blocks by scipy's sparse-dense product (exactly
    that work) and dense ones -- dense input, CSR blocks above the density crossover -- by a
    GEMM whose multiplications by zeros are not counted (all of a dense block's work when it
    has no zeros)."""
    return 2.0 * nnz * q + KERNEL_ELEMENTWISE * n * q


def _syrk(n, k) -> float:
    """``A^T A`` of an (n, k) matrix, one triangle: n k (k + 1)."""
    return float(n) * k * (k + 1)


def _polar(n, r) -> float:
    """solvers.orthogonal_zero_mean by CholeskyQR2: two syrk (Zc^T Zc, Q^T Q), two n x r x r
    GEMMs (Q = Zc R1^-1, Q (R2^-1 U W^T)), plus ~30 r^3 for the r x r Choleskys and SVD."""
    return 2 * _syrk(n, r) + 4.0 * n * r * r + 30.0 * r ** 3


def _chol_solve(k, m) -> float:
    """Cholesky of a k x k matrix and two triangular solves with m right-hand sides."""
    return k ** 3 / 3.0 + 2.0 * k * k * m


def _hash_functions(n, qs, r) -> dict:
    """ridge_regression per modality: Gram (syrk) + rhs phi^T B in one float64 pass, then a
    q x q Cholesky solve."""
    return {"gram": sum(_syrk(n, q) + 2.0 * n * q * r for q in qs),
            "small": sum(_chol_solve(q, r) for q in qs)}


def flop_model(method: str, shapes: dict) -> dict:
    """``{phase: flops}`` of one fit of ``method`` for ``shapes`` (see :func:`fit_shapes`)."""
    n, r, c, T = shapes["n"], shapes["bits"], shapes["classes"], shapes["n_iter"]
    qs = shapes["anchors"]
    out = {p: 0.0 for p in PHASES}
    out["kernel"] = sum(_kernel_flops(n, q, nnz) for q, nnz in zip(qs, shapes["nnz"]))
    thin = sum(2.0 * n * q * r for q in qs)        # one n x q x r product per modality
    if method == "batch":
        # V^T phi at the start and after every V-step, phi U^T in every V-step
        out["products"] = thin * (1 + 2 * T)
        out["latent"] = (_syrk(n, r) + 2.0 * n * r * c                       # V^T V, V^T L
                         + T * (2.0 * n * c * r + 2.0 * n * 2 * c * r         # G^T B, [G L] K
                                + _polar(n, r)                                # V-step
                                + 4.0 * n * c * r                             # B-step
                                + _syrk(n, r) + 2.0 * n * r * c))             # V^T V, V^T L
        out["objective"] = T * (4.0 * n * c * r + _syrk(n, r) + 2.0 * n * r)  # G^T V/B, B^T B
        out["small"] = T * (3 * (r ** 3 / 3.0) + 2.0 * r * r * (sum(qs) + c))
    elif method == "ascmh":
        out["products"] = thin * (1 + 2 * T)
        out["latent"] = (_polar(n, r) + _syrk(n, r) + 4.0 * n * c * r         # start
                         + T * (2.0 * n * c * r + _polar(n, r)                # Z label part
                                + 2.0 * n * c * r                             # B = sign(L M)
                                + _syrk(n, r) + 4.0 * n * c * r))             # V^T V, G^T V, L^T B
        out["objective"] = T * 2.0 * n * r                                    # ||B||^2
        out["small"] = T * (2 * _chol_solve(r, 0) + 2.0 * r * r * sum(qs)
                            + _chol_solve(r, c) + 30.0 * r ** 3)
    elif method == "asfoh":
        out["products"] = thin * (1 + 2 * T)
        out["latent"] = (_syrk(n, r) + 4.0 * n * c * r                        # H^T H, D H, Y^T B
                         + T * (2.0 * n * c * r + _polar(n, r)                # D^T R, H-step
                                + _syrk(n, r) + 2.0 * n * c * r               # H^T H, D H
                                + 4.0 * n * c * r + 2.0 * n * r))             # B-step, Y^T B, <H,B>
        # P-step solves and the SVT / nuclear norms of the k x q matrices P, J
        out["small"] = T * sum(_chol_solve(r, q) + 2 * 4.0 * q * r * r for q in qs)
        out["objective"] = T * sum(4.0 * q * r * r for q in qs)
    elif method == "amsh":
        T2, k0, m = shapes["n_iter_hash"], shapes["n_init_samples"], len(qs)
        # PCA start: V = phi W, then stage 2: rhs phi^T T and fitted phi W per F-step
        out["products"] = thin * (1 + 2 * T2)
        per_modality = (_syrk(n, r) + 2.0 * n * c * r                 # P-step: V^T V, V^T T
                        + 2.0 * n * c * r * (3 + (m - 1))             # Z: T P, Lh^T B, Lh_j^T V_j, Lh acc
                        + _polar(n, r)                                # V-step
                        + 4.0 * n * c * r                             # B-step
                        + 2.0 * n * c * r)                            # E-step: V P^T
        out["latent"] = T * m * per_modality
        out["objective"] = T * m * (2 * _syrk(n, r) + 6.0 * n * c * r + 6.0 * n * r)
        k = min(k0, n)
        out["small"] = sum(_syrk(min(k, q), max(k, q)) + 4.0 / 3.0 * min(k, q) ** 3
                           + _chol_solve(q, 0) + T2 * 2.0 * q * q * r for q in qs)
        out["gram"] = sum(_syrk(n, q) for q in qs)
        return out
    else:
        raise ValueError(f"no FLOP model for {method!r}")
    hashing = _hash_functions(n, qs, r)
    out["gram"] += hashing["gram"]
    out["small"] += hashing["small"]
    return out


# --------------------------------------------------------------------------------- fitting
def fit_shapes(method: str, hasher, views, labels) -> dict:
    """The shapes the FLOP model needs, read from the data and the fitted hasher."""
    import scipy.sparse as sp
    return {"n": int(labels.shape[0]), "bits": int(hasher.n_bits), "classes": int(labels.shape[1]),
            "n_iter": int(hasher.n_iter), "anchors": [int(k.anchors_.shape[0]) for k in hasher.kernels_],
            "nnz": [int(X.nnz) if sp.issparse(X) else int(np.count_nonzero(X)) for X in views],
            "dims": [int(X.shape[1]) for X in views],
            "sparse": [bool(sp.issparse(X)) for X in views],
            "n_iter_hash": int(getattr(hasher, "n_iter_hash", 0)),
            "n_init_samples": int(getattr(hasher, "n_init_samples", 0))}


def timed_fit(method: str, bits: int, views, labels, names, seed: int, clock=time.perf_counter):
    """One fit with phase timing on: (hasher, fit seconds, {phase: seconds})."""
    from cmhash._phases import record_phases
    from cmhash.base import make_hasher
    hasher = make_hasher(method, n_bits=bits, random_state=seed)
    start = clock()
    with record_phases(clock=clock) as times:
        hasher.fit_views(views, labels, names=names)
    seconds = float(hasher.train_seconds_) if clock is time.perf_counter else clock() - start
    phases = {p: float(times.get(p, 0.0)) for p in PHASES}
    unknown = set(times) - set(PHASES)
    if unknown:
        raise RuntimeError(f"phases {sorted(unknown)} have no FLOP model")
    phases["other"] = max(seconds - sum(phases.values()), 0.0)
    return hasher, seconds, phases


def library_ceilings(hasher, views, flops: dict, clock=time.perf_counter) -> dict:
    """The fit's GEMM-shaped phases timed in isolation with the library calls the fit makes,
    on the fit's own shapes (best of ``CEILING_REPEATS``), as ``{phase: seconds}``:

    * ``kernel``: ``transform`` of each training view by the fitted kernel (scipy's sparse
      product, exp, centring -- the same blocks as the fit's kernel pass);
    * ``products``: the counted product work at the rate of one ``phi @ U^T`` (float32 BLAS,
      r columns) and one ``cross_product(V, phi)`` per modality, averaged (the fits take the
      two about equally often);
    * ``gram``: the counted Gram work at the rate of ``ridge_regression(phi, B)`` per modality
      (the float64 Gram and right-hand side of the hash functions).

    Their sum is the least time these phases take with NumPy / SciPy's BLAS and sparse
    products on this machine; with every other phase (latent, small, objective, other) taken
    as free, ``flops / that sum`` bounds the whole fit's GFLOP/s from above
    (``ceiling_efficiency`` of the record)."""
    from cmhash.solvers import cross_product, ridge_regression

    def best(func):
        times = []
        for _ in range(CEILING_REPEATS):
            start = clock()
            func()
            times.append(clock() - start)
        return min(times)

    rng = np.random.default_rng(0)
    r = int(hasher.n_bits)
    n = views[0].shape[0]
    kernel_s = products_rate = gram_rate = 0.0
    codes = hasher.codes_[0] if isinstance(hasher.codes_, list) else hasher.codes_  # AMSH: per view
    codes = np.asarray(codes, dtype=np.float32)
    for kernel, X in zip(hasher.kernels_, views):
        kernel_s += best(lambda: kernel.transform(X))
        phi = kernel.transform(X)
        q = phi.shape[1]
        U = rng.standard_normal((q, r)).astype(np.float32)
        V = rng.standard_normal((n, r))
        thin = 2.0 * n * q * r
        products_rate += thin / best(lambda: phi @ U) + thin / best(lambda: cross_product(V, phi))
        gram_rate += (_syrk(n, q) + 2.0 * n * q * r) / best(
            lambda: ridge_regression(phi, codes, 1.0))
        del phi
    m = len(views)
    return {"kernel": kernel_s, "products": flops["products"] / (products_rate / (2 * m)),
            "gram": flops["gram"] / (gram_rate / m)}


def record(method, bits, seconds, phases, flops, bounds: Bounds, shapes,
           ceilings=None) -> dict:
    """One result record: per-phase and overall GFLOP/s and efficiency."""
    g = bounds.gflops
    per_phase = []
    for p in PHASES:
        prec = PHASE_PRECISION[p]
        f, s = flops[p], phases[p]
        rate = f / s / 1e9 if s > 0 else None
        per_phase.append({"phase": p, "precision": prec, "seconds": s, "flops": f,
                          "gflops": rate, "gemm_gflops": g[prec],
                          "efficiency": None if rate is None else rate / g[prec],
                          "share_of_fit": s / seconds})
    work = sum(flops.values())
    bound_seconds = sum(flops[p] / (g[PHASE_PRECISION[p]] * 1e9) for p in PHASES)
    effective = work / bound_seconds / 1e9
    achieved = work / seconds / 1e9
    # the thin products read their n x q float32 operand once per product: 2 r flops per
    # 4 bytes; their bandwidth bound explains why r = 32 cannot reach the GEMM rate
    intensity = 2.0 * bits / 4.0
    return {"method": method, "n": shapes["n"], "bits": bits, "fit_seconds": seconds,
            "flops": work, "gflops": achieved, "gemm_gflops": effective,
            "efficiency": achieved / effective, "bound_seconds": bound_seconds,
            "efficiency_vs_float32": achieved / g["float32"],
            "gemm_gflops_float32": g["float32"], "gemm_gflops_float64": g["float64"],
            "bandwidth_gbs": bounds.bandwidth,
            "first_touch_gbs": (min(bounds.first_touch) if bounds.first_touch else None,
                                max(bounds.first_touch) if bounds.first_touch else None),
            "products_bandwidth_bound_gflops": min(g["float32"], intensity * bounds.bandwidth),
            "library_ceiling_seconds": ceilings,
            "ceiling_efficiency": (None if not ceilings else
                                   work / sum(ceilings.values()) / 1e9 / effective),
            "shapes": shapes, "phases": per_phase}


def markdown(records) -> str:
    lines = ["| method | bits | fit s | GFLOP | GFLOP/s | bound GFLOP/s | efficiency | "
             "ceiling efficiency | "
             "kernel | products | gram | latent | small | objective | other |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for rec in records:
        cells = []
        for ph in rec["phases"]:
            eff = "-" if ph["efficiency"] is None else f"{ph['efficiency']:.2f}"
            cells.append(f"{ph['seconds']:.2f} s / {eff}")
        ceiling = ("-" if rec.get("ceiling_efficiency") is None
                   else f"{rec['ceiling_efficiency']:.2f}")
        lines.append(f"| {rec['method']} | {rec['bits']} | {rec['fit_seconds']:.2f} | "
                     f"{rec['flops'] / 1e9:.0f} | {rec['gflops']:.1f} | {rec['gemm_gflops']:.1f} | "
                     f"{rec['efficiency']:.2f} | {ceiling} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=184577, help="training items (nuswide-like)")
    ap.add_argument("--bits", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--methods", nargs="+", default=["batch", "ascmh", "asfoh", "amsh"])
    ap.add_argument("--repeats", type=int, default=2, help="fits per point (fastest kept)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="run on this many cores only (CPU affinity + BLAS threads), GEMM "
                         "bound included; default: all cores of the process")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall time (default) or process CPU time (with --threads 1 on a "
                         "loaded machine)")
    ap.add_argument("--memory", choices=("cold", "warm"), default="cold",
                    help="cold (default): every fit allocates as a user's process does; warm: "
                         "the process keeps the memory it frees (glibc mallopt) and the first "
                         "of --repeats fits (at least 2) only warms it up, so the timed fits "
                         "pay no first-touch page faults")
    ap.add_argument("--ceilings", action="store_true",
                    help="also time the kernel, product and Gram calls in isolation on the "
                         "fit's shapes (library_ceilings) and report the whole fit's "
                         "efficiency bound with every other phase free")
    ap.add_argument("--json", help="write the records here")
    args = ap.parse_args(argv)
    if args.memory == "warm":
        if not keep_freed_memory():
            raise SystemExit("--memory warm needs glibc's mallopt")
        args.repeats = max(args.repeats, 2)
    clock = CLOCKS[args.clock]
    limiter = None
    if args.threads is not None:
        from threadpoolctl import threadpool_limits
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
        limiter = threadpool_limits(limits=args.threads, user_api="blas")

    from cmhash.data import load_dataset
    ds = load_dataset("synthetic:nuswide-like", random_state=args.seed, n_train=args.n)
    views, labels = ds.views("train"), ds.labels_of("train")
    bounds = Bounds(clock)
    records = []
    for method in args.methods:
        for bits in args.bits:
            best = None
            for attempt in range(args.repeats):
                bounds.measure()
                hasher, seconds, phases = timed_fit(method, bits, views, labels,
                                                    ds.modality_names, args.seed, clock)
                if args.memory == "warm" and attempt == 0:
                    continue                      # the warm-up fit: memory first touched
                if best is None or seconds < best[1]:
                    best = (hasher, seconds, phases)
            bounds.measure()
            hasher, seconds, phases = best
            shapes = fit_shapes(method, hasher, views, labels)
            model = flop_model(method, shapes)
            ceilings = (library_ceilings(hasher, views, model, clock) if args.ceilings
                        else None)
            records.append((method, bits, seconds, phases, model, shapes, ceilings))
            print(f"{method} {bits} bits: {seconds:.2f} s", file=sys.stderr, flush=True)
    # every record against the best bounds of the whole run
    out = [record(m, b, s, ph, fl, bounds, sh, ce) for m, b, s, ph, fl, sh, ce in records]
    print(markdown(out))
    print(f"\nfloat32 GEMM {bounds.gflops['float32']:.1f} GFLOP/s, float64 GEMM "
          f"{bounds.gflops['float64']:.1f} GFLOP/s, bandwidth {bounds.bandwidth:.1f} GB/s, "
          f"first touch of new memory {min(bounds.first_touch):.2f}-{max(bounds.first_touch):.2f}"
          f" GB/s, memory {args.memory} "
          f"(best in this run, {len(os.sched_getaffinity(0))} cores); load average "
          f"{os.getloadavg()[0]:.2f}")
    del limiter
    if args.json:
        from cmhash._io import atomic_write
        doc = {"format": "cmhash-roofline", "date": datetime.now(timezone.utc).isoformat(),
               "machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpus": os.cpu_count(), "cores_used": len(os.sched_getaffinity(0)),
                           "load_average": os.getloadavg()},
               "clock": args.clock, "memory": args.memory, "command": " ".join(sys.argv), "records": out}
        with atomic_write(args.json, mode="w") as fh:
            json.dump(doc, fh, indent=1)
    return out


if __name__ == "__main__":
    main()
