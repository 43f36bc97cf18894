"""ASFOH on the real Wiki data: hyper-parameter selection, main table and ablation table.

Protocol (NOTES.md): native split (2,173 train = retrieval / 693 query), learned database
(queries encoded by the hash functions, database = learned training codes B), stable ties,
relevance = shared label, mAP over the full ranking, mean over 5 seeds.

  python benchmarks/asfoh_wiki.py select   # grid on a validation split of the training set
  python benchmarks/asfoh_wiki.py table    # ASFOH (preset "wiki") at 16/32/64/128 bits
  python benchmarks/asfoh_wiki.py ablation # Table VI variants on Wiki

Selection never looks at the query set: 500 random training pairs (seed 12345) are held out as
validation queries and the remaining 1,673 are the training/retrieval set.
Run single-threaded BLAS on shared machines (OMP_NUM_THREADS=1).
"""
from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from asfoh_common import load_wiki, map_learned, mean_ap  # noqa: E402

from cmhash.methods.asfoh import ASFOH  # noqa: E402
from cmhash.solvers import gram, ridge_regression, sign  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
BITS = (16, 32, 64, 128)
SEEDS = (0, 1, 2, 3, 4)
ABLATION_SEEDS = (0, 1, 2)      # time-boxed: the ablation table is the mean of 3 seeds


def select():
    d = load_wiki()
    X, T, L = d["I_tr"], d["T_tr"], d["L_train"]
    rng = np.random.default_rng(12345)
    perm = rng.permutation(X.shape[0])
    va, tr = perm[:500], perm[500:]
    # beta barely acts under the paper's delta schedule (delta <= 3e-3 in 10 iterations, see
    # the doc page), rho only rescales R: both fixed to the paper's MIRFlickr values
    grid = dict(gamma=(2, 3), beta=(1e-1,), eta=(1e-1, 1e0, 1e2), omega=(1e-5, 1e-2, 1e0),
                rho=(1e-3,))
    xis = (1e-3, 1e-2, 1e-1, 1e0)
    rows = []
    keys = list(grid)
    for combo in itertools.product(*grid.values()):
        params = dict(zip(keys, combo))
        for bits in (16, 64):
            for seed in (0,):
                m = ASFOH(bits, random_state=seed, **params).fit(X[tr], T[tr], L[tr])
                phis = [k.transform(Z[tr]) for k, Z in zip(m.kernels_, (X, T))]
                grams = [gram(p) for p in phis]
                for xi in xis:
                    m.projections_ = [ridge_regression(p, m.codes_.astype(np.float32), xi,
                                                       gram_matrix=g) for p, g in zip(phis, grams)]
                    i2t, t2i = map_learned(m, X[va], T[va], L[va], L[tr])
                    rows.append(dict(params, xi=xi, bits=bits, seed=seed, i2t=i2t, t2i=t2i))
        print(params, flush=True)
        OUT.mkdir(exist_ok=True)
        (OUT / "asfoh_wiki_select.json").write_text(json.dumps(rows, indent=1))
    # aggregate: mean over bits and seeds of (i2t + t2i) / 2
    agg = {}
    for r in rows:
        key = tuple((k, r[k]) for k in keys + ["xi"])
        agg.setdefault(key, []).append((r["i2t"] + r["t2i"]) / 2)
    best = sorted(agg.items(), key=lambda kv: -np.mean(kv[1]))[:10]
    for key, vals in best:
        print(dict(key), round(float(np.mean(vals)), 4))


def _run(params, bits_list=BITS, seeds=SEEDS):
    d = load_wiki()
    out = {}
    for bits in bits_list:
        res = []
        for seed in seeds:
            t = time.perf_counter()
            m = ASFOH(bits, random_state=seed, **params).fit(d["I_tr"], d["T_tr"], d["L_train"])
            res.append(map_learned(m, d["I_te"], d["T_te"], d["L_test"], d["L_train"])
                       + (time.perf_counter() - t,))
        res = np.array(res)
        out[bits] = dict(i2t=float(res[:, 0].mean()), t2i=float(res[:, 1].mean()),
                         i2t_std=float(res[:, 0].std()), t2i_std=float(res[:, 1].std()),
                         seconds=float(res[:, 2].mean()))
        print(bits, out[bits], flush=True)
    return out


def table():
    res = _run(ASFOH.PRESETS["wiki"])
    OUT.mkdir(exist_ok=True)
    (OUT / "asfoh_wiki_table.json").write_text(json.dumps(res, indent=1))


def ablation():
    res = {}
    for name, var in ASFOH.VARIANTS.items():
        print(name, flush=True)
        res[name] = _run({**ASFOH.PRESETS["wiki"], **var}, seeds=ABLATION_SEEDS)
    OUT.mkdir(exist_ok=True)
    (OUT / "asfoh_wiki_ablation.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    {"select": select, "table": table, "ablation": ablation}[sys.argv[1]]()
