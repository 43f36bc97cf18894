"""Shared PyTorch machinery of the deep methods (TA-ADCMH, SDCH, DCMH).

Only the deep methods import this module, so ``import cmhash`` never imports torch.

* :func:`resolve_device` -- ``"auto"`` / ``"cpu"`` / ``"cuda"`` / ``"cuda:N"`` -> ``torch.device``.
* :func:`seed_everything` -- seeds torch's generators from the estimator's numpy Generator.
* :class:`TorchHasher` -- base estimator: tensors from dense / CSR arrays, batches of images
  from lazy image sources (:meth:`TorchHasher._batches`, a DataLoader with ``num_workers``
  worker processes), batched prediction, and persistence of networks as plain arrays
  (``network_states_``: "net.param" -> ndarray) plus their JSON architecture
  (``architectures_``), so ``cmhash.load`` rebuilds them without pickle.

Images ((n, C, H, W) arrays or image sources) are never converted to float as a whole: every
4-D input is wrapped as an image source carrying the estimator's transform for that modality
(:meth:`TorchHasher._prepare`), and each batch is converted and normalised on the device.

Reproducibility: on CPU a seeded fit is bit-reproducible (same seed -> same codes) on the
same machine and thread count. CUDA runs may not be bit-reproducible (atomic adds in some
backward kernels); :func:`seed_everything` disables cuDNN autotuning and asks for deterministic
cuDNN kernels, which removes most but not all of the variation.
"""
from __future__ import annotations

import functools
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from .._validation import _caller_stacklevel, check_int, is_image_source
from ..base import CrossModalHasher
from ..data.images import ArrayImageSource, ImageTransform
from ..progress import progress
from ..solvers import sign
from . import training
from ._images import iterate_image_batches
from .backbones import LEGACY_LRN, build_backbone
from .weights import SOURCES as WEIGHTS_SOURCES
from .weights import read_weights

logger = logging.getLogger(__name__)

__all__ = ["resolve_device", "seed_everything", "hidden_widths", "TorchHasher"]


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda if available else cpu; ``"cpu"``; ``"cuda"`` / ``"cuda:N"`` (must exist).
    Under torchrun (``LOCAL_RANK`` set) "cuda" / "auto" are the process's GPU ``cuda:LOCAL_RANK``."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} requested but CUDA is not available "
                             f"(use device='auto' or 'cpu')")
        if device == "cuda" and "LOCAL_RANK" in os.environ:   # torchrun: this process's GPU
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        if ":" in device and int(device[5:]) >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(device)
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")


def seed_everything(seed: int) -> None:
    """Seed torch's CPU (and CUDA) generators; deterministic cuDNN kernels, no autotuning.

    CPU runs are then bit-reproducible; CUDA runs may still differ in the last bits.
    """
    seed = int(seed) % (2 ** 63 - 1)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def hidden_widths(value, name) -> list[int]:
    """Hidden-layer widths: an int or a sequence of positive ints (a clear error otherwise)."""
    seq = [value] if isinstance(value, (int, np.integer)) else value
    if isinstance(seq, (str, bytes)) or not hasattr(seq, "__iter__"):
        raise ValueError(f"{name} must be a positive integer or a sequence of them, got {value!r}")
    seq = list(seq)
    for h in seq:
        if isinstance(h, (bool, np.bool_)) or not isinstance(h, (int, np.integer)) or h <= 0:
            raise ValueError(f"{name} must be a positive integer or a sequence of them, got "
                             f"{value!r}")
    return [int(h) for h in seq]


def _seed_from_rng(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2 ** 62))


class _class_or_instance_method:
    """A method that receives the instance when called on one and the class when called on the
    class (``TorchHasher._predict``: the estimator's ``amp`` when there is an estimator)."""

    def __init__(self, func):
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj, cls=None):
        return functools.partial(self.func, cls if obj is None else obj)


class TorchHasher(CrossModalHasher):
    """Base class of the deep hashers.

    Parameters (in addition to ``n_bits``, ``random_state``, ``verbose``): ``device``
    (``"auto"``: the GPU when present, never required); ``num_workers`` (worker processes
    that decode image batches; 0: in this process); ``amp`` (mixed precision,
    :class:`cmhash.deep.training.Precision`: ``"auto"`` / ``"bf16"`` / ``"fp16"`` / ``"off"``;
    ``"auto"`` is off on the CPU); ``checkpoint`` (a file rewritten atomically after every
    epoch) and ``resume`` (a checkpoint written by a fit with the same parameters: training
    continues after its epoch; see :meth:`_epochs`); ``time_limit`` (seconds: no epoch is
    started that would end past it, :meth:`_epochs`). Live networks are kept in the private
    dict ``self._nets`` (not saved); their weights and architectures are saved through
    ``network_states_`` and ``architectures_`` (see :meth:`_store_networks`).

    Image inputs: an (n, C, H, W) array or a lazy image source (:mod:`cmhash.data.images`).
    The transform of a training source (its geometry and normalisation) is kept per modality
    in ``image_transforms_`` and applied to every image source the model encodes.
    """

    max_feature_ndim = 4  # images (n, C, H, W)
    diagnostic_state = ("loss_terms_",)   # loss histories (not used to encode)
    predict_batch_size = 1024
    #: the training step splits each batch across torchrun ranks (:meth:`_distributed`)
    data_parallel = True
    #: at most this many input values per prediction batch of images (64 MB as float32)
    predict_image_elements = 1 << 24

    def __init__(self, n_bits: int = 32, *, amp="auto", checkpoint=None, resume=None,
                 time_limit=None, device: str = "auto", num_workers: int = 0,
                 random_state=None, verbose: bool = False):
        super().__init__(n_bits, random_state=random_state, verbose=verbose)
        self.amp = amp
        self.checkpoint = checkpoint
        self.resume = resume
        self.time_limit = time_limit
        self.device = device
        self.num_workers = num_workers

    def _check_num_workers(self) -> None:
        check_int(self.num_workers, "num_workers", minimum=0)

    def _prepare_fit(self, views, names, n_classes):
        """:meth:`CrossModalHasher._prepare_fit`, then the training parameters shared by the
        deep methods (``amp``, ``checkpoint``, ``resume``)."""
        super()._prepare_fit(views, names, n_classes)
        if not (self.amp in training.AMP_CHOICES or isinstance(self.amp, bool)):
            raise ValueError(f"amp must be one of {training.AMP_CHOICES} (or True / False), "
                             f"got {self.amp!r}")
        for name in ("checkpoint", "resume"):
            path = getattr(self, name)
            if path is not None and not isinstance(path, (str, Path)):
                raise TypeError(f"{name} must be a file path (str or pathlib.Path) or None, "
                                f"got {type(path).__name__}")
        if self.resume is not None and not Path(self.resume).is_file():
            raise ValueError(f"resume: checkpoint not found: {str(self.resume)!r}")
        limit = getattr(self, "time_limit", None)
        if limit is not None and (isinstance(limit, bool) or not isinstance(
                limit, (int, float, np.integer, np.floating)) or not np.isfinite(limit)
                or not limit > 0):
            raise ValueError(f"time_limit must be a positive number of seconds or None, "
                             f"got {limit!r}")

    # ------------------------------------------------------- mixed precision
    def _precision(self, device) -> training.Precision:
        """The :class:`~cmhash.deep.training.Precision` of this fit (``amp`` on ``device``; one
        per fit, so that the fp16 gradient scale carries over from step to step)."""
        current = self.__dict__.get("_train_precision")
        if current is None or current.device != torch.device(device):
            current = self._train_precision = training.Precision(self.amp, device)
        return current

    def _distributed(self, device) -> training.Distributed:
        """Data parallelism of this fit under torchrun (:class:`~cmhash.deep.training.
        Distributed`; world size 1 otherwise)."""
        current = self.__dict__.get("_dist")
        if current is None:
            current = self._dist = training.Distributed(device)
        return current

    def _inference_precision(self, device) -> training.Precision:
        """``amp`` for prediction on ``device`` (fp16 of a model trained on CUDA is float32
        on the CPU)."""
        amp = getattr(self, "amp", "off")
        if amp == "fp16" and torch.device(device).type != "cuda":
            amp = "off"
        return training.Precision(amp, device)

    # ------------------------------------------------- epochs, checkpoint / resume
    def _epochs(self, desc, networks, optimizers, rng, get_state, set_state):
        """The epoch loop shared by the deep methods: yields ``(epoch, bar)`` for the epochs
        still to train, with checkpoint / resume around them.

        ``networks`` / ``optimizers``: name -> module / optimiser; ``get_state()``: the method's
        training state that is not in them (codes, output buffers, loss histories, ...) as a
        dict of tensors, arrays and plain values; ``set_state(state)`` puts such a dict back.
        With ``resume``, the checkpoint is loaded first (networks, optimisers, the state, the
        NumPy generator ``rng`` and torch's CPU generator; refused when written with other
        parameters) and the loop starts after its epoch; with ``checkpoint``, the file is
        rewritten atomically after every epoch (by rank 0 under torchrun). All randomness of an
        epoch comes from ``rng`` and torch's generator, so a resumed CPU fit gives the codes and
        weights of an uninterrupted one.

        Each epoch's seconds are recorded in ``timings_["epoch_seconds"]`` (a measurement,
        not part of the model's fingerprint). With ``time_limit``, no further epoch starts when
        it would end past ``time_limit`` seconds after the fit began, estimated from the
        longest epoch so far (under torchrun rank 0 decides for every rank);
        ``timings_["stopped_by_time_limit"]`` says whether it stopped early, and ``n_iter_``
        (set by the method) the epochs trained.
        """
        start = 0
        device = next(next(iter(networks.values())).parameters()).device
        for net in networks.values():     # channels_last for CNNs on CUDA
            self._precision(device).prepare(net)
        if self.resume is not None:
            got = training.load_checkpoint(self.resume, params=self.get_params(),
                                           networks=networks, optimizers=optimizers, rng=rng)
            set_state(got["state"])
            start = got["epoch"] + 1
        if self._distributed(device).active and not self.data_parallel:
            logger.warning(f"{desc} does not split its batches across the {self._dist.world} "
                           f"torchrun processes: every process trains on the whole batch")
        bar = progress(range(start, self.n_epochs), desc=desc, verbose=self.verbose)
        self.timings_ = {"epoch_seconds": [], "stopped_by_time_limit": False}
        self._epochs_done = start
        began = self.__dict__.get("_fit_started", time.perf_counter())
        for epoch in bar:
            tick = time.perf_counter()
            yield epoch, bar
            self._epochs_done = epoch + 1
            if self.checkpoint is not None and self._distributed(device).is_main:
                training.save_checkpoint(self.checkpoint, epoch=epoch, params=self.get_params(),
                                         networks=networks, optimizers=optimizers,
                                         state=get_state(), rng=rng)
            now = time.perf_counter()
            self.timings_["epoch_seconds"].append(now - tick)
            if self.time_limit is not None and epoch + 1 < self.n_epochs:
                late = now - began + max(self.timings_["epoch_seconds"]) > float(self.time_limit)
                if self._distributed(device).agree(late):
                    self.timings_["stopped_by_time_limit"] = True
                    logger.warning(f"{desc}: stopped after {epoch + 1} of {self.n_epochs} "
                                   f"epochs (time_limit={self.time_limit} s)")
                    break

    def _state_shapes(self) -> dict:
        """Input standardisation per modality: (d,) for vectors; for images (C, H, W) arrays
        broadcast over the pixels: (C, 1, 1) per channel, or (C, H, W) (a pretrained
        network's average image, ``input_normalization_``)."""
        shapes = super()._state_shapes()
        for v, f in enumerate(self.n_features_):
            shape = tuple(f) if len(f) == 1 else (f[0],) + tuple((1, s) for s in f[1:])
            shapes[f"input_means_[{v}]?"] = shapes[f"input_scales_[{v}]?"] = shape
        return shapes

    # ------------------------------------------------------------- tensors
    #: input arrays of these ndims are z-scored when ``standardize`` is set (subclasses)
    standardized_ndims = (2,)

    def fit_views(self, views, labels, names=None):
        """:meth:`CrossModalHasher.fit_views`; the pretrained weights read for this fit (see
        :meth:`_image_weights`) and its precision state (:meth:`_precision`) are released
        afterwards."""
        self._fit_started = time.perf_counter()      # the start of time_limit
        try:
            return super().fit_views(views, labels, names)
        finally:
            self.__dict__.pop("_fit_started", None)
            self.__dict__.pop("_epochs_done", None)
            self.__dict__.pop("_pretrained", None)
            self.__dict__.pop("_train_precision", None)
            self.__dict__.pop("_dist", None)

    def _image_weights(self):
        """The ``image_weights`` file of this fit as :class:`cmhash.deep.weights.PretrainedWeights`
        (read once per fit, in the format ``image_weights_format``), or None."""
        path = getattr(self, "image_weights", None)
        if path is None:
            return None
        cached = self.__dict__.get("_pretrained")
        if cached is None or cached.path != Path(path):
            cached = read_weights(path, getattr(self, "image_weights_format", "auto"))
            self._pretrained = cached
        return cached

    def _load_image_weights(self, net: nn.Module) -> list[str]:
        """Load ``image_weights`` into an image network; the names of the loaded tensors."""
        weights = self._image_weights()
        return [] if weights is None else weights.load_into(net)

    def _fit_standardization(self, views) -> None:
        """Training means / scales of each modality (``input_means_``, ``input_scales_``) and
        the transform of each image-source modality (``image_transforms_``).

        Images (n, C, H, W) of the image modality (the first) with ``image_weights`` whose
        source defines an input normalisation (``input_normalization_``): that normalisation,
        whatever ``standardize`` says (the images must be 0-255 RGB pixels). Otherwise, with
        ``standardize``: vectors (n, d) per feature; images (when 4 is in
        ``standardized_ndims``) per channel, streamed over batches (never a float copy of the
        images), and not at all when an image source's transform gives a normalisation. CSR
        input and other ndims are left as they are. Every statistic of images is in 0-255
        pixel units (``x = (pixel - mean) / scale``).
        """
        self.input_means_, self.input_scales_, self.image_transforms_ = [], [], []
        self.input_normalization_ = self._weights_normalization(views[0])
        for m, X in enumerate(views):
            source = is_image_source(X)
            self.image_transforms_.append(X.transform if source else None)
            given = source and X.transform.normalization_given
            if m == 0 and self.input_normalization_ is not None:
                mean, scale = self.input_normalization_.pixel_stats(X.shape[1:])
                self.input_means_.append(mean)
                self.input_scales_.append(scale)
            elif (getattr(self, "standardize", False) and X.ndim in self.standardized_ndims
                    and not sp.issparse(X) and not given):
                if X.ndim == 4:
                    mean, std = self._channel_statistics(X)
                else:
                    mean = X.mean(axis=0, dtype=np.float64, keepdims=True)[0]
                    std = X.std(axis=0, dtype=np.float64, keepdims=True)[0]
                self.input_means_.append(mean.astype(np.float32))
                self.input_scales_.append(np.where(std > 1e-12, std, 1.0).astype(np.float32))
            else:
                self.input_means_.append(None)
                self.input_scales_.append(None)

    def _channel_statistics(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and (population) standard deviation, (C, 1, 1) float64, of the
        images ``X`` in 0-255 pixel units after their geometry (evaluation mode), accumulated batch
        by batch (Chan et al.'s pairwise update of mean and sum of squared deviations)."""
        src = self._image_input(X, None)
        n = src.shape[0]
        rows = max(1, min(256, self.predict_image_elements // max(int(np.prod(src.shape[1:])), 1)))
        count, mean, m2 = 0, 0.0, 0.0
        batches = [np.arange(s, min(s + rows, n)) for s in range(0, n, rows)]
        for _, xb in iterate_image_batches(src, batches, num_workers=self._workers()):
            x = xb.double().transpose(0, 1).reshape(xb.shape[1], -1)       # (C, b H W)
            k = x.shape[1]
            bmean = x.mean(dim=1)
            bm2 = ((x - bmean[:, None]) ** 2).sum(dim=1)
            delta = bmean - mean
            total = count + k
            mean = mean + delta * (k / total)
            m2 = m2 + bm2 + delta ** 2 * (count * k / total)
            count = total
        mean = mean.numpy().reshape(-1, 1, 1)
        std = np.sqrt(m2.numpy() / count).reshape(-1, 1, 1)
        return mean, std

    def _weights_normalization(self, X):
        """The input normalisation of ``image_weights`` when ``X`` holds images (n, C, H, W)
        and the weights define one (MatConvNet, torchvision, Caffe), else None."""
        weights = self._image_weights()
        if weights is None or weights.normalization is None or sp.issparse(X) or X.ndim != 4:
            return None
        if not is_image_source(X) and X.dtype.kind == "f" and X.size and float(np.max(X)) <= 1.0:
            warnings.warn(f"the images look like [0, 1] values (max {float(np.max(X)):.3g}); "
                          f"the {weights.source} weights' normalisation expects 0-255 RGB "
                          f"pixels", UserWarning, stacklevel=_caller_stacklevel())
        return weights.normalization

    def _workers(self) -> int:
        return int(getattr(self, "num_workers", 0) or 0)

    def _stored_transform(self, m):
        transforms = getattr(self, "image_transforms_", None)
        return None if not transforms or m is None else transforms[m]

    def _image_input(self, X, m):
        """4-D ``X`` (an (n, C, H, W) array or an image source) as an image source carrying
        modality ``m``'s transform: the geometry kept from training (arrays are used as they
        are), then the normalisation -- the training standardisation when there is one
        (``m=None``: none, for computing it)."""
        stored = self._stored_transform(m)
        if is_image_source(X):
            t = stored if stored is not None else X.transform
        else:
            X = ArrayImageSource(X, layout="nchw")    # a view of the array
            base = stored if stored is not None else ImageTransform()
            t = base.without_geometry()
        means = getattr(self, "input_means_", None)
        if m is None:
            t = t.with_normalization(None, None, scale=255.0)
        elif means is not None and means[m] is not None:
            # pixel units: per channel (C, 1, 1) -> (C,), an average image (C, H, W) as it is
            mean, std = means[m], self.input_scales_[m]
            t = t.with_normalization(
                mean=mean.reshape(-1) if mean.shape[1:] == (1, 1) else mean,
                std=std.reshape(-1), scale=255.0)
        return X.with_transform(t)

    def _prepare(self, X, m):
        """Apply modality ``m``'s training standardisation to ``X`` (float32).

        Images (4-D arrays, image sources) become an image source carrying the transform and
        normalisation (:meth:`_image_input`), converted batch by batch. CSR input of a
        modality that was standardised in training (dense training input) is densified
        first, so dense and CSR queries give the same codes.
        """
        if X.ndim == 4:
            return self._image_input(X, m)
        mean = self.input_means_[m] if hasattr(self, "input_means_") else None
        if mean is None:
            return X
        if sp.issparse(X):
            X = X.toarray()
        return ((np.asarray(X, dtype=np.float32) - mean) / self.input_scales_[m]).astype(np.float32)

    def _check_query(self, X, m: int):
        """:meth:`CrossModalHasher._check_query`; an image source first gets the geometry this
        modality was fitted with, so its shape is the training shape."""
        stored = self._stored_transform(m)
        if is_image_source(X) and stored is not None:
            X = X.with_transform(stored)
        return super()._check_query(X, m)

    @staticmethod
    def _check_weights_file(path, name: str = "image_weights", source: str = "auto") -> None:
        """``path`` (a pretrained-weights parameter) is None or an existing file, and
        ``source`` (its ``*_format`` parameter) a known weights source."""
        if source not in WEIGHTS_SOURCES:
            raise ValueError(f"{name}_format must be one of {list(WEIGHTS_SOURCES)}, got "
                             f"{source!r}")
        if path is None:
            return
        if not isinstance(path, (str, Path)):
            raise TypeError(f"{name} must be a file path (str or pathlib.Path) or None, "
                            f"got {type(path).__name__}")
        p = Path(path)
        if not p.exists():
            raise ValueError(f"{name} file not found: {str(path)!r}")
        if not p.is_file():
            raise ValueError(f"{name} must be a file, got the directory {str(path)!r}")

    @staticmethod
    def _check_diverged(values, what: str, epoch: int, hint: str) -> None:
        """Raise when training produced NaN / inf (``values``: a tensor or a float)."""
        finite = (bool(torch.isfinite(values).all()) if isinstance(values, torch.Tensor)
                  else bool(np.isfinite(values)))
        if not finite:
            raise FloatingPointError(f"training diverged in epoch {epoch + 1}: {what} became "
                                     f"NaN or infinite; {hint}")

    @staticmethod
    def _to_tensor(X, device, chunk: int = 4096) -> torch.Tensor:
        """Dense ndarray or CSR -> float32 tensor on ``device`` (CSR densified chunk by chunk)."""
        device = torch.device(device)
        if sp.issparse(X):
            X = sp.csr_matrix(X)
            out = torch.empty(X.shape, dtype=torch.float32, device=device)
            for s in range(0, X.shape[0], chunk):
                out[s:s + chunk] = torch.from_numpy(
                    X[s:s + chunk].toarray().astype(np.float32, copy=False)).to(device)
            return out
        return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)

    @staticmethod
    def _rows(X, idx, device) -> torch.Tensor:
        """Rows ``idx`` of a dense array, CSR matrix or tensor as a float32 tensor on ``device``."""
        if isinstance(X, torch.Tensor):
            return X[torch.as_tensor(idx, device=X.device)].to(device)
        if sp.issparse(X):
            return torch.from_numpy(X[idx].toarray().astype(np.float32, copy=False)).to(device)
        return torch.from_numpy(np.ascontiguousarray(X[idx], dtype=np.float32)).to(device)

    @classmethod
    def _iter_rows(cls, X, batches, device, *, train: bool = False, seed: int = 0,
                   num_workers: int = 0):
        """``(idx, float32 tensor on device)`` for each index array of ``batches``: rows of a
        dense array / CSR matrix / tensor (:meth:`_rows`), or the images of an image source
        through a DataLoader (:func:`cmhash.deep._images.iterate_image_batches`; ``train``:
        random crop / flip seeded by ``seed``)."""
        if is_image_source(X):
            yield from iterate_image_batches(X, batches, train=train, seed=seed,
                                             num_workers=num_workers, device=device)
            return
        for idx in batches:
            yield idx, cls._rows(X, idx, device)

    def _batches(self, X, batches, device, *, train: bool = False, rng=None):
        """The training loops' batch iterator (:meth:`_iter_rows` with this estimator's
        ``num_workers``). For an image source in training, the seed of the random crops /
        flips is drawn from ``rng`` (nothing is drawn for other inputs)."""
        seed = _seed_from_rng(rng) if (train and rng is not None and is_image_source(X)) else 0
        return self._iter_rows(X, batches, device, train=train, seed=seed,
                               num_workers=self._workers())

    @staticmethod
    def _batch_indices(order, batch_size: int, min_size: int = 1) -> list:
        """Consecutive chunks of ``batch_size`` of ``order``, each sorted; chunks smaller
        than ``min_size`` are left out."""
        chunks = [np.sort(order[s:s + batch_size]) for s in range(0, len(order), batch_size)]
        return [c for c in chunks if c.size >= min_size]

    @_class_or_instance_method
    def _predict(owner, net: nn.Module, X, batch_size: int | None = None,
                 device=None, num_workers: int = 0) -> np.ndarray:
        """Network outputs for every row of ``X`` as float32 ndarray (eval mode, no_grad, batched;
        an ``X`` with no rows gives the network's (0, ...) output). Image sources are read
        through a DataLoader (``num_workers``) in batches of at most
        ``predict_image_elements`` input values. Called on an estimator, the forward passes
        run under its ``amp`` (:meth:`_inference_precision`); called on the class, in
        float32."""
        cls = owner
        batch_size = int(batch_size or owner.predict_batch_size)
        if device is None:
            device = next(net.parameters()).device
        precision = (owner._inference_precision(device) if not isinstance(owner, type)
                     else training.Precision("off", device))
        n = X.shape[0]
        if is_image_source(X):
            per_item = max(int(np.prod(X.shape[1:])), 1)
            batch_size = max(1, min(batch_size, cls.predict_image_elements // per_item))
        batches = [np.arange(s, min(s + batch_size, n)) for s in range(0, max(n, 1), batch_size)]
        if n == 0:
            batches = [np.arange(0)]                       # n = 0: one empty batch
        was_training = net.training
        net.eval()
        outs = []
        try:
            with torch.no_grad():
                if n == 0 and is_image_source(X):
                    xb = torch.zeros((0,) + tuple(X.shape[1:]), device=device)
                    outs.append(net(xb).float().cpu().numpy())
                else:
                    for _, xb in cls._iter_rows(X, batches, device, num_workers=num_workers):
                        with precision.autocast():
                            out = net(precision.inputs(xb))
                        outs.append(out.float().cpu().numpy())
        finally:
            net.train(was_training)
        return np.concatenate(outs, axis=0)

    # --------------------------------------------------------- persistence
    def save(self, path):
        """:meth:`CrossModalHasher.save`; a ``device`` given as a ``torch.device`` is written as
        its string (``"cpu"``, ``"cuda:0"``), which :func:`resolve_device` reads back the same.
        (Path objects such as ``image_weights`` are handled by the base class for every method:
        written as strings, loaded back as ``pathlib.Path``.)"""
        originals = {}
        for k, v in self.get_params().items():
            if isinstance(v, torch.device):
                originals[k] = v
                setattr(self, k, str(v))
        try:
            return super().save(path)
        finally:
            for k, v in originals.items():
                setattr(self, k, v)

    def _store_networks(self, **nets: nn.Module) -> None:
        """Keep the networks live in ``self._nets`` and as arrays for saving.

        ``network_states_`` maps "name.param" (e.g. "f1.net.0.weight") to a CPU ndarray;
        ``architectures_`` maps "name" to the JSON spec of :func:`build_backbone` (every
        network must have been built by it, i.e. carry ``.spec``).
        """
        states, archs = {}, {}
        for name, net in nets.items():
            if "." in name:
                raise ValueError(f"network name {name!r} must not contain '.'")
            spec = getattr(net, "spec", None)
            if spec is None:
                raise ValueError(f"network {name!r} was not built by build_backbone (no .spec)")
            archs[name] = dict(spec)
            for k, v in net.state_dict().items():
                states[f"{name}.{k}"] = v.detach().cpu().numpy().copy()
        self._nets = dict(nets)
        self.network_states_ = states
        self.architectures_ = archs

    def _build_networks(self, device=None) -> dict:
        """Rebuild every network of ``architectures_`` and load ``network_states_``."""
        device = resolve_device(self.device) if device is None else device
        nets = {}
        for name, spec in self.architectures_.items():
            spec = dict(spec)
            if spec.get("kind") in ("cnnf", "alexnet"):   # saved before the spec held the LRN
                spec.setdefault("lrn", list(LEGACY_LRN))
            net = build_backbone(spec)
            prefix = name + "."
            state = {k[len(prefix):]: torch.from_numpy(np.array(v))
                     for k, v in self.network_states_.items() if k.startswith(prefix)}
            net.load_state_dict(state, strict=True)
            nets[name] = net.to(device).eval()
        return nets

    def _after_load(self) -> None:
        if hasattr(self, "architectures_"):
            try:
                device = resolve_device(self.device)
            except ValueError:  # saved on a GPU machine, loaded on a CPU-only one
                device = torch.device("cpu")
            self._nets = self._build_networks(device)

    def _network(self, name: str) -> nn.Module:
        nets = getattr(self, "_nets", None)
        if nets is None:
            self._after_load()
            nets = self._nets
        return nets[name]

    def _encode_with(self, name: str, X) -> np.ndarray:
        """``sign(net(X))`` as int8 codes (0 -> -1)."""
        return sign(self._finite_outputs(self._predict(self._network(name), X,
                                                       num_workers=self._workers())))

    @staticmethod
    def _finite_outputs(out: np.ndarray) -> np.ndarray:
        """``out`` unchanged, or a ValueError when a query's network outputs are NaN / inf (a
        finite input outside float32's range or far outside the training data's), which sign()
        would silently map to -1 bits."""
        bad = ~np.isfinite(out).all(axis=tuple(range(1, out.ndim)))
        if bad.any():
            rows = np.flatnonzero(bad)
            raise ValueError(f"the network outputs of {rows.size} query row(s) (e.g. row "
                             f"{int(rows[0])}) are NaN or infinite: their values are too large "
                             f"for float32 or far outside the range of the training data")
        return out
