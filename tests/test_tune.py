"""cmhash tune: Optuna search on validation splits of the training set only."""
import json

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

from cmhash.cli import main  # noqa: E402
from cmhash.data import load_dataset  # noqa: E402
from cmhash.data.dataset import CrossModalDataset  # noqa: E402
from cmhash.tune import (_flat, load_hparams, save_hparams, search_space, tune,  # noqa: E402
                         validation_score)

SMALL = "synthetic:small,n=700,n_query=100"
START = {"n_anchors": 50, "n_iter": 3}


@pytest.fixture(scope="module")
def data():
    return load_dataset(SMALL, random_state=0)


def test_never_reads_the_query_split(data, tmp_path, monkeypatch):
    """Every access to the original dataset's query split is recorded: there must be none
    (the validation splits are new datasets carved from the training split)."""
    touched = []
    for name in ("get", "labels_of", "indices", "views", "split"):
        original = getattr(CrossModalDataset, name)

        def spy(self, split, *a, _original=original, **kw):
            if self is data and split == "query":
                touched.append(split)
            return _original(self, split, *a, **kw)
        monkeypatch.setattr(CrossModalDataset, name, spy)
    val_items = []
    original_split = CrossModalDataset.validation_split

    def record(self, *a, **kw):
        val = original_split(self, *a, **kw)
        val_items.append(np.asarray(val.indices("query")))
        return val
    monkeypatch.setattr(CrossModalDataset, "validation_split", record)
    tune("batch", data, bits=[8], budget=2, n_folds=2, start=START,
         storage=f"sqlite:///{tmp_path / 's.db'}")
    assert touched == []
    train = set(data.indices("train").tolist())
    assert val_items and all(set(v.tolist()) <= train for v in val_items)
    assert not set(np.concatenate(val_items).tolist()) & set(data.indices("query").tolist())


def test_resumes_from_its_sqlite_file_and_starts_at_the_preset(data, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = tune("batch", data, bits=[8], budget=3, n_folds=1, start=START, storage=storage)
    assert first["n_trials"] == 3
    study = optuna.load_study(study_name=first["study"], storage=storage)
    before = [(t.number, t.params) for t in study.trials]
    # the first trial is the start point, and the best is never below it
    assert study.trials[0].user_attrs.get("start") is True
    defaults = {"eta_image": 0.05, "eta_text": 0.05, "eta_label": 0.9, "omega": 0.01,
                "xi": 0.01, "rho": 1e-3}          # BATCH's constructor defaults
    assert study.trials[0].params == pytest.approx(defaults)
    assert first["value"] >= first["start_value"]
    again = tune("batch", data, bits=[8], budget=5, n_folds=1, start=START, storage=storage)
    study = optuna.load_study(study_name=first["study"], storage=storage)
    assert again["n_trials"] == 5 and len(study.trials) == 5
    assert [(t.number, t.params) for t in study.trials[:3]] == before   # resumed, not restarted
    # a budget already met runs nothing
    third = tune("batch", data, bits=[8], budget=4, n_folds=1, start=START, storage=storage)
    assert third["n_trials"] == 5


def test_start_value_is_the_preset_score(data, tmp_path):
    res = tune("batch", data, bits=[8], budget=1, n_folds=2, start=START,
               storage=f"sqlite:///{tmp_path / 'a.db'}")
    direct = validation_score("batch", data, {**START}, bits=[8], n_folds=2)
    assert res["start_value"] == pytest.approx(direct, abs=1e-12)
    for k, v in START.items():
        assert res["params"][k] == v


def test_validation_score_reports_running_means(data):
    seen = []
    value = validation_score("batch", data, START, bits=[8, 16], n_folds=3,
                             report=lambda step, v: seen.append((step, v)))
    assert [s for s, _ in seen] == [0, 1, 2]
    assert seen[-1][1] == pytest.approx(value)
    # each fold's own score from the running means
    folds = [seen[0][1], 2 * seen[1][1] - seen[0][1], 3 * seen[2][1] - 2 * seen[1][1]]
    assert np.mean(folds) == pytest.approx(value)
    assert len(set(np.round(folds, 12))) > 1          # the folds are different splits


def test_pruned_trial_stops_early(data, tmp_path, monkeypatch):
    """A trial the pruner stops runs only its first fold."""
    import cmhash.tune as tune_mod
    calls = []
    original = tune_mod.make_hasher

    def counting(*a, **kw):
        calls.append(kw.get("random_state"))
        return original(*a, **kw)
    monkeypatch.setattr(tune_mod, "make_hasher", counting)
    monkeypatch.setattr(optuna.pruners.MedianPruner, "prune",
                        lambda self, study, trial: trial.number > 0)
    res = tune("batch", data, bits=[8], budget=3, n_folds=3, start=START,
               storage=f"sqlite:///{tmp_path / 'p.db'}")
    assert (res["n_complete"], res["n_pruned"]) == (1, 2)
    # trial 0 ran its 3 folds, trials 1 and 2 only their first (the defaults probe has no seed)
    assert [c for c in calls if c is not None] == [0, 1, 2, 0, 0]


def test_search_space_checks():
    space = search_space("asfoh")
    assert isinstance(space["xi"], list) and len(space["xi"]) == 2
    with pytest.raises(ValueError, match="unknown|not a parameter|no parameter"):
        search_space("batch", {"no_such_param": ("log", 1e-3, 1.0)})
    with pytest.raises(ValueError, match="low < high"):
        search_space("batch", {"omega": ("log", 1.0, 1e-3)})
    with pytest.raises(ValueError, match="tuple starting"):
        search_space("batch", {"omega": ["log", 1e-3, 1.0]})
    # a preset's pair value becomes the flat names; values outside the space are clipped
    flat = _flat({"xi": [0.3, 1e-9]}, space, {})
    assert flat["xi[0]"] == 0.3 and flat["xi[1]"] == space["xi"][1][1]


def test_hparams_file_round_trip_and_errors(tmp_path):
    doc = {"format": "cmhash-hparams", "method": "batch", "params": {"omega": 0.5}}
    path = save_hparams(doc, tmp_path / "h.json")
    assert load_hparams(path, "batch") == {"omega": 0.5}
    with pytest.raises(ValueError, match="of 'batch', not of 'ascmh'"):
        load_hparams(path, "ascmh")
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    with pytest.raises(ValueError, match="not a cmhash hyper-parameter file"):
        load_hparams(bad, "batch")
    bad.write_text(json.dumps({"params": {}}))
    with pytest.raises(ValueError, match="format"):
        load_hparams(bad, "batch")
    bad.write_text(json.dumps({**doc, "params": {"nope": 1}}))
    with pytest.raises(ValueError, match="nope"):
        load_hparams(bad, "batch")


def test_cli_tune_writes_a_file_usable_as_hparams(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["tune", "--method", "batch", "--data", SMALL, "--bits", "8", "--budget", "2",
               "--folds", "1", "--param", "n_anchors=50", "--param", "n_iter=3", "--quiet",
               "--out", "best.json"])
    assert rc == 0
    assert (tmp_path / "cmhash-tune.sqlite3").exists()
    params = load_hparams(tmp_path / "best.json", "batch")
    assert params["n_anchors"] == 50
    rc = main(["evaluate", "--method", "batch", "--data", SMALL, "--bits", "8", "--seeds", "1",
               "--hparams", "best.json", "--quiet", "--json", "ev.json"])
    assert rc == 0
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["params"]["n_anchors"] == 50
    assert main(["tune", "--method", "batch", "--data", SMALL, "--budget", "0"]) == 2


def test_every_method_declares_a_valid_space_around_its_defaults():
    """Every registered method (the shallow ones always, the deep ones when torch is present)
    declares a SEARCH_SPACE that search_space() accepts, over constructor parameters only, and
    that holds the method's default value of each parameter it searches (ranges around the
    papers' / released codes' settings, not beside them)."""
    from conftest import DEEP_METHODS, quick_methods
    from cmhash.base import available_methods, make_hasher
    shallow = [m for m in available_methods() if m not in DEEP_METHODS]
    assert {"lssh", "lcmfh", "cmfh", "scratch"} <= set(shallow)
    for method in quick_methods():
        space = search_space(method)
        defaults = make_hasher(method).get_params()
        for name, spec in space.items():
            value = defaults[name]
            specs, values = (spec, value) if isinstance(spec, list) else ([spec], [value])
            if isinstance(spec, list) and not isinstance(value, (list, tuple)):
                values = [value] * len(spec)
            for s, v in zip(specs, values):
                if s[0] == "cat":
                    assert v in s[1], (method, name, v, s)
                else:
                    assert s[1] <= v <= s[2], (method, name, v, s)
