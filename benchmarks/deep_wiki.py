"""Deep methods (TA-ADCMH, SDCH, ...) on Wiki with feature-vector (MLP) backbones.

Protocol: native Wiki split (2,173 train = retrieval, 693 queries); queries encoded by the
query network of the task (``encode(X, q, task=(q, d))``); the database is either the LEARNED
training codes of the other modality (``learned_codes(d, task=(q, d))``) or the training set
encoded by the database network (``encode(X_train, d, task=(q, d))``, "hashed"); stable ties;
relevance = share >= 1 label; mAP over the full ranking; mean of ``--seeds`` seeds.

Method-agnostic: any registered deep method (``--method ta-adcmh|sdch|dcmh``); the class's
``PRESETS["wiki"]`` is applied unless ``--no-preset`` or ``--hparams FILE`` (a file written by
``cmhash tune``, whose parameters replace the preset); ``--param key=value`` overrides.

    python benchmarks/deep_wiki.py --method ta-adcmh
    python benchmarks/deep_wiki.py --method sdch --bits 16 32 --seeds 0 --json out.json
    python benchmarks/deep_wiki.py --method ta-adcmh --select     # validation split grid
    python benchmarks/deep_wiki.py --method dcmh --hparams benchmarks/results/hparams/dcmh.json
"""
from __future__ import annotations

import argparse
import ast
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from cmhash._io import atomic_write
from cmhash.base import get_method
from cmhash.data.loaders import load_dataset
from cmhash.metrics import mean_average_precision
from cmhash.tune import load_hparams

WIKI = Path(os.environ.get("CMHASH_SHARED", Path(__file__).resolve().parents[2] / "shared")) \
    / "datasets" / "wiki" / "wiki_data.mat"

#: BATCH from the authors' code on the same protocol (learned database), and the 0.95x bar
BATCH_REFERENCE = {"i2t": [0.365, 0.374, 0.394, 0.395], "t2i": [0.739, 0.745, 0.748, 0.758]}
BITS = [16, 32, 64, 128]

#: validation grid of --select (TA-ADCMH, weights per likelihood row as in PRESETS["wiki"],
#: i.e. normalize_likelihood=True; see docs/methods/ta-adcmh.md for the runs behind the choice)
TA_GRID = {"nu": [1e-3, 1e-1], "mu": [0.01, 0.1], "quant": [0.01, 0.1]}


def _parse_params(items):
    out = {}
    for item in items or []:
        k, _, v = item.partition("=")
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def evaluate(h, Xq, Tq, Lq, Xd, Td, Ld):
    """mAP of both tasks with the learned and the hashed (network-encoded) database."""
    it, ti = ("image", "text"), ("text", "image")
    qi, qt = h.encode(Xq, "image", task=it), h.encode(Tq, "text", task=ti)
    return {
        "i2t_learned": mean_average_precision(qi, h.learned_codes("text", task=it), Lq, Ld),
        "t2i_learned": mean_average_precision(qt, h.learned_codes("image", task=ti), Lq, Ld),
        "i2t_hashed": mean_average_precision(qi, h.encode(Td, "text", task=it), Lq, Ld),
        "t2i_hashed": mean_average_precision(qt, h.encode(Xd, "image", task=ti), Lq, Ld),
    }


def _validation_data(ds):
    """(train image, text, labels, query image, text, labels) of validation_split(0.2, seed 0)
    of the training set: the held-out 20 % are the queries, the query set is never used."""
    val = ds.validation_split(0.2, random_state=0)
    return (val.get("train", "image"), val.get("train", "text"), val.labels_of("train"),
            val.get("query", "image"), val.get("query", "text"), val.labels_of("query"))


def run_one(cls, params, bits, seed, data):
    Xtr, Ttr, Ltr, Xq, Tq, Lq = data
    h = cls(bits, random_state=seed, **params)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    h.fit(Xtr, Ttr, Ltr)
    res = evaluate(h, Xq, Tq, Lq, Xtr, Ttr, Ltr)
    res.update(train_seconds=time.perf_counter() - wall0, train_cpu_seconds=time.process_time() - cpu0)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="ta-adcmh")
    ap.add_argument("--bits", type=int, nargs="+", default=BITS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--param", action="append", help="key=value parameter override")
    ap.add_argument("--no-preset", action="store_true", help="do not apply PRESETS['wiki']")
    ap.add_argument("--hparams", metavar="FILE",
                    help="parameters from a file written by `cmhash tune` (instead of the preset)")
    ap.add_argument("--select", action="store_true",
                    help="grid on validation_split(0.2, random_state=0) of the training set")
    ap.add_argument("--validate", action="store_true",
                    help="run the given parameters on validation_split(0.2, random_state=0) of "
                         "the training set (queries = the held-out 20 %%) instead of the query set")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--data", default=str(WIKI))
    args = ap.parse_args(argv)

    cls = get_method(args.method)
    if args.hparams:
        params = load_hparams(args.hparams, args.method)
    else:
        params = {} if args.no_preset else dict(getattr(cls, "PRESETS", {}).get("wiki", {}))
    params.update(_parse_params(args.param))
    params.setdefault("device", "auto")
    ds = load_dataset(args.data)
    Xtr, Ttr, Ltr = ds.get("train", "image"), ds.get("train", "text"), ds.labels_of("train")
    out = {"method": args.method, "params": params, "hparams": args.hparams, "protocol": "wiki native split; stable ties; "
           "relevance: share >= 1 label; full-ranking mAP", "machine": platform.platform(),
           "python": sys.version.split()[0], "runs": []}

    if args.select:
        data = _validation_data(ds)
        for nu, mu, q in itertools.product(TA_GRID["nu"], TA_GRID["mu"], TA_GRID["quant"]):
            p = {**params, "nu1": nu, "nu2": nu, "mu1": mu, "mu2": mu, "lambda1": q,
                 "beta1": q, "lambda2": q, "beta2": q}
            for bits in args.bits:
                res = run_one(cls, p, bits, args.seeds[0], data)
                res.update(bits=bits, nu=nu, mu=mu, quant=q)
                out["runs"].append(res)
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                  for k, v in res.items()}), flush=True)
    else:
        if args.validate:
            data = _validation_data(ds)
            Xtr, Ttr, Ltr = data[:3]
            print("validation split of the training set (not the query set)")
        else:
            data = (Xtr, Ttr, Ltr, ds.get("query", "image"), ds.get("query", "text"),
                    ds.labels_of("query"))
        for bits in args.bits:
            for seed in args.seeds:
                res = run_one(cls, params, bits, seed, data)
                res.update(bits=bits, seed=seed)
                out["runs"].append(res)
                _write(out, args.json)
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                  for k, v in res.items()}), flush=True)
        print(f"\n{args.method} on Wiki, mean of seeds {args.seeds}")
        print("| bits | I->T learned | T->I learned | I->T hashed | T->I hashed | 0.95 x BATCH (I->T / T->I) | train CPU s / wall s |")
        print("|---|---|---|---|---|---|---|")
        summary = {}
        for bits in args.bits:
            rs = [r for r in out["runs"] if r["bits"] == bits]
            keys = ("i2t_learned", "t2i_learned", "i2t_hashed", "t2i_hashed", "train_seconds",
                    "train_cpu_seconds")
            m = {k: float(np.mean([r[k] for r in rs])) for k in keys}
            m.update({f"{k}_std": float(np.std([r[k] for r in rs], ddof=1)) if len(rs) > 1
                      else 0.0 for k in keys[:4]})
            summary[bits] = m
            ref = ""
            if bits in BITS:
                j = BITS.index(bits)
                ref = f"{0.95 * BATCH_REFERENCE['i2t'][j]:.3f} / {0.95 * BATCH_REFERENCE['t2i'][j]:.3f}"
            cells = " | ".join(f"{m[k]:.3f} ± {m[k + '_std']:.3f}" for k in
                               ("i2t_learned", "t2i_learned", "i2t_hashed", "t2i_hashed"))
            print(f"| {bits} | {cells} | {ref} | {m['train_cpu_seconds']:.0f} / {m['train_seconds']:.0f} |")
        out["summary"] = summary
    _write(out, args.json)


def _write(out, path):
    """The results so far (atomic: an interrupted run leaves the previous complete file)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as fh:
            fh.write(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
