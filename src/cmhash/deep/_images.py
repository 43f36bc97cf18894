"""Float batches from lazy image sources: a torch DataLoader with worker processes.

Each batch is formed from a given list of row indices: the worker reads those images (still
uint8), applies the source's geometry (resize / crop / flip, :class:`ImageTransform`) and
stacks them; the main process moves the uint8 batch to the device (from pinned memory on
CUDA) and only there converts it to float32 and normalises it. So at most a few batches exist
as floats, whatever the number of images.

Randomness: the random crops and flips of batch ``k`` come from
``np.random.default_rng([seed, k])``, so the batches depend on ``seed`` only -- not on the
number of workers or on which worker formed a batch (same seed, same batches).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.images import ImageTransform, is_image_source

__all__ = ["image_batches", "iterate_image_batches", "normalize_batch"]


class _BatchDataset(Dataset):
    """Item ``k`` is the uint8 tensor of ``batches[k]`` after the geometry."""

    def __init__(self, source, batches, train: bool, seed: int):
        self.source, self.batches, self.train, self.seed = source, batches, train, seed
        self.item_shape = source.item_shape

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, k):
        rng = np.random.default_rng([self.seed, int(k)]) if self.train else None
        arr = self.source.items(self.batches[k], train=self.train, rng=rng,
                                expect=self.item_shape)
        return torch.from_numpy(arr)


def _normalizer(transform: ImageTransform, device: torch.device, fresh: bool = False):
    """The batch normalisation of ``transform`` as a function of a (b, C, H, W) tensor
    (``fresh``: the tensors are the loader's own, so a float32 one is normalised in place)."""
    factor = None if transform.scale == 255.0 else float(transform.scale) / 255.0

    def as_tensor(a):
        if a is None:
            return None
        a = torch.from_numpy(np.array(a, dtype=np.float32))   # a writable copy
        return (a.reshape(1, -1, 1, 1) if a.ndim == 1 else a[None]).to(device)

    mean, std = as_tensor(transform.mean), as_tensor(transform.std)

    def normalize(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True)
        if x.dtype != torch.float32:
            x = x.float()
        elif not fresh:
            x = x.clone()         # the caller's tensor is not changed by the steps below
        if factor is not None:
            x.mul_(factor)
        if mean is not None:
            x.sub_(mean)
        if std is not None:
            x.div_(std)
        return x

    return normalize


def normalize_batch(x: torch.Tensor, transform: ImageTransform, device="cpu") -> torch.Tensor:
    """``x`` (a uint8 or float batch) as float32 on ``device``, normalised by ``transform``:
    ``x * scale / 255``, minus ``mean``, divided by ``std`` (steps without a value skipped)."""
    return _normalizer(transform, torch.device(device))(x)


def _check_workers(num_workers) -> int:
    if isinstance(num_workers, bool) or not isinstance(num_workers, (int, np.integer)) \
            or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    return int(num_workers)


def iterate_image_batches(source, batches, *, train: bool = False, seed: int = 0,
                          num_workers: int = 0, device="cpu"):
    """Yield ``(indices, float32 tensor (b, C, H, W) on device)`` for each index array of
    ``batches``, in that order, using ``source.transform`` (geometry in the workers,
    normalisation on the device). ``num_workers=0`` reads in this process; memory is pinned
    only when ``device`` is CUDA."""
    if not is_image_source(source):
        raise TypeError(f"an image source is needed, got {type(source).__name__}")
    device = torch.device(device)
    num_workers = _check_workers(num_workers)
    batches = [np.asarray(b, dtype=np.int64).reshape(-1) for b in batches]
    if not batches:
        return
    data = _BatchDataset(source, batches, bool(train), int(seed) % (2 ** 63))
    loader = DataLoader(data, batch_size=None, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda",
                        # the loader draws its base seed from this generator, not from torch's
                        # global one (which seeds the networks): image input leaves it alone
                        generator=torch.Generator().manual_seed(int(seed) % (2 ** 63)),
                        prefetch_factor=2 if num_workers else None)
    normalize = _normalizer(source.transform, device, fresh=True)
    for idx, xb in zip(batches, loader):
        yield idx, normalize(xb)


def image_batches(source, order, batch_size: int, *, transform: ImageTransform | None = None,
                  train: bool = False, seed: int = 0, num_workers: int = 0, device="cpu"):
    """Yield ``(indices, float32 tensor)`` for consecutive chunks of ``batch_size`` rows of
    ``order`` (any index order, e.g. a seeded permutation); ``transform`` replaces the
    source's. See :func:`iterate_image_batches`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if transform is not None:
        source = source.with_transform(transform)
    order = np.asarray(order, dtype=np.int64).reshape(-1)
    chunks = [order[s:s + batch_size] for s in range(0, order.size, int(batch_size))]
    yield from iterate_image_batches(source, chunks, train=train, seed=seed,
                                     num_workers=num_workers, device=device)
