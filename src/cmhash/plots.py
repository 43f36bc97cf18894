"""Plots of evaluation results (matplotlib, optional extra ``cmhash[plot]``).

Every plot reads the public JSON documents of :mod:`cmhash.protocol` / :mod:`cmhash.bench`
and says in its title which dataset, database encoding and training (and which PR-curve kind)
it shows; results that differ in one of these (or in the tie / zero-relevant policy) say so in
their legend labels instead.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    try:
        import matplotlib
    except ModuleNotFoundError as exc:  # pragma: no cover - optional dependency
        raise ImportError("plots need matplotlib: pip install 'cmhash[plot]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _tasks(result):
    return [k.removeprefix("map_") for k in result["runs"][0] if k.startswith("map_")]


def _labels(results: list[dict], fields=("dataset", "database", "training", "ties",
                                         "zero_relevant")) -> tuple[list[str], str]:
    """A legend label per result and a title suffix.

    What all results share (dataset, database encoding, ...) goes into the title; a field in
    which they differ goes into every label (``"batch (hashed database)"``), so that results
    of different protocols are never drawn side by side under one protocol's title.
    """
    from .protocol import protocol_key

    keys = [{f: protocol_key(r)[f] for f in fields} for r in results]
    differ = [k for k in keys[0] if any(key[k] != keys[0][k] for key in keys)]
    shown = {"database": "{} database", "training": "{} training", "ties": "ties {}",
             "zero_relevant": "zero-relevant {}", "dataset": "{}"}

    def describe(key, fields):
        return ", ".join(shown[f].format(key[f]) for f in fields if key[f] is not None)

    labels = []
    for res, key in zip(results, keys):
        extra = describe(key, differ)
        labels.append(f"{res['method']} ({extra})" if extra else res["method"])
    common = describe(keys[0], [f for f in ("dataset", "database", "training")
                                if f in fields and f not in differ])
    return labels, common


def _first_run(res: dict, bits: int) -> dict:
    """The first seed's run of ``res`` at ``bits`` (a ValueError naming the bit lengths that
    ``res`` has, if none)."""
    for run in res["runs"]:
        if run["bits"] == bits:
            return run
    raise ValueError(f"{res['method']} has no run with {bits} bits (it has {res['bits']})")


def plot_map_vs_bits(results: list[dict], path) -> Path:
    """mAP (mean ± std over seeds) against code length, one panel per task."""
    plt = _plt()
    tasks = _tasks(results[0])
    labels, common = _labels(results)
    all_bits = sorted({b for res in results for b in res["bits"]})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for res, label in zip(results, labels):
            bits = res["bits"]
            mean = [res["summary"][str(b)][f"map_{task}"]["mean"] for b in bits]
            std = [res["summary"][str(b)][f"map_{task}"]["std"] for b in bits]
            ax.errorbar(bits, mean, yerr=std, marker="o", capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_bits, [str(b) for b in all_bits])
        ax.minorticks_off()
        ax.set_xlabel("code length (bits)")
        ax.set_ylabel("mAP (mean ± std over seeds)")
        ax.set_title(f"{task.upper()} — {common}" if common else task.upper())
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_curves(results: list[dict], path, *, bits: int | None = None) -> Path:
    """Rank-based PR curve, radius-based PR curve and precision@K for each task.

    Uses the first seed's run at ``bits`` (default: the largest) of each result; the results
    must have been produced with ``curves=True`` (``cmhash evaluate --curves``).
    """
    plt = _plt()
    tasks = _tasks(results[0])
    labels, common = _labels(results)
    fig, axes = plt.subplots(len(tasks), 3, figsize=(15, 4 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        for res, name in zip(results, labels):
            b = bits or res["bits"][-1]
            run = _first_run(res, b)
            t = run.get("tasks", {}).get(task, {})
            if not {"pr_curve_ranking", "pr_curve_radius", "precision_at_k"} <= set(t):
                raise ValueError(f"results have no curves ({res['method']}, {task}); rerun "
                                 f"evaluate with --curves")
            label = f"{name} {b} bits, seed {run['seed']}"
            row[0].plot(t["pr_curve_ranking"]["recall"], t["pr_curve_ranking"]["precision"],
                        marker=".", label=label)
            row[1].plot(t["pr_curve_radius"]["recall"], t["pr_curve_radius"]["precision"],
                        marker=".", label=label)
            row[2].plot(t["precision_at_k"]["k"], t["precision_at_k"]["precision"], marker="o",
                        label=label)
        row[0].set(xlabel="recall", ylabel="precision",
                   title=f"{task.upper()} PR curve (rank-based, interpolated)")
        row[1].set(xlabel="recall", ylabel="precision",
                   title=f"{task.upper()} PR curve (radius-based, one point per radius)\n"
                         "per query; a query retrieving nothing has precision 0")
        row[2].set(xlabel="K (top-K retrieved)", ylabel="precision@K", xscale="log",
                   title=f"{task.upper()} precision@K")
        for ax in row:
            ax.grid(alpha=0.3)
            ax.legend()
    if common:
        fig.suptitle(common)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_convergence(results: list[dict], path) -> Path:
    """Objective per iteration (first seed of each bit length), normalised by its start; a
    ValueError if no result records an objective."""
    plt = _plt()
    labels, common = _labels(results, fields=("dataset", "training"))  # no evaluation involved
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = 0
    for res, name in zip(results, labels):
        for b in res["bits"]:
            run = _first_run(res, b)
            obj = np.asarray(run.get("objective") or [], dtype=float)
            if obj.size and np.isfinite(obj[0]) and obj[0] != 0:
                ax.plot(np.arange(1, obj.size + 1), obj / obj[0], marker=".",
                        label=f"{name} {b} bits, seed {run['seed']}")
                drawn += 1
    if not drawn:
        raise ValueError(f"results have no objective values to plot (methods "
                         f"{sorted({r['method'] for r in results})} record none, or it starts "
                         f"at 0)")
    ax.set(xlabel="iteration", ylabel="objective / objective at iteration 1",
           title=f"Convergence — {common}" if common else "Convergence")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
