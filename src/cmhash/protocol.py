"""The evaluation protocol: one fitted hasher on one dataset, and runs over bits x seeds.

Definitions of every metric and option are in docs/evaluation.md; the JSON written by
``cmhash evaluate/bench`` (``run_evaluation``) is the public format documented there.
"""
from __future__ import annotations

import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np

from . import __version__
from ._validation import check_choice, check_int, check_labels, check_n_bits
from .base import make_hasher
from .index import HammingIndex
from .metrics import (mean_average_precision, pr_curve_radius, pr_curve_ranking,
                      precision_at_k, precision_recall_within_radius)
from .progress import progress

RESULT_FORMAT = "cmhash-evaluation"
RESULT_VERSION = 1
BENCH_FORMAT = "cmhash-bench"
BENCH_VERSION = 1
DATABASES = {"learned", "hashed"}
TIES = {"stable", "random", "expected"}
ZERO_RELEVANT = {"zero", "skip"}
PRECISION_KS = (1, 10, 50, 100, 200, 500, 1000)


def task_name(query: str, database: str) -> str:
    """``"i2t"`` / ``"t2i"`` for image/text, else ``"<query>2<database>"``."""
    short = {"image": "i", "text": "t"}
    if query in short and database in short:
        return f"{short[query]}2{short[database]}"
    return f"{query}2{database}"


def cross_modal_tasks(names) -> list[tuple[str, str]]:
    """All ordered pairs of distinct modalities (image->text first for the usual two)."""
    return [(q, d) for q in names for d in names if q != d]


def _time_queries(db_codes, query_codes, n_bits) -> dict:
    """Seconds per query for top-100, top-1000 and radius-2 lookups (T_R100, T_R1000, T_H<=2)."""
    index = HammingIndex(n_bits)
    index.add(db_codes)
    m = query_codes.shape[0]
    out = {}
    for label, k in (("top100", 100), ("top1000", 1000)):
        start = time.perf_counter()
        index.search(query_codes, min(k, index.ntotal))
        out[label] = (time.perf_counter() - start) / m
    start = time.perf_counter()
    index.range_search(query_codes, 2)
    out["radius2"] = (time.perf_counter() - start) / m
    return out


def relevant_fraction(query_labels, db_labels, chunk: int = 1024) -> float:
    """Mean over queries of the fraction of database items relevant to the query (sharing a
    label): the mAP a random ranking approaches on a large database, i.e. chance level.

    Computed through the distinct label sets of the database (O(m u c) for u distinct sets,
    in query chunks): never an m x n matrix."""
    Q = np.asarray(query_labels) > 0
    D = np.asarray(db_labels) > 0
    if Q.shape[0] == 0 or D.shape[0] == 0:
        return float("nan")
    sets, counts = np.unique(D, axis=0, return_counts=True)
    sets = sets.astype(np.float32)
    total = 0.0
    for start in range(0, Q.shape[0], chunk):
        rel = (Q[start:start + chunk].astype(np.float32) @ sets.T) > 0     # (chunk, u)
        total += float((rel @ counts.astype(np.float64)).sum())
    return total / (Q.shape[0] * D.shape[0])


def _ms_per_item(seconds: float, n: int) -> float | None:
    """Milliseconds per item (None for an empty set)."""
    return 1000.0 * seconds / n if n else None


def _check_learned_database(database: str, dataset) -> None:
    """The learned database is the training set: it stands for the retrieval set only when the
    two are the same (paired and unpaired training alike)."""
    if database == "learned" and not dataset.train_is_retrieval:
        raise ValueError("database='learned' represents the retrieval set by the learned "
                         "training codes, so the training split must equal the retrieval split "
                         "(as in the wiki preset); use database='hashed' for this dataset")


def _check_fitted_on(hasher, dataset, unpaired_labels) -> None:
    """The learned codes stand for the database only when the model was fitted on this
    dataset's train split: compare its training-data fingerprint (:mod:`cmhash.fingerprint`)
    with the split (with ``unpaired_labels``: the labels and sizes, the features having been
    shuffled per modality). A model saved before fingerprints is not checked (a warning)."""
    from .base import unpaired_label_matrices
    from .fingerprint import check_same_training_data

    stored = getattr(hasher, "training_data_fingerprint_", None)
    what = "evaluate_hasher(database='learned')"
    if stored is None:
        warnings.warn(f"{what}: the model has no training-data fingerprint (saved by an older "
                      f"cmhash), so it cannot be checked that it was fitted on this dataset's "
                      f"train split; its learned codes are scored as that split's database",
                      UserWarning, stacklevel=3)
        return
    names = list(hasher.modality_names_)
    if unpaired_labels is None:
        views = [dataset.get("train", m) for m in names]
        labels = check_labels(dataset.labels_of("train"), views[0].shape[0],
                              require_nonempty_classes=False)
    else:
        views = None
        labels = unpaired_label_matrices(unpaired_labels, [L.shape[0] for L in unpaired_labels],
                                         names)
    check_same_training_data(stored, views, labels, names, what=what)


def seed_list_of(seeds) -> list:
    """``seeds`` as a list: a count N means seeds 0..N-1, a list is taken as given."""
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        seed_list = list(range(seeds))
    elif isinstance(seeds, (list, tuple, range, np.ndarray)):
        seed_list = list(seeds)
    else:
        raise TypeError(f"seeds must be a number of seeds or a list of seeds, got {seeds!r}")
    if not seed_list:
        raise ValueError("seeds must name at least one seed")
    return seed_list


def bit_list_of(bits) -> list[int]:
    """``bits`` (one code length or a list of them) as a checked, non-empty list."""
    if isinstance(bits, (int, np.integer)) and not isinstance(bits, bool):
        bits = [bits]
    elif not isinstance(bits, (list, tuple, range, np.ndarray)):
        raise TypeError(f"bits must be a code length or a list of code lengths, got {bits!r}")
    bits = [check_n_bits(b) for b in bits]
    if not bits:
        raise ValueError("bits must name at least one code length")
    return bits


def check_protocol_options(database: str, ties: str, zero_relevant: str) -> None:
    """The protocol options (database encoding, tie policy, zero-relevant policy) are known."""
    check_choice(database, "database", DATABASES)
    check_choice(ties, "ties", TIES)
    check_choice(zero_relevant, "zero_relevant", ZERO_RELEVANT)


def check_param_names(method: str, params) -> None:
    """A ValueError naming the parameters that ``method``'s constructor does not take (or that
    the harness sets itself: ``n_bits`` from the bit lengths, ``random_state`` from the
    seeds), and the valid ones."""
    from .base import get_method

    valid = set(get_method(method)._param_names()) - {"n_bits", "random_state"}
    unknown = set(params) - valid
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)} for {method}; "
                         f"valid: {sorted(valid)}")


def check_method_setup(method: str, dataset, *, bits, params=None, database: str = "learned",
                       unpaired: bool = False) -> None:
    """Everything about one method's runs that can be checked before any fit.

    The method exists, takes ``params`` (a ValueError naming the unknown ones and the valid
    ones), their values pass the method's own checks for every code length in ``bits``, it
    supports unpaired training when ``unpaired``, and ``database="learned"`` is possible on
    ``dataset``. Used by :func:`run_evaluation` and, for all methods at once, by the benchmark
    and sweep harnesses, so that bad input fails before hours of fitting rather than after.
    """
    from .base import get_method

    params = dict(params or {})
    bits = bit_list_of(bits)
    cls = get_method(method)
    check_param_names(method, params)
    for b in bits:
        hasher = make_hasher(method, n_bits=b, random_state=0, **params)
        hasher._validate_params()
    if unpaired and not getattr(cls, "supports_unpaired", False):
        raise ValueError(f"method {method!r} needs paired training data; the unpaired "
                         f"protocol is available for methods that support it (amsh)")
    _check_learned_database(database, dataset)


def _with_context(exc: BaseException, context: str) -> BaseException:
    """``exc`` with ``context`` prefixed to its message (when it has a plain message), so that
    an error met after many fits says where it happened; the exception type is kept."""
    if len(exc.args) == 1 and isinstance(exc.args[0], str) and not isinstance(exc, OSError):
        exc.args = (f"{context}: {exc.args[0]}",)
    elif not exc.args:
        exc.args = (f"{context}: {type(exc).__name__}",)
    return exc


def evaluate_hasher(hasher, dataset, *, database: str = "learned", ties: str = "stable",
                    zero_relevant: str = "zero", top_r: int | None = None, radius: int = 2,
                    curves: bool = False, timing: bool = True, unpaired_labels=None,
                    random_state=None) -> dict:
    """Evaluate a fitted ``hasher`` on ``dataset`` for every cross-modal task.

    Queries (the ``query`` split) are encoded by the hash functions. The database is the
    ``retrieval`` split, represented by its learned training codes (``database="learned"``,
    the published shallow-method protocol; needs retrieval == train, for paired and unpaired
    training alike) or by hashing its features (``"hashed"``). ``unpaired_labels`` (one label
    matrix per modality, in the order the model was trained on) is given for unpaired
    training, where each modality's learned codes follow its own shuffled order.

    Returns ``{"protocol": {...}, "tasks": {"i2t": {...}, "t2i": {...}}}`` with, per task,
    ``map`` (full ranking), optional ``map_at_r``, ``precision_at_radius``/``recall_at_radius``
    (per-query mean), ``encode_seconds`` / ``encode_ms_per_item`` (query encoding: total
    seconds, milliseconds per query), with ``database="hashed"`` also
    ``database_encode_seconds`` / ``database_encode_ms_per_item`` (database encoding), and
    ``query_seconds`` (with ``timing``); with ``curves`` also the precision@K curve and both PR
    curves.
    """
    check_protocol_options(database, ties, zero_relevant)
    if top_r is not None:
        top_r = check_int(top_r, "top_r")
    radius = check_int(radius, "radius", minimum=0)
    if not hasattr(hasher, "modality_names_"):
        raise RuntimeError(f"{type(hasher).__name__} is not fitted; call fit(...) before "
                           f"evaluate_hasher")
    _check_learned_database(database, dataset)
    if database == "learned":
        _check_fitted_on(hasher, dataset, unpaired_labels)
    names = list(hasher.modality_names_)
    q_labels = dataset.labels_of("query")
    metric_kw = dict(ties=ties, random_state=random_state)
    tasks = {}
    for q_mod, d_mod in cross_modal_tasks(names):
        task = (q_mod, d_mod)
        X_q = dataset.get("query", q_mod)  # gathered outside the timer: encoding only
        start = time.perf_counter()
        q_codes = hasher.encode(X_q, q_mod, task=task)
        encode_seconds = time.perf_counter() - start
        if database == "learned":
            db_codes = hasher.learned_codes(d_mod, task=task)
            db_labels = (dataset.labels_of("train") if unpaired_labels is None
                         else unpaired_labels[names.index(d_mod)])
        else:
            X_db = dataset.get("retrieval", d_mod)
            start = time.perf_counter()
            db_codes = hasher.encode(X_db, d_mod, task=task)
            db_encode_seconds = time.perf_counter() - start
            db_labels = dataset.labels_of("retrieval")
        n_q, n_db = int(q_codes.shape[0]), int(db_codes.shape[0])
        res = {"map": mean_average_precision(q_codes, db_codes, q_labels, db_labels,
                                             zero_relevant=zero_relevant, **metric_kw),
               "encode_seconds": encode_seconds, "n_query": n_q, "n_database": n_db,
               "encode_ms_per_item": _ms_per_item(encode_seconds, n_q),
               "relevant_fraction": relevant_fraction(q_labels, db_labels)}
        if database == "hashed":
            res["database_encode_seconds"] = db_encode_seconds
            res["database_encode_ms_per_item"] = _ms_per_item(db_encode_seconds, n_db)
        if top_r is not None:
            res["map_at_r"] = mean_average_precision(q_codes, db_codes, q_labels, db_labels,
                                                     top_k=min(top_r, db_codes.shape[0]),
                                                     zero_relevant=zero_relevant, **metric_kw)
        p, r = precision_recall_within_radius(q_codes, db_codes, q_labels, db_labels,
                                              radius=radius, average="per_query")
        res["precision_at_radius"], res["recall_at_radius"] = float(p), float(r)
        if timing:
            res["query_seconds"] = _time_queries(db_codes, q_codes, hasher.n_bits)
        if curves:
            ks = [k for k in PRECISION_KS if k <= db_codes.shape[0]]
            res["precision_at_k"] = {"k": ks, "precision": np.asarray(
                precision_at_k(q_codes, db_codes, q_labels, db_labels, ks, **metric_kw)).tolist()}
            # the expected interpolated maximum has no closed form: the rank-based PR curve
            # falls back to stable ties under ties="expected" and says so
            curve_ties = "stable" if ties == "expected" else ties
            rec, prec = pr_curve_ranking(q_codes, db_codes, q_labels, db_labels,
                                         ties=curve_ties, random_state=random_state)
            res["pr_curve_ranking"] = {"recall": np.asarray(rec).tolist(),
                                       "precision": np.asarray(prec).tolist(),
                                       "ties": curve_ties}
            rad = pr_curve_radius(q_codes, db_codes, q_labels, db_labels)
            res["pr_curve_radius"] = {k: np.asarray(v).tolist() for k, v in rad.items()}
        tasks[task_name(q_mod, d_mod)] = res
    protocol = {"database": database, "ties": ties, "zero_relevant": zero_relevant,
                "relevance": "shares at least one label", "radius": radius,
                "map_at_r": ({"r": top_r, "denominator": "hits within top R"}
                             if top_r is not None else None)}
    return {"protocol": protocol, "tasks": tasks}


def _mean_std(values) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "n": int(a.size)}


def _fit_and_evaluate(method, dataset, b, s, params, unpaired, fit=None, **evaluate_kw):
    """Fit one (bits, seed) run and evaluate it: ``(hasher, evaluate_hasher result)``.
    ``fit(hasher, views, labels, names, paired)``: how to fit (default: in this process)."""
    hasher = make_hasher(method, n_bits=b, random_state=s, **params)
    unpaired_labels = None
    if unpaired:
        views, labels = dataset.unpaired(random_state=s)
        if fit is None:
            hasher.fit_unpaired(views, labels, names=dataset.modality_names)
        else:
            fit(hasher, views, labels, dataset.modality_names, False)
        unpaired_labels = labels
    elif fit is None:
        hasher.fit_views(dataset.views("train"), dataset.labels_of("train"),
                         names=dataset.modality_names)
    else:
        fit(hasher, dataset.views("train"), dataset.labels_of("train"), dataset.modality_names,
            True)
    res = evaluate_hasher(hasher, dataset, unpaired_labels=unpaired_labels, random_state=s,
                          **evaluate_kw)
    return hasher, res


def run_evaluation(method: str, dataset, *, bits=(16, 32, 64, 128), seeds=5, params=None,
                   database: str = "learned", ties: str = "stable", zero_relevant: str = "zero",
                   top_r: int | None = None, unpaired: bool = False, curves: bool = False,
                   verbose: bool = True, dataset_source: str | None = None, fit=None) -> dict:
    """Fit ``method`` for every bit length and seed, evaluate each, and summarise.

    ``seeds`` is a count (seeds 0..seeds-1) or an explicit list. With ``unpaired`` each
    modality's training set is shuffled independently with the run's seed (AMSH Sec. IV-E)
    and the method is fitted with ``fit_unpaired``. Returns the public JSON document.
    ``fit(hasher, views, labels, names, paired)`` replaces the in-process fit (``cmhash
    evaluate --cluster`` fits on Dask, :func:`cmhash.cli_cluster.dask_fit`); the codes it
    leaves must be NumPy arrays, as after ``fit_views``.

    All arguments are checked before the first fit (:func:`check_method_setup`); an error
    met during a fit or its evaluation keeps its type and names the run (``"<method>, <bits>
    bits, seed <seed>: ..."``). When runs were completed before it, the exception carries them
    as ``exc.partial_result``: the document of those runs (``bits`` = the bit lengths that have
    runs) with an ``incomplete`` field naming the failed run, the error and the runs not run
    (``cmhash evaluate --json`` writes it before exiting).
    """
    params = dict(params or {})
    fixed = sorted({"n_bits", "random_state"} & set(params))
    if fixed:
        raise ValueError(f"params must not set {fixed}: the code lengths come from bits and "
                         f"the seeds from seeds")
    seed_list = seed_list_of(seeds)
    bits = bit_list_of(bits)
    if top_r is not None:
        top_r = check_int(top_r, "top_r")
    check_protocol_options(database, ties, zero_relevant)
    check_method_setup(method, dataset, bits=bits, params=params, database=database,
                       unpaired=unpaired)
    runs = []
    jobs = [(b, s) for b in bits for s in seed_list]
    bar = progress(jobs, desc=f"{method} on {dataset.name or 'data'}", verbose=verbose,
                   leave=True)

    def document(done_runs, done_bits):
        return _result_document(method, params, dataset, dataset_source, database, ties,
                                zero_relevant, top_r, unpaired, done_bits, seed_list, done_runs)

    for i, (b, s) in enumerate(bar):
        try:
            hasher, res = _fit_and_evaluate(method, dataset, b, s, params, unpaired, fit,
                                            database=database, ties=ties,
                                            zero_relevant=zero_relevant, top_r=top_r,
                                            curves=curves)
        except (Exception, KeyboardInterrupt) as exc:  # say which fit failed, keep the type
            _with_context(exc, f"{method}, {b} bits, seed {s}")
            if runs:  # keep what was computed: the runs completed before the failure
                done_bits = [bb for bb in bits if any(r["bits"] == bb for r in runs)]
                exc.partial_result = {
                    **document(runs, done_bits),
                    "incomplete": {"bits": b, "seed": s, "error": f"{type(exc).__name__}: {exc}",
                                   "not_run": [list(job) for job in jobs[i + 1:]]}}
            raise
        run = {"bits": b, "seed": s, "train_seconds": float(hasher.train_seconds_)}
        for tname, tres in res["tasks"].items():
            run[f"map_{tname}"] = float(tres["map"])
            for key, value in tres.items():
                if key != "map":
                    run.setdefault("tasks", {}).setdefault(tname, {})[key] = value
        objective = getattr(hasher, "objective_", None)
        if objective is not None:
            run["objective"] = [float(v) for v in objective]
        runs.append(run)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix({k: f"{v:.3f}" for k, v in run.items() if k.startswith("map_")})
    return document(runs, bits)


def _result_document(method, params, dataset, dataset_source, database, ties, zero_relevant,
                     top_r, unpaired, bits, seed_list, runs) -> dict:
    """The public evaluation document of ``runs`` (each bit length of ``bits`` has runs)."""
    task_keys = [k for k in runs[0] if k.startswith("map_")]
    summary = {}
    for b in bits:
        rs = [r for r in runs if r["bits"] == b]
        summary[str(b)] = {k: _mean_std([r[k] for r in rs]) for k in task_keys + ["train_seconds"]}
    return {
        "format": RESULT_FORMAT, "version": RESULT_VERSION,
        "method": method, "params": _jsonable(params),
        "dataset": {"name": dataset.name, "source": dataset_source,
                    "n_train": int(dataset.indices("train").size),
                    "n_query": int(dataset.indices("query").size),
                    "n_retrieval": int(dataset.indices("retrieval").size),
                    "modalities": list(dataset.modality_names), "n_classes": dataset.n_classes,
                    "dims": {m: list(dataset.dims(m)) for m in dataset.modality_names}},
        "protocol": {"database": database, "ties": ties, "zero_relevant": zero_relevant,
                     "relevance": "shares at least one label",
                     "training": "unpaired" if unpaired else "paired",
                     "map_at_r": ({"r": top_r, "denominator": "hits within top R"}
                                  if top_r is not None else None)},
        "bits": bits, "seeds": seed_list,
        "runs": runs, "summary": summary,
        "environment": {"cmhash": __version__, "numpy": np.__version__,
                        "python": platform.python_version(), "machine": platform.machine()},
    }


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# ----------------------------------------------------------------------- reading results
def protocol_key(result: dict) -> dict:
    """The dataset and protocol fields of a result document that its numbers depend on: results
    differing in one of them are not comparable without saying so."""
    proto = result.get("protocol", {})
    return {"dataset": result.get("dataset", {}).get("name"),
            "database": proto.get("database"), "training": proto.get("training"),
            "ties": proto.get("ties"), "zero_relevant": proto.get("zero_relevant")}


def _check_version(doc: dict, where: str, newest: int) -> None:
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{where} has no valid 'version' (got {version!r}); result files "
                         f"written by cmhash have version 1..{newest}")
    if version > newest:
        raise ValueError(f"{where} has version {version}; cmhash {__version__} reads versions "
                         f"up to {newest} (a new version means a field changed meaning): "
                         f"upgrade cmhash")


def check_result(doc, where: str = "result") -> dict:
    """``doc`` if it is a complete evaluation document (:func:`run_evaluation`), else a
    ValueError naming ``where`` and what is wrong: another format, a version newer than this
    cmhash reads (fields may have changed meaning), or a missing field that tables and plots
    need (method, dataset, protocol, bits, runs with map_<task>, summary per bit length)."""
    if not isinstance(doc, dict) or doc.get("format") != RESULT_FORMAT:
        fmt = doc.get("format") if isinstance(doc, dict) else None
        raise ValueError(f"{where} is not a result of `cmhash evaluate` (format {fmt!r})")
    _check_version(doc, where, RESULT_VERSION)

    def missing(field):
        return ValueError(f"{where} is incomplete: {field}")

    for key, kind in (("method", str), ("dataset", dict), ("protocol", dict), ("bits", list),
                      ("runs", list), ("summary", dict)):
        if not isinstance(doc.get(key), kind):
            raise missing(f"no {key!r} field of type {kind.__name__}")
    if not doc["bits"] or not doc["runs"]:
        raise missing("'bits' and 'runs' must not be empty")
    if "database" not in doc["protocol"]:
        raise missing("'protocol' has no 'database'")
    tasks = None
    for i, run in enumerate(doc["runs"]):
        keys = sorted(k for k in run if k.startswith("map_")) if isinstance(run, dict) else []
        if not keys or "bits" not in run:
            raise missing(f"runs[{i}] has no 'bits' or no 'map_<task>' value")
        if tasks is not None and keys != tasks:
            raise missing(f"runs[{i}] has the tasks {keys}, runs[0] {tasks}")
        tasks = keys
    for b in doc["bits"]:
        summ = doc["summary"].get(str(b))
        if not isinstance(summ, dict) or any(
                not isinstance(summ.get(k), dict) or not {"mean", "std"} <= set(summ[k])
                for k in tasks):
            raise missing(f"'summary' has no mean/std of {tasks} for {b} bits")
        if not any(r["bits"] == b for r in doc["runs"]):
            raise missing(f"no run with {b} bits")
    return doc


def read_json(path):
    """The JSON document of a result file (a ValueError naming ``path`` if it is not JSON)."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not a JSON file: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a JSON text file: {exc}") from None


def read_results(path, doc=None) -> list[dict]:
    """The evaluation documents of a JSON file written by ``cmhash evaluate`` (one) or
    ``cmhash bench`` (one per method; a partial bench file gives the methods it completed),
    each checked by :func:`check_result`. Errors are ValueErrors naming ``path``. ``doc``: the
    file's document when already read (:func:`read_json`)."""
    doc = read_json(path) if doc is None else doc
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if fmt == BENCH_FORMAT:
        _check_version(doc, str(path), BENCH_VERSION)
        results = doc.get("results")
        if not isinstance(results, list) or not results:
            raise ValueError(f"{path} is a `cmhash bench` file without results")
        return [check_result(r, f"{path} (results[{i}])") for i, r in enumerate(results)]
    if fmt == RESULT_FORMAT:
        return [check_result(doc, str(path))]
    raise ValueError(f"{path} is not a results file of `cmhash evaluate` or `cmhash bench` "
                     f"(format {fmt!r})")
