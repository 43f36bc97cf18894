"""Checks of a model's learned state against its parameters (run when a model file is loaded).

Each estimator class declares the shapes of its learned arrays in ``state_shapes``:

    state_shapes = {"latent_": ("n", "r"), "projections_[v]": ("q{v}", "r"),
                    "kernels_[v]": ("d{v}", "q{v}"), "alpha_history_[*]": ("V",),
                    "input_kernels_[v]?": ("d{v}", "q{v}")}

* a key ``name`` is one array; ``name[v]`` a list with one entry per modality (``{v}`` in a
  dimension is the modality's index); ``name[*]`` a list of any length; ``name[2]`` one entry
  of a per-modality list; a trailing ``?`` makes the attribute optional and lets list entries
  be None; a dimension may also be an integer, or a tuple of the integers allowed;
* shapes that depend on the fitted model (e.g. a deep method's per-modality input
  standardisation, ``(d,)`` for vectors and ``(C, 1, 1)`` for images) come from the
  estimator's ``_state_shapes()`` method, which returns ``state_shapes`` by default;
* an entry that is a feature map (``RBFAnchorFeatures``, ``CenteredFeatures``) has the
  "shape" ``(n_features_in, n_features_out)``;
* dimension names: ``r`` is ``n_bits`` (the parameter), ``c`` ``n_classes_``, ``V`` the number
  of modalities, ``d{v}`` the feature count of modality v (``n_features_[v]``, vector
  modalities); any other name is bound by the first array that uses it and must agree in all
  the others (``n``, ``q0``, ...).

The learned codes ``codes_`` are checked for every method: ``(n, r)`` (or one ``(n_v, r)``
matrix per modality) int8 holding only -1 and +1. Every floating-point array of the state must
be finite (except the diagnostics a class lists in ``diagnostic_state``). Errors are
ValueErrors that name the field, the shape found and the shape expected.
"""
from __future__ import annotations

import re

import numpy as np

_KEY = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*?)(?P<list>\[v\]|\[\*\]|\[\d+\])?"
                  r"(?P<opt>\?)?$")
_MISSING = object()


class _Dims:
    """Dimension names bound to values, and where each value came from (for the messages)."""

    def __init__(self):
        self.value, self.source = {}, {}

    def bind(self, name, value, source):
        self.value[name], self.source[name] = int(value), source

    def check(self, field, shape, dims):
        if len(shape) != len(dims):
            raise ValueError(f"{field} has shape {tuple(shape)}; expected {len(dims)} "
                             f"dimensions {tuple(dims)}")
        for axis, (size, dim) in enumerate(zip(shape, dims)):
            if isinstance(dim, (int, tuple)):          # a size, or the sizes allowed
                if size not in (dim if isinstance(dim, tuple) else (dim,)):
                    raise ValueError(f"{field} has shape {tuple(shape)} but {tuple(dims)} is "
                                     f"expected")
            elif dim not in self.value:
                self.bind(dim, size, f"dimension {axis} of {field}")
            elif self.value[dim] != size:
                want = tuple(self.value.get(d, d) for d in dims)
                raise ValueError(f"{field} has shape {tuple(shape)} but {want} is expected: "
                                 f"its dimension {axis} must be {dim} = {self.value[dim]} "
                                 f"({self.source[dim]})")


def _check_header_fields(obj) -> _Dims:
    from ._validation import check_n_bits

    dims = _Dims()
    try:
        r = check_n_bits(obj.n_bits)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"parameter n_bits: {exc}") from None
    dims.bind("r", r, f"n_bits = {r}, the model's parameter")
    names = getattr(obj, "modality_names_", _MISSING)
    if (not isinstance(names, list) or not all(isinstance(s, str) for s in names)
            or len(set(names)) != len(names)
            or not obj.min_views <= len(names) <= obj.max_views):
        raise ValueError(f"modality_names_ must be a list of {obj.min_views}"
                         f"{'' if obj.min_views == obj.max_views else f'-{obj.max_views}'} "
                         f"distinct names, got {names if names is not _MISSING else 'nothing'}")
    V = len(names)
    dims.bind("V", V, f"{V} modalities in modality_names_")
    feats = getattr(obj, "n_features_", _MISSING)
    if (not isinstance(feats, list) or len(feats) != V
            or not all(isinstance(f, list) and f and all(isinstance(x, int) and not
                                                         isinstance(x, bool) and x > 0
                                                         for x in f) for f in feats)):
        raise ValueError(f"n_features_ must give the positive per-sample shape of each of the "
                         f"{V} modalities, got {feats if feats is not _MISSING else 'nothing'}")
    for v, f in enumerate(feats):
        if len(f) == 1:
            dims.bind(f"d{v}", f[0], f"n_features_[{v}] = {f[0]}")
    c = getattr(obj, "n_classes_", _MISSING)
    if not isinstance(c, int) or isinstance(c, bool) or c < 1:
        raise ValueError(f"n_classes_ must be a positive integer, got "
                         f"{c if c is not _MISSING else 'nothing'}")
    dims.bind("c", c, f"n_classes_ = {c}")
    return dims


def _shape_of(item):
    """An array's shape, or a feature map's (n_features_in, n_features_out)."""
    if isinstance(item, np.ndarray):
        return item.shape
    feature_dims = getattr(item, "feature_dims", None)
    if feature_dims is not None:
        return feature_dims()
    return None


def _items(obj, key: str, V: int):
    """``(field, item, v)`` of one spec key; None when an optional attribute is absent."""
    m = _KEY.match(key)
    if m is None:
        raise ValueError(f"bad state_shapes key {key!r}")  # a programming error
    name, kind, optional = m["name"], m["list"], bool(m["opt"])
    value = getattr(obj, name, _MISSING)
    if value is _MISSING or (value is None and optional):
        if optional:
            return []
        raise ValueError(f"the learned state {name} is missing")
    if kind is None:
        return [(name, value, None)]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list, got {type(value).__name__}")
    if kind != "[*]" and len(value) != V:
        raise ValueError(f"{name} must have one entry per modality ({V}), got {len(value)}")
    if kind not in ("[v]", "[*]"):                  # one entry, name[i]
        i = int(kind[1:-1])
        item = value[i]
        return [] if item is None and optional else [(f"{name}[{i}]", item, i)]
    out = []
    for i, item in enumerate(value):
        if item is None and optional:
            continue
        out.append((f"{name}[{i}]", item, i if kind == "[v]" else None))
    return out


def _check_codes(obj, dims: _Dims) -> None:
    codes = getattr(obj, "codes_", _MISSING)
    if codes is _MISSING or codes is None:
        raise ValueError("the learned state codes_ is missing")
    V = dims.value["V"]
    if isinstance(codes, (list, tuple)):
        if len(codes) != V:
            raise ValueError(f"codes_ must have one matrix per modality ({V}), got {len(codes)}")
        items = [(f"codes_[{v}]", B, (f"n{v}", "r")) for v, B in enumerate(codes)]
    else:
        items = [("codes_", codes, ("n", "r"))]
    for field, B, want in items:
        if not isinstance(B, np.ndarray) or B.dtype != np.int8:
            raise ValueError(f"{field} must be an int8 array of -1/+1 codes, got "
                             f"{type(B).__name__ if not isinstance(B, np.ndarray) else B.dtype}")
        dims.check(field, B.shape, want)
        bad = (B != 1) & (B != -1)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise ValueError(f"{field} must hold only -1 and +1, found {int(B[i, j])} at "
                             f"[{i}, {j}]")


def _float_arrays(field, value):
    """``(field, array)`` of every floating-point array inside a state value."""
    if isinstance(value, np.ndarray):
        if np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype,
                                                                    np.complexfloating):
            yield field, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _float_arrays(f"{field}[{i}]", item)
    elif isinstance(value, dict):
        for k, item in value.items():
            yield from _float_arrays(f"{field}[{k!r}]", item)
    elif hasattr(value, "get_state") and hasattr(value, "get_params"):
        for k, item in value.get_state().items():
            yield from _float_arrays(f"{field}.{k}", np.asarray(item))


def check_learned_state(obj) -> None:
    """ValueError naming the field when ``obj``'s learned state does not fit its parameters
    (``n_bits``), its modalities and classes, or the other arrays (see the module docstring),
    or holds a NaN / infinite value."""
    dims = _check_header_fields(obj)
    _check_codes(obj, dims)
    V = dims.value["V"]
    for key, want in obj._state_shapes().items():
        for field, item, v in _items(obj, key, V):
            shape = _shape_of(item)
            if shape is None:
                raise ValueError(f"{field} must be an array, got {type(item).__name__}")
            dims.check(field, shape, tuple(d.format(v=v) if isinstance(d, str) else d
                                           for d in want))
    skip = set(getattr(type(obj), "diagnostic_state", ()))
    for key, value in vars(obj).items():
        if not key.endswith("_") or key.startswith("_") or key in skip:
            continue
        for field, a in _float_arrays(key, value):
            bad = ~np.isfinite(a)
            if bad.any():
                where = tuple(int(i) for i in np.argwhere(bad)[0])
                raise ValueError(f"{field} holds {int(bad.sum())} NaN or infinite value(s) "
                                 f"(first at {where if where else 'the scalar'})")
