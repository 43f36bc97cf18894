"""Plots of evaluation results (matplotlib, optional extra ``cmhash[plot]``).

Every plot reads the public JSON documents of :mod:`cmhash.protocol` / :mod:`cmhash.bench`
and says in its title which database encoding and which PR-curve kind it shows.
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


def plot_map_vs_bits(results: list[dict], path) -> Path:
    """mAP (mean ± std over seeds) against code length, one panel per task."""
    plt = _plt()
    tasks = _tasks(results[0])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for res in results:
            bits = res["bits"]
            mean = [res["summary"][str(b)][f"map_{task}"]["mean"] for b in bits]
            std = [res["summary"][str(b)][f"map_{task}"]["std"] for b in bits]
            ax.errorbar(bits, mean, yerr=std, marker="o", capsize=3, label=res["method"])
        ax.set_xscale("log", base=2)
        ax.set_xticks(results[0]["bits"], [str(b) for b in results[0]["bits"]])
        ax.set_xlabel("code length (bits)")
        ax.set_ylabel("mAP")
        ax.set_title(f"{task.upper()} — {results[0]['dataset']['name']} "
                     f"({results[0]['protocol']['database']} database)")
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
    fig, axes = plt.subplots(len(tasks), 3, figsize=(15, 4 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        for res in results:
            b = bits or res["bits"][-1]
            run = next(r for r in res["runs"] if r["bits"] == b)
            t = run.get("tasks", {}).get(task, {})
            if "pr_curve_ranking" not in t:
                raise ValueError("results have no curves; rerun evaluate with --curves")
            label = f"{res['method']} {b} bits"
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
    fig.suptitle(f"{results[0]['dataset']['name']} — {results[0]['protocol']['database']} database")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_convergence(results: list[dict], path) -> Path:
    """Objective per iteration (first seed of each bit length), normalised by its start."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for res in results:
        for b in res["bits"]:
            run = next(r for r in res["runs"] if r["bits"] == b)
            obj = np.asarray(run.get("objective") or [], dtype=float)
            if obj.size:
                ax.plot(np.arange(1, obj.size + 1), obj / obj[0], marker=".",
                        label=f"{res['method']} {b} bits")
    ax.set(xlabel="iteration", ylabel="objective / objective at iteration 1",
           title="Convergence")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
