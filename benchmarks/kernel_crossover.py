"""Where densifying a CSR block beats scipy's sparse-dense product in the kernel features.

    python benchmarks/kernel_crossover.py [--reps 5] [--json out.json]

``RBFAnchorFeatures`` computes the distances of a cache block (``CACHE_BLOCK_ELEMENTS`` row x
anchor pairs) by one product with the (d, q) anchors. For CSR rows it can use scipy's
sparse-dense product or copy the block into a dense float64 buffer (``toarray(out=...)``) and
call one float64 GEMM. This times both on random CSR blocks of several densities for the
project's (d, q) shapes, one BLAS thread (as in the kernel's threaded pass), the two
alternatives interleaved (process time, minimum over ``--reps`` rounds), and prints the time
ratio sparse / dense: above 1 the dense path wins. Likewise for dense float32 rows: copy into
a float64 buffer + GEMM against the kernel's conversion to CSR + the sparse product (above 1
the conversion wins). kernel.DENSIFY_DENSITY, DENSIFY_DENSITY_Q (densify above
``0.09 + 9 / q``) and SPARSIFY_DENSITY_Q (convert below ``0.09 - 2 / q``) quote the
result. Also times float32 GEMM (not used: its rounding of x.a / sigma exceeds the float32
features' stated error, see the kernel module docstring).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp

from cmhash import kernel

SHAPES = [(500, 500), (1000, 1000), (500, 1500), (1000, 1500), (200, 64), (4000, 500)]
DENSITIES = (0.02, 0.05, 0.08, 0.11, 0.15, 0.2, 0.3)


def _cpu_seconds(fn, reps: int = 5) -> float:
    start = time.process_time()
    for _ in range(reps):
        fn()
    return (time.process_time() - start) / reps


def crossover(d: int, q: int, reps: int, rng) -> dict:
    rows = max(1, kernel.CACHE_BLOCK_ELEMENTS // q)
    B = rng.standard_normal((d, q))
    B32 = B.astype(np.float32)
    buf, out = np.empty((rows, d)), np.empty((rows, q))
    buf32, out32 = np.empty((rows, d), np.float32), np.empty((rows, q), np.float32)
    ratios, dense_ratios, sgemm_speedup = {}, {}, None
    for density in DENSITIES:
        X = sp.random(rows, d, density=density, format="csr", random_state=1)
        buf32[...] = X.toarray()
        sparse = dense = double = single = np.inf
        for _ in range(reps):
            sparse = min(sparse, _cpu_seconds(lambda: X @ B))
            dense = min(dense, _cpu_seconds(lambda: np.matmul(X.toarray(out=buf), B, out=out)))
            double = min(double, _cpu_seconds(lambda: np.matmul(buf, B, out=out)))
            single = min(single, _cpu_seconds(lambda: np.matmul(buf32, B32, out=out32)))
        ratios[density] = sparse / dense
        sgemm_speedup = double / single
        # dense float32 rows: copy + GEMM against the kernel's CSR conversion + sparse product
        Xd = X.toarray().astype(np.float32)
        buffers = kernel._BlockBuffers(rows, d, q)
        gemm = convert = np.inf
        for _ in range(reps):
            gemm = min(gemm, _cpu_seconds(lambda: np.matmul(buffers.dense(rows, copy_of=Xd),
                                                            B, out=out)))
            convert = min(convert, _cpu_seconds(lambda: to_csr(Xd, q, buffers) @ B))
        dense_ratios[density] = gemm / convert
    return {"d": d, "q": q, "rows": rows, "sparse_over_dense": ratios,
            "dense_gemm_over_sparsified": dense_ratios, "dgemm_over_sgemm": sgemm_speedup}


def to_csr(Xd, q, buffers):
    """The kernel's conversion of a dense block to CSR (its threshold lifted)."""
    saved = kernel.DENSIFY_DENSITY
    kernel.DENSIFY_DENSITY = 2.0 + kernel.SPARSIFY_DENSITY_Q
    try:
        return kernel._sparse_if_cheaper(Xd, q, buffers)[0]
    finally:
        kernel.DENSIFY_DENSITY = saved


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from cmhash._threads import single_threaded_blas
    rng = np.random.default_rng(0)
    results = []
    with single_threaded_blas():
        for d, q in SHAPES:
            r = crossover(d, q, args.reps, rng)
            results.append(r)
            ratios = " ".join(f"{k}:{v:.2f}" for k, v in r["sparse_over_dense"].items())
            back = " ".join(f"{k}:{v:.2f}" for k, v in r["dense_gemm_over_sparsified"].items())
            print(f"d={d} q={q} rows={r['rows']}\n  CSR rows, sparse / densify+GEMM time by "
                  f"density: {ratios}\n  dense rows, copy+GEMM / convert+sparse time by "
                  f"density: {back}\n  GEMM time float64 / float32: "
                  f"{r['dgemm_over_sgemm']:.1f}")
    if args.json:
        from cmhash._io import write_json
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
