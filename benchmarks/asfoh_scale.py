"""ASFOH training time and peak memory on the nuswide-like synthetic preset (32 bits, q = 1,200).

  python benchmarks/asfoh_scale.py            # all sizes, one subprocess each
  python benchmarks/asfoh_scale.py one N      # a single size (used by the driver)

Data: ``make_synthetic(preset="nuswide-like", random_state=0)`` -- 186,577 items, two sparse
bag-of-words modalities (500-d / 1,000-d), 10 labels, 2,000 queries; training on the first N
items of the 184,577-item training split (N = 25k, 50k, 100k, 184,577). Each size runs in a
fresh process so that its peak RSS (``resource.getrusage``) is its own; the increase of peak
RSS during ``fit`` is reported next to the total. Time = ``train_seconds_`` (kernel features,
Algorithm 1 and the hash functions). The full-size run is also evaluated (learned database,
stable ties, full ranking over the 184,577 training codes).
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "results"
SIZES = (25000, 50000, 100000, 184577)


def one(n: int, evaluate: bool):
    from cmhash.data.synthetic import make_synthetic
    from cmhash.methods.asfoh import ASFOH

    t0 = time.perf_counter()
    ds = make_synthetic(preset="nuswide-like", random_state=0)
    views, Y = ds.views("train"), ds.labels_of("train")
    views = [V[:n] for V in views]
    Y = Y[:n]
    keep = Y.sum(axis=0) > 0
    Y = Y[:, keep]
    gen = time.perf_counter() - t0
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
    m = ASFOH(32, n_anchors=1200, n_iter=10, random_state=0,
              **{k: v for k, v in ASFOH.PRESETS["nuswide"].items() if k != "n_anchors"})
    m.fit(views[0], views[1], Y)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res = dict(n=n, train_seconds=m.train_seconds_, data_seconds=gen, peak_rss_mib=rss1,
               peak_rss_before_fit_mib=rss0, fit_rss_increase_mib=rss1 - rss0,
               phi_mib=sum(n * k.anchors_.shape[0] * 4 for k in m.kernels_) / 2**20,
               objective=m.objective_, alpha=m.alpha_.tolist())
    if evaluate:
        from cmhash.metrics import mean_average_precision as mAP
        qv, qL = ds.views("query"), ds.labels_of("query")[:, keep]
        t = time.perf_counter()
        res["i2t"] = float(mAP(m.encode(qv[0], 0), m.learned_codes(1), qL, Y))
        res["t2i"] = float(mAP(m.encode(qv[1], 1), m.learned_codes(0), qL, Y))
        res["eval_seconds"] = time.perf_counter() - t
    print(json.dumps(res), flush=True)


def main():
    rows = []
    for n in SIZES:
        out = subprocess.run([sys.executable, __file__, "one", str(n), str(int(n == SIZES[-1]))],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print({k: v for k, v in rows[-1].items() if k not in ("objective",)}, flush=True)
    ns = np.array([r["n"] for r in rows], float)
    ts = np.array([r["train_seconds"] for r in rows])
    slope, icpt = np.polyfit(ns, ts, 1)
    fit = dict(seconds_per_100k=slope * 1e5, intercept=icpt,
               max_rel_dev=float(np.max(np.abs(slope * ns + icpt - ts) / ts)),
               loglog_exponent=float(np.polyfit(np.log(ns), np.log(ts), 1)[0]))
    print(fit)
    OUT.mkdir(exist_ok=True)
    (OUT / "asfoh_scale.json").write_text(json.dumps(dict(rows=rows, linear_fit=fit), indent=1))


def _size(text: str) -> int:
    """N of ``one N``: an integer in [1, 184,577] (the training split), else a usage error
    (0 failed deep inside the fit, a larger N silently trained on the whole split)."""
    try:
        n = int(text)
    except ValueError:
        n = None
    if n is None or not 1 <= n <= SIZES[-1]:
        print(f"asfoh_scale.py: error: N must be an integer in [1, {SIZES[-1]}] (the training "
              f"split of nuswide-like), got {text!r}", file=sys.stderr)
        sys.exit(2)
    return n


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        if len(sys.argv) < 3:
            print("usage: asfoh_scale.py one N [EVALUATE]", file=sys.stderr)
            sys.exit(2)
        one(_size(sys.argv[2]), bool(int(sys.argv[3])) if len(sys.argv) > 3 else False)
    else:
        main()
