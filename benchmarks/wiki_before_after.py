"""Wiki mAP of the shallow methods from two source trees, seed by seed (issue 14's check that a
speed-up did not change the results).

    python benchmarks/wiki_before_after.py --base /path/to/other/checkout [--seeds 5]
        [--bits 16 32 64 128] [--runs batch ascmh asfoh amsh amsh-unpaired] [--out DIR]

Each run is ``cmhash evaluate`` (native Wiki split, learned database, stable ties, the same
hyper-parameters as the tables of docs/results.md: ``--hparams wiki`` for ASCMH and ASFOH,
defaults for BATCH and AMSH, ``--unpaired`` for amsh-unpaired) in a subprocess whose
``PYTHONPATH`` is one tree's ``src``; the JSON of every run is kept in ``--out``. The table
gives per (method, task, bits) the mean over the seeds before and after, their difference,
the largest per-seed difference and how many seeds gave the identical mAP.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
WIKI = Path(os.environ.get("CMHASH_SHARED", HERE.parent / "shared")) / "datasets/wiki/wiki_data.mat"
RUNS = {"batch": ("batch", []), "ascmh": ("ascmh", ["--hparams", "wiki"]),
        "asfoh": ("asfoh", ["--hparams", "wiki"]), "amsh": ("amsh", []),
        "amsh-unpaired": ("amsh", ["--unpaired"])}


def evaluate(tree: Path, run: str, bits, seeds: int, out: Path) -> dict:
    method, extra = RUNS[run]
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    cmd = [sys.executable, "-m", "cmhash.cli", "evaluate", "--method", method, "--data",
           str(WIKI), "--bits", *map(str, bits), "--seeds", str(seeds), *extra,
           "--json", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def per_seed(doc: dict, task: str, bits: int) -> dict:
    return {r["seed"]: r[f"map_{task}"] for r in doc["runs"] if r["bits"] == bits}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the other source tree (has src/cmhash)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--out", default="wiki_before_after", help="folder for the runs' JSON")
    args = ap.parse_args(argv)
    base = Path(args.base).resolve()
    if not (base / "src" / "cmhash").is_dir():
        raise SystemExit(f"--base {base}: no src/cmhash there")
    if not WIKI.is_file():
        raise SystemExit(f"{WIKI} not found (set CMHASH_SHARED)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("| method | task | bits | before | after | after - before | max per-seed diff | "
          "identical seeds |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for run in args.runs:
        docs = {key: evaluate(tree, run, args.bits, args.seeds, out / f"{key}-{run}.json")
                for key, tree in (("before", base), ("after", HERE))}
        for task in ("i2t", "t2i"):
            for bits in args.bits:
                b, a = per_seed(docs["before"], task, bits), per_seed(docs["after"], task, bits)
                diffs = np.array([a[s] - b[s] for s in sorted(b)])
                row = {"run": run, "task": task, "bits": bits,
                       "before": float(np.mean(list(b.values()))),
                       "after": float(np.mean(list(a.values()))),
                       "max_seed_diff": float(np.abs(diffs).max()),
                       "identical_seeds": int(np.sum(diffs == 0)), "seeds": len(diffs)}
                rows.append(row)
                print(f"| {run} | {task} | {bits} | {row['before']:.4f} | {row['after']:.4f} | "
                      f"{row['after'] - row['before']:+.4f} | {row['max_seed_diff']:.4f} | "
                      f"{row['identical_seeds']}/{row['seeds']} |", flush=True)
    (out / "table.json").write_text(json.dumps({"base": str(base), "this": str(HERE),
                                                "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
