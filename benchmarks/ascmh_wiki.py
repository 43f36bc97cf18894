"""ASCMH on Wiki: hyper-parameter selection on a validation split, then the native-split table.

Protocol (docs/methods/ascmh.md): native Wiki split (2,173 train = retrieval, 693 queries);
queries encoded by the learned hash functions, database = the LEARNED codes of the training
set with the training labels; stable ties; relevance = share >= 1 label; mAP over the full
ranking; mean of ``--seeds`` seeds.

Selection never touches the 693 queries: ``select`` holds out 20 % of the training set
(``CrossModalDataset.validation_split(0.2, random_state=s)``, s = 0 and 1) as validation
queries, trains on the remaining 1,738 items (which are also the learned database), and ranks
the grid by the mean of I->T and T->I mAP over 16/32/64/128 bits, both splits and ``--seeds``
model seeds (the image ridge is chosen by I->T, the text ridge by T->I).

    python benchmarks/ascmh_wiki.py select [--seeds 1] [--json sel.json]
    python benchmarks/ascmh_wiki.py eval [--seeds 5] [--params '{"lambda_h": 0.1}'] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from cmhash.data.loaders import load_dataset
from cmhash.methods.ascmh import ASCMH
from cmhash.metrics import mean_average_precision

WIKI = Path(os.environ.get("CMHASH_SHARED", Path(__file__).resolve().parents[2] / "shared")) \
    / "datasets" / "wiki" / "wiki_data.mat"
BITS = [16, 32, 64, 128]
DATA_PATH = [str(WIKI)]
#: BATCH from the authors' code on this data and protocol (issue #5) and the paper's Table 2
REFERENCE = {
    "BATCH (authors' code)": {"i2t": [0.365, 0.374, 0.394, 0.395],
                              "t2i": [0.739, 0.745, 0.748, 0.758]},
    "ASCMH (paper, Table 2)": {"i2t": [0.3664, 0.3948, 0.3911, 0.3950],
                               "t2i": [0.7481, 0.7607, 0.7590, 0.7628]},
}

#: first search (lambda = lambda_1 = lambda_2, omega; see the doc page): lambda = 5,000, omega = 0.01
BASE = {"omega": 0.01, "lambda_image": 5000.0, "lambda_text": 5000.0}
#: second search: kernel anchors per modality (image, text) and how they are picked; the
#: hash-function ridge lambda_h is chosen per modality from RIDGES on the same fits
GRID = {"anchor_method": ["random", "kmeans"], "n_anchors": [[500, 1000], [1000, 1000]]}
RIDGES = [1e-5, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]


def evaluate(h, ds):
    qL, dL = ds.labels_of("query"), ds.labels_of("train")
    i2t = mean_average_precision(h.encode(ds.get("query", "image"), "image"),
                                 h.learned_codes("text"), qL, dL)
    t2i = mean_average_precision(h.encode(ds.get("query", "text"), "text"),
                                 h.learned_codes("image"), qL, dL)
    return i2t, t2i


def select(ds, seeds, verbose=True):
    """GRID x RIDGES on validation splits 0 and 1 of the training set (never the queries)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from asfoh_common import validation_grid
    return validation_grid(ASCMH, BASE, GRID, "lambda_h", RIDGES, seeds=seeds,
                           data=DATA_PATH[0],
                           log=(lambda m: print(m, flush=True)) if verbose else (lambda m: None))


def run_eval(ds, seeds, params, verbose=True):
    out = {}
    for bits in BITS:
        runs = []
        for seed in seeds:
            h = ASCMH(bits, random_state=seed, **params)
            h.fit(ds.get("train", "image"), ds.get("train", "text"), ds.labels_of("train"))
            runs.append((*evaluate(h, ds), h.train_seconds_))
        a = np.array(runs)
        out[bits] = {"i2t": float(a[:, 0].mean()), "t2i": float(a[:, 1].mean()),
                     "i2t_std": float(a[:, 0].std()), "t2i_std": float(a[:, 1].std()),
                     "train_seconds": float(a[:, 2].mean())}
        if verbose:
            print(f"{bits:4d} bits: I->T {out[bits]['i2t']:.4f}  T->I {out[bits]['t2i']:.4f}  "
                  f"({out[bits]['train_seconds']:.2f} s)", flush=True)
    return out


def markdown(out):
    lines = ["| task | row | " + " | ".join(f"{b} bits" for b in BITS) + " |",
             "|---|---|" + "---|" * len(BITS)]
    for task, label in (("i2t", "I->T"), ("t2i", "T->I")):
        lines.append(f"| {label} | ASCMH (cmhash) | "
                     + " | ".join(f"{out[b][task]:.3f}" for b in BITS) + " |")
        for name, ref in REFERENCE.items():
            lines.append(f"| {label} | {name} | " + " | ".join(f"{v:.3f}" for v in ref[task]) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["select", "eval"])
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (select 3, eval 5)")
    ap.add_argument("--params", default=None,
                    help="JSON dict of ASCMH parameters for eval (default: PRESETS['wiki'])")
    ap.add_argument("--data", default=str(WIKI))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not Path(args.data).exists():
        sys.exit(f"Wiki data not found at {args.data}")
    ds = load_dataset(args.data)
    DATA_PATH[0] = args.data
    if args.command == "select":
        seeds = list(range(args.seeds or 1))
        rows = select(ds, seeds)
        best = rows[0]
        print("best:", {**BASE, **best["point"],
                        "lambda_h": [best["ridge_image"], best["ridge_text"]]},
              f"val score {best['score']:.4f}")
        result = {"base": BASE, "grid": GRID, "ridges": RIDGES, "seeds": seeds,
                  "ranking": rows}
    else:
        seeds = list(range(args.seeds or 5))
        params = json.loads(args.params) if args.params else dict(ASCMH.PRESETS["wiki"])
        out = run_eval(ds, seeds, params)
        print(markdown(out))
        result = {"params": params, "seeds": seeds, "results": {str(b): v for b, v in out.items()},
                  "reference": REFERENCE}
    result["environment"] = {"python": platform.python_version(), "numpy": np.__version__,
                             "machine": platform.machine(),
                             "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
