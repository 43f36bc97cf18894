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


SDCH_DDP_SCRIPT = textwrap.dedent('''
    import sys, warnings, numpy as np, torch
    from cmhash.deep.sdch import SDCH
    from cmhash.deep.training import end_process_group
    d = np.load(sys.argv[1])
    X, T, Y = d["X"], d["T"], d["Y"]
    warnings.simplefilter("ignore")
    codes = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):     # the same seed twice, then another
        h = SDCH(8, random_state=seed, **eval(sys.argv[3]))
        h.fit(X, T, Y)
        codes[name] = np.stack(h.codes_)
        if name == "a":
            weights = {k: v for k, v in h.network_states_.items()}
    rank = torch.distributed.get_rank()
    np.savez(f"{sys.argv[2]}.rank{rank}.npz", **codes,
             **{"w/" + k: v for k, v in weights.items()})
    end_process_group()
''')


def test_sdch_trains_data_parallel_under_two_gloo_processes(tmp_path):
    """SDCH under torchrun (2 CPU processes, gloo): each rank trains on its half of every
    batch (warm-up epochs, ITQ and B steps included); both ranks end with the same codes, the
    codes of the single-process fit with the same seed (the weights to float32 rounding), the
    same codes again for the same seed and other codes for another seed."""
    from conftest import make_structured
    from cmhash.deep.sdch import SDCH
    X, T, Y = make_structured(n=70, seed=5)
    data = tmp_path / "d.npz"
    np.savez(data, X=X.astype(np.float32), T=T.astype(np.float32), Y=Y)
    kw = dict(image_hidden=(16,), text_hidden=(16,), feature_dim=8, batch_size=16,
              n_epochs=4, device="cpu", feature_bound="tanh", text_steps=2)
    script = tmp_path / "sdch_ddp.py"
    script.write_text(SDCH_DDP_SCRIPT)
    import cmhash
    src = str(os.path.dirname(os.path.dirname(cmhash.__file__)))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([src] + [p for p in sys.path if p and p != src]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(script), str(data),
                           str(tmp_path / "out"), repr(kw)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [np.load(tmp_path / f"out.rank{r}.npz") for r in (0, 1)]
    for k in ("a", "b", "c"):
        np.testing.assert_array_equal(ranks[0][k], ranks[1][k], err_msg=k)   # ranks agree
    np.testing.assert_array_equal(ranks[0]["a"], ranks[0]["b"])    # same seed, same codes
    assert not np.array_equal(ranks[0]["a"], ranks[0]["c"])        # another seed
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = SDCH(8, random_state=0, **kw).fit(X.astype(np.float32), T.astype(np.float32), Y)
    np.testing.assert_array_equal(np.stack(one.codes_), ranks[0]["a"])
    for k, v in one.network_states_.items():
        np.testing.assert_allclose(ranks[0]["w/" + k], v, atol=1e-5, err_msg=k)


@pytest.mark.filterwarnings("ignore::cmhash._validation.DegenerateCodesWarning")
def test_time_limit_stops_training_after_the_epoch_that_reaches_it(tmp_path):
    """``time_limit``: no epoch starts that would end past the limit; the epochs trained are
    ``n_iter_``, each epoch's seconds are in ``timings_`` (not in the model's fingerprint),
    and a fit stopped early is a complete model (SDCH stopped after its first warm-up epoch
    ends with Eq. 10's codes, the network encoding of the training items)."""
    import cmhash
    from conftest import make_structured
    from cmhash.deep.dcmh import DCMH
    from cmhash.deep.sdch import SDCH
    X, T, Y = make_structured(n=60, seed=2)
    kw = dict(image_hidden=(8,), text_hidden=8, batch_size=32, device="cpu", random_state=0)
    full = DCMH(8, n_epochs=4, time_limit=1e6, **kw).fit(X, T, Y)
    assert full.n_iter_ == 4 and len(full.timings_["epoch_seconds"]) == 4
    assert not full.timings_["stopped_by_time_limit"]
    short = DCMH(8, n_epochs=4, time_limit=1e-9, **kw).fit(X, T, Y)
    assert short.n_iter_ == 1 and len(short.timings_["epoch_seconds"]) == 1
    assert short.timings_["stopped_by_time_limit"]
    assert all(s > 0 for s in short.timings_["epoch_seconds"])
    one = DCMH(8, n_epochs=1, **kw).fit(X, T, Y)   # the first epoch is the same either way
    np.testing.assert_array_equal(short.learned_codes("image"), one.learned_codes("image"))
    back = cmhash.load(short.save(tmp_path / "m.npz"))
    np.testing.assert_array_equal(back.encode(X, "image"), short.encode(X, "image"))
    sd = SDCH(8, n_epochs=5, time_limit=1e-9, image_hidden=(8,), text_hidden=(8,),
              feature_dim=8, batch_size=32, device="cpu", random_state=0).fit(X, T, Y)
    assert sd.n_iter_ == 1
    np.testing.assert_array_equal(sd.learned_codes("image"), sd.encode(X, "image"))
    for bad in (0, -1.0, True, "5", float("nan")):
        with pytest.raises(ValueError, match="time_limit"):
            DCMH(8, n_epochs=2, time_limit=bad, **kw).fit(X, T, Y)
