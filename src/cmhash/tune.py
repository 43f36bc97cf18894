"""Hyper-parameter search with Optuna on validation splits of the training set.

:func:`tune` searches a method's ``SEARCH_SPACE`` (declared on the method class, beside its
parameters) with Optuna's TPE sampler and median pruning. Every trial is scored on
``n_folds`` validation splits carved from the **training split only**
(:meth:`CrossModalDataset.validation_split`: a random part of the training items becomes the
queries, the rest is the training set and the learned database); the dataset's query split is
never read. The score of a trial is the mean over folds and code lengths of the mean of the
cross-modal validation mAPs (I->T and T->I for two modalities). After each fold the running
mean is reported, so a trial that is clearly worse than the median of earlier trials at the
same fold is pruned. ``database="hashed"`` scores the validation items against the remaining
training items encoded by the hash functions (the deep papers' protocol) instead of their
learned codes. A trial whose training diverges (``FloatingPointError``, e.g. a learning rate
too large for a deep method) is recorded as pruned, with the reason in its ``diverged`` user
attribute: it counts towards the budget and is never the best.

The study lives in a storage (a SQLite file by default; any SQLAlchemy URL for a shared
database), so a second call with the same study resumes it, and several processes may work on
one study at once: ``budget`` is the number of finished (complete or pruned) trials the study
should hold, whoever ran them.

The first trial of a new study is the starting point -- the method's named preset when one is
given (``start``), else its defaults -- so the best trial never scores below it on the
validation splits. The best parameters are written as a named hyper-parameter file
(:func:`save_hparams`), usable as ``--hparams FILE`` on every command.

Search-space syntax (``SEARCH_SPACE = {param: spec}``): ``("log", lo, hi)`` a float searched on
a log scale, ``("float", lo, hi)`` linear, ``("int", lo, hi)`` an integer, ``("cat", [v, ...])``
one of the values; a list of specs is a list-valued parameter (e.g. a per-modality ridge
``xi = [image, text]``), each element searched separately.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from ._io import atomic_write
from .base import get_method, make_hasher
from ._validation import check_choice
from .protocol import DATABASES, bit_list_of, check_param_names, evaluate_hasher

__all__ = ["tune", "search_space", "save_hparams", "load_hparams", "default_storage"]

logger = logging.getLogger(__name__)

HPARAMS_FORMAT = "cmhash-hparams"
_KINDS = ("log", "float", "int", "cat")


def default_storage(directory=".") -> str:
    """The default study storage: ``sqlite:///<directory>/cmhash-tune.sqlite3``."""
    return f"sqlite:///{Path(directory) / 'cmhash-tune.sqlite3'}"


def _check_spec(method: str, name: str, spec) -> None:
    where = f"{method}.SEARCH_SPACE[{name!r}]"
    if not isinstance(spec, tuple) or not spec or spec[0] not in _KINDS:
        raise ValueError(f"{where} must be a tuple starting with one of {_KINDS}, got {spec!r}")
    if spec[0] == "cat":
        if len(spec) != 2 or not isinstance(spec[1], (list, tuple)) or not spec[1]:
            raise ValueError(f"{where}: ('cat', [values...]) expected, got {spec!r}")
        return
    if len(spec) != 3 or not all(isinstance(v, (int, float)) for v in spec[1:]):
        raise ValueError(f"{where}: ({spec[0]!r}, low, high) expected, got {spec!r}")
    lo, hi = spec[1:]
    if not lo < hi or (spec[0] == "log" and lo <= 0):
        raise ValueError(f"{where}: need 0 < low < high for 'log' and low < high otherwise, "
                         f"got {spec!r}")


def search_space(method: str, overrides: dict | None = None) -> dict:
    """The method's declared search space (``SEARCH_SPACE``), with ``overrides`` applied and
    every entry checked; a ValueError when the method declares none."""
    cls = get_method(method)
    space = dict(getattr(cls, "SEARCH_SPACE", None) or {})
    space.update(overrides or {})
    if not space:
        raise ValueError(f"method {method!r} declares no SEARCH_SPACE; nothing to tune")
    check_param_names(method, space)
    for name, spec in space.items():
        for s in (spec if isinstance(spec, list) else [spec]):
            _check_spec(method, name, s)
    return space


def _suggest(trial, name: str, spec):
    kind = spec[0]
    if kind == "log":
        return trial.suggest_float(name, float(spec[1]), float(spec[2]), log=True)
    if kind == "float":
        return trial.suggest_float(name, float(spec[1]), float(spec[2]))
    if kind == "int":
        return trial.suggest_int(name, int(spec[1]), int(spec[2]))
    return trial.suggest_categorical(name, list(spec[1]))


def _sample(trial, space: dict) -> dict:
    params = {}
    for name, spec in space.items():
        if isinstance(spec, list):
            params[name] = [_suggest(trial, f"{name}[{i}]", s) for i, s in enumerate(spec)]
        else:
            params[name] = _suggest(trial, name, spec)
    return params


def _flat(params: dict, space: dict, defaults: dict) -> dict:
    """Optuna's flat parameter names for a start point (``xi`` -> ``xi[0]``, ``xi[1]``); values
    outside the space are clipped into it (a categorical value not among the choices is
    dropped and sampled)."""
    flat = {}
    for name, spec in space.items():
        value = params.get(name, defaults.get(name))
        specs, values = (spec, value) if isinstance(spec, list) else ([spec], [value])
        if isinstance(spec, list) and (not isinstance(value, (list, tuple))
                                       or len(value) != len(spec)):
            values = [value] * len(spec)            # a scalar for every element
        for i, (s, v) in enumerate(zip(specs, values)):
            key = f"{name}[{i}]" if isinstance(spec, list) else name
            if s[0] == "cat":
                if v in list(s[1]):
                    flat[key] = v
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                flat[key] = type(s[1])(min(max(v, s[1]), s[2])) if s[0] == "int" else \
                    float(min(max(v, s[1]), s[2]))
    return flat


def validation_score(method: str, dataset, params: dict, *, bits, n_folds: int = 3,
                     val_size=0.2, seed: int = 0, database: str = "learned",
                     report=None) -> float:
    """Mean validation mAP of ``method`` with ``params``: the mean over ``n_folds`` validation
    splits of the training split and over ``bits`` of the mean cross-modal mAP (``database``
    "learned" or "hashed", stable ties). ``report(step, running_mean)`` is called after each
    fold (Optuna's pruning hook; it may raise to stop)."""
    bits = bit_list_of(bits)
    check_choice(database, "database", DATABASES)
    scores = []
    for fold in range(int(n_folds)):
        val = dataset.validation_split(val_size, random_state=seed + fold)
        for b in bits:
            hasher = make_hasher(method, n_bits=b, random_state=seed + fold, **params)
            hasher.fit_views(val.views("train"), val.labels_of("train"),
                             names=val.modality_names)
            res = evaluate_hasher(hasher, val, database=database, ties="stable",
                                  timing=False, random_state=seed + fold)
            scores.append(float(np.mean([t["map"] for t in res["tasks"].values()])))
        if report is not None:
            report(fold, float(np.mean(scores)))
    return float(np.mean(scores))


def tune(method: str, dataset, *, bits=(32,), budget: int = 50, storage: str | None = None,
         study_name: str | None = None, start: dict | None = None, n_folds: int = 3,
         val_size=0.2, seed: int = 0, space: dict | None = None, database: str = "learned",
         verbose: bool = False) -> dict:
    """Search ``method``'s hyper-parameters on validation splits of ``dataset``'s training set.

    Returns ``{"method", "params" (the best, complete constructor parameters), "value" (its
    validation score), "start_value", "n_trials", "study", "storage", "bits", ...}``. See the
    module doc for the protocol. ``start``: the parameters of the first trial (a preset);
    ``database``: the validation database, "learned" codes or "hashed" features.
    """
    import optuna

    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget must be a positive integer (trials), got {budget!r}")
    n_folds = int(n_folds)
    if n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}")
    bits = bit_list_of(bits)
    check_choice(database, "database", DATABASES)
    space = search_space(method, space)
    start = dict(start or {})
    check_param_names(method, start)
    storage = storage or default_storage()
    name = study_name or f"{method}-{dataset.name or 'data'}-{'-'.join(map(str, bits))}b"
    if not verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0))
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    defaults = make_hasher(method).get_params()
    if not study.trials:                 # a new study starts at the preset (or the defaults)
        study.enqueue_trial(_flat(start, space, defaults), user_attrs={"start": True})

    def objective(trial):
        params = {**start, **_sample(trial, space)}

        def report(step, value):
            trial.report(value, step)
            # after the last fold there is nothing left to save: the trial completes
            if step < n_folds - 1 and trial.should_prune():
                raise optuna.TrialPruned()
        try:
            value = validation_score(method, dataset, params, bits=bits, n_folds=n_folds,
                                     val_size=val_size, seed=seed, database=database,
                                     report=report)
        except FloatingPointError as exc:     # diverged training: pruned, never the best
            logger.info("%s trial %d diverged: %s", method, trial.number, exc)
            trial.set_user_attr("diverged", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        logger.info("%s trial %d: %.4f %s", method, trial.number, value, params)
        return value

    done = sum(t.state in finished for t in study.trials)
    remaining = max(0, int(budget) - done)
    if remaining:
        study.optimize(objective, n_trials=remaining, show_progress_bar=verbose,
                       callbacks=[optuna.study.MaxTrialsCallback(int(budget), states=finished)])
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(f"study {name!r} has no completed trial")
    best = max(complete, key=lambda t: (t.value, -t.number))
    starts = [t for t in complete if t.user_attrs.get("start")]
    best_params = {**defaults, **start, **_unflatten(best.params, space)}
    for k in ("n_bits", "random_state", "verbose"):
        best_params.pop(k, None)
    return {"format": HPARAMS_FORMAT, "method": method, "params": _jsonable(best_params),
            "value": float(best.value),
            "start_value": float(starts[0].value) if starts else None,
            "n_trials": len(study.trials), "n_complete": len(complete),
            "n_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
            "n_diverged": sum("diverged" in t.user_attrs for t in study.trials),
            "study": name, "storage": storage, "bits": bits, "n_folds": n_folds,
            "val_size": val_size, "seed": seed, "dataset": dataset.name,
            "database": database,
            "objective": f"mean over folds and bits of mean(I->T, T->I) validation mAP "
                         f"({database} database, stable ties)"}


def _unflatten(flat: dict, space: dict) -> dict:
    out = {}
    for name, spec in space.items():
        if isinstance(spec, list):
            out[name] = [flat[f"{name}[{i}]"] for i in range(len(spec))]
        elif name in flat:
            out[name] = flat[name]
    return out


def _jsonable(params: dict) -> dict:
    def conv(v):
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, Path):
            return str(v)
        return v
    return {k: conv(v) for k, v in params.items()}


def save_hparams(result: dict, path) -> Path:
    """Write a tuning result as a named hyper-parameter file (JSON, atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as fh:
        fh.write(json.dumps(result, indent=2))
    return path


def load_hparams(path, method: str) -> dict:
    """The constructor parameters of a hyper-parameter file written by :func:`save_hparams`,
    checked: the file is such a file, for ``method``, and names only its parameters."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"hyper-parameter file not found: {str(path)!r}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{str(path)!r} is not a cmhash hyper-parameter file (JSON): "
                         f"{exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != HPARAMS_FORMAT \
            or not isinstance(doc.get("params"), dict):
        raise ValueError(f"{str(path)!r} is not a cmhash hyper-parameter file (written by "
                         f"cmhash tune: format {HPARAMS_FORMAT!r} with a 'params' object)")
    if doc.get("method") != method:
        raise ValueError(f"{str(path)!r} holds hyper-parameters of {doc.get('method')!r}, "
                         f"not of {method!r}")
    params = dict(doc["params"])
    check_param_names(method, params)
    return params
