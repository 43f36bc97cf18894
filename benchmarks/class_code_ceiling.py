"""What limits I->T on Wiki for the two-step kernel methods (diagnostic, no selection).

On Wiki every training item has exactly one of 10 labels. BATCH, ASCMH and ASFOH with their
``wiki`` presets all learn *pure class codes*: the training codes B take exactly 10 distinct
values, one per class (B = Y C with C the 10 x r class-code matrix). Their image hash function
is kernel ridge regression onto B, so it equals ``W = W_Y C`` with ``W_Y`` the ridge regression
onto the one-hot labels, and a query image is coded as ``sign(s(x) C)`` with ``s(x)`` its ten
ridge class scores. I->T mAP with the learned database is then fixed by two things only: the
ridge class scores and how the sign quantization against C preserves their order.

For each method, bit length, validation split (``validation_split(0.2, random_state=s)``,
s = 0, 1, never the query set) and model seed, this prints

* ``distinct``: distinct training codes, and ``purity``: share of items whose code is their
  class's majority code (1.000 = pure class codes);
* ``I->T``: the method's validation I->T mAP (learned database, stable ties);
* ``scores``: the same database ranked by the *unquantized* class scores of the same kernel
  features and ridge (rank the classes by s(x); database items inherit their class's rank) -
  the ceiling of any class-code method with this hash function.

    python benchmarks/class_code_ceiling.py [--bits 16 32 64 128] [--seeds 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from cmhash.base import get_method, make_hasher
from cmhash.data.loaders import load_dataset
from cmhash.metrics import mean_average_precision
from cmhash.solvers import ridge_regression

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from ascmh_wiki import WIKI  # noqa: E402  (the shared Wiki path)

METHODS = {"batch": "xi", "ascmh": "lambda_h", "asfoh": "xi"}


def image_ridge(est, attr: str) -> float:
    value = getattr(est, attr)
    return float(value[0] if isinstance(value, (list, tuple)) else value)


def class_score_map(scores: np.ndarray, query_class: np.ndarray, db_class: np.ndarray) -> float:
    """mAP when the database is ranked class by class in the order of the query's scores."""
    sizes = np.bincount(db_class, minlength=scores.shape[1])
    aps = np.empty(len(scores))
    for i, (s, c) in enumerate(zip(scores, query_class)):
        order = np.argsort(-s, kind="stable")
        before = sizes[order[:np.flatnonzero(order == c)[0]]].sum()
        hits = np.arange(1, sizes[c] + 1)
        aps[i] = np.mean(hits / (before + hits)) if sizes[c] else 0.0
    return float(aps.mean())


def run(bits, seeds, splits, verbose=True):
    full = load_dataset(str(WIKI))
    rows = []
    for split_seed in splits:
        ds = full.validation_split(0.2, random_state=split_seed)
        Ytr, Yq = ds.labels_of("train"), ds.labels_of("query")
        if Ytr.sum(1).max() > 1:
            raise SystemExit("this diagnostic assumes single-label data (Wiki)")
        ctr, cq = Ytr.argmax(1), Yq.argmax(1)
        Xtr, Xq = ds.get("train", "image"), ds.get("query", "image")
        for name, ridge_attr in METHODS.items():
            preset = getattr(get_method(name), "PRESETS", {}).get("wiki", {})
            for r in bits:
                for seed in range(seeds):
                    est = make_hasher(name, n_bits=r, random_state=seed, **preset)
                    est.fit(Xtr, ds.get("train", "text"), Ytr)
                    B = est.learned_codes("text")
                    C = np.array([np.where(B[ctr == c].mean(0) >= 0, 1, -1) for c in range(Ytr.shape[1])])
                    purity = float(np.mean(np.all(B == C[ctr], axis=1)))
                    i2t = mean_average_precision(est.encode(Xq, "image"), B, Yq, Ytr)
                    kern = est.kernels_[0]
                    W = ridge_regression(kern.transform(Xtr), (2.0 * Ytr - 1).astype(np.float32),
                                         image_ridge(est, ridge_attr))
                    ceiling = class_score_map(kern.transform(Xq) @ W.astype(np.float32), cq, ctr)
                    row = dict(method=name, bits=r, split=split_seed, seed=seed,
                               distinct=len(np.unique(B, axis=0)), purity=purity,
                               i2t=float(i2t), scores=ceiling)
                    rows.append(row)
                    if verbose:
                        print(f"{name:6s} {r:4d} split {split_seed} seed {seed}: distinct {row['distinct']:4d} "
                              f"purity {purity:.3f}  I->T {i2t:.4f}  scores {ceiling:.4f}",
                              file=sys.stderr, flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--splits", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--json")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    rows = run(a.bits, a.seeds, a.splits, verbose=not a.quiet)
    print("| method | bits | distinct codes | purity | val I->T | class-score ranking |")
    print("|---|---|---|---|---|---|")
    for name in METHODS:
        for r in a.bits:
            sel = [x for x in rows if x["method"] == name and x["bits"] == r]
            print(f"| {name} | {r} | {np.mean([x['distinct'] for x in sel]):.1f} | "
                  f"{np.mean([x['purity'] for x in sel]):.3f} | {np.mean([x['i2t'] for x in sel]):.4f} | "
                  f"{np.mean([x['scores'] for x in sel]):.4f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
