"""Plots of evaluation results (matplotlib, optional extra ``cmhash[plot]``).

Every plot reads the public JSON documents of :mod:`cmhash.protocol` / :mod:`cmhash.bench`
(evaluations, benchmarks, sweeps, scale tables) and says in its title which dataset, database
encoding and training (and which PR-curve kind) it shows; results that differ in one of these
(or in the tie / zero-relevant policy, or in their constructor parameters) say so in their
legend labels instead, unless labels are given.

Axes start at 0 (mAP, precision, seconds, memory), or say in their label that they do not.
mAP plots draw chance level (the ``relevant_fraction`` of each task: the mAP of a random
ranking) as a dotted line, and the papers' published numbers of the plotted methods as
crosses (``published="comparable"``: only those measured under the run's protocol, split and
features; ``"all"``; ``"none"``).
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


#: legends with more entries than this go outside the axes (right), not over the curves
CROWDED_LEGEND = 8


def _legend(ax, *, force_outside: bool = False) -> None:
    n = len(ax.get_legend_handles_labels()[1])
    if force_outside or n > CROWDED_LEGEND:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    else:
        ax.legend(fontsize=7, loc="best")


def _param_text(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()))


def _labels(results: list[dict], fields=("dataset", "database", "training", "ties",
                                         "zero_relevant")) -> tuple[list[str], str]:
    """A legend label per result and a title suffix.

    What all results share (dataset, database encoding, ...) goes into the title; a field in
    which they differ goes into every label (``"batch (hashed database)"``), so that results
    of different protocols are never drawn side by side under one protocol's title. Results of
    one method with different constructor parameters name the parameters that differ
    (``"batch (omega=0.1)"``), so that two runs never share a legend label.
    """
    from .protocol import protocol_key

    keys = [{f: protocol_key(r)[f] for f in fields} for r in results]
    differ = [k for k in keys[0] if any(key[k] != keys[0][k] for key in keys)]
    shown = {"database": "{} database", "training": "{} training", "ties": "ties {}",
             "zero_relevant": "zero-relevant {}", "dataset": "{}"}

    def describe(key, fields):
        return ", ".join(shown[f].format(key[f]) for f in fields if key[f] is not None)

    params = [r.get("params") or {} for r in results]

    def varying(method):
        """Parameters that differ between the results of ``method`` (different methods have
        different parameters: comparing them would name every parameter of every method)."""
        same = [p for r, p in zip(results, params) if r["method"] == method]
        names = sorted({k for p in same for k in p})
        return [k for k in names if any(p.get(k) != same[0].get(k) for p in same)]

    labels = []
    for res, key, p in zip(results, keys, params):
        extra = ", ".join(x for x in (describe(key, differ),
                                      _param_text({k: p.get(k, "default")
                                                   for k in varying(res["method"])}))
                          if x)
        labels.append(f"{res['method']} ({extra})" if extra else res["method"])
    common = describe(keys[0], [f for f in ("dataset", "database", "training")
                                if f in fields and f not in differ])
    return _numbered(labels), common


def _numbered(labels: list[str]) -> list[str]:
    """Labels that occur more than once numbered (``batch #1``, ``batch #2``): two curves
    never share a legend entry."""
    counts = {lab: labels.count(lab) for lab in labels}
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        if counts[lab] > 1:
            seen[lab] = seen.get(lab, 0) + 1
            lab = f"{lab} #{seen[lab]}"
        out.append(lab)
    return out


def _given_labels(labels, given, what="result") -> list[str]:
    """``given`` (``--label``, one per result) in place of the automatic labels."""
    if not given:
        return _numbered(labels)
    if len(given) != len(labels):
        raise ValueError(f"--label given {len(given)} time(s) for {len(labels)} {what}(s): give "
                         f"one label per {what}, in the order of the files")
    return list(given)


def _first_run(res: dict, bits: int) -> dict:
    """The first seed's run of ``res`` at ``bits`` (a ValueError naming the bit lengths that
    ``res`` has, if none)."""
    for run in res["runs"]:
        if run["bits"] == bits:
            return run
    raise ValueError(f"{res['method']} has no run with {bits} bits (it has {res['bits']})")


def _bits_of(res: dict, bits) -> list[int]:
    """The bit lengths of ``res`` to draw: ``bits`` (each must be in the result) or all."""
    if not bits:
        return list(res["bits"])
    missing = [b for b in bits if b not in res["bits"]]
    if missing:
        raise ValueError(f"{res['method']} has no run with {missing} bits (it has {res['bits']})")
    return [b for b in res["bits"] if b in bits]


def _chance(res: dict, task: str) -> float | None:
    """The result's chance level for ``task`` (``relevant_fraction``; None in older files)."""
    value = res["runs"][0].get("tasks", {}).get(task, {}).get("relevant_fraction")
    return float(value) if value is not None else None


def _y_from_zero(ax, values, label: str) -> None:
    """Start the y axis at 0 for non-negative data; say so in the label when it cannot."""
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if values.size and values.min() >= 0:
        ax.set_ylim(bottom=0, top=max(float(values.max()) * 1.08, 1e-12))
        ax.set_ylabel(label)
    else:
        ax.set_ylabel(f"{label}\n(axis does not start at 0)")


def _published_marks(res: dict, task: str, bits: list[int], mode: str) -> list[tuple]:
    """``[(label, bits, values)]``: published rows of ``res``'s method at these bits."""
    from .bench import DISPLAY, _dataset_key
    from .published import published_rows

    if mode == "none":
        return []
    name = DISPLAY.get(res["method"], res["method"]).lower()
    rows: dict[tuple, dict[int, float]] = {}
    for b in bits:
        for row in published_rows(_dataset_key(res["dataset"]["name"]), task, b, res):
            if row.method.lower() != name or (mode == "comparable" and not row.comparable):
                continue
            rows.setdefault((row.where, row.differences), {})[b] = row.value
    return [(f"{res['method']} published ({where}{'; differs: ' + ', '.join(d) if d else ''})",
             sorted(v), [v[b] for b in sorted(v)]) for (where, d), v in sorted(rows.items())]


def plot_map_vs_bits(results: list[dict], path, *, bits=None, labels=None,
                     published: str = "comparable") -> Path:
    """mAP (mean, ± std over seeds when there are several) against code length, one panel
    per task, with chance level and the published numbers of the plotted methods."""
    plt = _plt()
    tasks = _tasks(results[0])
    auto, common = _labels(results)
    labels = _given_labels(auto, labels)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    drawn_bits = sorted({b for res in results for b in _bits_of(res, bits)})
    for ax, task in zip(axes[0], tasks):
        ys = []
        for res, label in zip(results, labels):
            bs = _bits_of(res, bits)
            mean = [res["summary"][str(b)][f"map_{task}"]["mean"] for b in bs]
            std = [res["summary"][str(b)][f"map_{task}"]["std"] for b in bs]
            several = len(res["seeds"]) > 1
            line = ax.errorbar(bs, mean, yerr=std if several else None, marker="o", capsize=3,
                               label=label + ("" if several else " (1 seed)"))
            ys += list(np.add(mean, std))
            for plabel, pb, pv in _published_marks(res, task, bs, published):
                ax.plot(pb, pv, linestyle="--", marker="x", color=line[0].get_color(),
                        alpha=0.7, label=plabel)
                ys += pv
        chances = sorted({round(c, 6) for res in results if (c := _chance(res, task)) is not None})
        for c in chances:
            ax.axhline(c, color="grey", linestyle=":", linewidth=1.2,
                       label=f"chance ({c:.3f}: fraction of relevant items)")
            ys.append(c)
        ax.set_xscale("log", base=2)
        ax.set_xticks(drawn_bits, [str(b) for b in drawn_bits])
        ax.minorticks_off()
        ax.set_xlabel("code length (bits)")
        _y_from_zero(ax, ys, "mAP")
        ax.set_title(f"{task.upper()} — {common}" if common else task.upper())
        ax.grid(alpha=0.3)
        _legend(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def plot_curves(results: list[dict], path, *, bits: int | None = None, labels=None) -> Path:
    """Rank-based PR curve, radius-based PR curve and precision@K for each task.

    Uses the first seed's run at ``bits`` (default: the largest) of each result; the results
    must have been produced with ``curves=True`` (``cmhash evaluate --curves``).
    """
    plt = _plt()
    tasks = _tasks(results[0])
    auto, common = _labels(results)
    labels = _given_labels(auto, labels)
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
            chance = _chance(res, task)
            if chance is not None:
                for ax in row:
                    ax.axhline(chance, color="grey", linestyle=":", linewidth=1.2,
                               label=f"chance ({chance:.3f})" if ax is row[0] else None)
        row[0].set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
                   title=f"{task.upper()} PR curve (rank-based, interpolated)")
        row[1].set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
                   title=f"{task.upper()} PR curve (radius-based, one point per radius)\n"
                         "per query; a query retrieving nothing has precision 0")
        row[2].set(xlabel="K (top-K retrieved)", ylabel="precision@K", xscale="log",
                   ylim=(0, 1.02), title=f"{task.upper()} precision@K")
        for ax in row:
            ax.grid(alpha=0.3)
        if len(results) > CROWDED_LEGEND // 2:      # one legend for the row, beside it
            _legend(row[-1], force_outside=True)
        else:
            for ax in row:
                ax.legend(fontsize=7)
    if common:
        fig.suptitle(common)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def plot_convergence(results: list[dict], path, *, bits=None, labels=None) -> Path:
    """Objective per iteration (first seed of each bit length), normalised by its start; a
    ValueError if no result records an objective."""
    plt = _plt()
    auto, common = _labels(results, fields=("dataset", "training"))  # no evaluation involved
    labels = _given_labels(auto, labels)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    drawn, ys = 0, []
    for res, name in zip(results, labels):
        for b in _bits_of(res, bits):
            run = _first_run(res, b)
            obj = np.asarray(run.get("objective") or [], dtype=float)
            if obj.size and np.isfinite(obj[0]) and obj[0] != 0:
                ax.plot(np.arange(1, obj.size + 1), obj / obj[0], marker=".",
                        label=f"{name} {b} bits, seed {run['seed']}")
                ys += list(obj / obj[0])
                drawn += 1
    if not drawn:
        raise ValueError(f"results have no objective values to plot (methods "
                         f"{sorted({r['method'] for r in results})} record none, or it starts "
                         f"at 0)")
    ax.set(xlabel="iteration", title=f"Convergence — {common}" if common else "Convergence")
    _y_from_zero(ax, ys, "objective / objective at iteration 1")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _sweep_positions(values):
    """x positions and scale of swept values: numbers on a linear, log or symlog axis, other
    values (strings, tuples) at 0, 1, 2, ... with their text as tick labels."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not numeric:
        return list(range(len(values))), "categorical"
    arr = np.asarray(values, dtype=float)
    pos = arr[arr > 0]
    if pos.size >= 2 and pos.max() / pos.min() >= 100:
        return list(arr), ("log" if pos.size == arr.size else "symlog")
    return list(arr), "linear"


def plot_sweep(docs: list[dict], path, *, bits=None, labels=None) -> Path:
    """mAP against the swept parameter's value (``cmhash sweep`` documents), one panel per
    task, one line per document and bit length (± std over seeds when there are several)."""
    from .bench import _identical_values_note

    plt = _plt()
    first = docs[0]
    tasks = [k for k in first["points"][0]["summary"][str(first["bits"][0])] if k.startswith("map_")]
    auto = [f"{d['method']} {d['param']} ({d['dataset']}, {d['protocol']['database']} database)"
            for d in docs]
    labels = _given_labels(auto, labels, "sweep file")
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    notes = []
    for ax, task in zip(axes[0], tasks):
        ys, scale = [], "linear"
        for doc, label in zip(docs, labels):
            values = [pt["value"] for pt in doc["points"]]
            x, scale = _sweep_positions(values)
            several = len(doc["seeds"]) > 1
            for b in _bits_of({"method": doc["method"], "bits": doc["bits"]}, bits):
                mean = [pt["summary"][str(b)][task]["mean"] for pt in doc["points"]]
                std = [pt["summary"][str(b)][task]["std"] for pt in doc["points"]]
                ax.errorbar(x, mean, yerr=std if several else None, marker="o", capsize=3,
                            label=f"{label}, {b} bits" + ("" if several else " (1 seed)"))
                ys += list(np.add(mean, std))
            if scale == "categorical":
                ax.set_xticks(x, [str(v) for v in values])
        if scale in ("log", "symlog"):
            ax.set_xscale(scale, **({"linthresh": min(v for v in x if v > 0)}
                                    if scale == "symlog" else {}))
        ax.set_xlabel(", ".join(sorted({d["param"] for d in docs})))
        _y_from_zero(ax, ys, f"{task.removeprefix('map_').upper()} mAP")
        ax.set_title(f"{task.removeprefix('map_').upper()} mAP vs "
                     f"{', '.join(sorted({d['param'] for d in docs}))}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for doc in docs:
        note = _identical_values_note(doc, tasks)
        if note:
            notes.append(note)
    if notes:
        fig.text(0.01, 0.01, "\n".join(notes), fontsize=7, va="bottom")
        fig.tight_layout(rect=(0, 0.06 * len(notes), 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_scale(docs: list[dict], path, *, bits=None, labels=None) -> Path:
    """Training time and peak memory against the training size n (``cmhash scale``
    documents), with the least-squares line of the time (and its R² from three sizes on)."""
    plt = _plt()
    auto = [f"{d['method']} ({d['data']})" for d in docs]
    labels = _given_labels(auto, labels, "scale file")
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    ts, ms = [], []
    for doc, label in zip(docs, labels):
        doc_bits = sorted({r["bits"] for r in doc["rows"]})
        for b in (doc_bits if not bits else [b for b in doc_bits if b in bits]):
            rows = sorted((r for r in doc["rows"] if r["bits"] == b), key=lambda r: r["n"])
            n = [r["n"] for r in rows]
            t = [r["train_seconds"] for r in rows]
            m = [r["peak_rss_bytes"] / 2 ** 30 for r in rows]
            line = ax_t.plot(n, t, marker="o", label=f"{label}, {b} bits")[0]
            fit = doc.get("linear_fit", {}).get(str(b))
            if fit:
                xs = np.array([min(n), max(n)], dtype=float)
                r2 = (f", R² {fit['r2_linear']:.3f}" if fit.get("r2_linear") is not None
                      else ", no R² from 2 sizes")
                ax_t.plot(xs, fit["intercept"] + fit["seconds_per_1k"] / 1000 * xs, "--",
                          color=line.get_color(), alpha=0.6,
                          label=f"linear fit: {fit['seconds_per_1k']:.3f} s / 1,000{r2}")
            ax_m.plot(n, m, marker="o", label=f"{label}, {b} bits")
            ts += t
            ms += m
    for ax in (ax_t, ax_m):
        ax.set_xlim(left=0)
        ax.set_xlabel("training size n")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _y_from_zero(ax_t, ts, "training seconds (wall)")
    _y_from_zero(ax_m, ms, "peak RSS (GiB, whole process)")
    ax_t.set_title("Training time vs n")
    ax_m.set_title("Peak memory vs n")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


# ------------------------------------------------------------------------- plot files
def read_plot_file(path) -> dict:
    """``{"format": ..., "docs": [...], "path": path}`` of a JSON file of ``cmhash evaluate`` /
    ``bench`` (format ``cmhash-evaluation``: its result documents, checked), ``sweep`` or
    ``scale``; anything else is a ValueError naming the file."""
    from .protocol import read_json, read_results

    doc = read_json(path)
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if fmt == "cmhash-sweep":
        if not doc.get("points") or not doc.get("bits"):
            raise ValueError(f"{path} is a `cmhash sweep` file without points")
        return {"format": fmt, "docs": [doc], "path": str(path)}
    if fmt == "cmhash-scale":
        if not doc.get("rows"):
            raise ValueError(f"{path} is a `cmhash scale` file without rows")
        return {"format": fmt, "docs": [doc], "path": str(path)}
    if fmt not in ("cmhash-evaluation", "cmhash-bench"):
        raise ValueError(f"{path} is not a results file of `cmhash evaluate`, `bench`, `sweep` "
                         f"or `scale` (format {fmt!r})")
    return {"format": "cmhash-evaluation", "docs": read_results(path, doc), "path": str(path)}


_KIND_FORMAT = {"map": "cmhash-evaluation", "curves": "cmhash-evaluation",
                "convergence": "cmhash-evaluation", "sweep": "cmhash-sweep",
                "scale": "cmhash-scale"}
_FORMAT_COMMAND = {"cmhash-evaluation": "`cmhash evaluate` / `bench`",
                   "cmhash-sweep": "`cmhash sweep`", "cmhash-scale": "`cmhash scale`"}


def plot_documents(files: list[dict], path, *, kind: str = "map", bits=None, labels=None,
                   published: str = "comparable") -> Path:
    """Draw the documents of :func:`read_plot_file` as ``kind`` (``map``, ``curves``,
    ``convergence``: evaluation results; ``sweep``; ``scale``). ``bits`` restricts the bit
    lengths (curves: one), ``labels`` replaces the legend labels (one per result)."""
    want = _KIND_FORMAT[kind]
    for f in files:
        if f["format"] != want:
            hint = next((k for k, v in _KIND_FORMAT.items() if v == f["format"]), "map")
            raise ValueError(f"--kind {kind} draws files of {_FORMAT_COMMAND[want]}; {f['path']} "
                             f"is a file of {_FORMAT_COMMAND[f['format']]} (try --kind {hint})")
    docs = [d for f in files for d in f["docs"]]
    if kind == "map":
        return plot_map_vs_bits(docs, path, bits=bits, labels=labels, published=published)
    if kind == "curves":
        if bits and len(bits) > 1:
            raise ValueError(f"--kind curves draws one bit length, got --bits {bits}")
        return plot_curves(docs, path, bits=bits[0] if bits else None, labels=labels)
    if kind == "convergence":
        return plot_convergence(docs, path, bits=bits, labels=labels)
    if kind == "sweep":
        return plot_sweep(docs, path, bits=bits, labels=labels)
    return plot_scale(docs, path, bits=bits, labels=labels)
