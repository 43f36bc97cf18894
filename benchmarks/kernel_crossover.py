"""Where densifying a CSR block beats scipy's sparse-dense product in the kernel features.

    python benchmarks/kernel_crossover.py [--reps 5] [--json out.json]

``RBFAnchorFeatures`` computes the distances of a cache block (``CACHE_BLOCK_ELEMENTS`` row x
anchor pairs) by one product with the (d, q) anchors. For CSR rows it can use scipy's
sparse-dense product or copy the block into a dense float64 buffer (``toarray(out=...)``) and
call one float64 GEMM. This times both on random CSR blocks of several densities for the
project's (d, q) shapes, one BLAS thread (as in the kernel's threaded pass), the two
alternatives interleaved (process time, minimum over ``--reps`` rounds), and prints the time
ratio sparse / dense: above 1 the dense path wins. kernel.DENSIFY_DENSITY and
DENSIFY_DENSITY_Q (crossover ``0.09 + 9 / q``) quote the result. Also times float32 GEMM (not
used: its rounding of x.a / sigma exceeds the float32 features' stated error, see the kernel
module docstring).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import scipy.sparse as sp

SHAPES = [(500, 500), (1000, 1000), (500, 1500), (1000, 1500), (200, 64), (4000, 500)]
DENSITIES = (0.02, 0.05, 0.08, 0.11, 0.15, 0.2, 0.3)


def _cpu_seconds(fn, reps: int = 5) -> float:
    start = time.process_time()
    for _ in range(reps):
        fn()
    return (time.process_time() - start) / reps


def crossover(d: int, q: int, reps: int, rng) -> dict:
    from cmhash.kernel import CACHE_BLOCK_ELEMENTS
    rows = max(1, CACHE_BLOCK_ELEMENTS // q)
    B = rng.standard_normal((d, q))
    B32 = B.astype(np.float32)
    buf, out = np.empty((rows, d)), np.empty((rows, q))
    buf32, out32 = np.empty((rows, d), np.float32), np.empty((rows, q), np.float32)
    ratios, sgemm_speedup = {}, None
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
    return {"d": d, "q": q, "rows": rows, "sparse_over_dense": ratios,
            "dgemm_over_sgemm": sgemm_speedup}


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
            print(f"d={d} q={q} rows={r['rows']}  sparse/dense time by density  {ratios}  "
                  f"(GEMM time float64 / float32: {r['dgemm_over_sgemm']:.1f})")
    if args.json:
        from cmhash._io import atomic_write
        with atomic_write(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
