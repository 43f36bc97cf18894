"""Pretrained image weights from local files (never downloaded), and their input normalisation.

Sources (``source=``; ``"auto"`` decides from the file):

* ``"matconvnet"`` -- a MatConvNet model ``.mat`` (``imagenet-vgg-f.mat``,
  ``imagenet-caffe-alex.mat``) in either layout. SimpleNN: a ``layers`` cell array of structs
  (``name``, ``type``; for ``type = 'conv'`` the cell ``weights = {filters H x W x Cin x Cout,
  biases Cout x 1}``, older files ``filters`` / ``biases``; ``'normalize'`` / ``'lrn'`` layers
  with ``param = [N kappa alpha beta]``). DagNN (``dagnn.DagNN.saveobj``): a ``layers`` struct
  array with ``name``, ``type`` ('dagnn.Conv', 'dagnn.LRN', ...), ``inputs``, ``outputs``,
  ``params`` (cell of parameter names) and ``block`` (the block's properties: ``size``, ``pad``,
  ``stride``; LRN ``param``), and a ``params`` struct array with ``name`` and ``value``. Either
  may sit at the top level of the file or inside a ``net`` variable. The input normalisation is
  ``meta.normalization`` (``normalization`` in files before MatConvNet beta17):
  ``averageImage`` (H x W x 3, 1 x 1 x 3 or 3 x 1, 0-255 RGB), ``imageSize``, ``border``.
  Loads into CNN-F and AlexNet (grouped filters converted, see below). Channel order RGB.
* ``"torchvision"`` -- a state_dict of torchvision's AlexNet, VGG-16 or ResNet-50 under
  torchvision's key names (``features.0.weight``, ``classifier.6.weight``,
  ``layer4.2.conv3.weight``, ...), as ``torch.save(model.state_dict())`` writes it; loads into
  the ``tv_alexnet`` / ``tv_vgg16`` / ``tv_resnet50`` backbones. Into the papers' AlexNet or
  CNN-F it is refused with the shapes (torchvision's AlexNet is 64/192/384/256/256 wide, has
  no LRN and pads conv1 by 2). Normalisation: ImageNet mean / std on [0, 1] RGB pixels.
* ``"caffe"`` -- Caffe's AlexNet (``bvlc_alexnet``) converted to a PyTorch state_dict under
  Caffe's layer names ``conv1.weight`` ... ``fc8.bias`` with Caffe's blob shapes: conv2, conv4
  and conv5 GROUPED (``group: 2``, filters (Cout, Cin / 2, k, k)), fc6 (4096, 9216). Caffe
  works in BGR: the input-channel axis of conv1 is reversed on load so that the network takes
  RGB images, and the ILSVRC-2012 mean is given in RGB. LRN: Caffe's ``k = 1, alpha = 1e-4``.
* ``"state_dict"`` -- any other PyTorch state_dict, loaded by name (:func:`load_state_dict_file`
  semantics); it carries no input normalisation.

Grouped convolutions (Caffe's and MatConvNet's AlexNet) are loaded into an ungrouped
convolution EXACTLY by :func:`grouped_to_dense`: the dense filter bank is block-diagonal (group
g's output filters see only group g's input channels, zeros elsewhere), so the network computes
the same function. Fine-tuning then fills the zero blocks (the network becomes the ungrouped
AlexNet started from the grouped solution); to keep the grouping, build ``AlexNet(groups=2)``
(spec ``"groups": 2``), into which grouped weights load as they are.

MATLAB conventions: filters are H x W x Cin x Cout (to PyTorch's Cout x Cin x H x W by
``transpose(3, 2, 0, 1)``); fully-connected layers are convolutions whose kernel covers the
whole input (fc6: 6 x 6 x 256 x 4096, flattened in PyTorch's (C, H, W) order); biases are
column vectors; MATLAB drops trailing singleton dimensions. LRN ``[N kappa alpha beta]``
(``x / (kappa + alpha sum x^2)^beta``) is PyTorch's ``LocalResponseNorm(N, alpha * N, beta,
kappa)``. MATLAB v7.3 (HDF5) model files are not read: re-save them with ``save(..., '-v7')``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .backbones import CNNF, _FiveConvNet, output_layer_name
from .normalization import CAFFE_ILSVRC2012, TORCHVISION_IMAGENET, InputNormalization

__all__ = ["SOURCES", "PretrainedWeights", "read_weights", "load_weights", "normalization_for",
           "grouped_to_dense", "load_state_dict_file", "load_vggf_mat", "InputNormalization"]

log = logging.getLogger(__name__)

SOURCES = ("auto", "matconvnet", "torchvision", "caffe", "state_dict")

#: the CNN-F / AlexNet layers in file order; fc8 (ImageNet's classes) is the replaced layer
_FIVE_CONV_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
#: Caffe's bvlc_alexnet LRN (local_size 5, alpha 1e-4 divided by n, beta 0.75, k 1)
_CAFFE_LRN = (5, 1e-4, 0.75, 1.0)
#: torchvision AlexNet keys -> the papers' AlexNet / CNN-F layer names (for refusal messages)
_TV_ALEXNET_NAMES = {"features.0": "conv1", "features.3": "conv2", "features.6": "conv3",
                     "features.8": "conv4", "features.10": "conv5", "classifier.1": "fc6",
                     "classifier.4": "fc7", "classifier.6": "fc8"}
#: MatConvNet layer types (SimpleNN's, and DagNN's without "dagnn.") without parameters
_MCN_PASSIVE = {"relu", "pool", "pooling", "dropout", "softmax", "softmaxloss", "loss"}


# ------------------------------------------------------------------------- the result
@dataclass
class _ConvLayer:
    """One convolution / fully-connected layer of a CNN-F / AlexNet file, PyTorch layout."""

    name: str                       # the name in the file
    weight: np.ndarray = field(repr=False)   # (Cout, Cin / groups, kh, kw); Caffe fc (Cout, Cin)
    bias: np.ndarray | None = field(repr=False)
    file_shape: tuple               # the shape as stored in the file (for messages)
    stride: tuple | None = None     # (sy, sx) when the file says
    pad: tuple | None = None        # (top, bottom, left, right) when the file says


class PretrainedWeights:
    """Weights read from one file, ready to load into backbones (:meth:`load_into`).

    Attributes: ``path``, ``source`` ("matconvnet", "torchvision", "caffe", "state_dict"),
    ``layout`` ("simplenn", "dagnn", "alexnet" / "vgg16" / "resnet50" for torchvision, "caffe",
    "state_dict"), ``normalization`` (:class:`InputNormalization` or None when the file does
    not define one), ``lrn`` (LRN constants for CNN-F / AlexNet, PyTorch's convention).
    """

    def __init__(self, path, source, layout, normalization=None, *, layers=None, lrn=None,
                 lrn_count=None, state=None):
        self.path = Path(path)
        self.source, self.layout = source, layout
        self.normalization = normalization
        self.layers = layers          # list of _ConvLayer (matconvnet / caffe)
        self.lrn = lrn
        self.lrn_count = lrn_count    # LRN layers in a MatConvNet file
        self.state = state            # dict of tensors (torchvision / state_dict)

    def __repr__(self):
        return (f"PretrainedWeights({str(self.path)!r}, source={self.source!r}, "
                f"layout={self.layout!r})")

    @property
    def backbone_kinds(self) -> tuple:
        """The backbone kinds these weights load into."""
        if self.source == "torchvision":
            return (f"tv_{self.layout}",)
        if self.source in ("matconvnet", "caffe"):
            return ("cnnf", "alexnet")
        return ()

    def load_into(self, net: nn.Module) -> list[str]:
        """Copy the weights into ``net``; return the names of the loaded tensors.

        Every layer of ``net`` except its output layer (replaced by the hash / feature layer)
        must be in the file with a fitting shape; errors name the layer and both shapes.
        """
        if self.source == "torchvision":
            return _load_torchvision(net, self.state, self.layout, self.path)
        if self.source in ("matconvnet", "caffe"):
            return _load_five_conv(net, self)
        return _load_state_dict(net, self.state, self.path)

    def check_backbone(self, spec: dict) -> None:
        """A ValueError when a backbone of ``spec`` cannot take these weights (before building)."""
        kind = spec.get("kind")
        kinds = self.backbone_kinds
        if kinds and kind not in kinds:
            what = {"torchvision": f"torchvision {self.layout}", "matconvnet":
                    f"MatConvNet ({self.layout})", "caffe": "Caffe AlexNet"}[self.source]
            raise ValueError(f"{self.path} holds {what} weights, which load into the "
                             f"{' / '.join(repr(k) for k in kinds)} backbone; the image backbone "
                             f"is {kind!r}")


def read_weights(path, source: str = "auto") -> PretrainedWeights:
    """Read a weights file (see the module doc for ``source``) into :class:`PretrainedWeights`.

    ``"auto"``: a ``.mat`` file is MatConvNet; a PyTorch file is torchvision when its keys are
    torchvision's AlexNet / VGG-16 / ResNet-50, Caffe when it is an AlexNet under Caffe's layer
    names with grouped conv2 (a Caffe conversion; its conv1 is then taken as BGR), otherwise a
    plain state_dict. Pass ``source`` explicitly for anything else.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown weights source {source!r}; choose one of {list(SOURCES)}")
    path = _check_file(path)
    if source == "matconvnet" or (source == "auto" and path.suffix.lower() == ".mat"):
        weights = _read_matconvnet(path)
    else:
        state = _read_torch_state(path)
        detected, model = _detect_torch_layout(state)
        if source == "auto":
            source = detected
            log.info("%s: read as %s weights%s", path, source, f" ({model})" if model else "")
        weights = _from_torch_state(path, state, source, detected, model)
    return weights


def load_weights(net: nn.Module, path, source: str = "auto") -> PretrainedWeights:
    """Read ``path`` and load it into ``net``; return the :class:`PretrainedWeights` (its
    ``normalization`` is the input normalisation these weights need)."""
    weights = read_weights(path, source)
    weights.load_into(net)
    return weights


def normalization_for(spec: dict, weights_path, source: str = "auto"):
    """The :class:`InputNormalization` that images need for a backbone of ``spec`` initialised
    from ``weights_path`` (None when ``weights_path`` is None or the file defines none: then
    the methods' own standardisation applies). A backbone that cannot take the weights is a
    ValueError. Reads only what is needed (a MatConvNet file's ``meta`` variable)."""
    if weights_path is None:
        return None
    path = _check_file(weights_path)
    if source not in SOURCES:
        raise ValueError(f"unknown weights source {source!r}; choose one of {list(SOURCES)}")
    if source == "matconvnet" or (source == "auto" and path.suffix.lower() == ".mat"):
        names = {name for name, _, _ in _whosmat(path)}
        if names and not names & {"layers", "meta", "normalization", "net"}:
            raise ValueError(f"{path} is not a MatConvNet model: no 'layers', 'meta' or 'net' "
                             f"variable (variables: {sorted(names)})")
        wanted = ("meta", "normalization") if names & {"layers", "meta"} else ("net",)
        root = _matconvnet_root(_loadmat(path, variable_names=wanted), path)
        weights = PretrainedWeights(path, "matconvnet", "", _matconvnet_normalization(root, path))
    else:
        weights = read_weights(path, source)
    weights.check_backbone(spec)
    return weights.normalization


def grouped_to_dense(weight, groups: int):
    """The dense (ungrouped) filter bank equal to a grouped convolution's.

    ``weight`` (Cout, Cin / groups, kh, kw) of ``nn.Conv2d(Cin, Cout, groups=groups)``: output
    filters ``[g Cout/groups, (g+1) Cout/groups)`` see input channels ``[g Cin/groups,
    (g+1) Cin/groups)``. Returns (Cout, Cin, kh, kw) with those blocks on the diagonal and zeros
    elsewhere, so ``conv2d(x, dense) == conv2d(x, weight, groups=groups)`` exactly.
    """
    w = torch.as_tensor(weight)
    groups = int(groups)
    out, in_g = w.shape[0], w.shape[1]
    if groups < 1 or out % groups:
        raise ValueError(f"{out} output filters cannot form {groups} groups")
    dense = w.new_zeros((out, in_g * groups) + tuple(w.shape[2:]))
    og = out // groups
    for g in range(groups):
        dense[g * og:(g + 1) * og, g * in_g:(g + 1) * in_g] = w[g * og:(g + 1) * og]
    return dense


# ------------------------------------------------------------------------- files
def _check_file(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    if not path.is_file():
        raise ValueError(f"weights path {path} is not a file")
    return path


def _read_torch_state(path: Path) -> dict:
    """The tensors of a PyTorch weights file (``torch.load(weights_only=True)``: no code runs).

    A checkpoint dict with a ``"state_dict"`` entry is accepted, and a ``"module."`` prefix on
    every key (a model saved from ``DataParallel``) is dropped."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:    # files in the legacy (non-zip) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        hint = (" (a MatConvNet .mat file: use source='matconvnet')"
                if path.suffix.lower() == ".mat" else "")
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(f"could not read {path} as a PyTorch state_dict{hint}: "
                         f"{type(exc).__name__}: {first}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if (not isinstance(state, dict) or not state
            or not all(isinstance(v, torch.Tensor) for v in state.values())):
        got = (type(state).__name__ if not isinstance(state, dict)
               else "an empty dict" if not state else "a dict of non-tensors")
        raise ValueError(f"{path} does not contain a state_dict (got {got})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _torchvision_model(state: dict):
    """"alexnet", "vgg16", "resnet50", "other" (torchvision-like keys of another model) or None."""
    keys = set(state)
    if "fc.weight" in keys and "layer1.0.conv1.weight" in keys:
        blocks = [sum(1 for i in range(64) if f"layer{s}.{i}.conv1.weight" in keys)
                  for s in (1, 2, 3, 4)]
        bottleneck = "layer1.0.conv3.weight" in keys
        return "resnet50" if blocks == [3, 4, 6, 3] and bottleneck else "other"
    if "features.0.weight" in keys and "classifier.6.weight" in keys:
        kernel = tuple(state["features.0.weight"].shape[2:])
        last_conv = max(int(k.split(".")[1]) for k in keys
                        if k.startswith("features.") and k.endswith(".weight"))
        if kernel == (11, 11):
            return "alexnet"
        if kernel == (3, 3) and last_conv == 28 and "features.1.running_mean" not in keys:
            return "vgg16"
        return "other"
    return None


def _detect_torch_layout(state: dict):
    """``(source, torchvision model or None)`` of a state_dict (see :func:`read_weights`)."""
    model = _torchvision_model(state)
    if model is not None:
        return "torchvision", model
    w1, w2 = state.get("conv1.weight"), state.get("conv2.weight")
    if (w1 is not None and w2 is not None and "fc6.weight" in state and w1.ndim == 4
            and w2.ndim == 4 and w2.shape[1] < w1.shape[0] and w1.shape[0] % w2.shape[1] == 0):
        return "caffe", None
    return "state_dict", None


def _from_torch_state(path, state, source, detected, model) -> PretrainedWeights:
    if source == "matconvnet":   # pragma: no cover - read_weights routes .mat reading itself
        raise ValueError(f"{path} is a PyTorch file, not a MatConvNet .mat file")
    if source == "torchvision":
        if model is None or model == "other":
            looks = ("torchvision weights of another model (e.g. VGG-16-BN, ResNet-18), which "
                     "cmhash does not build" if model == "other" else f"{detected} weights")
            raise ValueError(f"{path} does not hold torchvision AlexNet / VGG-16 / ResNet-50 "
                             f"weights under torchvision's key names (e.g. "
                             f"{sorted(state)[:4]}); it looks like {looks}")
        return PretrainedWeights(path, "torchvision", model, TORCHVISION_IMAGENET, state=state)
    if source == "caffe":
        layers = _caffe_layers(state, path)
        return PretrainedWeights(path, "caffe", "caffe", CAFFE_ILSVRC2012, layers=layers,
                                 lrn=_CAFFE_LRN)
    return PretrainedWeights(path, "state_dict", "state_dict", None, state=state)


def _caffe_layers(state, path) -> list:
    """conv1-conv5, fc6, fc7 (, fc8) of a Caffe AlexNet state_dict, in order."""
    missing = [n for n in _FIVE_CONV_LAYERS[:7] if f"{n}.weight" not in state]
    if missing:
        raise ValueError(f"{path} is not a Caffe AlexNet state_dict: missing layer(s) {missing} "
                         f"(keys {sorted(state)[:8]}...); expected conv1-conv5, fc6, fc7 "
                         f"(.weight / .bias)")
    layers = []
    for name in _FIVE_CONV_LAYERS:
        if f"{name}.weight" not in state:
            continue
        w = state[f"{name}.weight"].detach().float().numpy()
        b = state.get(f"{name}.bias")
        layers.append(_ConvLayer(name, w, None if b is None else b.detach().float().numpy(),
                                 tuple(w.shape)))
    return layers


# ------------------------------------------------------------------------- MatConvNet
def _loadmat(path: Path, variable_names=None) -> dict:
    import scipy.io

    try:
        return scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=False,
                                variable_names=variable_names)
    except NotImplementedError as exc:   # scipy: "Please use HDF reader for matlab v7.3 files"
        raise ValueError(f"{path} is a MATLAB v7.3 (HDF5) file, which the MatConvNet reader "
                         f"does not read: load it in MATLAB and save it with "
                         f"save(file, '-struct', 'net', '-v7')") from exc
    except Exception as exc:
        raise ValueError(f"could not read {path} as a MATLAB .mat file (MatConvNet model such "
                         f"as imagenet-vgg-f.mat): {type(exc).__name__}: {exc}") from exc


def _whosmat(path: Path) -> list:
    """The variables of a .mat file (name, shape, class) without reading their values."""
    import scipy.io

    try:
        return scipy.io.whosmat(str(path))
    except NotImplementedError:
        return []        # v7.3: _loadmat names the problem
    except Exception as exc:
        raise ValueError(f"could not read {path} as a MATLAB .mat file (MatConvNet model such "
                         f"as imagenet-vgg-f.mat): {type(exc).__name__}: {exc}") from exc


def _mat_field(obj, name):
    """Field ``name`` of a MATLAB struct as returned by loadmat (struct_as_record=False)."""
    obj = _unwrap(obj)
    if isinstance(obj, dict):
        return obj.get(name)
    if hasattr(obj, "_fieldnames"):
        return getattr(obj, name, None)
    if isinstance(obj, np.ndarray) and obj.dtype.names and name in obj.dtype.names:
        return obj[name]
    return None


def _unwrap(obj):
    """A MATLAB struct / value from loadmat's (1, 1) object arrays."""
    while isinstance(obj, np.ndarray) and obj.dtype == object and obj.size == 1:
        obj = obj.ravel()[0]
    return obj


def _mat_str(value) -> str:
    value = _unwrap(value)
    if isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size else ""
    return "" if value is None else str(value)


def _mat_strings(value) -> list[str]:
    """A MATLAB cell array of strings (or one string) as a list of str."""
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [_mat_str(v) for v in value.ravel()]
    s = _mat_str(value)
    return [s] if s else []


def _mat_array(value, what) -> np.ndarray:
    value = _unwrap(value)
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"{what} is not a numeric array") from None
    return arr


def _matconvnet_root(mat: dict, path: Path):
    """The model's fields: the file's variables, or the fields of a ``net`` variable."""
    if "layers" in mat or "meta" in mat or "normalization" in mat:
        return mat
    if "net" in mat:
        net = _unwrap(mat["net"])
        if hasattr(net, "_fieldnames"):
            return {f: getattr(net, f) for f in net._fieldnames}
    names = sorted(k for k in mat if not k.startswith("__"))
    raise ValueError(f"{path} is not a MatConvNet model: it has no 'layers' (SimpleNN) or "
                     f"'layers' + 'params' (DagNN) variable, nor a 'net' struct holding them "
                     f"(variables: {names})")


def _read_matconvnet(path: Path) -> PretrainedWeights:
    root = _matconvnet_root(_loadmat(path), path)
    if root.get("layers") is None:
        raise ValueError(f"{path} is not a MatConvNet model: no 'layers' (fields: "
                         f"{sorted(k for k in root if not k.startswith('__'))})")
    if root.get("params") is not None:
        layout, (convs, lrns) = "dagnn", _dagnn_layers(root, path)
    else:
        layout, (convs, lrns) = "simplenn", _simplenn_layers(root, path)
    if not convs:
        raise ValueError(f"{path} ({layout}) has no convolution layers: not an image network")
    lrn = None
    if lrns:
        params = {tuple(np.round(p, 12)) for p in lrns}
        if len(params) > 1:
            raise ValueError(f"{path}: LRN layers with different constants {sorted(params)}; "
                             f"CNN-F / AlexNet use one setting for both")
        n_, kappa, alpha, beta = lrns[0]
        lrn = (int(n_), float(alpha * n_), float(beta), float(kappa))
    log.info("%s: MatConvNet %s model, %d conv layers, %d LRN layers", path, layout,
             len(convs), len(lrns))
    return PretrainedWeights(path, "matconvnet", layout, _matconvnet_normalization(root, path),
                             layers=convs, lrn=lrn, lrn_count=len(lrns))


def _lrn_param(value, where) -> np.ndarray:
    param = _mat_array(value, f"{where}: LRN param").reshape(-1).astype(np.float64)
    if param.size != 4:
        raise ValueError(f"{where}: LRN param must be [N kappa alpha beta], got {param.tolist()}")
    return param


def _conv_from_mat(name, filt, bias, stride, pad, where) -> _ConvLayer:
    """A MatConvNet filter bank (H x W x Cin x Cout) and bias as a PyTorch-layout layer."""
    filt = _mat_array(filt, f"{where}: filters")
    if filt.ndim > 4 or filt.size == 0:
        raise ValueError(f"{where}: filters of shape {filt.shape} are not H x W x Cin x Cout")
    file_shape = tuple(filt.shape)
    filt = filt.reshape(filt.shape + (1,) * (4 - filt.ndim))   # MATLAB drops trailing 1s
    b = None if bias is None else _mat_array(bias, f"{where}: biases").reshape(-1)
    if b is not None and b.size == 0:
        b = None
    stride = None if stride is None else _pair(stride, 2)
    pad = None if pad is None else _pair(pad, 4)
    return _ConvLayer(name, np.ascontiguousarray(filt.transpose(3, 2, 0, 1)), b, file_shape,
                      stride, pad)


def _pair(value, n) -> tuple | None:
    arr = np.asarray(_unwrap(value), dtype=np.float64).reshape(-1)
    if arr.size == 0:
        return None
    if arr.size == 1:
        arr = np.repeat(arr, n)
    return tuple(int(v) for v in arr)


def _simplenn_layers(root, path):
    convs, lrns = [], []
    cell = root["layers"]
    if not isinstance(cell, np.ndarray) or cell.dtype != object:
        raise ValueError(f"{path}: 'layers' is not a cell array of structs (SimpleNN layout)")
    for i, layer in enumerate(cell.ravel()):
        layer = _unwrap(layer)
        kind = _mat_str(_mat_field(layer, "type"))
        name = _mat_str(_mat_field(layer, "name")) or f"layer{i + 1}"
        where = f"{path}: layer {name!r}"
        if not kind:
            raise ValueError(f"{where} has no 'type': not a MatConvNet SimpleNN layer")
        role = _layer_role(kind, where)
        if role == "conv":
            w = _mat_field(layer, "weights")
            if w is not None:
                w = np.asarray(w, dtype=object).ravel()
                if w.size == 0:
                    raise ValueError(f"{where} has an empty 'weights' cell")
                filt, bias = w[0], (w[1] if w.size > 1 else None)
            elif _mat_field(layer, "filters") is not None:
                filt, bias = _mat_field(layer, "filters"), _mat_field(layer, "biases")
            else:
                raise ValueError(f"{where} (conv) has neither 'weights' nor 'filters'")
            convs.append(_conv_from_mat(name, filt, bias, _mat_field(layer, "stride"),
                                        _mat_field(layer, "pad"), where))
        elif role == "lrn":
            lrns.append(_lrn_param(_mat_field(layer, "param"), where))
    return convs, lrns


def _layer_role(kind: str, where) -> str:
    """"conv", "lrn" or "" (no parameters) for a SimpleNN type ('conv', 'normalize', ...) or a
    DagNN class ('dagnn.Conv', 'dagnn.LRN', ...); other types are not in CNN-F / AlexNet."""
    base = kind.lower().removeprefix("dagnn.")
    if base == "conv":
        return "conv"
    if base in ("lrn", "normalize"):
        return "lrn"
    if base in _MCN_PASSIVE:
        return ""
    raise ValueError(f"{where} has type {kind!r}, which the CNN-F / AlexNet layout does not have")


def _dagnn_layers(root, path):
    params = {}
    for p in np.asarray(root["params"], dtype=object).ravel():
        p = _unwrap(p)
        pname = _mat_str(_mat_field(p, "name"))
        if not pname:
            raise ValueError(f"{path}: a 'params' entry has no name: not a DagNN model")
        params[pname] = _mat_field(p, "value")
    layers = []
    for i, layer in enumerate(np.asarray(root["layers"], dtype=object).ravel()):
        layer = _unwrap(layer)
        if not hasattr(layer, "_fieldnames") or "block" not in layer._fieldnames:
            raise ValueError(f"{path}: 'layers' entry {i + 1} is not a DagNN layer struct (it "
                             f"needs name, type, inputs, outputs, params, block)")
        layers.append({"name": _mat_str(layer.name), "type": _mat_str(layer.type),
                       "inputs": _mat_strings(layer.inputs),
                       "outputs": _mat_strings(layer.outputs),
                       "params": _mat_strings(layer.params), "block": _unwrap(layer.block)})
    convs, lrns = [], []
    for layer in _topological(layers, path):
        where = f"{path}: layer {layer['name']!r}"
        role, block = _layer_role(layer["type"], where), layer["block"]
        if role == "conv":
            missing = [p for p in layer["params"] if p not in params]
            if not layer["params"] or missing:
                raise ValueError(f"{where} refers to parameter(s) {missing or '(none)'} that are "
                                 f"not in 'params'")
            values = [params[p] for p in layer["params"]]
            convs.append(_conv_from_mat(layer["name"], values[0],
                                        values[1] if len(values) > 1 else None,
                                        _mat_field(block, "stride"), _mat_field(block, "pad"),
                                        where))
        elif role == "lrn":
            lrns.append(_lrn_param(_mat_field(block, "param"), where))
    return convs, lrns


def _topological(layers, path):
    """DagNN layers in execution order (each after the layers producing its inputs)."""
    produced = {v for layer in layers for v in layer["outputs"]}
    available = {v for layer in layers for v in layer["inputs"]} - produced
    order, remaining = [], list(layers)
    while remaining:
        ready = next((layer for layer in remaining
                      if all(v in available for v in layer["inputs"])), None)
        if ready is None:
            raise ValueError(f"{path}: the DagNN layers {[l['name'] for l in remaining][:5]} "
                             f"wait for inputs no layer produces (a cycle)")
        order.append(ready)
        remaining.remove(ready)
        available.update(ready["outputs"])
    return order


def _matconvnet_normalization(root, path):
    """``meta.normalization`` (or the older top-level ``normalization``) as an
    :class:`InputNormalization` (0-255 RGB pixels minus ``averageImage``); None without one."""
    norm = _mat_field(root.get("meta"), "normalization") if root.get("meta") is not None else None
    if norm is None:
        norm = root.get("normalization")
    avg = None if norm is None else _mat_field(norm, "averageImage")
    if avg is None or np.asarray(_unwrap(avg)).size == 0:
        log.warning("%s stores no normalization.averageImage: the input normalisation of these "
                    "weights is unknown (the method's own standardisation applies)", path)
        return None
    avg = _mat_array(avg, f"{path}: normalization.averageImage")
    if avg.size == 3:
        mean = avg.reshape(3)
    elif avg.ndim == 3 and avg.shape[2] == 3:
        mean = avg.transpose(2, 0, 1)                      # H x W x 3 -> 3 x H x W
    else:
        raise ValueError(f"{path}: normalization.averageImage has shape {avg.shape}; expected "
                         f"H x W x 3 or 3 values")
    size = resize = None
    image_size = _mat_field(norm, "imageSize")
    if image_size is not None and np.asarray(_unwrap(image_size)).size >= 2:
        size = tuple(int(v) for v in np.asarray(_unwrap(image_size)).reshape(-1)[:2])
        border = _mat_field(norm, "border")
        if border is not None and np.asarray(_unwrap(border)).size >= 1:
            resize = size[0] + int(np.asarray(_unwrap(border)).reshape(-1)[0])
    return InputNormalization(mean, 1.0, scale=255.0, size=size, resize=resize,
                              source="matconvnet")


# ------------------------------------------------------------------------- loading
def _load_five_conv(net: nn.Module, weights: PretrainedWeights) -> list[str]:
    """conv1-conv5, fc6, fc7 of a MatConvNet / Caffe AlexNet or CNN-F into CNNF / AlexNet."""
    path, layers = weights.path, weights.layers
    if not isinstance(net, _FiveConvNet):
        kind = getattr(net, "spec", {}).get("kind", type(net).__name__)
        raise ValueError(f"{path} holds {weights.source} CNN-F / AlexNet weights, which load "
                         f"into the 'cnnf' or 'alexnet' backbone, not {kind!r}")
    names = [layer.name for layer in layers]
    if len(layers) < 7:
        raise ValueError(f"{path} has {len(layers)} conv / fc layer(s) {names}; the "
                         f"{type(net).__name__} layout needs 7 (conv1-conv5, fc6, fc7) plus "
                         f"fc8 (replaced): missing layers")
    if len(layers) > 8:
        raise ValueError(f"{path} has {len(layers)} conv / fc layers {names}: not a CNN-F / "
                         f"AlexNet (8: conv1-conv5, fc6, fc7, fc8)")
    if weights.source == "matconvnet" and weights.lrn_count != 2:
        raise ValueError(f"{path} has {weights.lrn_count} LRN layer(s); CNN-F / AlexNet have 2 "
                         f"(after conv1 and conv2): not this layout")
    state = {}
    for target, layer in zip(_FIVE_CONV_LAYERS[:7], layers):
        mod = getattr(net, target)
        where = (f"layer {layer.name!r} of {path} ({weights.source}, stored "
                 f"{'x'.join(map(str, layer.file_shape))})")
        if isinstance(mod, nn.Linear):
            w = layer.weight.reshape(layer.weight.shape[0], -1)
            if tuple(w.shape) != tuple(mod.weight.shape):
                raise ValueError(f"{where}: weights {tuple(w.shape)} (Cout x Cin) do not fit "
                                 f"{target} of {type(net).__name__}, which expects "
                                 f"{tuple(mod.weight.shape)}")
            w = torch.from_numpy(np.ascontiguousarray(w))
        else:
            w = _conv_weight(layer, mod, target, where, type(net).__name__)
        if target == "conv1" and weights.source == "caffe":
            w = w.flip(1)                        # Caffe's BGR input channels -> RGB
        state[f"{target}.weight"] = w
        if layer.bias is not None:
            if layer.bias.size != mod.bias.numel():
                raise ValueError(f"{where}: bias has {layer.bias.size} entries, {target} needs "
                                 f"{mod.bias.numel()}")
            state[f"{target}.bias"] = torch.from_numpy(layer.bias.copy())
    with torch.no_grad():
        own = net.state_dict()
        for k, v in state.items():
            own[k].copy_(v)
    if weights.lrn is not None:
        net.set_lrn(weights.lrn)
    return list(state)


def _conv_weight(layer, conv: nn.Conv2d, target, where, net_name) -> torch.Tensor:
    """The file's filters as ``conv``'s weight: as they are, or a grouped bank made dense."""
    w = torch.from_numpy(layer.weight)
    expected = tuple(conv.weight.shape)           # (Cout, Cin / groups, kh, kw)
    if layer.stride is not None and layer.stride != tuple(conv.stride):
        raise ValueError(f"{where}: stride {layer.stride} differs from {target}'s "
                         f"{tuple(conv.stride)}: not a {net_name}")
    p = conv.padding
    if layer.pad is not None and layer.pad != (p[0], p[0], p[1], p[1]):
        raise ValueError(f"{where}: padding {layer.pad} differs from {target}'s {p[0]}: not a "
                         f"{net_name}")
    if tuple(w.shape) == expected:
        return w
    in_full = conv.in_channels
    if (w.ndim == 4 and w.shape[0] == expected[0] and tuple(w.shape[2:]) == expected[2:]
            and conv.groups == 1 and w.shape[1] < in_full and in_full % w.shape[1] == 0
            and w.shape[0] % (in_full // w.shape[1]) == 0):
        groups = in_full // w.shape[1]
        log.info("%s: %d-group filters %s made dense (block-diagonal) for %s", where, groups,
                 tuple(w.shape), target)
        return grouped_to_dense(w, groups)
    hint = ""
    if conv.groups > 1 and w.ndim == 4 and w.shape[1] == in_full:
        hint = f" (the file's {target} is ungrouped; build the network with groups=1)"
    raise ValueError(f"{where}: weights {tuple(w.shape)} (Cout x Cin x H x W) do not fit "
                     f"{target} of {net_name}, which expects {expected}{hint}")


def _load_torchvision(net, state, model, path) -> list[str]:
    spec_kind = getattr(net, "spec", {}).get("kind")
    if isinstance(net, _FiveConvNet) and model == "alexnet":
        rows = []
        for tv_name, ours in _TV_ALEXNET_NAMES.items():
            mod = getattr(net, ours)
            rows.append(f"{tv_name} {tuple(state[tv_name + '.weight'].shape)} vs {ours} "
                        f"{tuple(mod.weight.shape)}")
        raise ValueError(f"{path} holds torchvision AlexNet weights (conv widths "
                         f"64/192/384/256/256, no LRN, conv1 padded by 2), which do not fit "
                         f"{type(net).__name__} ({'/'.join(str(c) for c in net.CHANNELS)}): "
                         f"{'; '.join(rows)}. Use the 'tv_alexnet' backbone for these weights")
    if spec_kind != f"tv_{model}":
        raise ValueError(f"{path} holds torchvision {model} weights, which load into the "
                         f"'tv_{model}' backbone, not {spec_kind or type(net).__name__!r}")
    own = net.state_dict()
    replaced = output_layer_name(net)
    is_out = lambda k: k.startswith(replaced + ".")   # noqa: E731
    missing = [k for k in own if k not in state and not is_out(k)
               and not k.endswith("num_batches_tracked")]   # not in older torchvision files
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in state if k in own and not is_out(k)
                  and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        raise ValueError(f"{path} does not fit torchvision {model}: missing layers "
                         f"{missing[:6]}, unexpected keys {unexpected[:6]}, shape mismatch "
                         f"{mismatched[:6]}")
    loaded = {k: v for k, v in state.items() if not is_out(k)}
    net.load_state_dict(loaded, strict=False)
    return list(loaded)


def _in_layers(key: str, layers) -> bool:
    return any(key == p or key.startswith(p + ".") for p in layers)


def _load_state_dict(module, state, path, strict=False, replaced=None) -> list[str]:
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


def load_state_dict_file(module: nn.Module, path, strict: bool = False,
                         replaced=None) -> list[str]:
    """Load a PyTorch ``state_dict`` saved at ``path`` into ``module`` by name; return the
    loaded keys.

    The file is read with ``torch.load(path, map_location="cpu", weights_only=True)`` (no
    arbitrary code). A checkpoint dict with a ``"state_dict"`` entry is accepted.

    ``strict=False``: tensors whose name is not in the network are ignored and the network's
    tensors missing from the file keep their values; a tensor whose name matches but whose
    shape does not is an error naming the layer, except in the ``replaced`` layers (default:
    the network's output layer, :func:`output_layer_name`, e.g. a 1,000-class fc8 in place of
    the hash layer), whose tensors are skipped. A file of which no tensor matches the network
    is an error (it is not weights for this architecture). ``strict=True``: any missing,
    unexpected or mis-shaped key is an error. Unreadable files raise a ``ValueError`` naming
    the file. (For torchvision / Caffe files use :func:`load_weights`, which knows their
    layouts and checks that every layer is there.)
    """
    path = _check_file(path)
    return _load_state_dict(module, _read_torch_state(path), path, strict, replaced)


def load_vggf_mat(cnnf_module: CNNF, path) -> list[str]:
    """Load MatConvNet ``imagenet-vgg-f.mat`` (SimpleNN or DagNN) into a :class:`CNNF`; return
    the loaded layer names (conv1 .. fc7; fc8 is the replaced layer). See :func:`read_weights`
    for the layouts; the file's LRN constants replace the network's."""
    if not isinstance(cnnf_module, CNNF):
        raise TypeError(f"load_vggf_mat loads into a CNNF module, got {type(cnnf_module).__name__}")
    keys = read_weights(path, "matconvnet").load_into(cnnf_module)
    return list(dict.fromkeys(k.split(".")[0] for k in keys))

