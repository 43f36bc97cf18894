"""The deep-training options of `cmhash fit` / `cmhash evaluate` (--backbone, --weights,
--device, --amp, --epochs, --checkpoint, --resume) map onto the estimators' parameters."""
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmhash.base import load  # noqa: E402
from cmhash.cli import main  # noqa: E402
from conftest import make_structured  # noqa: E402

pytestmark = [pytest.mark.deep,
              pytest.mark.filterwarnings("ignore::cmhash._validation.DegenerateCodesWarning")]

TINY = ["--param", "image_hidden=16", "--param", "text_hidden=16", "--param", "batch_size=16"]


@pytest.fixture
def data(tmp_path):
    X, T, Y = make_structured(n=60, seed=4)
    path = tmp_path / "d.npz"
    np.savez(path, I_tr=X[:50].astype(np.float32), T_tr=T[:50].astype(np.float32), L_tr=Y[:50],
             I_te=X[50:].astype(np.float32), T_te=T[50:].astype(np.float32), L_te=Y[50:])
    return path


def _fit(data, out, method, *extra):
    return main(["fit", "--method", method, "--data", str(data), "--bits", "8", "--out",
                 str(out), "--quiet", *TINY, *extra])


@pytest.mark.parametrize("method", ["dcmh", "ta-adcmh", "sdch"])
def test_fit_options_reach_the_estimator(method, data, tmp_path):
    ck = tmp_path / "ck.pt"
    assert _fit(data, tmp_path / "m.npz", method, "--device", "cpu", "--amp", "off",
                "--epochs", "2", "--checkpoint", str(ck), "--backbone", "mlp") == 0
    m = load(tmp_path / "m.npz")
    assert (m.device, m.amp, m.n_epochs, m.image_backbone) == ("cpu", "off", 2, "mlp")
    assert m.checkpoint == str(ck) and ck.is_file()
    # resuming the finished fit's checkpoint trains no more epochs: the same model
    assert _fit(data, tmp_path / "r.npz", method, "--device", "cpu", "--amp", "off",
                "--epochs", "2", "--resume", str(ck), "--backbone", "mlp") == 0
    r = load(tmp_path / "r.npz")
    assert r.resume == str(ck)
    np.testing.assert_array_equal(np.asarray(r.codes_), np.asarray(m.codes_))
    for k, v in m.network_states_.items():
        np.testing.assert_array_equal(v, r.network_states_[k])
    # other parameters: the checkpoint is refused with a clear message (exit status 2)
    assert _fit(data, tmp_path / "x.npz", method, "--device", "cpu", "--epochs", "3",
                "--resume", str(ck), "--backbone", "mlp") != 0


def test_evaluate_takes_the_deep_options(data, tmp_path):
    import json
    out = tmp_path / "e.json"
    assert main(["evaluate", "--method", "sdch", "--data", str(data), "--bits", "8", "--seeds",
                 "1", "--quiet", *TINY, "--device", "cpu", "--epochs", "2", "--amp", "off",
                 "--checkpoint", str(tmp_path / "e.pt"), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["params"]["n_epochs"] == 2 and doc["params"]["amp"] == "off"
    assert (tmp_path / "e.pt").is_file()


def test_deep_options_are_refused_for_other_methods_and_with_param(data, tmp_path, capsys):
    assert main(["fit", "--method", "batch", "--data", str(data), "--bits", "8", "--out",
                 str(tmp_path / "m.npz"), "--epochs", "3"]) == 2
    assert "--epochs is an option of the deep methods" in capsys.readouterr().err
    assert main(["fit", "--method", "dcmh", "--data", str(data), "--bits", "8", "--out",
                 str(tmp_path / "m.npz"), "--epochs", "3", "--param", "n_epochs=2"]) == 2
    assert "both given" in capsys.readouterr().err
    assert main(["evaluate", "--method", "dcmh", "--data", str(data), "--bits", "8", "16",
                 "--seeds", "1", "--checkpoint", str(tmp_path / "c.pt")]) == 2
    assert "belong to one fit" in capsys.readouterr().err


# ------------------------------------------------------------------ torchrun (DDP, gloo)
@pytest.mark.parametrize("method", ["dcmh", pytest.param("ta-adcmh", marks=pytest.mark.slow),
                                    pytest.param("sdch", marks=pytest.mark.slow)])
def test_torchrun_two_processes_fit_equals_one_process_fit(method, data, tmp_path):
    """`torchrun --nproc_per_node 2 -m cmhash.cli fit` on the CPU (gloo): each rank trains on
    its half of every batch; the codes equal the single-process fit's, the weights agree to
    float32 rounding, and rank 0 alone writes the model (and the checkpoint)."""
    import os
    import subprocess
    import sys
    args = ["fit", "--method", method, "--data", str(data), "--bits", "8", "--quiet", *TINY,
            "--device", "cpu", "--epochs", "3"]
    assert main(args + ["--out", str(tmp_path / "one.npz")]) == 0
    import cmhash
    src = str(Path(cmhash.__file__).resolve().parents[1])    # the cmhash under test, first
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([src] + [p for p in sys.path if p and p != src]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "cmhash.cli", *args, "--out",
                           str(tmp_path / "two.npz"), "--checkpoint", str(tmp_path / "ck.pt")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = load(tmp_path / "one.npz"), load(tmp_path / "two.npz")
    np.testing.assert_array_equal(np.asarray(one.codes_), np.asarray(two.codes_))
    for k, v in one.network_states_.items():
        np.testing.assert_allclose(two.network_states_[k], v, atol=1e-5, err_msg=k)
    assert (tmp_path / "ck.pt").is_file()
