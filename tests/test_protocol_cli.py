"""Protocol runner, public JSON format and the CLI contract."""
import json
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from cmhash.cli import build_parser, main
from cmhash.data import CrossModalDataset
from cmhash.methods.batch import BATCH
from cmhash.metrics import mean_average_precision
from cmhash.protocol import evaluate_hasher, run_evaluation
from conftest import REPO, WIKI, make_structured


@pytest.fixture(scope="module")
def dataset():
    X, T, Y = make_structured(600, seed=5)
    idx = np.arange(600)
    return CrossModalDataset({"image": X, "text": T}, Y,
                             {"train": idx[:500], "retrieval": idx[:500], "query": idx[500:]},
                             name="structured")


def test_learned_and_hashed_databases(dataset):
    m = BATCH(16, n_anchors=(60, 60), random_state=0).fit(*dataset.views("train"),
                                                          dataset.labels_of("train"))
    learned = evaluate_hasher(m, dataset, database="learned", timing=False)
    hashed = evaluate_hasher(m, dataset, database="hashed", timing=False)
    assert learned["protocol"]["database"] == "learned"
    assert hashed["protocol"]["database"] == "hashed"
    # the learned protocol is exactly mAP(encoded queries, learned codes)
    q = m.encode(dataset.get("query", "image"), "image")
    ref = mean_average_precision(q, m.codes_, dataset.labels_of("query"), dataset.labels_of("train"))
    assert learned["tasks"]["i2t"]["map"] == pytest.approx(ref)
    qh = m.encode(dataset.get("retrieval", "text"), "text")
    ref_h = mean_average_precision(q, qh, dataset.labels_of("query"), dataset.labels_of("retrieval"))
    assert hashed["tasks"]["i2t"]["map"] == pytest.approx(ref_h)
    with pytest.raises(ValueError, match="database must be one of"):
        evaluate_hasher(m, dataset, database="both")


def test_encoding_times_reported(dataset):
    m = BATCH(16, n_anchors=(60, 60), random_state=0).fit(*dataset.views("train"),
                                                          dataset.labels_of("train"))
    hashed = evaluate_hasher(m, dataset, database="hashed", timing=False)
    learned = evaluate_hasher(m, dataset, database="learned", timing=False)
    for task in ("i2t", "t2i"):
        h = hashed["tasks"][task]
        assert h["n_query"] == 100 and h["n_database"] == 500
        for total, per_item, n in (("encode_seconds", "encode_ms_per_item", "n_query"),
                                   ("database_encode_seconds", "database_encode_ms_per_item",
                                    "n_database")):
            assert isinstance(h[total], float) and h[total] > 0
            assert isinstance(h[per_item], float) and h[per_item] > 0
            assert h[per_item] == pytest.approx(1000.0 * h[total] / h[n])
        # the learned database is not encoded: query encoding only
        lt = learned["tasks"][task]
        assert lt["encode_ms_per_item"] == pytest.approx(1000.0 * lt["encode_seconds"] / lt["n_query"])
        assert "database_encode_seconds" not in lt and "database_encode_ms_per_item" not in lt


def test_learned_database_needs_train_equal_retrieval(dataset):
    sub = dataset.subset_train(300, random_state=0)
    m = BATCH(8, n_anchors=(30, 30), random_state=0).fit(*sub.views("train"), sub.labels_of("train"))
    with pytest.raises(ValueError, match="training split must equal the retrieval split"):
        evaluate_hasher(m, sub, database="learned")
    assert evaluate_hasher(m, sub, database="hashed", timing=False)["tasks"]["t2i"]["map"] > 0


def test_run_evaluation_json_format(dataset):
    doc = run_evaluation("batch", dataset, bits=[8, 16], seeds=2, params={"n_anchors": (40, 40)},
                         verbose=False, top_r=50)
    assert doc["format"] == "cmhash-evaluation"
    assert doc["method"] == "batch" and doc["dataset"]["name"] == "structured"
    assert doc["protocol"] == {"database": "learned", "ties": "stable", "zero_relevant": "zero",
                               "relevance": "shares at least one label", "training": "paired",
                               "map_at_r": {"r": 50, "denominator": "hits within top R"}}
    assert [(r["bits"], r["seed"]) for r in doc["runs"]] == [(8, 0), (8, 1), (16, 0), (16, 1)]
    for r in doc["runs"]:
        assert {"map_i2t", "map_t2i", "train_seconds"} <= set(r)
        assert set(r["tasks"]["i2t"]["query_seconds"]) == {"top100", "top1000", "radius2"}
    vals = [r["map_i2t"] for r in doc["runs"] if r["bits"] == 16]
    s = doc["summary"]["16"]["map_i2t"]
    assert s["mean"] == pytest.approx(np.mean(vals)) and s["std"] == pytest.approx(np.std(vals, ddof=1))
    json.dumps(doc)  # serialisable


def _nested_keys(obj, opaque=("params",)) -> set:
    """Every dict key in ``obj`` (recursively), not looking inside the ``opaque`` keys' values."""
    keys = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            keys.add(k)
            if k not in opaque:
                keys |= _nested_keys(v, opaque)
    elif isinstance(obj, list):
        for v in obj:
            keys |= _nested_keys(v, opaque)
    return keys


def test_result_json_fields_are_the_documented_ones(dataset):
    """docs/evaluation.md's JSON example names exactly the fields run_evaluation writes (with
    every optional part switched on): none missing from the docs, none documented but gone."""
    text = (REPO / "docs" / "evaluation.md").read_text()
    example = text.split("```jsonc", 1)[1].split("```", 1)[0]
    documented = set(re.findall(r'"([A-Za-z_][A-Za-z0-9_]*)"\s*:', example))
    documented -= {"omega"}  # the example's constructor parameter, not a field
    doc = run_evaluation("batch", dataset, bits=[8], seeds=2, params={"n_anchors": (40, 40)},
                         verbose=False, database="hashed", top_r=50, curves=True)
    produced = {k for k in _nested_keys(doc) if not k.isdigit()}  # summary keys are bit lengths
    assert produced == documented, (f"written but not documented: {sorted(produced - documented)}; "
                                    f"documented but not written: {sorted(documented - produced)}")


def test_readme_command_lines_parse():
    """Every command of the README's "Command line" block uses existing subcommands / options."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    parser = build_parser()
    commands = 0
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        argv = shlex.split(line)
        assert argv[0] == "cmhash", line
        parser.parse_args(argv[1:])  # argparse exits (SystemExit) on an unknown option
        commands += 1
    assert commands >= 10


def test_unpaired_protocol_refused_by_paired_methods(dataset):
    with pytest.raises(ValueError, match="needs paired training data"):
        run_evaluation("batch", dataset, bits=[8], seeds=1, unpaired=True, verbose=False)


def test_cli_evaluate_contract(tmp_path, capsys):
    if not WIKI.exists():
        pytest.skip("real Wiki data not available")
    out = tmp_path / "out.json"
    rc = main(["evaluate", "--method", "batch", "--data", str(WIKI), "--bits", "16",
               "--seeds", "1", "--json", str(out), "--quiet"])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["dataset"]["n_train"] == 2173 and doc["dataset"]["n_query"] == 693
    assert doc["runs"][0]["map_t2i"] > 0.6  # BATCH on Wiki T->I is ~0.73 (chance ~0.1)
    captured = capsys.readouterr()
    assert captured.err == ""  # --quiet: no progress or status output
    # ... but the result table still reaches stdout, with the JSON's numbers
    assert f"{doc['runs'][0]['map_t2i']:.4f}"[:5] in captured.out and "| batch" in captured.out.lower()


def test_cli_fit_encode_search_round_trip(tmp_path, capsys):
    data = "synthetic:n=800,n_classes=4,seed=1"
    model = tmp_path / "m.npz"
    assert main(["fit", "--method", "batch", "--data", data, "--bits", "16", "--param",
                 "n_anchors=50,50", "--out", str(model), "--quiet"]) == 0
    db, q = tmp_path / "db.npz", tmp_path / "q.npz"
    assert main(["encode", "--model", str(model), "--data", data, "--split", "retrieval",
                 "--modality", "text", "--out", str(db), "--quiet"]) == 0
    assert main(["encode", "--model", str(model), "--data", data, "--split", "query",
                 "--modality", "image", "--out", str(q), "--quiet"]) == 0
    res = tmp_path / "res.json"
    assert main(["search", "--database", str(db), "--queries", str(q), "-k", "5",
                 "--out", str(res), "--quiet", "--show", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # --quiet silences the timing line, not the hits
    assert len([ln for ln in captured.out.splitlines() if ln.startswith("query ")]) == 2
    doc = json.loads(res.read_text())
    with np.load(db) as f:
        db_ids, db_labels = f["ids"], f["labels"]
    with np.load(q) as f:
        q_labels = f["labels"]
    assert len(doc["results"]) == q_labels.shape[0] and all(len(r) == 5 for r in doc["results"])
    # results are dataset ids of retrieval items, sorted by distance
    assert set(doc["results"][0]) <= set(db_ids.tolist())
    assert all(d == sorted(d) for d in doc["distances"])
    # top-5 neighbours share a label far more often than chance
    pos = {int(i): k for k, i in enumerate(db_ids)}
    hits = np.mean([(q_labels[i] @ db_labels[pos[j]]) > 0
                    for i, r in enumerate(doc["results"]) for j in r])
    chance = np.mean((q_labels @ db_labels.T) > 0)
    assert hits > chance + 0.2


def test_cli_errors_are_clear(capsys):
    assert main(["evaluate", "--method", "nope", "--data", "synthetic:small", "--quiet"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["evaluate", "--method", "batch", "--data", "synthetic:small", "--param", "bogus=1"]) == 2
    assert capsys.readouterr().err.startswith("cmhash evaluate: error: unknown parameter(s) ['bogus']")


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "cmhash.cli", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.startswith("cmhash ")


def test_plots_draw_the_results(tmp_path, dataset):
    pytest.importorskip("matplotlib")
    import matplotlib.image as mpimg

    from cmhash.plots import plot_convergence, plot_curves, plot_map_vs_bits

    doc = run_evaluation("batch", dataset, bits=[8, 16], seeds=1, params={"n_anchors": (40, 40)},
                         verbose=False, curves=True)
    for fn, name in ((plot_map_vs_bits, "map.png"), (plot_curves, "curves.png"),
                     (plot_convergence, "conv.png")):
        img = mpimg.imread(fn([doc], tmp_path / name))
        assert img.shape[0] > 200 and img.shape[1] > 300
        assert img[..., :3].std() > 0.05  # something was drawn, not a blank canvas
    no_curves = run_evaluation("batch", dataset, bits=[8], seeds=1, params={"n_anchors": (40, 40)},
                               verbose=False)
    with pytest.raises(ValueError, match="no curves"):
        plot_curves([no_curves], tmp_path / "x.png")


def test_unreadable_model_index_and_codes_files_are_clear_errors(tmp_path, capsys):
    # an empty file raised EOFError, a text file numpy's "contains pickled (object) data",
    # a .npy array AttributeError ('ndarray' has no attribute 'files') and a directory
    # IsADirectoryError: tracebacks from `cmhash encode` / `cmhash search`
    from cmhash.base import load
    from cmhash.index import HammingIndex
    empty, text, npy = tmp_path / "empty.npz", tmp_path / "notes.txt", tmp_path / "a.npy"
    empty.write_bytes(b"")
    text.write_text("hello")
    np.save(npy, np.arange(3))
    for bad, why in ((empty, "not a readable .npz"), (text, "not a readable .npz"),
                     (npy, "single .npy array"), (tmp_path, "is a directory")):
        with pytest.raises(ValueError, match=f"not a cmhash model file|{why}") as err:
            load(bad)
        assert why in str(err.value)
        with pytest.raises(ValueError, match=why):
            HammingIndex.load(bad)
        assert main(["encode", "--model", str(bad), "--data", "synthetic:small",
                     "--modality", "image", "--out", str(tmp_path / "q.npz"), "--quiet"]) == 2
        assert why in capsys.readouterr().err
        assert main(["search", "--database", str(bad), "--queries", str(bad), "--quiet"]) == 2
        assert why in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="cmhash model file not found"):
        load(tmp_path / "missing.npz")
    # a saved index is a database but not a queries file
    index = HammingIndex(8)
    index.add(np.ones((2, 8)))
    index.save(tmp_path / "index.npz")
    assert main(["search", "--database", str(tmp_path / "index.npz"),
                 "--queries", str(tmp_path / "index.npz"), "--quiet"]) == 2
    assert "is not a codes file from `cmhash encode`" in capsys.readouterr().err


def test_protocol_arguments_are_validated_before_any_fit(dataset, monkeypatch):
    # bits=[] was an IndexError after the loop, bits=16 "'int' object is not iterable",
    # bits=[16.7] silently ran 16 bits, top_r=0 failed after a full fit as "top_k must be in
    # [1, n]", params with n_bits a "multiple values for keyword argument" TypeError, and an
    # unfitted hasher an AttributeError ('modality_names_')
    from cmhash import protocol
    monkeypatch.setattr(protocol, "make_hasher", lambda *a, **k: pytest.fail("fitted"))
    cases = [({"bits": []}, ValueError, "bits must name at least one code length"),
             ({"bits": [16.7]}, TypeError, "n_bits must be a positive integer, got 16.7"),
             ({"bits": "16"}, TypeError, "bits must be a code length or a list"),
             ({"seeds": 2.0}, TypeError, "seeds must be a number of seeds or a list"),
             ({"top_r": 0}, ValueError, "top_r must be >= 1, got 0"),
             ({"params": {"n_bits": 4}}, ValueError, r"params must not set \['n_bits'\]")]
    for kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            run_evaluation("batch", dataset, **{"bits": [8], "seeds": 1, "verbose": False, **kw})
    with pytest.raises(RuntimeError, match="BATCH is not fitted"):
        evaluate_hasher(BATCH(8), dataset)
    m = BATCH(8, n_anchors=(20, 20), n_iter=1, random_state=0).fit(
        *dataset.views("train"), dataset.labels_of("train"))
    with pytest.raises(ValueError, match="top_r must be >= 1, got -5"):
        evaluate_hasher(m, dataset, top_r=-5)
    with pytest.raises(ValueError, match="radius must be >= 0, got -1"):
        evaluate_hasher(m, dataset, radius=-1)


def test_cli_n_train_zero_and_negative_show_are_errors(tmp_path, capsys):
    # --n-train 0 was dropped as falsy (training silently used the whole training split);
    # --show -1 printed every query but the last
    assert main(["fit", "--method", "batch", "--data", "synthetic:small", "--n-train", "0",
                 "--bits", "8", "--out", str(tmp_path / "m.npz"), "--quiet"]) == 2
    assert "n_train must be positive, got 0" in capsys.readouterr().err
    assert not (tmp_path / "m.npz").exists()
    assert main(["search", "--database", "db.npz", "--queries", "q.npz", "--show", "-1"]) == 2
    assert "--show must be >= 0" in capsys.readouterr().err


def test_cli_bench_and_plot_argument_errors(tmp_path, capsys):
    # --method-param without "METHOD:" said "--param expects key=value, got ''", an unknown
    # --method-param name failed only after loading the data (BATCH.__init__ TypeError),
    # --param with several methods was silently ignored, and `plot` of a JSON that is not a
    # results file raised KeyError 'runs'
    bench = ["bench", "--methods", "batch", "--data", "synthetic:small", "--bits", "8",
             "--seeds", "1", "--quiet", "--out-dir", str(tmp_path)]
    for extra, message in ((["--method-param", "omega=1"], "--method-param expects METHOD:KEY=VALUE"),
                           (["--method-hparams", "batch"], "--method-hparams expects METHOD:PRESET"),
                           (["--method-param", "batch:bogus=1"], "unknown parameter(s) ['bogus'] for batch"),
                           (["--methods", "batch", "ascmh", "--param", "omega=1"],
                            "--param is for a single method")):
        assert main(bench + extra) == 2
        assert capsys.readouterr().err.startswith(f"cmhash bench: error: {message}")
    other = tmp_path / "other.json"
    other.write_text("{}")
    assert main(["plot", "--json", str(other), "--out", str(tmp_path / "p.png"), "--quiet"]) == 2
    assert "is not a results file of `cmhash evaluate`, `bench`, `sweep` or `scale`" in capsys.readouterr().err


def test_scale_sizes_are_checked(monkeypatch, capsys):
    # `cmhash scale --ns 0` (or negative) printed the worker's traceback inside a RuntimeError,
    # scale_table(ns=[]) returned an empty table, ns=None / 5 were "'int' object is not
    # iterable", and n above the data's retrieval split silently trained on the whole split
    from cmhash import bench
    real_run = bench.subprocess.run
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: pytest.fail("worker started"))
    for ns, exc, match in (([], ValueError, "ns must name at least one of the training sizes"),
                           ([300, 0], ValueError, r"ns must be training sizes \(positive integers\), got 0"),
                           ([-5], ValueError, "got -5"),
                           ([2.5], TypeError, "got 2.5"),
                           (None, TypeError, "ns must be a list of training sizes, got None")):
        with pytest.raises(exc, match=match):
            bench.scale_table("batch", "synthetic:n=300", ns, bits=[8], verbose=False)
    with pytest.raises(ValueError, match="bits must name at least one of the code lengths"):
        bench.scale_table("batch", "synthetic:n=300", [100], bits=[], verbose=False)
    for ns in (["0"], ["-5"], ["100", "0"]):
        assert main(["scale", "--method", "batch", "--data", "synthetic:n=300", "--bits", "8",
                     "--quiet", "--ns", *ns]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cmhash scale: error: ns must be training sizes") and "Traceback" not in err
    # bad input met by the worker comes back as the worker's error, not a traceback
    monkeypatch.setattr(bench.subprocess, "run", real_run)
    assert main(["scale", "--method", "batch", "--data", "synthetic:n=300", "--bits", "8",
                 "--quiet", "--ns", "5000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cmhash scale: error: scale point n=5000, bits=8: n_train=5000 exceeds "
                          "the 270 items available") and "Traceback" not in err


def test_cli_exit_codes(tmp_path, capsys, monkeypatch):
    # argument errors exited 2 (argparse, ValueError) or 1 (SystemExit("cmhash: ...") of the
    # --param / --hparams / --method-param checks), and runtime failures 2 like usage errors.
    # Now: usage errors 2, runtime failures 1, both one "cmhash <cmd>: error:" line on stderr
    from cmhash import protocol
    with pytest.raises(SystemExit) as argparse_exit:          # argparse: bad option value
        main(["evaluate", "--method", "batch", "--data", "synthetic:small", "--bits", "x"])
    assert argparse_exit.value.code == 2
    assert "cmhash evaluate: error: argument --bits" in capsys.readouterr().err
    evaluate = ["evaluate", "--method", "batch", "--data", "synthetic:n=300", "--quiet"]
    for extra, message in ((["--param", "omega"], "--param expects key=value"),
                           (["--hparams", "nope"], "batch has no hyper-parameter preset 'nope'"),
                           (["--n-train", "5000"], "n_train=5000 exceeds the 270 items available"),
                           (["--preset", "nope"], "unknown preset 'nope'"),
                           (["--data", str(tmp_path / "missing.mat")], "data file not found")):
        assert main(evaluate + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith(f"cmhash evaluate: error: {message}") and err.count("\n") == 1, err
    for exc, message in ((RuntimeError, "worker died"), (FloatingPointError, "loss is NaN at epoch 3")):
        def fail(*args, exc=exc, message=message, **kwargs):
            raise exc(message)

        monkeypatch.setattr(protocol, "run_evaluation", fail)
        assert main(evaluate) == 1
        assert capsys.readouterr().err == f"cmhash evaluate: error: {message}\n"


def test_cli_encode_out_path_search_backend_and_malformed_codes_files(tmp_path, capsys):
    # `encode --out q.codes` wrote q.codes.npz (np.savez_compressed appends .npz) while saying
    # "wrote q.codes", so `search --queries q.codes` did not find it; `search --backend` was
    # ignored for a saved index (it ran on the saved backend); a codes file without n_bits
    # raised KeyError and one whose ids do not match its codes IndexError, with tracebacks
    from cmhash.index import HammingIndex
    data = "synthetic:n=400,n_classes=3,seed=2"
    model = tmp_path / "m.npz"
    assert main(["fit", "--method", "batch", "--data", data, "--bits", "16", "--param",
                 "n_anchors=30,30", "--out", str(model), "--quiet"]) == 0
    q = tmp_path / "q.codes"
    assert main(["encode", "--model", str(model), "--data", data, "--split", "query",
                 "--modality", "image", "--out", str(q)]) == 0
    assert f"wrote {q}\n" in capsys.readouterr().err
    assert q.exists() and not (tmp_path / "q.codes.npz").exists()
    with np.load(q) as f:
        packed, ids = f["packed"], f["ids"]
    index = HammingIndex(16, backend="faiss" if _has_faiss() else "auto")
    index.add(packed, packed=True)
    index.save(tmp_path / "db.index")
    assert main(["search", "--database", str(tmp_path / "db.index"), "--queries", str(q),
                 "-k", "3", "--backend", "numpy", "--show", "0"]) == 0
    assert capsys.readouterr().err.endswith("backend numpy)\n")
    assert main(["search", "--database", str(tmp_path / "db.index"), "--queries", str(q),
                 "-k", "3", "--show", "0"]) == 0          # no --backend: the saved one
    assert capsys.readouterr().err.endswith(f"backend {index.backend})\n")
    for name, arrays, message in (
            ("nobits.npz", dict(packed=packed, ids=ids), "has no 'n_bits'"),
            ("vecbits.npz", dict(packed=packed, ids=ids, n_bits=[16, 16]),
             "'n_bits' must be an integer scalar"),
            ("ids.npz", dict(packed=packed, ids=ids[:5], n_bits=16),
             f"5 ids for {len(packed)} codes"),
            ("ids2d.npz", dict(packed=packed, ids=ids[:, None], n_bits=16),
             "'ids' must be a 1-D"),
            ("packed1d.npz", dict(packed=packed[0], ids=ids[:1], n_bits=16),
             "'packed' must be a 2-D")):
        bad = tmp_path / name
        np.savez(bad, **arrays)
        for role in (["--database", str(bad), "--queries", str(q)],
                     ["--database", str(q), "--queries", str(bad)]):
            assert main(["search", *role, "-k", "3", "--quiet"]) == 2, (name, role)
            err = capsys.readouterr().err
            assert err.startswith(f"cmhash search: error: {bad} is not a valid codes file")
            assert message in err and "Traceback" not in err, err


def _has_faiss():
    from cmhash.index import faiss_available
    return faiss_available()


def _fail_fit(exc_type, message):
    def fit(self, *args, **kwargs):
        raise exc_type(message)
    return fit


def test_bench_keeps_completed_methods_when_one_fails(tmp_path, capsys, monkeypatch):
    # a method failing after others had run lost every result (nothing written), and its
    # error did not say which method / bit length / seed failed
    from cmhash.base import get_method
    monkeypatch.setattr(get_method("amsh"), "_fit", _fail_fit(FloatingPointError, "diverged"))
    out = tmp_path / "res"
    rc = main(["bench", "--methods", "batch", "amsh", "ascmh", "--data", "synthetic:small",
               "--bits", "8", "--seeds", "1", "--quiet", "--out-dir", str(out)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "cmhash bench: error: amsh, 8 bits, seed 0: diverged" in err
    assert "results of batch (completed before the failure)" in err
    doc = json.loads((out / "bench.json").read_text())
    assert [r["method"] for r in doc["results"]] == ["batch"]
    assert doc["incomplete"] == {"method": "amsh",
                                 "error": "FloatingPointError: amsh, 8 bits, seed 0: diverged",
                                 "not_run": ["ascmh"]}
    md = (out / "bench.md").read_text()
    assert "cmhash BATCH" in md and "**Incomplete:** amsh failed" in md
    # the partial file is a readable results file (plots of the completed methods)
    from cmhash.protocol import read_results
    assert [r["method"] for r in read_results(out / "bench.json")] == ["batch"]


def test_evaluate_keeps_the_runs_completed_before_a_failure(tmp_path, capsys, monkeypatch):
    # `cmhash evaluate --json` lost every completed run when a later (bits, seed) failed
    from cmhash.base import get_method
    cls = get_method("batch")
    real_fit, calls = cls._fit, []

    def fit_then_fail(self, *args, **kwargs):
        calls.append(self.n_bits)
        if len(calls) == 3:      # 8 bits seeds 0, 1 succeed; 16 bits seed 0 diverges
            raise FloatingPointError("diverged")
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(cls, "_fit", fit_then_fail)
    out = tmp_path / "eval.json"
    rc = main(["evaluate", "--method", "batch", "--data", "synthetic:small", "--bits", "8", "16",
               "--seeds", "2", "--quiet", "--json", str(out)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "cmhash evaluate: error: batch, 16 bits, seed 0: diverged" in err
    assert "the 2 runs completed before the failure are in" in err
    doc = json.loads(out.read_text())
    assert doc["bits"] == [8] and [(r["bits"], r["seed"]) for r in doc["runs"]] == [(8, 0), (8, 1)]
    assert doc["summary"]["8"]["map_i2t"]["n"] == 2
    assert doc["incomplete"] == {"bits": 16, "seed": 0,
                                 "error": "FloatingPointError: batch, 16 bits, seed 0: diverged",
                                 "not_run": [[16, 1]]}
    from cmhash.protocol import read_results
    assert read_results(out)[0]["runs"] == doc["runs"]   # a readable results file
    # a failure of the very first run leaves nothing to keep: no file
    calls.clear(), calls.extend([0, 0])
    out2 = tmp_path / "none.json"
    assert main(["evaluate", "--method", "batch", "--data", "synthetic:small", "--bits", "8",
                 "--seeds", "1", "--quiet", "--json", str(out2)]) == 1
    assert not out2.exists()


def test_bench_and_sweep_check_every_method_and_value_before_any_fit(tmp_path, capsys,
                                                                    monkeypatch, dataset):
    # `bench --methods amsh batch --unpaired` fitted every AMSH run, then refused BATCH and
    # lost AMSH's results; a bad value for the second method failed after the first method's
    # runs, without naming the method ("n_iter must be >= 1, got -1"); `sweep --param-name
    # bogus` failed as "BATCH.__init__() got an unexpected keyword argument", and a bad second
    # value after the first value's fits
    from cmhash import bench, protocol
    monkeypatch.setattr(protocol, "_fit_and_evaluate", lambda *a, **k: pytest.fail("fitted"))
    base = ["--data", "synthetic:small", "--bits", "8", "--seeds", "1", "--quiet"]
    for argv, message in (
            (["bench", "--methods", "amsh", "batch", "--unpaired", "--out-dir", str(tmp_path)],
             "method 'batch' needs paired training data"),
            (["bench", "--methods", "batch", "amsh", "--method-param", "amsh:n_iter=-1",
              "--out-dir", str(tmp_path)], "amsh: n_iter must be >= 1, got -1"),
            (["sweep", "--method", "batch", "--param-name", "bogus", "--values", "1"],
             "unknown parameter(s) ['bogus'] for batch; valid: ["),
            (["sweep", "--method", "batch", "--param-name", "omega", "--values", "0.1", "-1"],
             "omega must be >= 0, got -1"),
            (["sweep", "--method", "batch", "--param-name", "n_bits", "--values", "8"],
             "cannot sweep 'n_bits'"),
            # --param of the swept parameter itself was silently overridden by --values
            (["sweep", "--method", "batch", "--param-name", "omega", "--values", "0.1",
              "--param", "omega=0.5"], "--param sets 'omega', the swept parameter")):
        assert main(argv + base) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"cmhash {argv[0]}: error: {message}"), err
    assert not list(tmp_path.iterdir())  # nothing written
    with pytest.raises(ValueError, match="values must name at least one value"):
        bench.param_sweep("batch", dataset, "omega", [], bits=[8], seeds=1, verbose=False)
    with pytest.raises(ValueError, match="database must be one of"):
        bench.run_bench(["batch"], dataset, bits=[8], seeds=1, verbose=False, database="both")


def test_sweep_records_its_protocol_and_runs_one_value(dataset):
    from cmhash.bench import param_sweep
    doc = param_sweep("batch", dataset, "omega", [0.1], bits=[8], seeds=1, verbose=False,
                      params={"n_anchors": (40, 40), "omega": 5}, database="hashed")
    assert doc["format"] == "cmhash-sweep" and doc["version"] == 1
    assert doc["protocol"]["database"] == "hashed" and doc["protocol"]["ties"] == "stable"
    assert doc["params"] == {"n_anchors": [40, 40]} and doc["seeds"] == [0]
    assert [p["value"] for p in doc["points"]] == [0.1]
    json.dumps(doc)


def test_learned_database_refused_for_unpaired_training_on_a_subset(dataset, monkeypatch):
    # with unpaired training the check that the learned codes (the training set) stand for
    # the retrieval set was skipped: `evaluate --unpaired --n-train 500` on Wiki ranked a
    # 500-item database while the JSON said n_retrieval 2173
    from cmhash import protocol
    from cmhash.methods.amsh import AMSH
    sub = dataset.subset_train(300, random_state=0)
    monkeypatch.setattr(protocol, "_fit_and_evaluate", lambda *a, **k: pytest.fail("fitted"))
    for unpaired in (False, True):
        with pytest.raises(ValueError, match="training split must equal the retrieval split"):
            run_evaluation("amsh", sub, bits=[8], seeds=1, unpaired=unpaired, verbose=False)
    views, labels = sub.unpaired(random_state=0)
    m = AMSH(8, n_anchors=20, n_iter=1, random_state=0).fit_unpaired(views, labels)
    with pytest.raises(ValueError, match="training split must equal the retrieval split"):
        evaluate_hasher(m, sub, unpaired_labels=labels, timing=False)
    assert evaluate_hasher(m, sub, database="hashed", timing=False)["tasks"]["i2t"]["n_database"] == 500


def test_run_evaluation_errors_name_the_run(dataset, monkeypatch):
    monkeypatch.setattr(BATCH, "_fit", _fail_fit(FloatingPointError, "NaN in V"))
    with pytest.raises(FloatingPointError, match=r"^batch, 16 bits, seed 3: NaN in V$"):
        run_evaluation("batch", dataset, bits=[16], seeds=[3], verbose=False)


def test_result_files_are_checked_when_read(tmp_path, dataset):
    # a version-2 file (fields may have changed meaning) was plotted as version 1, and a file
    # without runs / summary or a bench file without results raised KeyError / IndexError
    # tracebacks; invalid JSON did not name the file
    from cmhash.protocol import read_results
    doc = run_evaluation("batch", dataset, bits=[8], seeds=1, params={"n_anchors": (40, 40)},
                         verbose=False)

    def write(name, obj):
        path = tmp_path / name
        path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
        return path

    assert read_results(write("ok.json", doc))[0]["method"] == "batch"
    bench_doc = {"format": "cmhash-bench", "version": 1, "results": [doc, doc]}
    assert len(read_results(write("b.json", bench_doc))) == 2
    no_summary = {k: v for k, v in doc.items() if k != "summary"}
    no_runs = {**doc, "runs": []}
    bad_summary = {**doc, "summary": {"16": doc["summary"]["8"]}}
    for name, obj, message in (
            ("v2.json", {**doc, "version": 2}, "has version 2; cmhash .* reads versions up to 1"),
            ("v0.json", {**doc, "version": "1"}, "has no valid 'version'"),
            ("bv2.json", {**bench_doc, "version": 3}, "has version 3"),
            ("nosum.json", no_summary, "is incomplete: no 'summary' field"),
            ("noruns.json", no_runs, "'bits' and 'runs' must not be empty"),
            ("badsum.json", bad_summary, r"'summary' has no mean/std of \['map_i2t', 'map_t2i'\] for 8 bits"),
            ("empty.json", {"format": "cmhash-bench", "version": 1, "results": []},
             "a `cmhash bench` file without results"),
            ("inner.json", {"format": "cmhash-bench", "version": 1, "results": [no_summary]},
             r"inner.json \(results\[0\]\) is incomplete"),
            ("sweep.json", {"format": "cmhash-sweep", "version": 1}, "format 'cmhash-sweep'"),
            ("text.json", "{not json", "text.json is not a JSON file")):
        path = write(name, obj)
        with pytest.raises(ValueError, match=message):
            read_results(path)
    path = tmp_path / "v2.json"
    assert main(["plot", "--json", str(path), "--out", str(tmp_path / "p.png"), "--quiet"]) == 2
    assert not (tmp_path / "p.png").exists()


def test_plots_and_tables_never_mix_protocols_silently(tmp_path, dataset):
    # two results of different database encodings were drawn as "batch" and "batch" under
    # the first one's "(learned database)" title, and tabulated under its header
    pytest.importorskip("matplotlib")
    from cmhash.bench import markdown_table
    from cmhash.plots import _labels, plot_convergence, plot_curves, plot_map_vs_bits
    kw = dict(bits=[8], seeds=1, params={"n_anchors": (40, 40)}, verbose=False)
    learned = run_evaluation("batch", dataset, curves=True, **kw)
    hashed = run_evaluation("batch", dataset, database="hashed", **{**kw, "bits": [8, 16]})
    labels, common = _labels([learned, hashed])
    assert labels == ["batch (learned database)", "batch (hashed database)"]
    assert common == "structured, paired training"
    # two runs never share a legend label: identical ones are numbered, runs of different
    # constructor parameters name them (both were "batch")
    assert _labels([learned, learned]) == (["batch #1", "batch #2"],
                                           "structured, learned database, paired training")
    other = {**learned, "params": {"n_anchors": [40, 40], "omega": 0.5}}
    assert _labels([learned, other])[0] == ["batch (omega=default)", "batch (omega=0.5)"]
    # results of different methods are told apart by the method: their (different)
    # parameters are not listed (reproduce's figures named every parameter of every method)
    cmfh = {**learned, "method": "cmfh", "params": {"mu": 100.0}}
    assert _labels([learned, cmfh, other])[0] == ["batch (omega=default)", "cmfh",
                                                  "batch (omega=0.5)"]
    assert plot_map_vs_bits([learned, hashed], tmp_path / "m.png").exists()
    with pytest.raises(ValueError, match="results differ in database"):
        markdown_table([learned, hashed])
    with pytest.raises(ValueError, match=r"batch has no run with 32 bits \(it has \[8\]\)"):
        plot_curves([learned], tmp_path / "c.png", bits=32)
    no_objective = {**learned, "runs": [{k: v for k, v in r.items() if k != "objective"}
                                        for r in learned["runs"]]}
    with pytest.raises(ValueError, match="results have no objective values"):
        plot_convergence([no_objective], tmp_path / "v.png")


def test_published_rows_name_a_non_paired_setting():
    from cmhash.published import published_map
    rows = published_map("mirflickr25k", "i2t", 16)
    assert ("AMSH (unpaired)", 0.7456, "amsh Table III, unpaired") in rows
    assert ("GSPH", 0.6541, "amsh Table III, unpaired") in rows
    assert ("AMSH", 0.7455, "amsh Table II") in rows
