"""benchmarks/gpu_check.py, run as the GPU machine would run it but on the CPU with tiny
settings: the data set and manifest are written by the script, all three methods go through
manifest -> DataLoader -> fit -> encode -> evaluate, and the records hold what the report
needs (speed, epochs, memory, mAP against correctly computed chance levels)."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("PIL")

pytestmark = pytest.mark.deep
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
TINY = ["--n", "64", "--size", "32", "--epochs", "1", "--bits", "8", "--fc-dim", "16",
        "--workers", "0", "--gen-workers", "2", "--device", "cpu"]


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_runs_every_method_from_files_and_reports_against_chance(tmp_path, capsys):
    from cmhash.data import load_image_text_dataset
    gc = _script()
    out = tmp_path / "gc.json"
    assert gc.main(TINY + ["--out-dir", str(tmp_path / "data"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert {"date", "gpu", "torch", "device", "records"} <= set(doc)
    assert doc["gpu"] is None and doc["torch"] == torch.__version__ and doc["device"] == "cpu"
    assert [r["method"] for r in doc["records"]] == ["ta-adcmh", "sdch", "dcmh"]
    assert "CNN-F starts from random weights" in printed
    assert "AlexNet starts from random weights" in printed
    # the script wrote the data set itself: JPEG files and a manifest in the documented format
    manifest = Path(doc["manifest"])
    assert manifest.read_text().splitlines()[0] == "image,text,labels,split"
    assert len(list((manifest.parent / "images").glob("*.jpg"))) == 64
    ds = load_image_text_dataset(manifest, image_size=32)
    lq, ldb = ds.labels_of("query"), ds.labels_of("retrieval")
    prior = float(np.mean((lq @ ldb.T) > 0))            # share of relevant pairs
    for r in doc["records"]:
        assert "error" not in r, r.get("traceback")
        assert r["method"] in printed
        assert r["epochs_trained"] == 1 and len(r["epoch_seconds"]) == 1
        assert r["n_train"] + r["n_query"] == 64 and r["n_query"] == 6
        assert r["images_per_second"] > 0 and r["seconds_per_epoch"] > 0
        assert r["peak_memory_bytes"] > 0 and "RSS" in r["peak_memory_kind"]
        assert r["init"].startswith("random") and r["amp"] == "off"
        for db in ("hashed", "learned"):
            for task in ("i2t", "t2i"):
                assert 0 < r["map"][db][task] <= 1 and math.isfinite(r["map"][db][task])
        for task in ("i2t", "t2i"):
            assert r["chance"]["label_prior"][task] == pytest.approx(prior, rel=1e-12)
            assert 0 < r["chance"]["random_codes_map"][task] <= 1
    assert {r["input_size"] for r in doc["records"]} == {32}
    # the time guard: a budget already spent stops after the first epoch; the data are reused
    assert gc.main(TINY + ["--epochs", "3", "--methods", "dcmh", "--budget", "0.001",
                           "--out-dir", str(tmp_path / "data"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "reused" in printed and "stopped by the time guard" in printed
    (r,) = json.loads(out.read_text())["records"]
    assert r["epochs_trained"] == 1 and r["stopped_by_time_guard"]


def test_random_code_chance_is_the_label_prior_on_a_large_database():
    """The random-codes mAP of :func:`chance_levels` approaches the label prior."""
    gc = _script()

    class DS:
        def __init__(self, rng):
            self.L = np.eye(4)[rng.integers(0, 4, 3000)]

        def labels_of(self, split):
            return self.L[:200] if split == "query" else self.L[200:]

    ch = gc.chance_levels(DS(np.random.default_rng(0)), 16, 0)
    for task in ("i2t", "t2i"):
        assert ch["label_prior"][task] == pytest.approx(0.25, abs=0.03)
        assert ch["random_codes_map"][task] == pytest.approx(ch["label_prior"][task], abs=0.02)
