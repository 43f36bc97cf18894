"""Backbone networks of the deep methods.

Networks (row-sample convention: a batch is (N, d) for vectors, (N, C, H, W) for images):

* :class:`MLP` -- feature-vector inputs of any dimension (4,096-d CNN features, BoW, Wiki's
  128-d SIFT / 10-d LDA features): ``Linear -> ReLU [-> Dropout]`` per hidden layer, then a
  linear output layer (identity activation, as both papers' last layers).
* :class:`CNNF` -- CNN-F (Chatfield et al. 2014, MatConvNet ``imagenet-vgg-f``) as used by
  DCMH and TA-ADCMH: 5 conv + 3 fc, fc8 replaced by ``out_dim`` linear units.
* :class:`AlexNet` -- SDCH Table 1 (Krizhevsky et al. 2012): 5 conv + 3 fc, the last (fc8)
  replaced by ``out_dim`` (k = 256) units; optionally with the two-group conv2/4/5 of the
  original (``groups=2``).
* torchvision's AlexNet, VGG-16 and ResNet-50 (kinds ``tv_alexnet``, ``tv_vgg16``,
  ``tv_resnet50``): the torchvision model classes, built with ``weights=None`` (never
  downloaded), their last classifier layer sized ``out_dim``; state_dict keys are torchvision's.
* :class:`TextNetTA` -- TA-ADCMH's text network: two fully-connected layers (BoW -> hidden ->
  r, identity output; hidden = 8,192 as in DCMH, whose networks TA-ADCMH re-uses).
* :class:`TextNetSDCH` -- SDCH's text pipeline: txt-fc1 4096 - txt-fc2 4096 - txt-fc3 256.

:func:`build_backbone` builds any of them from a JSON-able ``spec`` dict; the spec is kept on
the module (``module.spec``) so that :class:`cmhash.deep._torch_base.TorchHasher` can save the
architecture and rebuild it on load.

Pretrained weights are read ONLY from files the user passes, by :mod:`cmhash.deep.weights`
(MatConvNet .mat in the SimpleNN and DagNN layouts, torchvision state_dicts, Caffe's grouped
AlexNet, plain state_dicts); ``load_state_dict_file`` and ``load_vggf_mat`` are still importable
from here. Nothing is ever downloaded.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MLP", "CNNF", "AlexNet", "TextNetTA", "TextNetSDCH", "build_backbone",
           "load_state_dict_file", "load_vggf_mat", "output_layer_name", "BACKBONE_KINDS",
           "IMAGE_BACKBONE_KINDS", "TORCHVISION_KINDS", "MIN_IMAGE_SIZE", "LEGACY_LRN"]

#: LRN (size, alpha, beta, k) in PyTorch's convention ``x / (k + alpha / size * sum x^2)^beta``
#: of CNNF / AlexNet built before the LRN was part of the spec (models saved before then)
LEGACY_LRN = (5, 1e-4, 0.75, 2.0)


def _relu_norm_pool(x, norm, pool):
    return pool(norm(F.relu(x)))


#: rows of a recomputed block are processed in chunks of at most this many input values
#: (256 MB of float32: a batch of 64 at 227 x 227 is one chunk; smaller chunks made the
#: resident peak larger with glibc's malloc, which keeps freed chunks below its mmap
#: threshold (up to 32 MiB) in the heap -- docs/deep.md, "Memory")
RECOMPUTE_CHUNK_ELEMENTS = 1 << 26


class _RecomputedBlock(torch.autograd.Function):
    """``fn(x)`` for a block ``fn`` that works on each sample on its own and has no
    parameters (ReLU -> LRN -> max-pool): the forward pass keeps only ``x``; the backward pass
    recomputes ``fn`` with autograd on chunks of rows (at most
    :data:`RECOMPUTE_CHUNK_ELEMENTS` input values each) and back-propagates each chunk's
    gradient, so the block's maps and their backward temporaries exist for one chunk at a
    time. The same operations run on the same rows (under the forward pass's autocast), so
    values and gradients equal those of ``fn`` with autograd on the whole batch."""

    @staticmethod
    def forward(ctx, x, fn):
        ctx.fn = fn
        ctx.autocast = [(kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
                        for kind in ("cpu", "cuda")]
        ctx.save_for_backward(x)
        with torch.no_grad():
            return fn(x)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        per_row = max(int(x[:1].numel()), 1)
        rows = max(1, RECOMPUTE_CHUNK_ELEMENTS // per_row)
        grad_in = torch.empty_like(x)
        with contextlib.ExitStack() as stack:
            for kind, enabled, dtype in ctx.autocast:
                if enabled:
                    stack.enter_context(torch.autocast(kind, dtype=dtype))
            for s in range(0, x.shape[0], rows):
                xs = x[s:s + rows].detach().requires_grad_(True)
                with torch.enable_grad():
                    ys = ctx.fn(xs)
                (gs,) = torch.autograd.grad(ys, xs, grad_out[s:s + rows])
                grad_in[s:s + rows] = gs
        return grad_in, None


class _MaxPool(nn.Module):
    """3x3 / stride-2 max pooling with MatConvNet's ``pad = [0 1 0 1]`` (= ``ceil_mode``).

    On maps smaller than the window (tiny synthetic images) the pooling is skipped, so the
    same architecture runs on 32x32 inputs; at the papers' 224/227 inputs it is never skipped.
    """

    def __init__(self, kernel: int = 3, stride: int = 2):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x):
        if x.shape[-1] < self.kernel or x.shape[-2] < self.kernel:
            return x
        return F.max_pool2d(x, self.kernel, self.stride, ceil_mode=True)

    def extra_repr(self):
        return f"kernel={self.kernel}, stride={self.stride}, ceil_mode=True"


class MLP(nn.Module):
    """Multi-layer perceptron ``in_dim -> hidden[0] -> ... -> out_dim`` (identity output).

    Inputs with more than one feature dimension are flattened.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden=(512,), dropout: float = 0.0):
        super().__init__()
        _check_dim(in_dim, "in_dim")
        _check_dim(out_dim, "out_dim")
        hidden = [hidden] if isinstance(hidden, (int, np.integer)) else list(hidden)
        for h in hidden:
            _check_dim(h, "hidden layer width")
        _check_dropout(dropout)
        layers, prev = [], int(in_dim)
        for h in hidden:
            layers += [nn.Linear(prev, int(h)), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = int(h)
        layers.append(nn.Linear(prev, int(out_dim)))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x.flatten(1))


class _FiveConvNet(nn.Module):
    """conv1-conv5 (LRN + max-pool after conv1, conv2; max-pool after conv5), an adaptive 6 x 6
    pool, fc6, fc7 and fc8 -> ``out_dim``: the layout shared by CNN-F and AlexNet, which differ
    in their convolution widths ``CHANNELS`` (conv1..conv5) and their LRN constants ``LRN``.

    ``lrn`` = (size, alpha, beta, k) in PyTorch's convention (``x / (k + alpha / size *
    sum x^2)^beta`` over ``size`` neighbouring channels); ``groups`` splits conv2, conv4 and
    conv5 into that many independent channel groups (Krizhevsky's two-GPU AlexNet).
    """

    CHANNELS: tuple = ()
    LRN: tuple = ()
    #: recompute ReLU -> LRN -> max-pool in the backward pass instead of keeping their maps
    #: (:meth:`_relu_norm_pool`; not part of the architecture, results do not depend on it)
    recompute_activations: bool = True

    def __init__(self, out_dim: int, in_channels: int = 3, fc_dim: int = 4096,
                 dropout: float = 0.0, lrn=None, groups: int = 1):
        super().__init__()
        _check_dim(out_dim, "out_dim")
        _check_dim(in_channels, "in_channels")
        _check_dim(fc_dim, "fc_dim")
        _check_dropout(dropout)
        c1, c2, c3, c4, c5 = self.CHANNELS
        _check_dim(groups, "groups")
        if any(c % groups for c in (c1, c2, c3, c4, c5)):
            raise ValueError(f"groups={groups} must divide the convolution widths "
                             f"{self.CHANNELS} of {type(self).__name__}")
        self.lrn = _check_lrn(self.LRN if lrn is None else lrn)
        size, alpha, beta, k = self.lrn
        self.conv1 = nn.Conv2d(in_channels, c1, 11, stride=4, padding=0)
        self.norm1 = nn.LocalResponseNorm(size, alpha=alpha, beta=beta, k=k)
        self.pool1 = _MaxPool()
        self.conv2 = nn.Conv2d(c1, c2, 5, stride=1, padding=2, groups=groups)
        self.norm2 = nn.LocalResponseNorm(size, alpha=alpha, beta=beta, k=k)
        self.pool2 = _MaxPool()
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=1, groups=groups)
        self.conv5 = nn.Conv2d(c4, c5, 3, padding=1, groups=groups)
        self.pool5 = _MaxPool()
        self.adapt = nn.AdaptiveAvgPool2d((6, 6))
        self.fc6 = nn.Linear(c5 * 6 * 6, fc_dim)
        self.fc7 = nn.Linear(fc_dim, fc_dim)
        self.fc8 = nn.Linear(fc_dim, out_dim)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def set_lrn(self, lrn) -> None:
        """Set both LRN layers to ``lrn`` = (size, alpha, beta, k) (PyTorch's convention) and
        record it in ``spec`` (when built by :func:`build_backbone`), so that a saved model
        rebuilds with the same constants."""
        self.lrn = _check_lrn(lrn)
        size, alpha, beta, k = self.lrn
        for norm in (self.norm1, self.norm2):
            norm.size, norm.alpha, norm.beta, norm.k = size, alpha, beta, k
        if isinstance(getattr(self, "spec", None), dict):
            self.spec["lrn"] = list(self.lrn)

    def features(self, x):
        """Output of pool5 (N, conv5 channels, 6, 6) after the adaptive pooling."""
        x = self._relu_norm_pool(self.conv1(x), self.norm1, self.pool1)
        x = self._relu_norm_pool(self.conv2(x), self.norm2, self.pool2)
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = self.pool5(F.relu(self.conv5(x)))
        return self.adapt(x)

    def _relu_norm_pool(self, x, norm, pool):
        """ReLU -> LRN -> max-pool of a conv output ``x``. Training with autograd
        (``recompute_activations``), the block is recomputed in the backward pass, chunk of
        rows by chunk (:class:`_RecomputedBlock`): only its input is kept instead of the ReLU
        output, the LRN's intermediate maps, its output and the pooling indices -- at
        227 x 227, batch 64, conv1's block keeps 74 MB instead of about 450 MB, conv2's 48 MB
        instead of about 290 MB -- and the backward pass holds them for one chunk at a time
        (:data:`RECOMPUTE_CHUNK_ELEMENTS`).
        The recomputation repeats the same operations on the same rows, so outputs and
        gradients are unchanged; it costs one more ReLU + LRN + pool forward per step."""
        if self.recompute_activations and self.training and torch.is_grad_enabled() \
                and x.requires_grad:
            return _RecomputedBlock.apply(x, functools.partial(_relu_norm_pool, norm=norm,
                                                                pool=pool))
        return _relu_norm_pool(x, norm, pool)

    def forward(self, x):
        x = self.features(x).flatten(1)
        x = self.drop(F.relu(self.fc6(x)))
        x = self.drop(F.relu(self.fc7(x)))
        return self.fc8(x)


class CNNF(_FiveConvNet):
    """CNN-F (``imagenet-vgg-f``), the image network of DCMH / TA-ADCMH, fc8 -> ``out_dim``.

    Layer shapes for a 224 x 224 x 3 input (MatConvNet names and its ``vgg_f`` definition in
    ``cnn_imagenet_init.m``)::

        conv1  64 x 11 x 11, stride 4, pad 0  -> 64 x 54 x 54, ReLU, LRN, max-pool 3/2 -> 27 x 27
        conv2 256 x  5 x  5, stride 1, pad 2  -> 256 x 27 x 27, ReLU, LRN, max-pool 3/2 -> 13 x 13
        conv3 256 x  3 x  3, stride 1, pad 1  -> 256 x 13 x 13, ReLU
        conv4 256 x  3 x  3, stride 1, pad 1  -> 256 x 13 x 13, ReLU
        conv5 256 x  3 x  3, stride 1, pad 1  -> 256 x 13 x 13, ReLU, max-pool 3/2 -> 6 x 6
        fc6   9216 -> 4096, ReLU      (MatConvNet: a 6 x 6 x 256 x 4096 convolution)
        fc7   4096 -> 4096, ReLU
        fc8   4096 -> out_dim, identity (the paper: "number of hidden units = code length")

    LRN: MatConvNet's ``[N kappa alpha beta] = [5 1 1e-4/5 0.75]``, i.e. PyTorch's
    ``LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1)`` (replaced by the values stored in a
    vgg-f .mat file when one is loaded). Pooling: MatConvNet pads pool1 by [0 1 0 1]; here
    every max-pool uses ``ceil_mode``, which gives the same maps at 224 x 224. An adaptive
    average pooling to 6 x 6 before fc6 is the identity at 224 x 224 and lets small images
    (e.g. 32 x 32 synthetic data) run. ``fc_dim`` (4096 in the paper) can be reduced for fast
    tests; pretrained fc6/fc7 weights then do not fit and are refused.
    """

    CHANNELS = (64, 256, 256, 256, 256)
    LRN = (5, 1e-4, 0.75, 1.0)

    def __init__(self, out_dim: int, in_channels: int = 3, fc_dim: int = 4096,
                 dropout: float = 0.0, lrn=None):
        super().__init__(out_dim, in_channels, fc_dim, dropout, lrn=lrn, groups=1)


class AlexNet(_FiveConvNet):
    """AlexNet as configured in SDCH Table 1, the last layer (img-fc3 / fc8) -> ``out_dim``.

    Layer shapes for a 227 x 227 x 3 input::

        conv1  96 x 11 x 11, stride 4, pad 0 -> 96 x 55 x 55, ReLU, LRN, max-pool 3/2 -> 27 x 27
        conv2 256 x  5 x  5, stride 1, pad 2 -> 256 x 27 x 27, ReLU, LRN, max-pool 3/2 -> 13 x 13
        conv3 384 x  3 x  3, stride 1, pad 1 -> 384 x 13 x 13, ReLU
        conv4 384 x  3 x  3, stride 1, pad 1 -> 384 x 13 x 13, ReLU
        conv5 256 x  3 x  3, stride 1, pad 1 -> 256 x 13 x 13, ReLU, max-pool 3/2 -> 6 x 6
        fc6 (img-fc1) 9216 -> 4096, ReLU;  fc7 (img-fc2) 4096 -> 4096, ReLU
        fc8 (img-fc3) 4096 -> out_dim (k = 256), identity

    Table 1 prints "s: 4" for conv2 and "s: 0" for conv3-5; those are typos (a stride of 4
    would leave a 7 x 7 map and 0 is not a stride): AlexNet's strides 1 are used. LRN: the
    paper's ``k = 2, n = 5, alpha = 1e-4, beta = 0.75`` in ``x / (k + alpha sum x^2)^beta``,
    i.e. PyTorch's ``LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2)`` (PyTorch divides alpha
    by n); Caffe's and MatConvNet's released AlexNet use ``k = 1, alpha / n = 2e-5``, which
    their loaders set. ``groups=1`` (default): conv2/4/5 are ordinary convolutions (as in
    torchvision); ``groups=2``: Krizhevsky's two-GPU grouping (conv2 96 -> 2 x 128 from 2 x 48
    inputs, conv4 and conv5 from 2 x 192), which loads Caffe's grouped weights as they are.
    """

    CHANNELS = (96, 256, 384, 384, 256)
    LRN = (5, 5e-4, 0.75, 2.0)

    def __init__(self, out_dim: int = 256, in_channels: int = 3, fc_dim: int = 4096,
                 dropout: float = 0.0, lrn=None, groups: int = 1):
        super().__init__(out_dim, in_channels, fc_dim, dropout, lrn=lrn, groups=groups)


class TextNetTA(nn.Module):
    """TA-ADCMH text network: two fully-connected layers ``BoW -> hidden (ReLU) -> out_dim``.

    The paper: "two deep neural networks of text modality ... each of which consist of two
    fully-connected layers", identity activation on the last one; the hidden width is not
    printed -- 8,192 is DCMH's, whose networks the paper says it re-uses.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 8192, dropout: float = 0.0):
        super().__init__()
        _check_dim(in_dim, "in_dim")
        _check_dim(out_dim, "out_dim")
        if isinstance(hidden, (list, tuple)):
            if len(hidden) != 1:
                raise ValueError(f"TextNetTA has exactly one hidden layer (two fc layers), got "
                                 f"hidden={hidden!r}")
            hidden = hidden[0]
        _check_dim(hidden, "hidden")
        _check_dropout(dropout)
        self.fc1 = nn.Linear(int(in_dim), int(hidden))
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc2 = nn.Linear(int(hidden), int(out_dim))

    def forward(self, x):
        return self.fc2(self.drop(F.relu(self.fc1(x.flatten(1)))))


class TextNetSDCH(nn.Module):
    """SDCH text pipeline (Table 1): txt-fc1 4096 (ReLU) - txt-fc2 4096 (ReLU) - txt-fc3 ``out_dim``."""

    def __init__(self, in_dim: int, out_dim: int = 256, hidden=(4096, 4096),
                 dropout: float = 0.0):
        super().__init__()
        _check_dim(in_dim, "in_dim")
        _check_dim(out_dim, "out_dim")
        hidden = list(hidden)
        if len(hidden) != 2:
            raise ValueError(f"TextNetSDCH has two hidden layers (txt-fc1, txt-fc2), got "
                             f"hidden={hidden!r}")
        for h in hidden:
            _check_dim(h, "hidden layer width")
        _check_dropout(dropout)
        self.fc1 = nn.Linear(int(in_dim), int(hidden[0]))
        self.fc2 = nn.Linear(int(hidden[0]), int(hidden[1]))
        self.fc3 = nn.Linear(int(hidden[1]), int(out_dim))
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        x = self.drop(F.relu(self.fc1(x.flatten(1))))
        x = self.drop(F.relu(self.fc2(x)))
        return self.fc3(x)


TORCHVISION_KINDS = ("tv_alexnet", "tv_vgg16", "tv_resnet50")
IMAGE_BACKBONE_KINDS = ("cnnf", "alexnet") + TORCHVISION_KINDS
BACKBONE_KINDS = ("mlp", "cnnf", "alexnet", "text-ta", "text-sdch") + TORCHVISION_KINDS

_SPEC_KEYS = {"kind", "in_shape", "out_dim", "dropout"}
_KIND_KEYS = {"mlp": {"hidden"}, "text-ta": {"hidden"}, "text-sdch": {"hidden"},
              "cnnf": {"fc_dim", "lrn"}, "alexnet": {"fc_dim", "lrn", "groups"},
              "tv_alexnet": set(), "tv_vgg16": set(), "tv_resnet50": set()}


def build_backbone(spec: dict) -> nn.Module:
    """Build a network from a JSON-able spec and attach the spec as ``module.spec``.

    ``spec = {"kind", "in_shape", "out_dim", optional "dropout"}`` plus, per kind:
    ``"hidden": [...]`` (mlp, text-ta, text-sdch); ``"fc_dim": int`` and ``"lrn": [size,
    alpha, beta, k]`` (cnnf, alexnet); ``"groups": 1 | 2`` (alexnet). ``in_shape`` is the
    per-sample shape: ``[d]`` for vectors, ``[C, H, W]`` for images. The torchvision kinds
    (``tv_alexnet``, ``tv_vgg16``, ``tv_resnet50``) take 3-channel images and no other key.
    For cnnf / alexnet the spec attached to the module always holds the LRN constants used.
    """
    if not isinstance(spec, dict):
        raise TypeError(f"backbone spec must be a dict, got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in BACKBONE_KINDS:
        raise ValueError(f"unknown backbone kind {kind!r}; choose one of {list(BACKBONE_KINDS)}")
    allowed = _SPEC_KEYS | _KIND_KEYS[kind]
    extra = set(spec) - allowed
    if extra:
        raise ValueError(f"unknown backbone spec key(s) {sorted(extra)} for kind {kind!r}; "
                         f"allowed: {sorted(allowed)}")
    if "in_shape" not in spec or "out_dim" not in spec:
        raise ValueError(f"backbone spec needs 'in_shape' and 'out_dim', got {spec!r}")
    in_shape = [int(s) for s in np.atleast_1d(spec["in_shape"])]
    out_dim = spec["out_dim"]
    dropout = float(spec.get("dropout", 0.0))
    if kind in IMAGE_BACKBONE_KINDS:
        if len(in_shape) != 3:
            raise ValueError(f"backbone {kind!r} takes images (C, H, W); got in_shape {in_shape}")
        _check_image_shape(kind, in_shape)
    if kind in ("cnnf", "alexnet"):
        kw = {"fc_dim": int(spec.get("fc_dim", 4096)), "dropout": dropout,
              "lrn": spec.get("lrn")}
        if kind == "alexnet":
            kw["groups"] = spec.get("groups", 1)
        net = (CNNF if kind == "cnnf" else AlexNet)(out_dim, in_channels=in_shape[0], **kw)
    elif kind in TORCHVISION_KINDS:
        net = _torchvision_backbone(kind, in_shape, out_dim, dropout)
    else:
        in_dim = int(np.prod(in_shape))
        kw = {"dropout": dropout}
        if "hidden" in spec:
            kw["hidden"] = spec["hidden"]
        cls = {"mlp": MLP, "text-ta": TextNetTA, "text-sdch": TextNetSDCH}[kind]
        net = cls(in_dim, out_dim, **kw)
    net.spec = {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()}
    net.spec["in_shape"] = in_shape
    if kind in ("cnnf", "alexnet"):
        net.spec["lrn"] = list(net.lrn)
    return net


def _torchvision_backbone(kind, in_shape, out_dim, dropout) -> nn.Module:
    """torchvision's model class (``weights=None``: nothing is downloaded) with its last layer
    (AlexNet / VGG-16 ``classifier[6]``, ResNet-50 ``fc``) of ``out_dim`` units, initialised by
    torchvision. State_dict keys are torchvision's, so its ImageNet state_dicts load by name."""
    from ._torchvision import import_torchvision

    _check_dim(out_dim, "out_dim")
    _check_dropout(dropout)
    if in_shape[0] != 3:
        raise ValueError(f"backbone {kind!r} (torchvision) takes 3-channel RGB images; got "
                         f"in_shape (C, H, W) = {tuple(in_shape)}")
    models = import_torchvision().models
    if kind == "tv_alexnet":
        return models.alexnet(weights=None, num_classes=int(out_dim), dropout=dropout)
    if kind == "tv_vgg16":
        return models.vgg16(weights=None, num_classes=int(out_dim), dropout=dropout)
    if dropout > 0:
        raise ValueError("backbone 'tv_resnet50' has no dropout layer; use dropout=0")
    return models.resnet50(weights=None, num_classes=int(out_dim))


# ------------------------------------------------------------------ weights from user files
def output_layer_name(module: nn.Module) -> str:
    """Name of the network's output layer (its last ``nn.Linear``: fc8 of CNN-F / AlexNet, fc2
    of TextNetTA, fc3 of TextNetSDCH, the last ``net.<i>`` of an MLP, ``classifier.6`` of
    torchvision's AlexNet / VGG-16, ``fc`` of ResNet-50) -- the layer the papers replace by the
    hash / feature layer, so pretrained weights for it are not expected to fit."""
    name = None
    for k, mod in module.named_modules():
        if isinstance(mod, nn.Linear):
            name = k
    return name or ""


def __getattr__(name):
    """``load_state_dict_file`` and ``load_vggf_mat`` moved to :mod:`cmhash.deep.weights`."""
    if name in ("load_state_dict_file", "load_vggf_mat"):
        from . import weights
        return getattr(weights, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: conv1 of CNN-F and AlexNet is 11 x 11 with stride 4 and no padding
MIN_IMAGE_SIZE = 11

#: smallest image side each image backbone runs on, and why
_MIN_SIZES = {"cnnf": (MIN_IMAGE_SIZE, "conv1 is 11 x 11, stride 4, no padding"),
              "alexnet": (MIN_IMAGE_SIZE, "conv1 is 11 x 11, stride 4, no padding"),
              "tv_alexnet": (63, "three 3 x 3 / stride-2 max-pools without ceil mode"),
              "tv_vgg16": (32, "five 2 x 2 / stride-2 max-pools"),
              "tv_resnet50": (1, "")}


def _check_image_shape(kind, in_shape) -> None:
    """Images (C, H, W) must be at least the backbone's minimum size (a clear error, not
    torch's)."""
    c, h, w = in_shape
    if min(c, h, w) <= 0:
        raise ValueError(f"backbone {kind!r}: image shape (C, H, W) = {tuple(in_shape)} has an "
                         f"empty dimension")
    size, why = _MIN_SIZES[kind]
    if h < size or w < size:
        hint = ""
        if w in (1, 3, 4) and c > 4:
            hint = (f"; the images look channels-last (N, H, W, C): pass them as (N, C, H, W), "
                    f"e.g. X.transpose(0, 3, 1, 2)")
        raise ValueError(f"backbone {kind!r} needs images of at least {size} x {size} pixels "
                         f"({why}); got samples of shape (C, H, W) = {tuple(in_shape)}{hint}")


def _check_lrn(lrn) -> tuple:
    """``(size, alpha, beta, k)`` checked: an integer size > 0, finite alpha >= 0, beta, k >= 0."""
    try:
        size, alpha, beta, k = lrn
        size_ok = float(size) == int(size) and int(size) > 0
        vals = (float(alpha), float(beta), float(k))
    except (TypeError, ValueError):
        raise ValueError(f"lrn must be (size, alpha, beta, k), got {lrn!r}") from None
    if not size_ok or not np.isfinite(vals).all() or vals[2] < 0 or vals[0] < 0:
        raise ValueError(f"lrn must be (size > 0, alpha >= 0, beta, k >= 0), got {lrn!r}")
    return (int(size),) + vals


def _check_dim(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_dropout(p):
    if not (isinstance(p, (int, float, np.floating)) and 0.0 <= float(p) < 1.0):
        raise ValueError(f"dropout must be in [0, 1), got {p!r}")
