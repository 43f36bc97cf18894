"""``cmhash tune`` (Optuna search, :mod:`cmhash.tune`) and ``cmhash reproduce`` (a seed paper's
tables rebuilt, :mod:`cmhash.reproduce`)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["add_research_parsers", "cmd_tune", "cmd_reproduce"]


def add_research_parsers(sub, add_data, add_method_params) -> None:
    _add_tune(sub, add_data, add_method_params)
    _add_reproduce(sub, add_data)


def _add_reproduce(sub, add_data) -> None:
    from .reproduce import PAPERS
    p = sub.add_parser("reproduce", help="rebuild a seed paper's tables on the data given, "
                                         "ours beside the published numbers")
    p.add_argument("--paper", required=True, choices=list(PAPERS))
    add_data(p)
    p.add_argument("--seeds", type=int, default=3,
                   help="seeds per cell (default 3; the document says how many runs the "
                        "paper averaged)")
    p.add_argument("--tuned", type=int, metavar="BUDGET",
                   help="tune every row first with this many Optuna trials on validation "
                        "splits of the training set (the same budget for every row)")
    p.add_argument("--tune-bits", type=int, nargs="+", default=[32],
                   help="code lengths the tuning score averages over (default 32)")
    p.add_argument("--storage", help="Optuna storage for --tuned (default: "
                                     "sqlite:///cmhash-tune.sqlite3)")
    p.add_argument("--out-dir", default="reproduce",
                   help="folder for the Markdown, JSON and figures (default: reproduce)")
    p.add_argument("--curve-bits", type=int, help="code length of the PR / precision@K "
                                                  "figures (default: the table's middle one)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args):
    from .cli import _load_data
    from .reproduce import reproduce, reproduce_markdown

    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out-dir {str(out)!r} exists and is not a directory")
    if args.tuned is not None and args.tuned < 1:
        raise ValueError(f"--tuned must be a positive number of trials, got {args.tuned}")
    ds = _load_data(args)
    doc = reproduce(args.paper, ds, seeds=args.seeds, tuned=args.tuned,
                    tune_bits=args.tune_bits, storage=args.storage, out_dir=out,
                    figures=not args.no_figures, curve_bits=args.curve_bits,
                    verbose=not args.quiet, dataset_source=args.data)
    print(reproduce_markdown(doc))
    print(f"written: {out / ('reproduce-' + args.paper + '.md')}, "
          f"{out / ('reproduce-' + args.paper + '.json')}"
          + (f" and {len(doc['figures'])} figures" if doc["figures"] else ""))


def _add_tune(sub, add_data, add_method_params) -> None:
    p = sub.add_parser("tune", help="hyper-parameter search (Optuna TPE + pruning) on "
                                    "validation splits of the training set")
    p.add_argument("--method", required=True)
    add_data(p)
    p.add_argument("--bits", type=int, nargs="+", default=[32],
                   help="code lengths the validation score averages over (default 32)")
    p.add_argument("--budget", type=int, required=True,
                   help="finished trials the study should hold (a resumed study runs the rest)")
    p.add_argument("--storage", help="Optuna storage URL (default: "
                                     "sqlite:///cmhash-tune.sqlite3 in the current folder; any "
                                     "SQLAlchemy URL for a database shared by several processes)")
    p.add_argument("--study", help="study name (default: METHOD-DATASET-BITSb)")
    p.add_argument("--folds", type=int, default=3,
                   help="validation splits of the training set per trial (default 3)")
    p.add_argument("--val-size", type=float, default=0.2,
                   help="fraction of the training set held out per fold (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="sampler and split seed (default 0)")
    p.add_argument("--database", choices=["learned", "hashed"], default="learned",
                   help="validation database: the remaining training items' learned codes "
                        "(default; the shallow papers' protocol) or their hash-function codes "
                        "(hashed; the deep papers' protocol)")
    g = p.add_argument_group("deep methods (ta-adcmh, sdch, dcmh)")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N (every trial's fits)")
    g.add_argument("--epochs", type=int,
                   help="training epochs of every trial (n_epochs; the same cap for every "
                        "method of a comparison)")
    p.add_argument("--out", help="hyper-parameter file to write (default: "
                                 "hparams/STUDY.json); use it as --hparams FILE")
    p.add_argument("--evaluate", action="store_true",
                   help="then fit once on the whole training set with the best parameters and "
                        "evaluate once on the query split")
    add_method_params(p)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", help="write the tuning result (and evaluation) document here")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args):
    from .cli import _load_data, _method_params, _write_json
    from .tune import save_hparams, tune

    start = _method_params(args.method, args)     # --hparams / --variant / --param: start point
    out = Path(args.out) if args.out else None
    for path in (out, Path(args.json) if args.json else None):
        if path is not None and path.is_dir():
            raise ValueError(f"{str(path)!r} is a directory; give a file path")
    ds = _load_data(args)
    result = tune(args.method, ds, bits=args.bits, budget=args.budget, storage=args.storage,
                  study_name=args.study, start=start, n_folds=args.folds,
                  val_size=args.val_size, seed=args.seed, database=args.database,
                  verbose=not args.quiet)
    out = out or Path("hparams") / f"{result['study']}.json"
    save_hparams(result, out)
    start_txt = (f" (start point {result['start_value']:.4f})"
                 if result["start_value"] is not None else "")
    diverged = f", {result['n_diverged']} diverged" if result["n_diverged"] else ""
    print(f"{args.method}: best validation score {result['value']:.4f}{start_txt} after "
          f"{result['n_trials']} trials ({result['n_pruned']} pruned{diverged}); study "
          f"{result['study']!r} in {result['storage']}")
    print(f"best parameters: {json.dumps(result['params'])}")
    print(f"written to {out} (use: --hparams {out})")
    doc = {"tune": result}
    if args.evaluate:
        from .protocol import run_evaluation
        ev = run_evaluation(args.method, ds, bits=args.bits, seeds=[args.seed],
                            params=result["params"], database=args.database,
                            verbose=not args.quiet)
        doc["evaluation"] = ev
        for run in ev["runs"]:
            maps = ", ".join(f"{k[4:]} {v:.4f}" for k, v in run.items() if k.startswith("map_"))
            print(f"query split, {run['bits']} bits: {maps}")
    if args.json:
        _write_json(doc, args.json)
    sys.stdout.flush()
