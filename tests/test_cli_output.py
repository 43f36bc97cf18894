"""Output of the CLI (issue 16, item 6): logging, progress only on a terminal, result tables
with comparable published rows, "±" only with several seeds, sweep notes, R² from three sizes,
and the plots."""
import copy
import json
import logging

import numpy as np
import pytest

from cmhash.bench import _identical_values_note, markdown_table, sweep_markdown
from cmhash.cli import main
from cmhash.data import CrossModalDataset
from cmhash.protocol import relevant_fraction, run_evaluation
from cmhash.published import published_rows
from conftest import REPO, make_structured


@pytest.fixture(scope="module")
def result():
    X, T, Y = make_structured(300, seed=2)
    idx = np.arange(300)
    ds = CrossModalDataset({"image": X, "text": T}, Y,
                           {"train": idx[:250], "retrieval": idx[:250], "query": idx[250:]},
                           name="structured")
    return run_evaluation("batch", ds, bits=[8, 16], seeds=1, params={"n_anchors": (30, 30)},
                          verbose=False)


def _as_mirflickr(doc, **dataset):
    """``doc`` relabelled as a MIRFlickr run of the ASFOH protocol (2,000 / 18,015, GIST+BoW)."""
    out = copy.deepcopy(doc)
    out["dataset"].update(name="mirflickr25k", n_query=2000, n_retrieval=18015, n_train=18015,
                          n_classes=24, dims={"image": [512], "text": [1386]})
    out["dataset"].update(dataset)
    return out


def test_logging_levels_and_log_file(tmp_path, capsys):
    data = ["--data", "synthetic:n=300,n_classes=3,seed=1", "--bits", "8", "--param",
            "n_anchors=20,20", "--out", str(tmp_path / "m.npz")]
    assert main(["fit", "--method", "batch", *data]) == 0
    assert "fitted batch (8 bits)" in capsys.readouterr().err        # INFO by default
    log_file = tmp_path / "run.log"
    assert main(["fit", "--method", "batch", *data, "--quiet", "--log-file", str(log_file)]) == 0
    assert capsys.readouterr().err == ""                             # --quiet: no status
    text = log_file.read_text()                                      # ... but the file has it
    assert " INFO cmhash: fitted batch (8 bits)" in text
    assert main(["fit", "--method", "nope", *data, "--log-file", str(log_file)]) == 2
    assert "ERROR cmhash: cmhash fit: error: unknown method 'nope'" in log_file.read_text()
    # Python warnings reach the log too: queries scaled x1e10 (issue 16, item 5) through the CLI
    X, T, Y = make_structured(200, seed=4)
    for name, arr in (("x", X), ("t", T), ("y", Y), ("far", X * 1e10)):
        np.save(tmp_path / f"{name}.npy", arr)
    assert main(["fit", "--method", "batch", "--image", str(tmp_path / "x.npy"), "--text",
                 str(tmp_path / "t.npy"), "--labels", str(tmp_path / "y.npy"), "--n-query", "0",
                 "--bits", "8", "--param", "n_anchors=20,20", "--out", str(tmp_path / "m.npz"),
                 "--quiet"]) == 0
    assert main(["encode", "--model", str(tmp_path / "m.npz"), "--image", str(tmp_path / "far.npy"),
                 "--out", str(tmp_path / "q.npz"), "--quiet", "--log-file", str(log_file)]) == 0
    err = capsys.readouterr().err                                    # warnings: even --quiet
    assert "OutOfDistributionWarning" in err and "200 of 200 input rows (100.0%" in err
    assert "WARNING py.warnings" in log_file.read_text()
    assert main(["fit", "--method", "batch", *data, "--quiet", "--verbose"]) == 2
    assert "--quiet and --verbose exclude each other" in capsys.readouterr().err
    assert not logging.getLogger("cmhash").handlers                  # removed after the command


def test_progress_bars_only_on_a_terminal(monkeypatch, capsys, caplog):
    from cmhash import progress as progress_module
    caplog.set_level(logging.INFO, logger="cmhash")
    monkeypatch.setattr(progress_module, "interactive", lambda: False)
    assert list(progress_module.progress(range(3), desc="loop")) == [0, 1, 2]
    assert capsys.readouterr().err == ""                            # no bar redraws in a log
    assert [r.getMessage() for r in caplog.records][-1].startswith("loop: 3/3 done in ")
    caplog.clear()
    monkeypatch.setattr(progress_module, "interactive", lambda: True)
    assert list(progress_module.progress(range(3), desc="loop", leave=True)) == [0, 1, 2]
    assert "loop: 100%" in capsys.readouterr().err and not caplog.records
    assert list(progress_module.progress(range(3), verbose=False)) == [0, 1, 2]
    assert capsys.readouterr().err == "" and not caplog.records


def test_one_seed_shows_no_spread(result):
    table = markdown_table([result], published="none")
    assert "±" not in table and "seeds: 1 (no spread" in table     # was "0.7312 ± 0.0000"
    two = copy.deepcopy(result)
    for summ in two["summary"].values():
        for v in summ.values():
            v["n"] = 2
    two["seeds"] = [0, 1]
    assert "± 0.0000" in markdown_table([two], published="none")


def test_published_rows_are_comparable_or_labelled(result):
    run = _as_mirflickr(result)
    rows = published_rows("mirflickr25k", "i2t", 16, run)
    by = {(r.method, r.where): r for r in rows}
    asfoh = by[("ASFOH", "asfoh Table I")]
    assert asfoh.comparable and asfoh.unstated == ("database",)
    amsh = by[("AMSH", "amsh Table II")]      # 16,738 items, 150-d edge histograms
    assert not amsh.comparable
    assert "split 836 query / 15,902 retrieval / 15,902 training" in amsh.differences
    assert "features 150-d edge histogram, 500-d text" in amsh.differences
    assert "unpaired training" in by[("AMSH (unpaired)", "amsh Table III, unpaired")].differences
    ta = by[("TA-ADCMH", "ta-adcmh Table 2")]                   # 10,000 training items
    assert any(d.startswith("split 2,000 query / 18,015 retrieval / 10,000") for d in ta.differences)
    assert not by[("ASFOH-Deep", "asfoh Table V")].comparable   # VGG-16 features
    assert not by[("ASCMH", "ascmh Table 2")].comparable         # split, image features unknown
    # the table: comparable rows labelled, the others counted; --published all names them
    table = markdown_table([run])
    assert "| ASFOH (published, asfoh Table I; not stated: database) |" in table
    assert "AMSH" not in table and "TA-ADCMH" not in table and "VGG" not in table
    assert "published rows measured under another protocol, split or features" in table
    full = markdown_table([run], published="all")
    assert "AMSH (published, amsh Table II; differs: split 836 query" in full
    assert len(table.splitlines()) < len(full.splitlines()) / 2 + 5
    # a hashed-database run is not shown beside learned-database numbers without saying so
    wiki = copy.deepcopy(result)
    wiki["dataset"].update(name="wiki", n_query=693, n_retrieval=2173, n_train=2173,
                           dims={"image": [128], "text": [10]})
    assert "| BATCH (published, ascmh Table 2) | - | 0.3553 | |" in markdown_table([wiki])
    wiki["protocol"]["database"] = "hashed"
    assert "published, ascmh" not in markdown_table([wiki])
    assert "differs: learned database" in markdown_table([wiki], published="all")


def test_cli_published_option(result, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--method", "batch", "--data", "synthetic:small", "--published", "x"])
    assert "argument --published: invalid choice" in capsys.readouterr().err


def test_relevant_fraction_is_the_mean_share_of_relevant_items():
    rng = np.random.default_rng(0)
    Q = (rng.random((37, 5)) < 0.3).astype(float)
    D = (rng.random((211, 5)) < 0.3).astype(float)
    assert relevant_fraction(Q, D, chunk=8) == pytest.approx(np.mean((Q @ D.T) > 0))


def test_sweep_says_when_values_have_no_effect(result):
    points = [{"value": v, "summary": copy.deepcopy(result["summary"])} for v in (0, 0.1, 1)]
    doc = {"format": "cmhash-sweep", "version": 1, "method": "batch", "param": "omega",
           "params": {}, "dataset": "structured", "protocol": result["protocol"], "bits": [8, 16],
           "seeds": [0], "points": points}
    assert "every value of omega gave identical results: omega has no effect on batch" in \
        sweep_markdown(doc)
    doc["points"][2]["summary"]["8"]["map_i2t"]["mean"] += 0.01
    assert _identical_values_note(doc, ["map_i2t", "map_t2i"]) == (
        "Note: identical results for omega = 0, 0.1: the parameter had no effect between these "
        "values.")
    doc["points"][1]["summary"]["16"]["map_t2i"]["mean"] += 0.02
    assert "Note" not in sweep_markdown(doc) and "±" not in sweep_markdown(doc)


def test_scale_gives_r2_from_three_sizes_only(monkeypatch):
    from cmhash import bench

    class Done:
        returncode, stderr = 0, ""

        def __init__(self, n):
            self.stdout = json.dumps({"method": "batch", "n": n, "bits": 8, "cpu_seconds": 1.0,
                                      "train_seconds": 0.001 * n + (0.3 if n == 200 else 0),
                                      "peak_rss_bytes": 1, "rss_before_fit_bytes": 1})

    monkeypatch.setattr(bench.subprocess, "run",
                        lambda argv, **k: Done(json.loads(argv[-1])["n"]))
    two = bench.scale_table("batch", "synthetic:n=500", [100, 200], bits=[8], verbose=False)
    assert two["linear_fit"]["8"]["r2_linear"] is None                  # was 1.000
    assert "no R² (a line through 2 training sizes" in bench.scale_markdown(two)
    three = bench.scale_table("batch", "synthetic:n=500", [100, 200, 300], bits=[8],
                              verbose=False)
    r2 = three["linear_fit"]["8"]["r2_linear"]
    assert 0 < r2 < 1 and f"R² of a linear fit {r2:.3f}" in bench.scale_markdown(three)


def test_readme_names_hparams():
    readme = (REPO / "README.md").read_text()
    assert "--hparams" in readme and "--published" in readme and "--n-query 0" in readme


# ------------------------------------------------------------------------------ plots
@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions save (their axes are inspected)."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure
    figures = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (figures.append(self),
                                                                  real(self, *a, **k)))
    return figures


def test_map_plot_marks_chance_and_published_and_starts_at_zero(result, tmp_path, drawn):
    from cmhash.plots import plot_documents
    wiki = copy.deepcopy(result)
    wiki["dataset"].update(name="wiki", n_query=693, n_retrieval=2173, n_train=2173,
                           dims={"image": [128], "text": [10]})
    other = copy.deepcopy(wiki)
    other["params"] = {**wiki["params"], "omega": 0.5}
    files = [{"format": "cmhash-evaluation", "docs": [wiki, other], "path": "x.json"}]
    plot_documents(files, tmp_path / "m.png", kind="map", bits=[16])
    ax = drawn[-1].axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert "batch (omega=default) (1 seed)" in labels and "batch (omega=0.5) (1 seed)" in labels
    assert "batch published (ascmh Table 2)" in labels
    chance = wiki["runs"][0]["tasks"]["i2t"]["relevant_fraction"]
    assert any(lab.startswith(f"chance ({chance:.3f}") for lab in labels)
    assert ax.get_ylim()[0] == 0 and [t.get_text() for t in ax.get_xticklabels()] == ["16"]
    plot_documents(files, tmp_path / "m.png", kind="map", labels=["a", "b"], published="none")
    labels = drawn[-1].axes[0].get_legend_handles_labels()[1]
    assert {"a (1 seed)", "b (1 seed)"} <= set(labels)
    assert not any("published" in x or x.startswith("batch") for x in labels)
    with pytest.raises(ValueError, match="--label given 1 time"):
        plot_documents(files, tmp_path / "m.png", kind="map", labels=["a"])
    with pytest.raises(ValueError, match=r"has no run with \[32\] bits"):
        plot_documents(files, tmp_path / "m.png", kind="map", bits=[32])


def test_sweep_and_scale_plots(tmp_path, capsys, drawn):
    sweep = {"format": "cmhash-sweep", "version": 1, "method": "batch", "param": "omega",
             "params": {}, "dataset": "d", "protocol": {"database": "learned", "ties": "stable"},
             "bits": [8], "seeds": [0, 1],
             "points": [{"value": v, "summary": {"8": {
                 "map_i2t": {"mean": 0.5 + m, "std": 0.01, "n": 2},
                 "map_t2i": {"mean": 0.6 + m, "std": 0.01, "n": 2}}}}
                 for v, m in ((0, 0.0), (0.01, 0.0), (1, 0.05), (100, 0.1))]}
    scale = {"format": "cmhash-scale", "method": "batch", "data": "synthetic:n=500",
             "rows": [{"n": n, "bits": 8, "train_seconds": 0.01 * n, "cpu_seconds": 1,
                       "peak_rss_bytes": 2 ** 30 * n / 100} for n in (100, 200, 300)],
             "linear_fit": {"8": {"seconds_per_1k": 10.0, "intercept": 0.0, "r2_linear": 1.0,
                                  "n_sizes": 3}}}
    (tmp_path / "s.json").write_text(json.dumps(sweep))
    (tmp_path / "c.json").write_text(json.dumps(scale))
    assert main(["plot", "--json", str(tmp_path / "s.json"), "--kind", "sweep", "--out",
                 str(tmp_path / "s.png"), "--quiet"]) == 0
    ax = drawn[-1].axes[0]
    assert ax.get_xscale() == "symlog" and ax.get_ylim()[0] == 0
    assert "identical results for omega = 0, 0.01" in drawn[-1].texts[0].get_text()
    assert main(["plot", "--json", str(tmp_path / "c.json"), str(tmp_path / "c.json"), "--kind",
                 "scale", "--out", str(tmp_path / "c.png"), "--quiet"]) == 0
    t_ax, m_ax = drawn[-1].axes
    labels = t_ax.get_legend_handles_labels()[1]
    assert "batch (synthetic:n=500) #1, 8 bits" in labels and "batch (synthetic:n=500) #2, 8 bits" \
        in labels
    assert any("R² 1.000" in x for x in labels)
    assert t_ax.get_ylim()[0] == 0 and m_ax.get_ylim()[0] == 0
    # a sweep file drawn as mAP vs bits is a clear error; --published of a plot without
    # published numbers is refused (it was ignored)
    assert main(["plot", "--json", str(tmp_path / "s.json"), "--out", str(tmp_path / "x.png")]) == 2
    assert "--kind map draws files of `cmhash evaluate` / `bench`; " in capsys.readouterr().err
    assert main(["plot", "--json", str(tmp_path / "s.json"), "--kind", "sweep", "--published",
                 "all", "--out", str(tmp_path / "x.png")]) == 2
    assert "--kind sweep has none" in capsys.readouterr().err
