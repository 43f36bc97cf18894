"""``cmhash reproduce``: rebuild a seed paper's comparison tables on the data given.

For every table of the paper (``src/cmhash/published/<paper>.json``) whose dataset is the one
given, every row that cmhash implements is run under the paper's protocol (its bit lengths, its
metric: full-ranking mAP or mAP@R; its database policy) and printed beside the published
number. Rows whose method is not implemented, and tables whose dataset was not given, are
listed as such -- never dropped silently.

Protocol per paper (``PAPER_PROTOCOLS``): the shallow papers (ASCMH, ASFOH, AMSH) report the
learned-database protocol (NOTES.md); for the deep papers (TA-ADCMH, SDCH) the database
encoding is not stated, so both the learned and the hashed database are reported, each
labelled. Hyper-parameters: the method's preset for the dataset when it has one (named in the
output), else its defaults; with ``tuned=BUDGET`` every row is first tuned with the same
budget on validation splits of the training set (:mod:`cmhash.tune`), starting from that
preset, so the comparison is fair.

Figures the data allows: precision-recall curves (rank- and radius-based) and precision@K of
every implemented row at one code length, and mAP against code length.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from ._io import atomic_write
from .base import available_methods, get_method
from .published import load_published
from .protocol import run_evaluation

__all__ = ["PAPERS", "PAPER_PROTOCOLS", "resolve_row", "paper_tables", "reproduce",
           "reproduce_markdown"]

logger = logging.getLogger(__name__)

PAPERS = ("ascmh", "asfoh", "amsh", "ta-adcmh", "sdch")

#: database policies and seeds per paper (NOTES.md; the papers' own statements)
#: ``paper_runs``: how many runs the paper averaged (reported; the default here is 3 seeds)
PAPER_PROTOCOLS = {
    "ascmh": {"databases": ["learned"], "paper_runs": 20},
    "asfoh": {"databases": ["learned"], "paper_runs": None},
    "amsh": {"databases": ["learned"], "paper_runs": None},
    "ta-adcmh": {"databases": ["learned", "hashed"], "paper_runs": None},
    "sdch": {"databases": ["learned", "hashed"], "paper_runs": 5},
}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def resolve_row(row: str):
    """A published row name -> ``(method, params, setting)`` or None when not implemented.

    ``"SCRATCH"`` -> the registered method ``scratch``; ``"AMSH-k"`` -> ``amsh`` with its
    ``AMSH-k`` variant; ``"AMSH (unpaired)"`` -> ``amsh`` with unpaired training;
    ``"DCMH [3]"`` (a citation) -> ``dcmh``.
    """
    name = re.sub(r"\s*\[\d+\]\s*$", "", row).strip()
    setting = "paired"
    if name.lower().endswith("(unpaired)"):
        name, setting = name[: -len("(unpaired)")].strip(), "unpaired"
    methods = available_methods()
    by_norm = {_norm(m): m for m in methods}
    if _norm(name) in by_norm:
        return by_norm[_norm(name)], {}, setting
    for m in methods:
        for variant, params in (getattr(get_method(m), "VARIANTS", None) or {}).items():
            if _norm(variant) == _norm(name):
                return m, dict(params), setting
    return None


def paper_tables(paper: str) -> list[dict]:
    """The paper's published tables, grouped: one entry per (table, dataset, metric, setting)
    with the tasks it has (``{"i2t": rows, "t2i": rows}``)."""
    if paper not in PAPERS:
        raise ValueError(f"unknown paper {paper!r}; choose one of {list(PAPERS)}")
    groups: dict = {}
    for t in load_published():
        if t["file"] != f"{paper}.json":
            continue
        key = (t.get("table", ""), t["dataset"], t.get("metric", "map"),
               t.get("setting") or "paired")
        g = groups.setdefault(key, {"table": key[0], "dataset": key[1], "metric": key[2],
                                    "setting": key[3], "bits": list(t["bits"]), "tasks": {}})
        g["tasks"][t["task"]] = t["rows"]
    return list(groups.values())


def _metric_kwargs(metric: str):
    """Evaluation options and the run key for a published metric, or None (not an mAP)."""
    if metric == "map":
        return {}, "map"
    m = re.fullmatch(r"map@(\d+)", metric)
    if m:
        return {"top_r": int(m.group(1))}, "map_at_r"
    return None


def _dataset_key(dataset) -> str:
    name = (dataset.name or "").lower()
    return re.sub(r"\[.*\]$", "", name)


def _row_value(run_doc, task, key, b):
    """Mean over seeds of ``key`` (map or map_at_r) for ``task`` at ``b`` bits."""
    if key == "map":
        return run_doc["summary"][str(b)][f"map_{task}"]["mean"]
    vals = [r["tasks"][task]["map_at_r"] for r in run_doc["runs"] if r["bits"] == b]
    return sum(vals) / len(vals)


def reproduce(paper: str, dataset, *, seeds: int = 3, tuned: int | None = None,
              tune_bits=(32,), storage: str | None = None, out_dir=None, figures: bool = True,
              curve_bits: int | None = None, verbose: bool = False,
              dataset_source: str | None = None) -> dict:
    """Rebuild ``paper``'s tables on ``dataset``; returns the JSON document (see module doc).

    ``out_dir``: where ``reproduce-<paper>.md``, ``.json`` and the figures are written.
    """
    tables = paper_tables(paper)
    proto = PAPER_PROTOCOLS[paper]
    seeds = int(seeds)
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    key = _dataset_key(dataset)
    doc = {"format": "cmhash-reproduce", "paper": paper, "dataset": dataset.name,
           "dataset_source": dataset_source, "seeds": seeds, "tuned_budget": tuned,
           "paper_runs": proto["paper_runs"], "databases": proto["databases"],
           "tables": [], "figures": []}
    cache: dict = {}        # (method, params json, setting, database, bits, metric) -> result
    tuned_params: dict = {}
    for t in tables:
        entry = {k: t[k] for k in ("table", "dataset", "metric", "setting", "bits")}
        entry["rows"] = []
        if t["dataset"] != key:
            entry["status"] = f"dataset {t['dataset']!r} not given (data: {dataset.name!r})"
            doc["tables"].append(entry)
            continue
        mk = _metric_kwargs(t["metric"])
        if mk is None:
            entry["status"] = f"metric {t['metric']!r} is not an mAP table: not rebuilt"
            doc["tables"].append(entry)
            continue
        eval_kw, run_key = mk
        entry["status"] = "rebuilt"
        names = sorted({r for rows in t["tasks"].values() for r in rows})
        for row in names:
            published = {task: rows.get(row) for task, rows in t["tasks"].items()}
            resolved = resolve_row(row)
            rec = {"row": row, "published": published}
            if resolved is None:
                rec["status"] = "not implemented in cmhash"
                entry["rows"].append(rec)
                continue
            method, variant, setting = resolved
            if setting != t["setting"] and t["setting"] != "paired":
                setting = t["setting"]
            cls = get_method(method)
            if setting == "unpaired" and not getattr(cls, "supports_unpaired", False):
                rec["status"] = f"{method} has no unpaired training"
                entry["rows"].append(rec)
                continue
            preset = (getattr(cls, "PRESETS", None) or {}).get(key)
            params = {**(preset or {}), **variant}
            rec.update(method=method, setting=setting,
                       hparams=(f"preset {key!r}" if preset else "defaults"))
            if tuned:
                tkey = (method, json.dumps(variant, sort_keys=True))
                if tkey not in tuned_params:
                    from .tune import tune
                    res = tune(method, dataset, bits=tune_bits, budget=int(tuned),
                               storage=storage, start=params, verbose=verbose,
                               study_name=f"reproduce-{paper}-{method}-{_norm(row)}-{key}")
                    tuned_params[tkey] = res["params"]
                params = {**tuned_params[tkey], **variant}
                rec["hparams"] = f"tuned, budget {tuned} (start: {rec['hparams']})"
            rec["params"] = params
            rec["ours"] = {}
            for database in proto["databases"]:
                ckey = (method, json.dumps(params, sort_keys=True, default=str), setting,
                        database, tuple(t["bits"]), json.dumps(eval_kw, sort_keys=True))
                if ckey not in cache:
                    try:
                        cache[ckey] = run_evaluation(
                            method, dataset, bits=t["bits"], seeds=seeds, params=params,
                            database=database, unpaired=(setting == "unpaired"),
                            curves=figures, verbose=verbose, dataset_source=dataset_source,
                            **eval_kw)
                    except (ValueError, TypeError, RuntimeError, ArithmeticError) as exc:
                        cache[ckey] = exc
                res = cache[ckey]
                if isinstance(res, Exception):
                    rec["ours"][database] = {"error": f"{type(res).__name__}: {res}"}
                    continue
                rec["ours"][database] = {
                    task: [_row_value(res, task, run_key, b) for b in t["bits"]]
                    for task in t["tasks"]}
                rec.setdefault("_results", {})[database] = res
            entry["rows"].append(rec)
        doc["tables"].append(entry)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if figures:
            doc["figures"] = _figures(doc, out_dir, paper, curve_bits)
    results = {}
    for entry in doc["tables"]:
        for rec in entry["rows"]:
            for db, res in rec.pop("_results", {}).items():
                results.setdefault(f"{rec['row']}|{db}", res)
    doc["results"] = list(results.values())
    if out_dir is not None:
        with atomic_write(out_dir / f"reproduce-{paper}.json", "w") as fh:
            fh.write(json.dumps(doc, indent=2, default=str))
        with atomic_write(out_dir / f"reproduce-{paper}.md", "w") as fh:
            fh.write(reproduce_markdown(doc))
    return doc


def _figures(doc, out_dir: Path, paper: str, curve_bits) -> list[str]:
    """PR / precision@K curves and mAP-vs-bits of the implemented rows (one file per table
    and database)."""
    try:
        from .plots import plot_curves, plot_map_vs_bits
    except ImportError as exc:  # pragma: no cover - matplotlib missing
        logger.warning("no figures: %s", exc)
        return []
    written = []
    for entry in doc["tables"]:
        for db in doc["databases"]:
            results = [rec["_results"][db] for rec in entry["rows"]
                       if db in rec.get("_results", {})]
            if not results:
                continue
            stem = (f"{paper}-{_norm(entry['table'])}-{entry['dataset']}-{entry['setting']}-"
                    f"{db}")
            bits = curve_bits if curve_bits in entry["bits"] else entry["bits"][len(
                entry["bits"]) // 2]
            try:
                written.append(str(plot_curves(results, out_dir / f"{stem}-curves.png",
                                               bits=bits)))
                written.append(str(plot_map_vs_bits(results, out_dir / f"{stem}-map.png")))
            except ImportError as exc:  # matplotlib missing
                logger.warning("no figures: %s", exc)
                return written
    return written


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.4f}"


def reproduce_markdown(doc: dict) -> str:
    """The rebuilt tables: one Markdown table per (table, task, database); published and ours
    side by side; rows not implemented and tables not rebuilt listed as such."""
    lines = [f"# {doc['paper'].upper()}: the paper's tables rebuilt on {doc['dataset']}", "",
             f"Seeds per cell: {doc['seeds']}"
             + (f" (the paper averaged {doc['paper_runs']} runs)" if doc.get("paper_runs")
                else "") + "; database: "
             f"{' and '.join(doc['databases'])} (each labelled); "
             + (f"every row tuned with the same budget ({doc['tuned_budget']} trials) on "
                f"validation splits of the training set." if doc["tuned_budget"] else
                "hyper-parameters: the method's preset for this dataset, else its defaults."),
             ""]
    skipped = []
    for entry in doc["tables"]:
        title = f"{entry['table']}, {entry['dataset']}, {entry['metric']}" + (
            f", {entry['setting']}" if entry["setting"] != "paired" else "")
        if entry["status"] != "rebuilt":
            skipped.append(f"- {title}: {entry['status']}")
            continue
        tasks = sorted({task for rec in entry["rows"] for task in rec["published"]})
        for db in doc["databases"]:
            for task in tasks:
                lines += [f"## {title}: {task.upper()}, {db} database", "",
                          "| row | " + " | ".join(f"{b} bits (published / ours)"
                                                  for b in entry["bits"]) + " | hyper-parameters |",
                          "|---|" + "---|" * (len(entry["bits"]) + 1)]
                for rec in entry["rows"]:
                    pub = rec["published"].get(task) or [None] * len(entry["bits"])
                    ours = rec.get("ours", {}).get(db, {})
                    if "status" in rec:
                        cells = [f"{_fmt(p)} / —" for p in pub]
                        hp = rec["status"]
                    elif "error" in ours:
                        cells = [f"{_fmt(p)} / error" for p in pub]
                        hp = ours["error"]
                    else:
                        cells = [f"{_fmt(p)} / **{_fmt(o)}**" for p, o in zip(pub, ours[task])]
                        hp = rec["hparams"]
                    lines.append(f"| {rec['row']} | " + " | ".join(cells) + f" | {hp} |")
                lines.append("")
    if skipped:
        lines += ["## Tables not rebuilt", ""] + skipped + [""]
    if doc.get("figures"):
        lines += ["## Figures", ""] + [f"- {Path(f).name}" for f in doc["figures"]] + [""]
    return "\n".join(lines)
