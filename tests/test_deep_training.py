"""Shared deep-training infrastructure: precision, checkpoints, data parallelism."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmhash.deep.training import (Distributed, Precision, load_checkpoint,  # noqa: E402
                                  params_fingerprint, save_checkpoint)


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))


def test_checkpoint_round_trip_restores_everything(tmp_path):
    net, rng = _net(), np.random.default_rng(3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(4, 5)
    net(x).sum().backward()
    opt.step()                                   # momentum buffers exist
    rng.random(7)
    B = torch.sign(torch.randn(6, 3))
    params = {"n_bits": 3, "lr": 0.1, "verbose": True}
    path = save_checkpoint(tmp_path / "ck.pt", epoch=4, params=params, networks={"f": net},
                           optimizers={"f": opt}, state={"B": B}, rng=rng)
    expected_draw = np.random.default_rng(3)
    expected_draw.random(7)
    torch_next = torch.rand(3)                   # torch's generator was saved before this draw
    net2, rng2 = _net(seed=9), np.random.default_rng(123)
    opt2 = torch.optim.SGD(net2.parameters(), lr=0.1, momentum=0.9)
    got = load_checkpoint(path, params={**params, "verbose": False}, networks={"f": net2},
                          optimizers={"f": opt2}, rng=rng2)
    assert got["epoch"] == 4 and torch.equal(got["state"]["B"], B)
    for a, b in zip(net.state_dict().values(), net2.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(opt.state_dict()["state"][0]["momentum_buffer"],
                       opt2.state_dict()["state"][0]["momentum_buffer"])
    assert rng2.random() == expected_draw.random()
    assert torch.equal(torch.rand(3), torch_next)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # atomic: no temps


def test_checkpoint_refuses_other_params_and_other_files(tmp_path):
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    path = save_checkpoint(tmp_path / "ck.pt", epoch=0, params={"lr": 0.1},
                           networks={"f": net}, optimizers={"f": opt}, state={})
    with pytest.raises(ValueError, match="other parameters"):
        load_checkpoint(path, params={"lr": 0.2}, networks={"f": net}, optimizers={"f": opt})
    with pytest.raises(ValueError, match="networks / optimisers"):
        load_checkpoint(path, params={"lr": 0.1}, networks={"g": net}, optimizers={"f": opt})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable cmhash checkpoint"):
        load_checkpoint(tmp_path / "junk.pt", params={}, networks={}, optimizers={})
    with pytest.raises(ValueError, match="not found"):
        load_checkpoint(tmp_path / "none.pt", params={}, networks={}, optimizers={})
    assert params_fingerprint({"lr": 0.1, "device": "cpu"}) == params_fingerprint({"lr": 0.1})


def test_precision_modes_on_cpu():
    cpu = torch.device("cpu")
    assert Precision("auto", cpu).enabled is False        # CPU results unchanged
    assert Precision(False, cpu).mode == "off"
    with pytest.raises(ValueError, match="CUDA"):
        Precision("fp16", cpu)
    with pytest.raises(ValueError, match="amp must be"):
        Precision("fp8", cpu)
    p = Precision("bf16", cpu)
    net = _net()
    with p.autocast():
        out = net(torch.randn(4, 5))
    assert out.dtype == torch.bfloat16
    g = torch.ones(4, 3)                                    # a float32 closed-form gradient
    p.backward(out, g)
    assert all(q.grad is not None for q in net.parameters())


DDP_SCRIPT = textwrap.dedent('''
    import sys, numpy as np, torch
    from cmhash.deep.training import Distributed
    dist = Distributed(torch.device("cpu"))
    assert dist.world == 2, dist.world
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    ref = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    ref.load_state_dict(net.state_dict())
    X = torch.randn(9, 5, generator=torch.Generator().manual_seed(1))
    T = torch.randn(9, 3, generator=torch.Generator().manual_seed(2))

    def batch_grad(Z):     # a closed-form gradient that couples the rows of the batch
        return (Z - T) + Z.mean(0, keepdim=True) + Z @ (Z.T @ Z) / 50.0

    ddp = dist.wrap(net)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    idx = np.arange(9)
    own, part = dist.shard(idx)
    for _ in range(3):
        out = ddp(X[own])
        full = dist.gather_rows(out)
        g = batch_grad(full)[part] * dist.grad_scale
        opt.zero_grad()
        torch.autograd.backward([out], [g])
        opt.step()
    ropt = torch.optim.SGD(ref.parameters(), lr=0.05)
    for _ in range(3):
        Z = ref(X)
        ropt.zero_grad()
        torch.autograd.backward([Z], [batch_grad(Z.detach())])
        ropt.step()
    diff = max(float((a - b).abs().max()) for a, b in zip(net.state_dict().values(),
                                                          ref.state_dict().values()))
    if dist.rank == 0:
        open(sys.argv[1], "w").write(repr(diff))
    dist.close()
''')


def test_ddp_two_gloo_processes_equal_one_process(tmp_path):
    script = tmp_path / "ddp_step.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "diff.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([p for p in sys.path if p])}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(script), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(out.read_text()) < 1e-6


def test_distributed_is_a_noop_without_torchrun():
    d = Distributed(torch.device("cpu"))
    assert (d.active, d.rank, d.world, d.grad_scale) == (False, 0, 1, 1.0)
    idx = np.arange(5)
    own, part = d.shard(idx)
    assert own is idx and part == slice(0, 5)
    x = torch.randn(3, 2)
    assert d.gather_rows(x) is x
    net = _net()
    assert d.wrap(net) is net
