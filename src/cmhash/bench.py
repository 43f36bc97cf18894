"""Benchmark harness: several methods x bits x seeds, Markdown + JSON, papers side by side.

Also the generic sweeps used by the method issues: a hyper-parameter sensitivity sweep
(ASCMH Fig. 2 style) and training time / peak memory versus n (ASCMH Table 1, BATCH/ASFOH
scale checks), each (n, bits) measured in a fresh subprocess so peak memory is its own.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterable

import numpy as np

from .protocol import (BENCH_FORMAT, BENCH_VERSION, _jsonable, bit_list_of, check_method_setup,
                       check_param_names, check_protocol_options, protocol_key, run_evaluation,
                       seed_list_of)
from .progress import log, progress

#: names as they appear in the papers' tables
DISPLAY = {"batch": "BATCH", "ascmh": "ASCMH", "asfoh": "ASFOH", "amsh": "AMSH",
           "ta-adcmh": "TA-ADCMH", "sdch": "SDCH", "dcmh": "DCMH"}


def _check_protocol_setup(methods, dataset, bits, seeds, params, protocol) -> None:
    """Every method's setup (:func:`cmhash.protocol.check_method_setup`) and the protocol
    options, checked before the first fit of any method."""
    seed_list_of(seeds)
    check_protocol_options(protocol.get("database", "learned"), protocol.get("ties", "stable"),
                           protocol.get("zero_relevant", "zero"))
    for m in methods:
        try:
            check_method_setup(m, dataset, bits=bits, params=(params or {}).get(m),
                               database=protocol.get("database", "learned"),
                               unpaired=protocol.get("unpaired", False))
        except (ValueError, TypeError) as exc:
            if m not in str(exc):  # e.g. "n_iter must be >= 1": say whose parameter it is
                exc.args = (f"{m}: {exc}",)
            raise


def run_bench(methods, dataset, *, bits=(16, 32, 64, 128), seeds=5, params=None, verbose=True,
              dataset_source=None, **protocol) -> dict:
    """Run :func:`cmhash.protocol.run_evaluation` for each method; ``params[method]`` are
    that method's constructor parameters.

    Every method's parameters and the protocol are checked before the first fit. If a method
    then fails (or the run is interrupted), the exception propagates with the run named in its
    message and carries the methods completed so far as ``exc.partial_result``: a bench
    document whose ``incomplete`` field names the failed method, the error and the methods not
    run (``cmhash bench`` writes it before exiting).
    """
    methods = list(methods)
    params = params or {}
    _check_protocol_setup(methods, dataset, bits, seeds, params, protocol)
    results = []
    for i, m in enumerate(methods):
        try:
            results.append(run_evaluation(m, dataset, bits=bits, seeds=seeds,
                                          params=params.get(m), verbose=verbose,
                                          dataset_source=dataset_source, **protocol))
        except (Exception, KeyboardInterrupt) as exc:
            exc.partial_result = {
                "format": BENCH_FORMAT, "version": BENCH_VERSION, "results": results,
                "incomplete": {"method": m, "error": f"{type(exc).__name__}: {exc}",
                               "not_run": methods[i + 1:]}}
            raise
    return {"format": BENCH_FORMAT, "version": BENCH_VERSION, "results": results}


def _dataset_key(name: str) -> str:
    name = (name or "").lower()
    for key in ("wiki", "mirflickr25k", "nuswide", "iapr-tc12"):
        if name.startswith(key.replace("-", "")) or name.startswith(key):
            return key
    return name


#: what ``markdown_table`` prints of the papers' numbers: nothing, the rows measured under
#: the run's protocol on the same features (the default), or every row with its differences
PUBLISHED_CHOICES = ("none", "comparable", "all")


def format_mean_std(summary: dict, digits: int = 4) -> str:
    """``"0.7312 ± 0.0040"`` over several seeds, ``"0.7312"`` for one (the std of one seed is
    not a spread: "± 0.0000" was printed)."""
    if summary.get("n", 2) > 1:
        return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"
    return f"{summary['mean']:.{digits}f}"


def _seeds_note(n: int) -> str:
    return f"seeds: {n} (mean ± std)" if n > 1 else "seeds: 1 (no spread: one run per cell)"


def markdown_table(results: list[dict], *, published: str = "comparable") -> str:
    """One Markdown table per task: our mean +- std per bit length, then the papers' rows.

    The results must share the dataset, the protocol (database encoding, training, ties,
    zero-relevant policy) and the bit lengths (a ValueError otherwise: the header states one
    protocol for the whole table). ``published``: ``"none"``, ``"comparable"`` (the papers'
    rows whose stated protocol -- training setting, database encoding, split sizes, classes,
    feature dimensions -- does not differ from this run's; facts a paper does not state are
    named in the row) or ``"all"`` (every row, with its differences named). Each published
    row names its paper and table (and a non-paired setting: ``amsh Table III, unpaired``);
    rows left out are counted below the table. With one seed a cell is the mean alone.
    """
    from .published import published_rows

    if published not in PUBLISHED_CHOICES:
        raise ValueError(f"published must be one of {list(PUBLISHED_CHOICES)}, got {published!r}")
    if not results:
        return ""
    bits = results[0]["bits"]
    for res in results[1:]:
        for key, value in protocol_key(res).items():
            if value != protocol_key(results[0])[key]:
                raise ValueError(f"results differ in {key} ({protocol_key(results[0])[key]!r} "
                                 f"for {results[0]['method']}, {value!r} for {res['method']}); "
                                 f"one table states one protocol: tabulate them separately")
        if res["bits"] != bits:
            raise ValueError(f"results differ in bit lengths ({bits} for "
                             f"{results[0]['method']}, {res['bits']} for {res['method']})")
    tasks = [k.removeprefix("map_") for k in results[0]["runs"][0] if k.startswith("map_")]
    ds = results[0]["dataset"]["name"]
    proto = results[0]["protocol"]
    lines = [f"Dataset: **{ds}** - database: {proto['database']}, ties: {proto['ties']}, "
             f"zero-relevant queries: {proto['zero_relevant']}, training: {proto['training']}, "
             f"{_seeds_note(max(len(r['seeds']) for r in results))}", ""]
    for task in tasks:
        lines += [f"### {task.upper()} mAP", "",
                  "| method | " + " | ".join(f"{b} bits" for b in bits) + " | train s (max bits) |",
                  "|---|" + "---|" * (len(bits) + 1)]
        for res in results:
            cells = [format_mean_std(res["summary"][str(b)][f"map_{task}"]) for b in bits]
            t = res["summary"][str(bits[-1])]["train_seconds"]["mean"]
            lines.append(f"| cmhash {DISPLAY.get(res['method'], res['method'])} | "
                         + " | ".join(cells) + f" | {t:.2f} |")
        if published != "none":
            lines += _published_lines(published_rows, _dataset_key(ds), task, bits, results[0],
                                      published, len(bits))
        lines.append("")
    return "\n".join(lines)


def _published_lines(published_rows, dataset, task, bits, result, mode, n_bits) -> list[str]:
    """The published rows of one task (and a line counting those left out)."""
    rows: dict[tuple, dict[int, float]] = {}
    left_out: set[tuple] = set()
    for b in bits:
        for row in published_rows(dataset, task, b, result):
            key = (row.method, row.where, row.differences, row.unstated)
            if mode == "comparable" and not row.comparable:
                left_out.add(key)
                continue
            rows.setdefault(key, {})[b] = row.value
    lines = []
    for (method, where, diff, unstated), vals in sorted(rows.items()):
        label = f"{method} (published, {where}"
        if diff:
            label += "; differs: " + ", ".join(diff)
        if unstated:
            label += "; not stated: " + ", ".join(unstated)
        cells = [f"{vals[b]:.4f}" if b in vals else "-" for b in bits]
        lines.append(f"| {label}) | " + " | ".join(cells) + " | |")
    if left_out:
        lines += ["", f"_{len(left_out)} published rows measured under another protocol, split "
                      f"or features (or not stating them) are not shown (`--published all` "
                      f"lists them with their differences)._"]
    return lines


def sweep_markdown(doc: dict) -> str:
    """The Markdown table of a ``cmhash sweep`` document, with a note naming the values that
    gave identical results (the parameter had no effect between them)."""
    bits = doc["bits"]
    tasks = [k for k in doc["points"][0]["summary"][str(bits[0])] if k.startswith("map_")]
    seeds = len(doc["seeds"])
    lines = [f"{DISPLAY.get(doc['method'], doc['method'])} on {doc['dataset']}: {doc['param']} "
             f"sweep - database: {doc['protocol']['database']}, ties: {doc['protocol']['ties']}, "
             f"{_seeds_note(seeds)}", "",
             f"| {doc['param']} | bits | " + " | ".join(tasks) + " |",
             "|---|---|" + "---|" * len(tasks)]
    for pt in doc["points"]:
        for b in bits:
            s = pt["summary"][str(b)]
            lines.append(f"| {pt['value']} | {b} | "
                         + " | ".join(format_mean_std(s[t]) for t in tasks) + " |")
    note = _identical_values_note(doc, tasks)
    return "\n".join(lines + (["", note] if note else []))


def _identical_values_note(doc: dict, tasks) -> str:
    """A sentence naming the swept values whose results are identical at every bit length and
    task (all of them: the parameter had no effect with these settings), else ''."""
    groups: dict[tuple, list] = {}
    for pt in doc["points"]:
        key = tuple((pt["summary"][str(b)][t]["mean"], pt["summary"][str(b)][t]["std"])
                    for b in doc["bits"] for t in tasks)
        groups.setdefault(key, []).append(pt["value"])
    same = [vals for vals in groups.values() if len(vals) > 1]
    if not same:
        return ""
    if len(same) == 1 and len(same[0]) == len(doc["points"]):
        return (f"Note: every value of {doc['param']} gave identical results: {doc['param']} "
                f"has no effect on {doc['method']} with these settings.")
    listed = "; ".join(", ".join(str(v) for v in vals) for vals in same)
    return (f"Note: identical results for {doc['param']} = {listed}: the parameter had no "
            f"effect between these values.")


# --------------------------------------------------------------------------- sweeps
SWEEP_FORMAT = "cmhash-sweep"
SWEEP_VERSION = 1


def param_sweep(method, dataset, param, values, *, bits=(32,), seeds=3, params=None,
                verbose=True, **protocol) -> dict:
    """mAP of ``method`` as one hyper-parameter varies (e.g. ASCMH's omega, Fig. 2).

    ``param`` must be one of the method's constructor parameters (not ``n_bits`` /
    ``random_state``, which come from ``bits`` / ``seeds``); it overrides the same key in
    ``params``. Every value is checked before the first fit. The document records the
    protocol (database, ties, ...) of its points.
    """
    values = list(values) if not isinstance(values, (str, bytes)) else [values]
    if not values:
        raise ValueError("values must name at least one value of the swept parameter")
    if param in ("n_bits", "random_state"):
        raise ValueError(f"cannot sweep {param!r}: the code lengths come from bits and the "
                         f"seeds from seeds")
    bits = bit_list_of(bits)
    # the parameter's name, then each value (with the fixed params) before the first fit
    check_param_names(method, [param])
    _check_protocol_setup([], dataset, bits, seeds, {}, protocol)
    for value in values:
        check_method_setup(method, dataset, bits=bits, params={**(params or {}), param: value},
                           database=protocol.get("database", "learned"),
                           unpaired=protocol.get("unpaired", False))
    out, res = [], None
    for value in progress(values, desc=f"{method} {param} sweep", verbose=verbose, leave=True):
        p = {**(params or {}), param: value}
        res = run_evaluation(method, dataset, bits=bits, seeds=seeds, params=p, verbose=False,
                             **protocol)
        out.append({"value": value, "summary": res["summary"]})
    return {"format": SWEEP_FORMAT, "version": SWEEP_VERSION, "method": method, "param": param,
            "params": _jsonable({k: v for k, v in (params or {}).items() if k != param}),
            "dataset": dataset.name, "protocol": res["protocol"],
            "bits": bits, "seeds": res["seeds"], "points": out}


def _scale_worker(spec: dict) -> dict:
    """Fit one (method, n, bits) on synthetic data; report seconds and peak RSS (this process)."""
    import resource

    from .base import make_hasher
    from .data import load_dataset

    ds = load_dataset(spec["data"], random_state=spec.get("seed", 0),
                      n_train=spec["n"])
    views, labels = ds.views("train"), ds.labels_of("train")
    rss_before = _current_rss_bytes()
    hasher = make_hasher(spec["method"], n_bits=spec["bits"], random_state=spec.get("seed", 0),
                         **spec.get("params", {}))
    on = spec.get("dask")
    if on:
        return _scale_on_dask(spec, on, hasher, views, labels, ds.modality_names, rss_before)
    start, cpu_start = time.perf_counter(), time.process_time()
    hasher.fit_views(views, labels, names=ds.modality_names)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"method": spec["method"], "n": int(labels.shape[0]), "bits": spec["bits"],
            "train_seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_bytes": int(peak),
            "rss_before_fit_bytes": int(rss_before)}


def _scale_on_dask(spec, on, hasher, views, labels, names, rss_before) -> dict:
    """One scale point fitted on Dask (:func:`scale_table` ``dask``): the fit's seconds, the
    client's CPU seconds and peak RSS, and each worker's peak RSS."""
    from .cli_cluster import dask_fit
    from .distributed.cluster import make_client

    client = make_client(on.get("cluster"), on.get("scheduler"), on.get("worker_memory"))
    try:
        start, cpu_start = time.perf_counter(), time.process_time()
        dask_fit(client, on.get("kernel_features"))(hasher, views, labels, names, True)
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
        workers = client.run(_peak_rss_bytes)
    finally:
        cluster = client.cluster if on.get("cluster") else None
        client.close()
        if cluster is not None:
            cluster.close()
    return {"method": spec["method"], "n": int(labels.shape[0]), "bits": spec["bits"],
            "train_seconds": seconds, "cpu_seconds": cpu_seconds,
            "peak_rss_bytes": _peak_rss_bytes(), "rss_before_fit_bytes": int(rss_before),
            "worker_peak_rss_bytes": [int(workers[w]) for w in sorted(workers)]}


def _peak_rss_bytes() -> int:
    """This process's peak resident memory (bytes)."""
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            import os
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - non-Linux
        return 0


def _check_sizes(values, name: str, what: str) -> list[int]:
    """A non-empty list of positive integers (``ns``, ``bits`` of :func:`scale_table`; one
    integer stands for a list of one)."""
    if isinstance(values, (int, np.integer)) and not isinstance(values, (bool, np.bool_)):
        values = [values]
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a list of {what}, got {values!r}")
    out = list(values)
    if not out:
        raise ValueError(f"{name} must name at least one of the {what}, got an empty list")
    for v in out:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be {what} (positive integers), got {v!r}")
        if v < 1:
            raise ValueError(f"{name} must be {what} (positive integers), got {v}")
    return [int(v) for v in out]


def _worker_error(stdout: str) -> dict | None:
    """The ``{"error": ..., "type": ...}`` line a scale worker prints for bad input."""
    lines = stdout.strip().splitlines()
    try:
        doc = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and "error" in doc else None


#: scale_table reports the R^2 of its linear fit from this many training sizes on
MIN_POINTS_R2 = 3


def scale_table(method, data, ns, bits=(32,), *, params=None, seed=0, verbose=True,
                dask=None) -> dict:
    """Training time and peak memory versus training size n, one subprocess per point.

    ``dask``: None (fit in the subprocess) or the Dask options ``{"cluster": "local:N" or
    None, "scheduler": ADDRESS or None, "worker_memory": ..., "kernel_features": ...}``: each
    point then fits on a cluster (a LocalCluster started by the subprocess, or the running one
    at ``scheduler``) and also reports each worker's peak RSS (``worker_peak_rss_bytes``;
    with ``scheduler``: since that worker started).

    ``data`` is a dataset spec (e.g. ``"synthetic:nuswide-like"``) whose retrieval set holds
    at least ``max(ns)`` items; each point trains on a random ``n``-subset. ``ns`` and
    ``bits`` are positive integers or non-empty lists of them (else a ValueError / TypeError
    before any fit); bad input met by a worker (an ``n`` above the retrieval size, a bad spec or
    parameter) is raised here as the worker's ValueError / TypeError, a crash of the worker as
    a RuntimeError.
    """
    ns = _check_sizes(ns, "ns", "training sizes")
    bits = _check_sizes(bits, "bits", "code lengths")
    rows = []
    for n in progress(ns, desc=f"{method} scale", verbose=verbose, leave=True):
        for b in bits:
            spec = {"method": method, "data": data, "n": n, "bits": b,
                    "params": params or {}, "seed": seed, "dask": dask}
            proc = subprocess.run([sys.executable, "-m", "cmhash.bench", json.dumps(spec)],
                                  capture_output=True, text=True)
            err = _worker_error(proc.stdout) if proc.returncode == 2 else None
            if err is not None:
                exc = TypeError if err.get("type") == "TypeError" else ValueError
                raise exc(f"scale point n={n}, bits={b}: {err['error']}")
            if proc.returncode != 0:
                raise RuntimeError(f"scale worker failed for n={n}, bits={b}:\n{proc.stderr[-2000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            workers = row.get("worker_peak_rss_bytes")
            log(f"  n={row['n']:>7} bits={b:>3}: {row['train_seconds']:.2f} s "
                f"({row['cpu_seconds']:.2f} s CPU), peak RSS "
                f"{row['peak_rss_bytes'] / 2**30:.2f} GiB"
                + (f", workers {', '.join(f'{w / 2**30:.2f}' for w in workers)} GiB"
                   if workers else ""), verbose)
    # least-squares fit t = a + b n per bit length: linear growth check. A line through two
    # points fits them exactly, so R^2 is given from three training sizes on (else None)
    fits = {}
    for b in bits:
        pts = [(r["n"], r["train_seconds"]) for r in rows if r["bits"] == b]
        if len({n for n, _ in pts}) >= 2:
            x, y = np.array(pts, dtype=float).T
            slope, intercept = np.polyfit(x, y, 1)
            pred = slope * x + intercept
            r2 = (1 - np.sum((y - pred) ** 2) / max(np.sum((y - y.mean()) ** 2), 1e-12)
                  if len(set(x)) >= MIN_POINTS_R2 else None)
            fits[str(b)] = {"seconds_per_1k": float(slope * 1000), "intercept": float(intercept),
                            "r2_linear": None if r2 is None else float(r2),
                            "n_sizes": len(set(x))}
    doc = {"format": "cmhash-scale", "method": method, "data": data, "rows": rows,
           "linear_fit": fits}
    if dask:
        doc["dask"] = {k: v for k, v in dask.items() if v is not None}
    return doc


def scale_markdown(doc: dict) -> str:
    on = doc.get("dask")
    where = (f" on Dask ({', '.join(f'{k} {v}' for k, v in on.items())})" if on else "")
    lines = [f"Training time and peak memory of {DISPLAY.get(doc['method'], doc['method'])} "
             f"on {doc['data']}{where}", ""]
    if on:
        lines += ["| n | bits | train s (wall) | client CPU s | client peak RSS GiB | "
                  "worker peak RSS GiB |", "|---|---|---|---|---|---|"]
    else:
        lines += ["| n | bits | train s (wall) | CPU s (all threads) | peak RSS GiB |",
                  "|---|---|---|---|---|"]
    for r in doc["rows"]:
        cells = (f"| {r['n']} | {r['bits']} | {r['train_seconds']:.2f} | "
                 f"{r['cpu_seconds']:.2f} | {r['peak_rss_bytes'] / 2**30:.2f} |")
        if on:
            cells += (" " + ", ".join(f"{w / 2**30:.2f}"
                                      for w in r.get("worker_peak_rss_bytes", [])) + " |")
        lines.append(cells)
    for b, f in doc["linear_fit"].items():
        r2 = (f"R² of a linear fit {f['r2_linear']:.3f}" if f.get("r2_linear") is not None
              else f"no R² (a line through {f.get('n_sizes', 2)} training sizes fits them "
                   f"exactly; it needs {MIN_POINTS_R2} or more)")
        lines.append(f"\n{b} bits: {f['seconds_per_1k']:.3f} s per 1,000 samples, {r2}")
    return "\n".join(lines)


if __name__ == "__main__":  # scale worker entry point
    try:
        _row = _scale_worker(json.loads(sys.argv[1]))
    except (ValueError, TypeError) as _exc:  # bad input: re-raised as such by scale_table
        print(json.dumps({"error": str(_exc), "type": type(_exc).__name__}))
        sys.exit(2)
    print(json.dumps(_row))
