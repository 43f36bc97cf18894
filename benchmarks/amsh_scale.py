"""AMSH training time and memory at the paper's dataset sizes (Table IV), on synthetic data.

Synthetic data with the shapes of Table I (label-dependent features, multi-label):
MIRFlickr-25K n=15,902 (150-D image, 500-D text, 24 classes), IAPR TC-12 n=18,000
(512-D / 2,912-D sparse, 255 classes), NUS-WIDE n=184,577 (500-D / 1,000-D sparse, 10 classes).
Reports seconds per fit (``train_seconds_``: kernel features + both stages) and the peak
resident memory of the process, next to the paper's Table IV (MATLAB, i7-10875H).

    python benchmarks/amsh_scale.py --datasets mirflickr25k nuswide --bits 16 32 64 128
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import scipy.sparse as sp

from cmhash.methods.amsh import AMSH

SHAPES = {  # n_train, d_image, d_text, classes, text sparse
    "mirflickr25k": (15902, 150, 500, 24, False),
    "iapr-tc12": (18000, 512, 2912, 255, True),
    "nuswide": (184577, 500, 1000, 10, True),
}
TABLE_IV = {"mirflickr25k": [2.39, 2.48, 3.07, 4.12], "nuswide": [21.89, 24.05, 30.36, 42.84],
            "iapr-tc12": [3.71, 4.04, 4.98, 7.20]}


def make(name, seed=0):
    n, dx, dt, c, sparse_text = SHAPES[name]
    rng = np.random.default_rng(seed)
    Y = np.zeros((n, c), dtype=np.float64)
    Y[np.arange(n), rng.integers(0, c, n)] = 1
    extra = rng.random((n, c)) < 1.0 / c
    Y[extra] = 1
    X = (Y @ rng.standard_normal((c, dx)) + rng.standard_normal((n, dx))).astype(np.float32)
    if sparse_text:  # binary bag of words: each class favours its own vocabulary
        probs = 0.002 + 0.03 * (rng.random((c, dt)) < 0.05)
        rows, cols = [], []
        for start in range(0, n, 20000):
            p = np.minimum(Y[start:start + 20000] @ probs, 0.5)
            r, k = np.nonzero(rng.random(p.shape) < p)
            rows.append(r + start); cols.append(k)
        T = sp.csr_matrix((np.ones(sum(len(r) for r in rows), np.float32),
                           (np.concatenate(rows), np.concatenate(cols))), shape=(n, dt))
    else:
        T = (Y @ rng.standard_normal((c, dt)) + rng.standard_normal((n, dt))).astype(np.float32)
    return X, T, Y


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--bits", type=_positive_int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    out = {"machine": f"{os.cpu_count()} CPUs, OPENBLAS_NUM_THREADS="
                      f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}", "rows": []}
    print("| dataset | n | bits | s/fit (cmhash) | CPU s | paper Table IV s | peak RSS GB |")
    print("|---|---|---|---|---|---|---|")
    for name in args.datasets:
        X, T, Y = make(name)
        for k, b in enumerate(args.bits):
            c0 = time.process_time()
            h = AMSH(b, random_state=0).fit(X, T, Y)
            cpu = time.process_time() - c0
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
            paper = TABLE_IV[name][[16, 32, 64, 128].index(b)] if b in (16, 32, 64, 128) else None
            row = {"dataset": name, "n": X.shape[0], "bits": b, "seconds": h.train_seconds_,
                   "cpu_seconds": cpu, "paper_seconds": paper, "peak_rss_gb": rss}
            out["rows"].append(row)
            print(f"| {name} | {X.shape[0]} | {b} | {h.train_seconds_:.2f} | {cpu:.1f} | {paper} | {rss:.2f} |",
                  flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
