"""cmhash tune for the deep methods (TA-ADCMH, SDCH, DCMH): declared search spaces, the hashed
validation database, diverged trials, the CLI and benchmarks/deep_wiki.py --hparams."""
import json
from pathlib import Path

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")
torch = pytest.importorskip("torch")

import cmhash.tune as tune_mod  # noqa: E402
from cmhash.base import get_method, make_hasher  # noqa: E402
from cmhash.cli import main  # noqa: E402
from cmhash.data import load_dataset  # noqa: E402
from cmhash.protocol import evaluate_hasher  # noqa: E402
from cmhash.tune import _flat, load_hparams, search_space, tune, validation_score  # noqa: E402

pytestmark = pytest.mark.deep

DEEP = ("ta-adcmh", "sdch", "dcmh")
SMALL = "synthetic:small,n=300,n_query=50"
#: tiny networks and two epochs: a fit takes well under a second
TINY = {"ta-adcmh": {"n_epochs": 2, "image_hidden": 16, "text_hidden": 16, "device": "cpu"},
        "sdch": {"n_epochs": 3, "image_hidden": (16,), "text_hidden": (16,), "feature_dim": 16,
                 "itq_iter": 3, "device": "cpu"},
        "dcmh": {"n_epochs": 2, "image_hidden": 16, "text_hidden": 16, "device": "cpu"}}


@pytest.fixture(scope="module")
def data():
    return load_dataset(SMALL, random_state=0)


def _starts(method):
    """The parameter sets a tuning run of ``method`` may start from: its defaults, its presets
    (the papers' values and the Wiki preset) and its variants."""
    cls = get_method(method)
    defaults = make_hasher(method).get_params()
    sets = {"defaults": defaults}
    sets.update({f"preset {k}": {**defaults, **v} for k, v in cls.PRESETS.items()})
    sets.update({f"variant {k}": {**defaults, **v} for k, v in cls.VARIANTS.items()})
    return sets


@pytest.mark.parametrize("method", DEEP)
def test_search_space_is_valid_and_holds_the_papers_values(method):
    """Every entry names a constructor parameter and is well formed (search_space checks
    both); the papers' values and every preset lie inside the space, so a study started from
    them is not silently moved by the clipping of the start point; both ends of every range
    are accepted by the estimator's own parameter checks."""
    space = search_space(method)
    assert set(space) <= set(get_method(method)._param_names())
    assert "n_epochs" not in space          # the training budget is the caller's, the same cap
    for where, params in _starts(method).items():
        flat = _flat(params, space, {})
        for name, spec in space.items():
            if spec[0] == "cat":
                assert params[name] in spec[1], (where, name)
            else:
                assert spec[1] <= params[name] <= spec[2], (where, name, params[name])
                assert flat[name] == pytest.approx(params[name])
    for end in (1, 2):
        params = {k: (s[1][0] if s[0] == "cat" else s[end]) for k, s in space.items()}
        make_hasher(method, **params)._validate_params()


@pytest.mark.parametrize("method", DEEP)
def test_tiny_tune_run_of_a_deep_method(method, data, tmp_path):
    """Two trials (the start point, then one sampled) on one validation split with the hashed
    database: the best parameters are a complete, loadable hyper-parameter file that keeps the
    start's epochs cap and fits again."""
    storage = f"sqlite:///{tmp_path / 'd.db'}"
    res = tune(method, data, bits=[8], budget=2, n_folds=1, start=TINY[method],
               storage=storage, database="hashed")
    assert (res["n_trials"], res["database"]) == (2, "hashed")
    assert "hashed database" in res["objective"]
    assert res["value"] >= res["start_value"]
    for k, v in TINY[method].items():                     # outside the space: kept
        assert res["params"][k] == (list(v) if isinstance(v, tuple) else v)
    study = optuna.load_study(study_name=res["study"], storage=storage)
    assert study.trials[0].user_attrs.get("start") is True
    assert study.trials[1].params != study.trials[0].params
    path = tune_mod.save_hparams(res, tmp_path / "h.json")
    params = load_hparams(path, method)
    h = make_hasher(method, n_bits=8, random_state=0, **params)
    h.fit_views(data.views("train"), data.labels_of("train"), names=data.modality_names)
    codes = h.codes_ if isinstance(h.codes_, list) else [h.codes_]
    assert all(c.shape == (len(data.indices("train")), 8) for c in codes)


def test_hashed_validation_score_encodes_the_remaining_training_items(data):
    """database="hashed": the score is the mAP of the validation queries against the remaining
    training items encoded by the networks, as evaluate_hasher computes it on that split --
    not the learned codes (for DCMH they differ)."""
    params = TINY["dcmh"]
    scores = {db: validation_score("dcmh", data, params, bits=[8], n_folds=1, seed=3,
                                   database=db) for db in ("learned", "hashed")}
    val = data.validation_split(0.2, random_state=3)
    h = make_hasher("dcmh", n_bits=8, random_state=3, **params)
    h.fit_views(val.views("train"), val.labels_of("train"), names=val.modality_names)
    for db in ("learned", "hashed"):
        res = evaluate_hasher(h, val, database=db, timing=False, random_state=3)
        assert scores[db] == pytest.approx(np.mean([t["map"] for t in res["tasks"].values()]),
                                           abs=1e-12)
    assert scores["learned"] != scores["hashed"]
    with pytest.raises(ValueError, match="database"):
        validation_score("dcmh", data, params, bits=[8], n_folds=1, database="learnt")


def test_a_diverged_trial_is_pruned_and_never_best(data, tmp_path, monkeypatch):
    """A FloatingPointError (a deep fit's divergence) prunes the trial, records why, counts
    towards the budget and the study goes on."""
    original = tune_mod.validation_score
    calls = []

    def diverging(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise FloatingPointError("training diverged in epoch 1: test")
        return original(*a, **kw)
    monkeypatch.setattr(tune_mod, "validation_score", diverging)
    storage = f"sqlite:///{tmp_path / 'x.db'}"
    res = tune("dcmh", data, bits=[8], budget=3, n_folds=1, start=TINY["dcmh"],
               storage=storage)
    assert (res["n_trials"], res["n_pruned"], res["n_diverged"]) == (3, 1, 1)
    study = optuna.load_study(study_name=res["study"], storage=storage)
    bad = study.trials[1]
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert "diverged" in bad.user_attrs["diverged"]
    assert res["value"] == max(t.value for t in study.trials if t.value is not None)


def test_cli_tune_deep_options_and_deep_wiki_hparams(tmp_path, monkeypatch, capsys):
    """`cmhash tune --epochs --device --database hashed` for a deep method writes a file that
    benchmarks/deep_wiki.py --hparams uses instead of the Wiki preset."""
    monkeypatch.chdir(tmp_path)
    rc = main(["tune", "--method", "dcmh", "--data", SMALL, "--bits", "8", "--budget", "2",
               "--folds", "1", "--epochs", "2", "--device", "cpu", "--database", "hashed",
               "--param", "image_hidden=16", "--param", "text_hidden=16", "--quiet",
               "--out", "dcmh.json"])
    assert rc == 0
    doc = json.loads((tmp_path / "dcmh.json").read_text())
    assert doc["database"] == "hashed"
    assert (doc["params"]["n_epochs"], doc["params"]["device"]) == (2, "cpu")
    assert main(["tune", "--method", "batch", "--data", SMALL, "--budget", "1",
                 "--epochs", "3"]) == 2        # a deep option for a shallow method: refused
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import deep_wiki
    deep_wiki.main(["--method", "dcmh", "--hparams", "dcmh.json", "--data", SMALL,
                    "--bits", "8", "--seeds", "0", "1", "--json", "out.json"])
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["params"] == doc["params"] and out["hparams"] == "dcmh.json"
    assert len(out["runs"]) == 2
    s = out["summary"]["8"]
    assert {"i2t_hashed", "i2t_hashed_std", "t2i_learned", "t2i_learned_std"} <= set(s)
    with pytest.raises(ValueError, match="not of 'sdch'"):
        deep_wiki.main(["--method", "sdch", "--hparams", "dcmh.json", "--data", SMALL])
    # the merged table: SDCH (tiny, no preset) against DCMH, cell by cell
    sdch = [f"{k}={v!r}" for k, v in TINY["sdch"].items()]
    deep_wiki.main(["--method", "sdch", "--no-preset", "--data", SMALL, "--bits", "8",
                    "--seeds", "0", "1", "--json", "sdch.json"]
                   + [a for p in sdch for a in ("--param", p)])
    import deep_wiki_compare
    doc = deep_wiki_compare.main(["out.json", "sdch.json", "--json", "merged.json"])
    for k in deep_wiki_compare.METRICS:
        runs = {m: [r[k] for r in doc["runs"][m]] for m in ("sdch", "dcmh")}
        assert doc["summary"]["sdch"][8][k]["mean"] == pytest.approx(np.mean(runs["sdch"]))
        assert doc["minus_dcmh"]["sdch"][k][8] == pytest.approx(
            np.mean(runs["sdch"]) - np.mean(runs["dcmh"]))
    assert json.loads((tmp_path / "merged.json").read_text())["methods"]["dcmh"]["params"] \
        == doc["methods"]["dcmh"]["params"]


@pytest.mark.parametrize("command", ["tune", "evaluate"])
def test_epochs_option_overrides_a_presets_epochs(command):
    """`--hparams wiki --epochs 40` caps a preset's epochs (the preset's other values stay);
    only --param n_epochs together with --epochs is a conflict."""
    from cmhash.cli import _method_params, build_parser
    from cmhash.deep.ta_adcmh import TAADCMH
    extra = ["--budget", "1"] if command == "tune" else []
    args = build_parser().parse_args([command, "--method", "ta-adcmh", "--data", "x",
                                      "--hparams", "wiki", "--epochs", "40", *extra])
    params = _method_params("ta-adcmh", args)
    assert params == {**TAADCMH.PRESETS["wiki"], "n_epochs": 40}
    args = build_parser().parse_args([command, "--method", "ta-adcmh", "--data", "x",
                                      "--epochs", "40", "--param", "n_epochs=3", *extra])
    with pytest.raises(ValueError, match="both given"):
        _method_params("ta-adcmh", args)


def test_no_pruning_after_the_last_fold(data, tmp_path, monkeypatch):
    """With one fold a trial the pruner would stop has already been scored completely: it is
    complete (its score counts), not pruned."""
    monkeypatch.setattr(optuna.pruners.MedianPruner, "prune",
                        lambda self, study, trial: trial.number > 0)
    res = tune("dcmh", data, bits=[8], budget=3, n_folds=1, start=TINY["dcmh"],
               storage=f"sqlite:///{tmp_path / 'n.db'}")
    assert (res["n_complete"], res["n_pruned"]) == (3, 0)
