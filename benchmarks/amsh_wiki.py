"""AMSH on Wiki: paired / unpaired parity with the authors' code, Table V ablations, timings.

Protocol (docs/methods/amsh.md): native Wiki split (2,173 train = retrieval, 693 queries);
queries encoded by the learned hash functions, database = the LEARNED codes of the other
modality with that modality's training labels; stable ties; relevance = share >= 1 label;
mAP over the full ranking; mean of ``--seeds`` seeds.

Unpaired (paper Sec. IV-E): each modality's training set is shuffled by its own permutation
(``CrossModalDataset.unpaired(seed)``) and AMSH is fitted with ``fit_unpaired``; the database
for I->T is then the text codes with the text labels in their shuffled order (and vice versa).

    python benchmarks/amsh_wiki.py                       # paired + unpaired, 5 seeds
    python benchmarks/amsh_wiki.py --ablations           # Table V variants (paired)
    python benchmarks/amsh_wiki.py --select              # validation grid for PRESETS["wiki"]
    python benchmarks/amsh_wiki.py --json out.json
    python benchmarks/amsh_wiki.py --no-parity --timing --n-jobs 2   # time per fit (median)
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from cmhash.data.loaders import load_dataset
from cmhash.methods.amsh import AMSH
from cmhash.metrics import mean_average_precision

WIKI = Path(os.environ.get("CMHASH_SHARED", Path(__file__).resolve().parents[2] / "shared")) \
    / "datasets" / "wiki" / "wiki_data.mat"

#: the authors' MATLAB code on the same data and protocol (issue #4)
REFERENCE = {
    "paired": {"i2t": [0.324, 0.343, 0.368, 0.358], "t2i": [0.713, 0.720, 0.716, 0.714]},
    "unpaired": {"i2t": [0.329, 0.344, 0.361, 0.345], "t2i": [0.708, 0.714, 0.731, 0.729]},
}
BITS = [16, 32, 64, 128]


def run_one(ds, bits, seed, *, unpaired=False, **params):
    h = AMSH(bits, random_state=seed, **params)
    cpu0 = time.process_time()
    if unpaired:
        views, labels = ds.unpaired(random_state=seed)
        h.fit_unpaired(views, labels)
        db_labels = {"image": labels[0], "text": labels[1]}
    else:
        h.fit(ds.get("train", "image"), ds.get("train", "text"), ds.labels_of("train"))
        db_labels = {"image": ds.labels_of("train"), "text": ds.labels_of("train")}
    cpu = time.process_time() - cpu0  # includes the shuffle of the unpaired protocol (negligible)
    qL = ds.labels_of("query")
    i2t = mean_average_precision(h.encode(ds.get("query", "image"), "image"),
                                 h.learned_codes("text"), qL, db_labels["text"])
    t2i = mean_average_precision(h.encode(ds.get("query", "text"), "text"),
                                 h.learned_codes("image"), qL, db_labels["image"])
    return i2t, t2i, h.train_seconds_, cpu


def table(ds, seeds, *, unpaired=False, bits=BITS, **params):
    out = {"i2t": [], "t2i": [], "i2t_std": [], "t2i_std": [], "seconds": [], "cpu_seconds": []}
    for b in bits:
        res = np.array([run_one(ds, b, s, unpaired=unpaired, **params) for s in seeds])
        out["i2t"].append(float(res[:, 0].mean()))
        out["t2i"].append(float(res[:, 1].mean()))
        out["i2t_std"].append(float(res[:, 0].std()))
        out["t2i_std"].append(float(res[:, 1].std()))
        out["seconds"].append(float(np.median(res[:, 2])))
        out["cpu_seconds"].append(float(np.median(res[:, 3])))
        print(f"  {b:4d} bits: I->T {out['i2t'][-1]:.4f}  T->I {out['t2i'][-1]:.4f}  "
              f"fit {out['seconds'][-1]:.2f} s wall, {out['cpu_seconds'][-1]:.2f} s CPU",
              file=sys.stderr, flush=True)
    return out


def fmt(rows, bits, ref=None):
    head = "| setting | task | " + " | ".join(f"{b} b" for b in bits) + " |"
    lines = [head, "|" + "---|" * (len(bits) + 2)]
    for name, res in rows.items():
        for task, label in (("i2t", "I->T"), ("t2i", "T->I")):
            cells = []
            for k, v in enumerate(res[task]):
                cell = f"{v:.3f}"
                if ref and name in ref:
                    cell += f" ({v - ref[name][task][k]:+.3f})"
                cells.append(cell)
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    for name, res in rows.items():
        lines.append(f"| {name} | s/fit wall (CPU) | " + " | ".join(
            f"{s:.2f} ({c:.2f})" for s, c in zip(res["seconds"], res["cpu_seconds"])) + " |")
    return "\n".join(lines)


def select(ds, seeds):
    """Grid over (eta, lam, beta) on a validation split of the training set (mean of both tasks)."""
    val = ds.validation_split(0.2, random_state=0)
    grid = {"eta": [0.1, 1.0], "lam": [1e-3, 1e-2], "beta": [1e-3, 1e-2]}
    scores = []
    for eta, lam, beta in itertools.product(*grid.values()):
        res = [run_one(val, b, s, eta=eta, lam=lam, beta=beta) for b in (16, 64) for s in seeds]
        score = float(np.mean([r[:2] for r in res]))
        scores.append(((eta, lam, beta), score))
        print(f"  eta={eta} lam={lam} beta={beta}: {score:.4f}", file=sys.stderr, flush=True)
    scores.sort(key=lambda x: -x[1])
    return scores


def fit_times(ds, seeds, bits_list, n_jobs):
    """Median wall seconds of ``AMSH(bits, random_state=s, n_jobs=n_jobs).fit`` per bit length."""
    X, T = ds.get("train", "image"), ds.get("train", "text")
    L = ds.labels_of("train")
    AMSH(bits_list[0], random_state=len(seeds), n_jobs=n_jobs).fit(X, T, L)   # warm-up
    out = {}
    for bits in bits_list:
        times = []
        for s in seeds:
            start = time.perf_counter()
            AMSH(bits, random_state=s, n_jobs=n_jobs).fit(X, T, L)
            times.append(time.perf_counter() - start)
        out[str(bits)] = float(np.median(times))
        print(f"{bits} bits: {out[str(bits)]:.2f} s", file=sys.stderr)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(WIKI))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--bits", type=int, nargs="+", default=BITS)
    ap.add_argument("--ablations", action="store_true", help="Table V variants (paired)")
    ap.add_argument("--no-parity", action="store_true", help="skip the paired/unpaired runs")
    ap.add_argument("--select", action="store_true", help="validation grid for PRESETS['wiki']")
    ap.add_argument("--timing", action="store_true",
                    help="wall time of fit (kernel features + both stages) per bit length, "
                         "median over the seeds, after one warm-up fit")
    ap.add_argument("--json", default=None)
    ap.add_argument("--n-jobs", type=int, default=None,
                    help="AMSH n_jobs (one BLAS thread + parallel stage 2 per modality; the "
                         "results do not depend on it)")
    args = ap.parse_args(argv)

    ds = load_dataset(args.data)
    seeds = list(range(args.seeds))
    result = {"dataset": "wiki", "protocol": "native split, learned database, stable ties, "
              "relevance = share >= 1 label, full-ranking mAP", "seeds": seeds, "bits": args.bits,
              "machine": f"{platform.node()} ({os.cpu_count()} CPUs, "
                         f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
                         f"n_jobs={args.n_jobs})"}
    t0 = time.perf_counter()
    if not args.no_parity:
        rows = {}
        for setting in ("paired", "unpaired"):
            print(f"AMSH {setting}", file=sys.stderr)
            rows[setting] = table(ds, seeds, unpaired=setting == "unpaired", bits=args.bits, n_jobs=args.n_jobs)
        result["parity"] = rows
        ref = {k: {t: [v[t][BITS.index(b)] for b in args.bits] for t in v} for k, v in REFERENCE.items()}
        print("\n## AMSH on Wiki vs the authors' code (difference in parentheses)\n")
        print(fmt(rows, args.bits, ref))
        gap = {t: [rows["unpaired"][t][k] - rows["paired"][t][k] for k in range(len(args.bits))]
               for t in ("i2t", "t2i")}
        result["unpaired_minus_paired"] = gap
        print("\nunpaired - paired: " + "; ".join(
            f"{t}: " + " ".join(f"{g:+.3f}" for g in gap[t]) for t in gap))
    if args.ablations:
        rows = {}
        for name, params in AMSH.VARIANTS.items():
            print(name, file=sys.stderr)
            rows[name] = table(ds, seeds, bits=args.bits, n_jobs=args.n_jobs, **params)
        result["ablations"] = rows
        print("\n## Table V ablations on Wiki (paired)\n")
        print(fmt(rows, args.bits))
    if args.select:
        scores = select(ds, seeds[:2])
        result["selection"] = [{"eta": p[0], "lam": p[1], "beta": p[2], "val_map": s} for p, s in scores]
        print("\n## validation grid (top 5)\n")
        for p, s in scores[:5]:
            print(f"eta={p[0]} lam={p[1]} beta={p[2]}: {s:.4f}")
    if args.timing:
        result["fit_seconds_median"] = fit_times(ds, seeds, args.bits, args.n_jobs)
        print(f"\n## time per fit (median of {len(seeds)} seeds, n_jobs={args.n_jobs})\n")
        print("| " + " | ".join(str(b) for b in args.bits) + " bits |")
        print("|" + "---|" * len(args.bits))
        print("| " + " | ".join(f"{result['fit_seconds_median'][str(b)]:.2f} s" for b in args.bits) + " |")
    result["wall_seconds"] = time.perf_counter() - t0
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
