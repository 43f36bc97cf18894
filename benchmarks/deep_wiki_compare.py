"""Merge benchmarks/deep_wiki.py result files (several methods / bit lengths) into one table:
mean ± std over seeds per method, bit length, task and database, and for every cell whether
TA-ADCMH and SDCH reach DCMH's mean. With ``--storage`` the tuning studies of that Optuna
storage (every trial: state, validation score, parameters) are stored beside the results.

    python benchmarks/deep_wiki_compare.py benchmarks/results/deep_wiki_tuned/*.json \\
        --storage sqlite:///benchmarks/results/deep_wiki_tune.sqlite3 \\
        --json benchmarks/results/deep_wiki_tuned.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cmhash._io import atomic_write

METRICS = ("i2t_hashed", "t2i_hashed", "i2t_learned", "t2i_learned")
BASELINE, CHALLENGERS = "dcmh", ("ta-adcmh", "sdch")


def merge(paths) -> dict:
    """{method: {"params", "hparams", "runs": [...]}} of the result files (runs keyed by
    (bits, seed); a repeated run is an error)."""
    methods: dict = {}
    for path in paths:
        doc = json.loads(Path(path).read_text())
        m = methods.setdefault(doc["method"], {"params": doc["params"],
                                               "hparams": doc.get("hparams"), "runs": []})
        if m["params"] != doc["params"]:
            raise ValueError(f"{path}: parameters differ from the other files of {doc['method']}")
        seen = {(r["bits"], r["seed"]) for r in m["runs"]}
        for run in doc["runs"]:
            if (run["bits"], run["seed"]) in seen:
                raise ValueError(f"{path}: run bits={run['bits']} seed={run['seed']} repeated")
            m["runs"].append(run)
    return methods


def summarise(methods: dict) -> dict:
    """{method: {bits: {metric: {"mean", "std", "n"}, "train_seconds": mean}}}."""
    out = {}
    for name, m in methods.items():
        cells = {}
        for bits in sorted({r["bits"] for r in m["runs"]}):
            rs = [r for r in m["runs"] if r["bits"] == bits]
            cell = {k: {"mean": float(np.mean([r[k] for r in rs])),
                        "std": float(np.std([r[k] for r in rs], ddof=1)) if len(rs) > 1 else 0.0,
                        "n": len(rs), "seeds": sorted(r["seed"] for r in rs)} for k in METRICS}
            cell["train_seconds"] = float(np.mean([r["train_seconds"] for r in rs]))
            cells[bits] = cell
        out[name] = cells
    return out


def compare(summary: dict) -> dict:
    """{challenger: {metric: {bits: challenger mean - DCMH mean}}} where both have the cell."""
    base = summary.get(BASELINE, {})
    out = {}
    for c in CHALLENGERS:
        if c not in summary:
            continue
        out[c] = {k: {b: summary[c][b][k]["mean"] - base[b][k]["mean"]
                      for b in summary[c] if b in base} for k in METRICS}
    return out


def studies(storage: str) -> list[dict]:
    import optuna

    out = []
    for s in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        out.append({"study": s.study_name, "trials": [
            {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
             "start": bool(t.user_attrs.get("start")), "diverged": t.user_attrs.get("diverged"),
             "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
             if t.datetime_complete and t.datetime_start else None}
            for t in study.trials]})
    return out


def markdown(summary: dict, diffs: dict) -> str:
    lines = []
    for db in ("hashed", "learned"):
        for task, arrow in (("i2t", "I→T"), ("t2i", "T→I")):
            k = f"{task}_{db}"
            bits = sorted({b for cells in summary.values() for b in cells})
            lines += [f"\n{arrow}, {db} database (mean ± std of seeds)\n",
                      "| method | " + " | ".join(str(b) for b in bits) + " |",
                      "|---|" + "---|" * len(bits)]
            for name, cells in summary.items():
                row = [f"{cells[b][k]['mean']:.3f} ± {cells[b][k]['std']:.3f}" if b in cells
                       else "" for b in bits]
                lines.append(f"| {name} | " + " | ".join(row) + " |")
            for c, d in diffs.items():
                row = [f"{d[k][b]:+.3f}" if b in d[k] else "" for b in bits]
                lines.append(f"| {c} − dcmh | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--storage", help="Optuna storage of the tuning studies (stored beside)")
    ap.add_argument("--json", help="write the merged document here")
    args = ap.parse_args(argv)
    methods = merge(args.files)
    summary = summarise(methods)
    diffs = compare(summary)
    print(markdown(summary, diffs))
    doc = {"methods": {k: {"params": v["params"], "hparams": v["hparams"]}
                       for k, v in methods.items()},
           "summary": summary, "minus_dcmh": diffs,
           "runs": {k: v["runs"] for k, v in methods.items()}}
    if args.storage:
        doc["tuning"] = studies(args.storage)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(args.json, "w") as fh:
            fh.write(json.dumps(doc, indent=1))
    return doc


if __name__ == "__main__":
    main()
