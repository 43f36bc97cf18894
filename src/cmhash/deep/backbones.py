"""Backbone networks of the deep methods and loading of user-supplied pretrained weights.

Networks (row-sample convention: a batch is (N, d) for vectors, (N, C, H, W) for images):

* :class:`MLP` -- feature-vector inputs of any dimension (4,096-d CNN features, BoW, Wiki's
  128-d SIFT / 10-d LDA features): ``Linear -> ReLU [-> Dropout]`` per hidden layer, then a
  linear output layer (identity activation, as both papers' last layers).
* :class:`CNNF` -- CNN-F (Chatfield et al. 2014, ``imagenet-vgg-f``) as used by DCMH and
  TA-ADCMH: 5 conv + 3 fc, fc8 replaced by ``out_dim`` linear units.
* :class:`AlexNet` -- SDCH Table 1: 5 conv + 3 fc, the last (fc8) replaced by ``out_dim``
  (k = 256) units.
* :class:`TextNetTA` -- TA-ADCMH's text network: two fully-connected layers (BoW -> hidden ->
  r, identity output; hidden = 8,192 as in DCMH, whose networks TA-ADCMH re-uses).
* :class:`TextNetSDCH` -- SDCH's text pipeline: txt-fc1 4096 - txt-fc2 4096 - txt-fc3 256.

:func:`build_backbone` builds any of them from a JSON-able ``spec`` dict; the spec is kept on
the module (``module.spec``) so that :class:`cmhash.deep._torch_base.TorchHasher` can save the
architecture and rebuild it on load.

Pretrained weights are read ONLY from files the user passes: :func:`load_state_dict_file` (a
PyTorch ``state_dict``, read with ``torch.load(weights_only=True)``) and :func:`load_vggf_mat`
(the MatConvNet ``imagenet-vgg-f.mat`` layout). Nothing is ever downloaded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MLP", "CNNF", "AlexNet", "TextNetTA", "TextNetSDCH", "build_backbone",
           "load_state_dict_file", "load_vggf_mat", "output_layer_name", "BACKBONE_KINDS",
           "MIN_IMAGE_SIZE"]


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
    only in their convolution widths ``CHANNELS`` (conv1..conv5)."""

    CHANNELS: tuple = ()

    def __init__(self, out_dim: int, in_channels: int = 3, fc_dim: int = 4096,
                 dropout: float = 0.0):
        super().__init__()
        _check_dim(out_dim, "out_dim")
        _check_dim(in_channels, "in_channels")
        _check_dim(fc_dim, "fc_dim")
        _check_dropout(dropout)
        c1, c2, c3, c4, c5 = self.CHANNELS
        self.conv1 = nn.Conv2d(in_channels, c1, 11, stride=4, padding=0)
        self.norm1 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
        self.pool1 = _MaxPool()
        self.conv2 = nn.Conv2d(c1, c2, 5, stride=1, padding=2)
        self.norm2 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
        self.pool2 = _MaxPool()
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=1)
        self.conv5 = nn.Conv2d(c4, c5, 3, padding=1)
        self.pool5 = _MaxPool()
        self.adapt = nn.AdaptiveAvgPool2d((6, 6))
        self.fc6 = nn.Linear(c5 * 6 * 6, fc_dim)
        self.fc7 = nn.Linear(fc_dim, fc_dim)
        self.fc8 = nn.Linear(fc_dim, out_dim)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def features(self, x):
        """Output of pool5 (N, conv5 channels, 6, 6) after the adaptive pooling."""
        x = self.pool1(self.norm1(F.relu(self.conv1(x))))
        x = self.pool2(self.norm2(F.relu(self.conv2(x))))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = self.pool5(F.relu(self.conv5(x)))
        return self.adapt(x)

    def forward(self, x):
        x = self.features(x).flatten(1)
        x = self.drop(F.relu(self.fc6(x)))
        x = self.drop(F.relu(self.fc7(x)))
        return self.fc8(x)


class CNNF(_FiveConvNet):
    """CNN-F (``imagenet-vgg-f``), the image network of DCMH / TA-ADCMH, fc8 -> ``out_dim``.

    Layer shapes for a 224 x 224 x 3 input (MatConvNet names)::

        conv1  64 x 11 x 11, stride 4, pad 0  -> 64 x 54 x 54, ReLU, LRN, max-pool 3/2 -> 27 x 27
        conv2 256 x  5 x  5, stride 1, pad 2  -> 256 x 27 x 27, ReLU, LRN, max-pool 3/2 -> 13 x 13
        conv3 256 x  3 x  3, stride 1, pad 1  -> 256 x 13 x 13, ReLU
        conv4 256 x  3 x  3, stride 1, pad 1  -> 256 x 13 x 13, ReLU
        conv5 256 x  3 x  3, stride 1, pad 1  -> 256 x 13 x 13, ReLU, max-pool 3/2 -> 6 x 6
        fc6   9216 -> 4096, ReLU      (MatConvNet: a 6 x 6 x 256 x 4096 convolution)
        fc7   4096 -> 4096, ReLU
        fc8   4096 -> out_dim, identity (the paper: "number of hidden units = code length")

    LRN: n = 5, alpha = 1e-4, beta = 0.75, k = 2 (overridden by the values stored in a
    vgg-f .mat file by :func:`load_vggf_mat`). An adaptive average pooling to 6 x 6 before fc6
    is the identity at 224 x 224 and lets small images (e.g. 32 x 32 synthetic data) run.
    ``fc_dim`` (4096 in the paper) can be reduced for fast tests; pretrained fc6/fc7 weights
    then do not fit and are refused.
    """

    CHANNELS = (64, 256, 256, 256, 256)


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
    would leave a 7 x 7 map and 0 is not a stride): AlexNet's strides 1 are used. Krizhevsky's
    two-GPU grouping of conv2/4/5 is not used (as in torchvision's AlexNet).
    """

    CHANNELS = (96, 256, 384, 384, 256)

    def __init__(self, out_dim: int = 256, in_channels: int = 3, fc_dim: int = 4096,
                 dropout: float = 0.0):
        super().__init__(out_dim, in_channels, fc_dim, dropout)


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


BACKBONE_KINDS = ("mlp", "cnnf", "alexnet", "text-ta", "text-sdch")


def build_backbone(spec: dict) -> nn.Module:
    """Build a network from a JSON-able spec and attach the spec as ``module.spec``.

    ``spec = {"kind": "mlp"|"cnnf"|"alexnet"|"text-ta"|"text-sdch", "in_shape": [...],
    "out_dim": int, optional "hidden": [...] (mlp, text nets), "dropout": float,
    "fc_dim": int (cnnf, alexnet)}``. ``in_shape`` is the per-sample shape: ``[d]`` for vectors,
    ``[C, H, W]`` for images.
    """
    if not isinstance(spec, dict):
        raise TypeError(f"backbone spec must be a dict, got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in BACKBONE_KINDS:
        raise ValueError(f"unknown backbone kind {kind!r}; choose one of {list(BACKBONE_KINDS)}")
    allowed = {"kind", "in_shape", "out_dim", "hidden", "dropout", "fc_dim"}
    extra = set(spec) - allowed
    if extra:
        raise ValueError(f"unknown backbone spec key(s) {sorted(extra)}; allowed: {sorted(allowed)}")
    if "in_shape" not in spec or "out_dim" not in spec:
        raise ValueError(f"backbone spec needs 'in_shape' and 'out_dim', got {spec!r}")
    in_shape = [int(s) for s in np.atleast_1d(spec["in_shape"])]
    out_dim = spec["out_dim"]
    dropout = float(spec.get("dropout", 0.0))
    if kind in ("cnnf", "alexnet"):
        if len(in_shape) != 3:
            raise ValueError(f"backbone {kind!r} takes images (C, H, W); got in_shape {in_shape}")
        _check_image_shape(kind, in_shape)
        cls = CNNF if kind == "cnnf" else AlexNet
        net = cls(out_dim, in_channels=in_shape[0], fc_dim=int(spec.get("fc_dim", 4096)),
                  dropout=dropout)
    else:
        in_dim = int(np.prod(in_shape))
        kw = {"dropout": dropout}
        if "hidden" in spec:
            kw["hidden"] = spec["hidden"]
        cls = {"mlp": MLP, "text-ta": TextNetTA, "text-sdch": TextNetSDCH}[kind]
        net = cls(in_dim, out_dim, **kw)
    net.spec = {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()}
    net.spec["in_shape"] = in_shape
    return net


# ------------------------------------------------------------------ weights from user files
def output_layer_name(module: nn.Module) -> str:
    """Name of the network's output layer (its last ``nn.Linear``: fc8 of CNN-F / AlexNet, fc2
    of TextNetTA, fc3 of TextNetSDCH, the last ``net.<i>`` of an MLP) -- the layer the papers
    replace by the hash / feature layer, so pretrained weights for it are not expected to fit."""
    name = None
    for k, mod in module.named_modules():
        if isinstance(mod, nn.Linear):
            name = k
    return name or ""


def _in_layers(key: str, layers) -> bool:
    return any(key == p or key.startswith(p + ".") for p in layers)


def load_state_dict_file(module: nn.Module, path, strict: bool = False,
                         replaced=None) -> list[str]:
    """Load a PyTorch ``state_dict`` saved at ``path`` into ``module``; return the loaded keys.

    The file is read with ``torch.load(path, map_location="cpu", weights_only=True)`` (no
    arbitrary code). A checkpoint dict with a ``"state_dict"`` entry is accepted.

    ``strict=False``: tensors whose name is not in the network are ignored and the network's
    tensors missing from the file keep their values; a tensor whose name matches but whose
    shape does not is an error naming the layer, except in the ``replaced`` layers (default:
    the network's output layer, :func:`output_layer_name`, e.g. a 1,000-class fc8 in place of
    the hash layer), whose tensors are skipped. A file of which no tensor matches the network
    is an error (it is not weights for this architecture). ``strict=True``: any missing,
    unexpected or mis-shaped key is an error. Unreadable files raise a ``ValueError`` naming
    the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    if not path.is_file():
        raise ValueError(f"weights path {path} is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        hint = (" (MatConvNet .mat files load only into CNN-F, through load_vggf_mat)"
                if path.suffix.lower() == ".mat" else "")
        raise ValueError(f"could not read {path} as a PyTorch state_dict{hint}: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                         ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        got = type(state).__name__ if not isinstance(state, dict) else "a dict of non-tensors"
        raise ValueError(f"{path} does not contain a state_dict (got {got})")
    own = module.state_dict()
    replaced = [output_layer_name(module)] if replaced is None else list(replaced)
    loaded, mismatched, skipped = {}, [], []
    for k, v in state.items():
        if k in own and tuple(own[k].shape) == tuple(v.shape):
            loaded[k] = v
        elif k in own:
            msg = f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            (skipped if _in_layers(k, replaced) else mismatched).append(msg)
    if strict:
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected or mismatched or skipped:
            raise ValueError(f"state_dict in {path} does not match the network: missing "
                             f"{missing}, unexpected {unexpected}, shape mismatch "
                             f"{mismatched + skipped}")
    if mismatched:
        raise ValueError(f"weights in {path} do not fit the network: shape mismatch in "
                         f"{'; '.join(mismatched)} (only the output layer {replaced} may differ)")
    if not loaded:
        raise ValueError(f"no tensor of {path} matches the network ({len(state)} tensors in the "
                         f"file, e.g. {sorted(state)[:4]}; the network has {sorted(own)[:4]}...): "
                         f"not weights for this architecture")
    module.load_state_dict(loaded, strict=False)
    return list(loaded)


def _mat_field(obj, name):
    """Field ``name`` of a MATLAB struct as returned by loadmat (struct_as_record=False)."""
    if hasattr(obj, name):
        return getattr(obj, name)
    if isinstance(obj, np.ndarray) and obj.dtype.names and name in obj.dtype.names:
        return obj[name]
    return None


def _unwrap(obj):
    """A MATLAB struct from loadmat's (1, 1) object / struct arrays."""
    while isinstance(obj, np.ndarray) and obj.dtype == object and obj.size == 1:
        obj = obj.ravel()[0]
    return obj


def _mat_str(value) -> str:
    value = _unwrap(value)
    if isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size else ""
    return str(value)


def load_vggf_mat(cnnf_module: CNNF, path) -> list[str]:
    """Load MatConvNet ``imagenet-vgg-f.mat`` weights into a :class:`CNNF`; return loaded names.

    Layout (SimpleNN): ``layers{i}`` structs with ``type`` ('conv', 'relu', 'lrn', 'pool', ...)
    and, for 'conv', ``weights{1}`` of shape H x W x Cin x Cout and ``weights{2}`` (Cout).
    The eight 'conv' layers are conv1-5, fc6 (6 x 6 x 256 x 4096), fc7 (1 x 1 x 4096 x 4096)
    and fc8; fc8 (the 1000 ImageNet classes) is replaced by the hash layer and is skipped.
    Conv filters go to PyTorch's (Cout, Cin, H, W) by ``transpose(3, 2, 0, 1)``; fc6 is then
    flattened in PyTorch's (C, H, W) order, matching ``features(x).flatten(1)``. LRN parameters
    ``[N kappa alpha beta]`` (MatConvNet: ``x / (kappa + alpha sum x^2)^beta``) are copied as
    ``size=N, k=kappa, alpha=alpha*N, beta=beta`` (PyTorch divides alpha by N).
    """
    import scipy.io

    if not isinstance(cnnf_module, CNNF):
        raise TypeError(f"load_vggf_mat loads into a CNNF module, got {type(cnnf_module).__name__}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    # no squeeze_me: a 1 x 1 x Cin x Cout filter must keep its leading singleton dimensions
    if not path.is_file():
        raise ValueError(f"weights path {path} is not a file")
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=False)
    except Exception as exc:
        raise ValueError(f"could not read {path} as a MATLAB .mat file (MatConvNet "
                         f"imagenet-vgg-f.mat): {type(exc).__name__}: {exc}") from exc
    if "layers" not in mat:
        raise ValueError(f"{path} has no 'layers' variable: not a MatConvNet SimpleNN model "
                         f"(DagNN models are not supported)")
    convs, lrns = [], []
    for layer in np.asarray(mat["layers"]).ravel():
        layer = _unwrap(layer)
        kind = _mat_str(_mat_field(layer, "type"))
        if kind == "conv":
            w = np.asarray(_mat_field(layer, "weights"), dtype=object).ravel()
            filt = np.asarray(w[0], dtype=np.float32)
            bias = np.asarray(w[1], dtype=np.float32).reshape(-1) if len(w) > 1 else None
            if filt.ndim < 4:  # MATLAB drops trailing singleton dimensions (Cout = 1)
                filt = filt.reshape(filt.shape + (1,) * (4 - filt.ndim))
            convs.append((_mat_str(_mat_field(layer, "name")), filt, bias))
        elif kind in ("lrn", "normalize"):
            lrns.append(np.asarray(_mat_field(layer, "param"), dtype=np.float64).reshape(-1))
    if len(convs) < 7:
        raise ValueError(f"{path} has {len(convs)} conv layers; the CNN-F layout has 8 "
                         f"(conv1-5, fc6, fc7, fc8)")
    targets = [cnnf_module.conv1, cnnf_module.conv2, cnnf_module.conv3, cnnf_module.conv4,
               cnnf_module.conv5, cnnf_module.fc6, cnnf_module.fc7]
    names = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    loaded = []
    with torch.no_grad():
        for name, target, (mname, filt, bias) in zip(names, targets, convs):
            w = filt.transpose(3, 2, 0, 1)  # H x W x Cin x Cout -> Cout x Cin x H x W
            if isinstance(target, nn.Linear):
                w = w.reshape(w.shape[0], -1)
            if tuple(w.shape) != tuple(target.weight.shape):
                raise ValueError(f"layer {mname!r} of {path} has weights {filt.shape} (H x W x "
                                 f"Cin x Cout) that do not fit {name} {tuple(target.weight.shape)}")
            target.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
            if bias is not None:
                if bias.size != target.bias.numel():
                    raise ValueError(f"layer {mname!r} of {path}: bias has {bias.size} entries, "
                                     f"{name} needs {target.bias.numel()}")
                target.bias.copy_(torch.from_numpy(bias))
            loaded.append(name)
    for norm, param in zip((cnnf_module.norm1, cnnf_module.norm2), lrns):
        if param.size == 4:
            n_, kappa, alpha, beta = param
            norm.size, norm.k, norm.alpha, norm.beta = int(n_), float(kappa), float(alpha * n_), float(beta)
    return loaded


#: conv1 of CNN-F and AlexNet is 11 x 11 with stride 4 and no padding
MIN_IMAGE_SIZE = 11


def _check_image_shape(kind, in_shape) -> None:
    """Images (C, H, W) must be at least conv1's 11 x 11 (a clear error, not torch's)."""
    c, h, w = in_shape
    if min(c, h, w) <= 0:
        raise ValueError(f"backbone {kind!r}: image shape (C, H, W) = {tuple(in_shape)} has an "
                         f"empty dimension")
    if h < MIN_IMAGE_SIZE or w < MIN_IMAGE_SIZE:
        hint = ""
        if w in (1, 3, 4) and c > 4:
            hint = (f"; the images look channels-last (N, H, W, C): pass them as (N, C, H, W), "
                    f"e.g. X.transpose(0, 3, 1, 2)")
        raise ValueError(f"backbone {kind!r} needs images of at least {MIN_IMAGE_SIZE} x "
                         f"{MIN_IMAGE_SIZE} pixels (conv1 is 11 x 11, stride 4, no padding); got "
                         f"samples of shape (C, H, W) = {tuple(in_shape)}{hint}")


def _check_dim(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_dropout(p):
    if not (isinstance(p, (int, float, np.floating)) and 0.0 <= float(p) < 1.0):
        raise ValueError(f"dropout must be in [0, 1), got {p!r}")
