"""Fit time, peak memory and retrieval of two source trees side by side, in one run.

    python benchmarks/fit_speedup.py --base /path/to/other/checkout [--methods batch asfoh]
        [--n 100000] [--bits 32] [--repeats 2] [--seed 0] [--json out.json]

Each fit runs in a fresh subprocess whose ``PYTHONPATH`` is the ``src`` folder of one tree
(``--base``: e.g. ``git worktree add --detach ../cmhash-base main``; the other tree is this
one), on the ``nuswide-like`` synthetic preset with ``n`` training items and the method's
default hyper-parameters. The subprocesses alternate between the trees (base, this, base,
this, ...) so that a change of machine load affects both; the fastest fit of each is kept.
``--threads N`` pins each fit to N cores (CPU affinity and BLAS threads). Reported per
tree: fit seconds (``train_seconds_``) and CPU seconds of the fit, peak RSS of the process
(``ru_maxrss``, data included) and its increase during the fit, the i2t / t2i mAP of the
2,000 queries against the learned codes, and a digest of the learned codes (two fits of one
tree with one seed must give the same digest: determinism).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

WORKER = r"""
import hashlib, json, resource, sys
import numpy as np
from cmhash.base import make_hasher
from cmhash.data import load_dataset
from cmhash.metrics import mean_average_precision
spec = json.loads(sys.argv[1])
if spec.get("threads"):
    import os
    from threadpoolctl import threadpool_limits
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:spec["threads"]])
    limiter = threadpool_limits(limits=spec["threads"], user_api="blas")
ds = load_dataset("synthetic:nuswide-like", random_state=spec["seed"], n_train=spec["n"])
views, labels = ds.views("train"), ds.labels_of("train")
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
h = make_hasher(spec["method"], n_bits=spec["bits"], random_state=spec["seed"])
import time
cpu0 = time.process_time()
h.fit_views(views, labels, names=ds.modality_names)
cpu_seconds = time.process_time() - cpu0
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
qv, qL = ds.views("query"), ds.labels_of("query")
codes = [h.learned_codes(m) for m in range(2)]
i2t = mean_average_precision(h.encode(qv[0], 0), codes[1], qL, labels)
t2i = mean_average_precision(h.encode(qv[1], 1), codes[0], qL, labels)
digest = hashlib.sha256(b"".join(np.ascontiguousarray(c).tobytes() for c in codes)).hexdigest()
import cmhash
print(json.dumps({"source": cmhash.__file__, "train_seconds": h.train_seconds_,
                  "cpu_seconds": cpu_seconds,
                  "peak_rss_mib": rss1 / 1024, "fit_rss_increase_mib": (rss1 - rss0) / 1024,
                  "map_i2t": float(i2t), "map_t2i": float(t2i), "codes_sha256": digest}))
"""


def run_one(tree: Path, spec: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"fit in {tree} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not out["source"].startswith(str(tree / "src")):
        raise RuntimeError(f"the worker imported cmhash from {out['source']}, not from {tree}")
    return out


def compare(base: Path, methods, n: int, bits: int, repeats: int, seed: int,
            threads=None) -> list:
    rows = []
    for method in methods:
        spec = {"method": method, "n": n, "bits": bits, "seed": seed, "threads": threads}
        runs = {"base": [], "this": []}
        for _ in range(repeats):
            for key, tree in (("base", base), ("this", HERE)):
                runs[key].append(run_one(tree, spec))
                print(f"{method} {key}: {runs[key][-1]['train_seconds']:.2f} s "
                      f"({runs[key][-1]['cpu_seconds']:.2f} s CPU)", file=sys.stderr, flush=True)
        best = {k: min(v, key=lambda r: r["train_seconds"]) for k, v in runs.items()}
        rows.append({
            "method": method, "n": n, "bits": bits, "seed": seed,
            "base": best["base"], "this": best["this"],
            "speedup": best["base"]["train_seconds"] / best["this"]["train_seconds"],
            "cpu_speedup": (min(r["cpu_seconds"] for r in runs["base"])
                            / min(r["cpu_seconds"] for r in runs["this"])),
            "all_seconds": {k: [r["train_seconds"] for r in v] for k, v in runs.items()},
            "all_cpu_seconds": {k: [r["cpu_seconds"] for r in v] for k, v in runs.items()},
            "deterministic": {k: len({r["codes_sha256"] for r in v}) == 1
                              for k, v in runs.items()},
            "peak_rss_mib": {k: max(r["peak_rss_mib"] for r in v) for k, v in runs.items()},
        })
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the other source tree (has src/cmhash)")
    ap.add_argument("--methods", nargs="+", default=["batch", "asfoh"])
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--bits", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="run each fit on this many cores (affinity + BLAS threads)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    base = Path(args.base).resolve()
    if not (base / "src" / "cmhash").is_dir():
        raise SystemExit(f"--base {base}: no src/cmhash there")
    rows = compare(base, args.methods, args.n, args.bits, args.repeats, args.seed, args.threads)
    print("| method | n | bits | base s | this s | speed-up | CPU speed-up | base peak RSS MiB | "
          "this peak RSS MiB | base mAP i2t / t2i | this mAP i2t / t2i | deterministic |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b, t = r["base"], r["this"]
        print(f"| {r['method']} | {r['n']} | {r['bits']} | {b['train_seconds']:.2f} | "
              f"{t['train_seconds']:.2f} | {r['speedup']:.2f}x | {r['cpu_speedup']:.2f}x | "
              f"{r['peak_rss_mib']['base']:.0f} | "
              f"{r['peak_rss_mib']['this']:.0f} | {b['map_i2t']:.4f} / {b['map_t2i']:.4f} | "
              f"{t['map_i2t']:.4f} / {t['map_t2i']:.4f} | "
              f"{r['deterministic']['base']} / {r['deterministic']['this']} |")
    print(f"\nload average {os.getloadavg()}")
    if args.json:
        from cmhash._io import atomic_write
        with atomic_write(args.json, mode="w") as fh:
            json.dump({"format": "cmhash-fit-speedup", "command": " ".join(sys.argv),
                       "base": str(base), "this": str(HERE), "rows": rows}, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
