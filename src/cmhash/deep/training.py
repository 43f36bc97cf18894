"""Training infrastructure shared by the deep methods: mixed precision, checkpoints, DDP.

* :class:`Precision` -- ``amp`` = ``"auto"`` / ``"bf16"`` / ``"fp16"`` / ``"off"``: autocast of
  the network forward passes on CUDA (bf16 where the GPU supports it, else fp16 with a
  gradient scaler), TF32 matrix products on CUDA, channels_last memory for convolutional
  networks. On the CPU ``"auto"`` is off (float32 everywhere), so CPU results do not change.
  The deep methods inject closed-form gradients (``torch.autograd.backward(outputs,
  grads)``): :meth:`Precision.backward` casts each gradient to its output's dtype and applies
  the fp16 loss scale, :meth:`Precision.step` unscales, skips steps with inf/NaN gradients and
  updates the scale (``torch.amp.GradScaler``).
* :func:`save_checkpoint` / :func:`load_checkpoint` -- one file per fit, rewritten atomically
  after every epoch (``cmhash._io.atomic_write``): the epoch, every network's and optimiser's
  state, the method's training state (codes, output matrices, ...), the NumPy generator state
  and torch's CPU generator state, and a fingerprint of the estimator's parameters, so a resume
  with other parameters is refused. A resumed CPU fit gives the same codes as an uninterrupted
  one.
* :class:`Distributed` -- data parallelism under ``torchrun`` (``DistributedDataParallel``;
  gloo on the CPU, NCCL on CUDA). Every rank holds the full training state; each global batch
  is split across the ranks (:meth:`Distributed.shard`), the ranks' network outputs are
  gathered (:meth:`Distributed.gather_rows`) so the closed-form gradient of the *whole* batch is
  computed on every rank, each rank back-propagates its own rows' part, and DDP's gradient
  average (times the world size, :attr:`Distributed.grad_scale`) equals the single-process
  gradient of the batch. Without torchrun it is a no-op with world size 1.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._io import atomic_write

__all__ = ["Precision", "save_checkpoint", "load_checkpoint", "params_fingerprint",
           "Distributed", "CHECKPOINT_FORMAT"]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cmhash-deep-checkpoint"
AMP_CHOICES = ("auto", "bf16", "fp16", "off")


# ------------------------------------------------------------------ precision
class Precision:
    """Mixed precision on CUDA (see the module doc); a no-op on the CPU unless forced."""

    def __init__(self, amp, device: torch.device):
        if amp is True:
            amp = "auto"
        if amp is False or amp is None:
            amp = "off"
        if amp not in AMP_CHOICES:
            raise ValueError(f"amp must be one of {AMP_CHOICES} (or True / False), got {amp!r}")
        device = torch.device(device)
        self.device = device
        cuda = device.type == "cuda"
        if amp == "auto":
            amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "off"
        if amp == "fp16" and not cuda:
            raise ValueError("amp='fp16' needs a CUDA device (on the CPU use 'bf16' or 'off')")
        self.mode = amp
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self):
        """Context of the forward passes."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prepare(self, net: nn.Module) -> nn.Module:
        """channels_last for convolutional networks on CUDA (faster tensor-core kernels)."""
        if self.device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in net.modules()):
            net = net.to(memory_format=torch.channels_last)
        return net

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda" and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def backward(self, outputs, grads) -> None:
        """``torch.autograd.backward(outputs, grads)`` with each gradient in its output's
        dtype and, for fp16, multiplied by the current loss scale."""
        if not isinstance(outputs, (list, tuple)):
            outputs, grads = [outputs], [grads]
        scale = float(self.scaler.get_scale()) if self.scaler is not None else 1.0
        grads = [(g * scale if scale != 1.0 else g).to(o.dtype) for o, g in zip(outputs, grads)]
        torch.autograd.backward(list(outputs), grads)

    def unscale(self, optimizer) -> None:
        """Before gradient clipping: bring fp16-scaled gradients back to their true size."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()


# ------------------------------------------------------------------ checkpoints
def params_fingerprint(params: dict) -> str:
    """SHA-256 of the estimator's parameters that shape training (JSON, sorted keys)."""
    def conv(v):
        if isinstance(v, (Path, torch.device)):
            return str(v)
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v
    skip = {"verbose", "device", "checkpoint", "resume", "amp", "num_workers", "time_limit"}
    doc = {k: conv(v) for k, v in sorted(params.items()) if k not in skip}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=repr).encode()).hexdigest()


def save_checkpoint(path, *, epoch: int, params: dict, networks: dict, optimizers: dict,
                    state: dict, rng: np.random.Generator | None = None) -> Path:
    """Write the training state after ``epoch`` (0-based, completed) to ``path`` atomically.

    ``networks`` / ``optimizers``: name -> module / optimiser (DDP-wrapped modules are
    unwrapped); ``state``: the method's tensors and arrays (codes, output matrices, ...).
    """
    doc = {
        "format": CHECKPOINT_FORMAT, "version": 1, "epoch": int(epoch),
        "params": params_fingerprint(params),
        "networks": {k: _unwrap(m).state_dict() for k, m in networks.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "state": state,
        "numpy_rng": rng.bit_generator.state if rng is not None else None,
        "torch_rng": torch.get_rng_state(),
    }
    buf = io.BytesIO()
    torch.save(doc, buf)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getvalue())
    return path


def load_checkpoint(path, *, params: dict, networks: dict, optimizers: dict,
                    rng: np.random.Generator | None = None, map_location=None) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``networks`` and
    ``optimizers`` (and ``rng``); returns ``{"epoch": last completed epoch, "state": ...}``.

    A file that is not a checkpoint, or one written with other parameters or other networks,
    is a ValueError naming the difference.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {str(path)!r}")
    try:
        doc = torch.load(path, map_location=map_location or "cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"{str(path)!r} is not a readable cmhash checkpoint: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a cmhash training checkpoint")
    if doc["params"] != params_fingerprint(params):
        raise ValueError(f"{str(path)!r} was written by a fit with other parameters: resume "
                         f"with the parameters of that fit (or start a new fit)")
    missing = sorted(set(networks) ^ set(doc["networks"])) + sorted(
        set(optimizers) ^ set(doc["optimizers"]))
    if missing:
        raise ValueError(f"{str(path)!r} does not match this method's networks / optimisers "
                         f"(differ: {missing})")
    for k, m in networks.items():
        _unwrap(m).load_state_dict(doc["networks"][k])
    for k, o in optimizers.items():
        o.load_state_dict(doc["optimizers"][k])
    if rng is not None and doc.get("numpy_rng") is not None:
        rng.bit_generator.state = doc["numpy_rng"]
    torch.set_rng_state(doc["torch_rng"])
    return {"epoch": int(doc["epoch"]), "state": doc["state"]}


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


# ------------------------------------------------------------------ data parallel
class Distributed:
    """Data parallelism under ``torchrun`` (see the module doc); world size 1 otherwise."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist
        self._dist = dist
        self.active = dist.is_available() and dist.is_initialized()
        if not self.active and dist.is_available() and "WORLD_SIZE" in os.environ \
                and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
            if torch.device(device).type == "cuda" and torch.device(device).index is not None:
                torch.cuda.set_device(torch.device(device))    # NCCL: this process's GPU
            dist.init_process_group(backend)
            self.active = True
        self.rank = dist.get_rank() if self.active else 0
        self.world = dist.get_world_size() if self.active else 1
        self.device = torch.device(device)
        self._wrapped: dict[int, nn.Module] = {}

    @property
    def grad_scale(self) -> float:
        """DDP averages gradients over the ranks; the batch gradient is their sum."""
        return float(self.world)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, net: nn.Module) -> nn.Module:
        if not self.active or not any(p.requires_grad for p in net.parameters()):
            return net
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(net, device_ids=ids)

    def wrapped(self, net: nn.Module) -> nn.Module:
        """:meth:`wrap` once per network (the DDP wrapper is kept for the following steps)."""
        ddp = self._wrapped.get(id(net))
        if ddp is None or _unwrap(ddp) is not net:
            ddp = self._wrapped[id(net)] = self.wrap(net)
        return ddp

    def shard(self, idx: np.ndarray) -> tuple[np.ndarray, slice]:
        """This rank's part of a global batch ``idx`` and its position in the batch."""
        if not self.active:
            return idx, slice(0, len(idx))
        bounds = np.linspace(0, len(idx), self.world + 1).astype(int)
        part = slice(int(bounds[self.rank]), int(bounds[self.rank + 1]))
        return idx[part], part

    def gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """The ranks' row blocks of one batch, concatenated in rank order (no gradient)."""
        if not self.active:
            return local
        local = local.detach().contiguous()
        sizes = [torch.zeros(1, dtype=torch.long, device=local.device)
                 for _ in range(self.world)]
        self._dist.all_gather(sizes, torch.tensor([local.shape[0]], device=local.device))
        top = int(max(int(s) for s in sizes))
        padded = torch.zeros((top,) + tuple(local.shape[1:]), dtype=local.dtype,
                             device=local.device)
        padded[:local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        self._dist.all_gather(parts, padded)
        return torch.cat([p[:int(s)] for p, s in zip(parts, sizes)])

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``tensor`` on every rank (in place)."""
        if self.active:
            self._dist.broadcast(tensor, 0)
        return tensor

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (a decision all ranks must take together, such as
        stopping training early); ``flag`` itself without torchrun."""
        if not self.active:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        self._dist.broadcast(t, 0)
        return bool(t.item() > 0.5)

    def barrier(self) -> None:
        if self.active:
            self._dist.barrier()

    def close(self) -> None:
        """Wait for every rank, then end the process group (a rank that exits with gloo's
        threads still running is aborted by the C++ runtime)."""
        end_process_group()


def end_process_group() -> None:
    """Barrier + ``destroy_process_group`` when a torch.distributed group is active (no-op
    otherwise): the last step of a torchrun process."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
