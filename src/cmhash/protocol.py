"""The evaluation protocol: one fitted hasher on one dataset, and runs over bits x seeds.

Definitions of every metric and option are in docs/evaluation.md; the JSON written by
``cmhash evaluate/bench`` (``run_evaluation``) is the public format documented there.
"""
from __future__ import annotations

import platform
import time

import numpy as np

from . import __version__
from ._validation import check_choice, check_int, check_n_bits
from .base import make_hasher
from .index import HammingIndex
from .metrics import (mean_average_precision, pr_curve_radius, pr_curve_ranking,
                      precision_at_k, precision_recall_within_radius)
from .progress import progress

RESULT_FORMAT = "cmhash-evaluation"
RESULT_VERSION = 1
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


def _ms_per_item(seconds: float, n: int) -> float | None:
    """Milliseconds per item (None for an empty set)."""
    return 1000.0 * seconds / n if n else None


def evaluate_hasher(hasher, dataset, *, database: str = "learned", ties: str = "stable",
                    zero_relevant: str = "zero", top_r: int | None = None, radius: int = 2,
                    curves: bool = False, timing: bool = True, unpaired_labels=None,
                    random_state=None) -> dict:
    """Evaluate a fitted ``hasher`` on ``dataset`` for every cross-modal task.

    Queries (the ``query`` split) are encoded by the hash functions. The database is the
    ``retrieval`` split, represented by its learned training codes (``database="learned"``,
    the published shallow-method protocol; needs retrieval == train) or by hashing its
    features (``"hashed"``). ``unpaired_labels`` (one label matrix per modality, in the order
    the model was trained on) is given for unpaired training, where each modality's learned
    codes follow its own shuffled order.

    Returns ``{"protocol": {...}, "tasks": {"i2t": {...}, "t2i": {...}}}`` with, per task,
    ``map`` (full ranking), optional ``map_at_r``, ``precision_at_radius``/``recall_at_radius``
    (per-query mean), ``encode_seconds`` / ``encode_ms_per_item`` (query encoding: total
    seconds, milliseconds per query), with ``database="hashed"`` also
    ``database_encode_seconds`` / ``database_encode_ms_per_item`` (database encoding), and
    ``query_seconds`` (with ``timing``); with ``curves`` also the precision@K curve and both PR
    curves.
    """
    check_choice(database, "database", DATABASES)
    check_choice(ties, "ties", TIES)
    check_choice(zero_relevant, "zero_relevant", ZERO_RELEVANT)
    if top_r is not None:
        top_r = check_int(top_r, "top_r")
    radius = check_int(radius, "radius", minimum=0)
    if not hasattr(hasher, "modality_names_"):
        raise RuntimeError(f"{type(hasher).__name__} is not fitted; call fit(...) before "
                           f"evaluate_hasher")
    if database == "learned" and unpaired_labels is None and not dataset.train_is_retrieval:
        raise ValueError("database='learned' represents the retrieval set by the learned "
                         "training codes, so the training split must equal the retrieval split "
                         "(as in the wiki preset); use database='hashed' for this dataset")
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
               "encode_ms_per_item": _ms_per_item(encode_seconds, n_q)}
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


def run_evaluation(method: str, dataset, *, bits=(16, 32, 64, 128), seeds=5, params=None,
                   database: str = "learned", ties: str = "stable", zero_relevant: str = "zero",
                   top_r: int | None = None, unpaired: bool = False, curves: bool = False,
                   verbose: bool = True, dataset_source: str | None = None) -> dict:
    """Fit ``method`` for every bit length and seed, evaluate each, and summarise.

    ``seeds`` is a count (seeds 0..seeds-1) or an explicit list. With ``unpaired`` each
    modality's training set is shuffled independently with the run's seed (AMSH Sec. IV-E)
    and the method is fitted with ``fit_unpaired``. Returns the public JSON document.
    """
    params = dict(params or {})
    fixed = sorted({"n_bits", "random_state"} & set(params))
    if fixed:
        raise ValueError(f"params must not set {fixed}: the code lengths come from bits and "
                         f"the seeds from seeds")
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        seed_list = list(range(seeds))
    elif isinstance(seeds, (list, tuple, range, np.ndarray)):
        seed_list = list(seeds)
    else:
        raise TypeError(f"seeds must be a number of seeds or a list of seeds, got {seeds!r}")
    if not seed_list:
        raise ValueError("seeds must name at least one seed")
    if isinstance(bits, (int, np.integer)) and not isinstance(bits, bool):
        bits = [bits]
    elif not isinstance(bits, (list, tuple, range, np.ndarray)):
        raise TypeError(f"bits must be a code length or a list of code lengths, got {bits!r}")
    bits = [check_n_bits(b) for b in bits]
    if not bits:
        raise ValueError("bits must name at least one code length")
    if top_r is not None:
        top_r = check_int(top_r, "top_r")
    runs = []
    jobs = [(b, s) for b in bits for s in seed_list]
    bar = progress(jobs, desc=f"{method} on {dataset.name or 'data'}", verbose=verbose,
                   leave=True)
    for b, s in bar:
        hasher = make_hasher(method, n_bits=b, random_state=s, **params)
        unpaired_labels = None
        if unpaired:
            if not getattr(hasher, "supports_unpaired", False):
                raise ValueError(f"method {method!r} needs paired training data; the unpaired "
                                 f"protocol is available for methods that support it (amsh)")
            views, labels = dataset.unpaired(random_state=s)
            hasher.fit_unpaired(views, labels, names=dataset.modality_names)
            unpaired_labels = labels
        else:
            hasher.fit_views(dataset.views("train"), dataset.labels_of("train"),
                             names=dataset.modality_names)
        res = evaluate_hasher(hasher, dataset, database=database, ties=ties,
                              zero_relevant=zero_relevant, top_r=top_r, curves=curves,
                              unpaired_labels=unpaired_labels, random_state=s)
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
                    "modalities": list(dataset.modality_names), "n_classes": dataset.n_classes},
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
