"""cmhash reproduce: a seed paper's tables rebuilt, every row run or listed."""
import json

import pytest
from conftest import WIKI

import cmhash.reproduce as rep
from cmhash.data import load_dataset
from cmhash.reproduce import paper_tables, reproduce, reproduce_markdown, resolve_row



def test_resolve_row_names():
    assert resolve_row("BATCH") == ("batch", {}, "paired")
    assert resolve_row("AMSH-k") == ("amsh", {"kernel": False}, "paired")
    assert resolve_row("AMSH (unpaired)") == ("amsh", {}, "unpaired")
    assert resolve_row("TA-ADCMH") == ("ta-adcmh", {}, "paired")
    assert resolve_row("SLCH") is None                 # not a cmhash method
    assert resolve_row("ASFOH-Deep") is None


def test_paper_tables_group_tasks():
    tables = paper_tables("ascmh")
    wiki = [t for t in tables if t["dataset"] == "wiki"]
    assert len(wiki) == 1 and set(wiki[0]["tasks"]) == {"i2t", "t2i"}
    assert wiki[0]["bits"] == [16, 32, 64, 128]
    with pytest.raises(ValueError, match="unknown paper"):
        paper_tables("nope")


@pytest.fixture
def small_wiki():
    ds = load_dataset("synthetic:small,n=500,n_query=100", random_state=0)
    ds.name = "wiki"          # stands in for Wiki: the tables are selected by dataset name
    return ds


def test_every_row_is_run_or_listed(small_wiki, monkeypatch, tmp_path):
    calls = []
    real = rep.run_evaluation

    def recording(method, dataset, **kw):
        calls.append((method, kw))
        return real(method, dataset, **{**kw, "params": {**kw["params"], "n_anchors": 40}})
    monkeypatch.setattr(rep, "run_evaluation", recording)
    doc = reproduce("ascmh", small_wiki, seeds=1, out_dir=tmp_path, figures=False)
    wiki = [t for t in doc["tables"] if t["dataset"] == "wiki"][0]
    published_rows = sorted(paper_tables("ascmh")[0]["tasks"]["i2t"])
    assert sorted(r["row"] for r in wiki["rows"]) == published_rows   # none dropped
    run_rows = [r for r in wiki["rows"] if "ours" in r]
    listed = [r for r in wiki["rows"] if r.get("status") == "not implemented in cmhash"]
    assert len(run_rows) + len(listed) == len(published_rows)
    assert {r["row"] for r in run_rows} >= {"ASCMH", "BATCH"}
    for method, kw in calls:                      # the paper's protocol
        assert kw["bits"] == [16, 32, 64, 128] and kw["database"] == "learned"
        assert kw["seeds"] == 1 and not kw["unpaired"]
    ascmh = next(r for r in run_rows if r["row"] == "ASCMH")
    assert ascmh["hparams"] == "preset 'wiki'"
    assert all(0 <= v <= 1 for v in ascmh["ours"]["learned"]["i2t"])
    others = [t for t in doc["tables"] if t["dataset"] != "wiki"]
    assert others and all("not given" in t["status"] or "not an mAP" in t["status"]
                          for t in others)
    md = (tmp_path / "reproduce-ascmh.md").read_text()
    assert md == reproduce_markdown(json.loads((tmp_path / "reproduce-ascmh.json").read_text()))
    for row in published_rows:
        assert f"| {row} |" in md
    assert "mirflickr25k" in md and "not given" in md


def test_deep_papers_report_both_databases(small_wiki, monkeypatch):
    calls = []

    def never(method, dataset, **kw):
        calls.append(kw)
        raise AssertionError("TA-ADCMH has no Wiki table: nothing may be run")
    monkeypatch.setattr(rep, "run_evaluation", never)
    doc = reproduce("ta-adcmh", small_wiki, seeds=1, figures=False)
    assert doc["databases"] == ["learned", "hashed"]
    assert all(t["status"].startswith("dataset") for t in doc["tables"])   # no Wiki tables
    assert calls == []


@pytest.mark.slow
@pytest.mark.skipif(not WIKI.exists(), reason="Wiki data not available")
def test_cli_reproduce_ascmh_on_wiki(tmp_path):
    from cmhash.cli import main
    assert main(["reproduce", "--paper", "ascmh", "--data", str(WIKI), "--seeds", "1",
                 "--quiet", "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "reproduce-ascmh.md").exists()
    assert list(tmp_path.glob("*-curves.png"))


@pytest.mark.slow
def test_tuned_gives_every_row_the_same_budget(small_wiki, monkeypatch, tmp_path):
    """`reproduce --tuned BUDGET`: every implemented row is tuned (real Optuna studies in one
    SQLite file) with the same budget, starting from its preset, and evaluated with the tuned
    parameters. The fits use each method's QUICK settings so that the test stays small."""
    optuna = pytest.importorskip("optuna")
    import cmhash.tune as tune_mod
    from conftest import QUICK

    def quick(method):
        return {k: v for k, v in QUICK[method].items() if k != "n_bits"}

    real_make, real_tune, real_run = tune_mod.make_hasher, tune_mod.tune, rep.run_evaluation
    monkeypatch.setattr(tune_mod, "make_hasher",
                        lambda m, **kw: real_make(m, **{**kw, **quick(m)}))
    tuned, evaluated = {}, {}

    def spy_tune(method, dataset, **kw):
        res = real_tune(method, dataset, **kw)
        tuned[method] = (kw, res)
        return res

    def spy_run(method, dataset, **kw):
        evaluated[method] = kw["params"]
        return real_run(method, dataset, **{**kw, "params": {**kw["params"], **quick(method)}})
    monkeypatch.setattr(tune_mod, "tune", spy_tune)
    monkeypatch.setattr(rep, "run_evaluation", spy_run)
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    doc = reproduce("ascmh", small_wiki, seeds=1, tuned=2, tune_bits=(8,), storage=storage,
                    figures=False)
    rows = [r for t in doc["tables"] if t["dataset"] == "wiki" for r in t["rows"] if "ours" in r]
    assert doc["tuned_budget"] == 2 and len(rows) >= 8
    assert set(tuned) == {r["method"] for r in rows}
    for method, (kw, res) in tuned.items():
        assert kw["budget"] == 2 and kw["bits"] == (8,) and kw["storage"] == storage
        study = optuna.load_study(study_name=res["study"], storage=storage)
        assert len(study.trials) == 2                 # the same budget, spent
        assert study.trials[0].user_attrs.get("start") is True
    for r in rows:
        assert r["hparams"].startswith("tuned, budget 2 (start: ")
        best = tuned[r["method"]][1]["params"]
        assert all(evaluated[r["method"]][k] == v for k, v in best.items())
        assert all(0 <= v <= 1 for v in r["ours"]["learned"]["i2t"])
    assert "every row tuned with the same budget (2 trials)" in reproduce_markdown(doc)
