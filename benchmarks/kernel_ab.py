"""Kernel features A/B: this checkout's RBFAnchorFeatures against another kernel.py.

    python benchmarks/kernel_ab.py --baseline /path/to/other/src/cmhash/kernel.py \\
        [--n 184577] [--anchors 500 1000] [--input sparse|dense] [--repeats 3] [--modality 0|1]
        [--pass-only]

On the ``nuswide-like`` synthetic training set (image 500-d ~4.6 % nonzeros, text 1000-d ~1 %,
CSR; ``--input dense``: the same rows as dense float32 arrays, as the Dask fit's zarr blocks
hold them) times ``fit_transform`` of both kernels per modality with the given anchors
(BATCH/ASCMH: 500 1000; AMSH: 1500 1500), the two interleaved (A, B, B, A, A, B, ...; one
output alive at a time; the minimum of each; wall seconds and process CPU seconds), and
reports the ratio and, from one more fit of each, the largest difference between the two
kernels' float32 features. The baseline is imported under another
module name inside the cmhash package (its relative imports resolve against this checkout).
"""
from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np
import scipy.sparse as sp


def load_baseline(path: str):
    spec = importlib.util.spec_from_file_location("cmhash._kernel_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RBFAnchorFeatures


def timed(cls, X, q: int, seed: int):
    wall, cpu = time.perf_counter(), time.process_time()
    phi = cls(q, random_state=seed).fit_transform(X)
    return phi, time.perf_counter() - wall, time.process_time() - cpu


def timed_pass(fitted, X, out):
    """Only the distance / exp pass of a fitted kernel, into a preallocated output (no fit
    preamble -- validation, sigma -- and no first touch of fresh output memory)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fitted._raw_pass(X, out)
    return None, time.perf_counter() - wall, time.process_time() - cpu


def max_abs_difference(a, b, rows: int = 8192) -> float:
    """``max |a - b|`` in row blocks (no temporaries of the features' size)."""
    return max((float(np.abs(a[i:i + rows] - b[i:i + rows]).max())
                for i in range(0, a.shape[0], rows)), default=0.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", required=True, help="path of the other kernel.py")
    p.add_argument("--n", type=int, default=184577)
    p.add_argument("--anchors", type=int, nargs=2, default=[500, 1000])
    p.add_argument("--input", choices=["sparse", "dense"], default="sparse")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modality", type=int, choices=[0, 1], default=None,
                   help="only this modality (0 image, 1 text); default both")
    p.add_argument("--pass-only", action="store_true",
                   help="time only the distance / exp pass of fitted kernels into a "
                        "preallocated output (default: fit_transform, the kernel phase of a fit)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from cmhash.data import load_dataset
    from cmhash.kernel import RBFAnchorFeatures
    variants = {"baseline": load_baseline(args.baseline), "this": RBFAnchorFeatures}
    ds = load_dataset("synthetic:nuswide-like", random_state=args.seed, n_train=args.n)
    result = {"n": args.n, "anchors": args.anchors, "input": args.input,
              "timed": "pass" if args.pass_only else "fit_transform", "modalities": []}
    for m, (X, q) in enumerate(zip(ds.views("train"), args.anchors)):
        if args.modality is not None and m != args.modality:
            continue
        if args.input == "dense":      # one modality densified at a time (memory)
            X = X.toarray() if sp.issparse(X) else np.asarray(X)
            X = X.astype(np.float32, copy=False)
        best = {k: [np.inf, np.inf] for k in variants}
        if args.pass_only:
            out = np.empty((X.shape[0], q), dtype=np.float32)
            fitted = {k: cls(q, random_state=args.seed).fit(X) for k, cls in variants.items()}
        for rep in range(args.repeats):   # one output alive at a time; the order alternates
            for name in (list(variants) if rep % 2 == 0 else list(variants)[::-1]):
                phi, wall, cpu = (timed_pass(fitted[name], X, out) if args.pass_only else
                                  timed(variants[name], X, q, args.seed))
                del phi
                best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
        if args.pass_only:
            del out, fitted
        reference = variants["baseline"](q, random_state=args.seed).fit_transform(X)
        diff = max_abs_difference(
            variants["this"](q, random_state=args.seed).fit_transform(X), reference)
        del reference
        density = (X.nnz if sp.issparse(X) else np.count_nonzero(X)) / (X.shape[0] * X.shape[1])
        row = {"d": X.shape[1], "q": q, "density": density, "max_abs_diff": diff,
               **{f"{k}_wall_s": v[0] for k, v in best.items()},
               **{f"{k}_cpu_s": v[1] for k, v in best.items()},
               "wall_ratio": best["baseline"][0] / best["this"][0],
               "cpu_ratio": best["baseline"][1] / best["this"][1]}
        result["modalities"].append(row)
        print(f"{args.input}{' pass' if args.pass_only else ''} d={row['d']} q={q}: baseline {best['baseline'][0]:.2f} s "
              f"({best['baseline'][1]:.2f} CPU s), this {best['this'][0]:.2f} s "
              f"({best['this'][1]:.2f} CPU s); speed-up wall {row['wall_ratio']:.2f}x, "
              f"CPU {row['cpu_ratio']:.2f}x; max |diff| {diff:.2e}", flush=True)
    if args.json:
        from cmhash._io import write_json
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
