"""benchmarks/roofline.py: the FLOP model, the records' arithmetic and the warm-memory mode,
on a tiny fit with tiny machine probes (the script itself is a benchmark, not a test)."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "roofline.py"


@pytest.fixture()
def roofline(monkeypatch):
    spec = importlib.util.spec_from_file_location("roofline_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "GEMM_SIZE", 128)
    monkeypatch.setattr(mod, "STREAM_ELEMENTS", 1 << 16)
    monkeypatch.setattr(mod, "FIRST_TOUCH_BYTES", 1 << 20)
    return mod


def test_flop_model_counts_the_thin_products_per_iteration(roofline):
    shapes = {"n": 1000, "bits": 16, "classes": 5, "n_iter": 3, "anchors": [40, 60],
              "nnz": [5000, 3000], "dims": [50, 80], "sparse": [True, True],
              "n_iter_hash": 0, "n_init_samples": 0}
    flops = roofline.flop_model("batch", shapes)
    thin = 2.0 * 1000 * (40 + 60) * 16
    assert flops["products"] == thin * (1 + 2 * 3)
    # the hash functions' Gram (syrk) and right-hand sides
    assert flops["gram"] == sum(1000 * q * (q + 1) + 2.0 * 1000 * q * 16 for q in (40, 60))
    more = roofline.flop_model("batch", {**shapes, "n_iter": 4})
    assert more["products"] > flops["products"] and more["latent"] > flops["latent"]
    with pytest.raises(ValueError, match="no FLOP model"):
        roofline.flop_model("nosuch", shapes)


def test_kernel_work_is_the_useful_product_plus_the_elementwise_passes(roofline):
    """2 nnz q per modality (nonzeros x anchors, the same for sparse and dense input: a GEMM's
    multiplications by zeros are not counted) + KERNEL_ELEMENTWISE n q; fit_shapes counts a
    dense view's nonzeros, not its size."""
    import numpy as np
    import scipy.sparse as sp
    shapes = {"n": 1000, "bits": 16, "classes": 5, "n_iter": 3, "anchors": [40, 60],
              "nnz": [5000, 3000], "dims": [50, 80], "sparse": [True, False],
              "n_iter_hash": 0, "n_init_samples": 0}
    kernel = roofline.flop_model("batch", shapes)["kernel"]
    assert kernel == sum(2.0 * z * q + roofline.KERNEL_ELEMENTWISE * 1000 * q
                         for z, q in ((5000, 40), (3000, 60)))

    class Fitted:
        n_bits, n_iter = 16, 3
        kernels_ = [type("K", (), {"anchors_": np.zeros((40, 50))})()] * 2
    dense = np.zeros((1000, 80))
    dense[::10, 3] = 1.0
    got = roofline.fit_shapes("batch", Fitted(), [sp.random(1000, 50, density=0.1,
                                                            format="csr"), dense],
                              np.zeros((1000, 5)))
    assert got["nnz"] == [5000, 100]


@pytest.mark.parametrize("memory", ["cold", "warm"])
def test_records_are_consistent(roofline, tmp_path, memory):
    out = tmp_path / "r.json"
    records = roofline.main(["--n", "300", "--bits", "8", "--methods", "batch", "--repeats", "1",
                             "--memory", memory, "--json", str(out)])
    (rec,) = records
    assert rec["method"] == "batch" and rec["bits"] == 8 and rec["n"] == 300
    assert rec["flops"] == pytest.approx(sum(p["flops"] for p in rec["phases"]))
    assert rec["efficiency"] == pytest.approx(rec["gflops"] / rec["gemm_gflops"])
    assert rec["gflops"] == pytest.approx(rec["flops"] / rec["fit_seconds"] / 1e9)
    # the bound is a work-weighted harmonic mean of the float64 and float32 GEMM rates
    rates = (rec["gemm_gflops_float64"], rec["gemm_gflops_float32"])
    assert min(rates) * 0.999 <= rec["gemm_gflops"] <= max(rates) * 1.001
    assert sum(p["seconds"] for p in rec["phases"]) == pytest.approx(rec["fit_seconds"], rel=0.02)
    lo, hi = rec["first_touch_gbs"]
    assert 0 < lo <= hi
    doc = json.loads(out.read_text())
    assert doc["memory"] == memory and doc["records"][0]["method"] == "batch"


def test_warm_mode_times_only_fits_after_the_warm_up(roofline, monkeypatch):
    fits = []
    real = roofline.timed_fit

    def counting(*args, **kwargs):
        fits.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(roofline, "timed_fit", counting)
    monkeypatch.setattr(roofline, "keep_freed_memory", lambda: True)
    roofline.main(["--n", "200", "--bits", "8", "--methods", "batch", "--repeats", "1",
                   "--memory", "warm"])
    assert len(fits) == 2              # --repeats raised to 2: one warm-up, one timed


@pytest.mark.parametrize("memory, reported", [("warm", 100.0), ("cold", 1.0)])
def test_the_warm_up_fit_is_never_the_reported_one(roofline, monkeypatch, memory, reported):
    """The first fit takes 1 s, the second 100 s: cold keeps the fastest (1 s), warm must
    report the second even though the warm-up was faster."""
    times = iter([1.0, 100.0])
    real = roofline.timed_fit

    def fake(*args, **kwargs):
        hasher, _, phases = real(*args, **kwargs)
        seconds = next(times)
        return hasher, seconds, {**{p: 0.0 for p in phases}, "other": seconds}

    monkeypatch.setattr(roofline, "timed_fit", fake)
    monkeypatch.setattr(roofline, "keep_freed_memory", lambda: True)
    (rec,) = roofline.main(["--n", "200", "--bits", "8", "--methods", "batch",
                            "--repeats", "2", "--memory", memory])
    assert rec["fit_seconds"] == reported


@pytest.mark.parametrize("method", ["batch", "amsh"])
def test_library_ceilings_time_the_gemm_shaped_phases_in_isolation(roofline, monkeypatch,
                                                                   method):
    """--ceilings: the kernel / products / Gram calls timed alone on the fit's shapes; the
    record's ceiling efficiency is the work over their sum (every other phase free), so it is
    above the fit's own efficiency. The isolated calls are the fit's: the kernel's transform,
    the float32 product, cross_product and ridge_regression, each called CEILING_REPEATS
    times."""
    import cmhash.solvers as solvers
    calls = {"ridge": 0, "cross": 0}
    real_ridge, real_cross = solvers.ridge_regression, solvers.cross_product

    def ridge(*a, **k):
        calls["ridge"] += 1
        return real_ridge(*a, **k)

    def cross(*a, **k):
        calls["cross"] += 1
        return real_cross(*a, **k)
    monkeypatch.setattr(roofline, "CEILING_REPEATS", 2)
    records = roofline.main(["--n", "400", "--bits", "8", "--methods", method, "--repeats", "1",
                             "--ceilings"])
    (rec,) = records
    ceil = rec["library_ceiling_seconds"]
    assert set(ceil) == {"kernel", "products", "gram"} and min(ceil.values()) > 0
    assert rec["ceiling_efficiency"] == pytest.approx(
        rec["flops"] / sum(ceil.values()) / 1e9 / rec["gemm_gflops"])
    assert rec["ceiling_efficiency"] > rec["efficiency"]
    # the isolated calls are the library functions the fit uses
    monkeypatch.setattr(solvers, "ridge_regression", ridge)
    monkeypatch.setattr(solvers, "cross_product", cross)
    from cmhash.base import make_hasher
    from cmhash.data import load_dataset
    ds = load_dataset("synthetic:nuswide-like", random_state=0, n_train=300)
    views = ds.views("train")
    hasher = make_hasher(method, n_bits=8, random_state=0).fit_views(
        views, ds.labels_of("train"), names=ds.modality_names)
    flops = {"products": 1e6, "gram": 1e6}
    got = roofline.library_ceilings(hasher, views, flops)
    assert calls == {"ridge": 2 * len(views), "cross": 2 * len(views)}
    assert got["products"] > 0 and got["gram"] > 0
