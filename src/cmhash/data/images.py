"""Lazy image sources: an ``(n, 3, H, W)`` image modality that is never one array in memory.

Images stay as stored (uint8 for files and the field's .mat / .h5 arrays) until a batch is
formed; only a batch is ever converted to float (:mod:`cmhash.deep._images`).

* :class:`ImageFileSource` -- image files (JPEG, PNG, ...) decoded with Pillow, converted to RGB
  (a manifest's ``image`` column, :mod:`cmhash.data.manifest`).
* :class:`H5ImageSource` -- a 4-D array inside an HDF5 / MATLAB v7.3 file, read in row batches
  with h5py. Layouts ``N x 3 x H x W``, ``N x H x W x 3`` and MATLAB's ``H x W x 3 x N`` (which
  h5py shows with the axes reversed) are recognised; no float copy is ever made.
* :class:`ArrayImageSource` -- an in-memory array of either layout (kept as it is: no copy).
* ``source[idx]`` (an index array, slice or boolean mask) is a lazy subset, and
  :func:`concat_image_sources` joins sources row-wise.

Every source carries an :class:`ImageTransform`: its geometry (resize, centre / random crop,
random horizontal flip) is applied to each item as it is read, its normalisation (pixel scale,
per-channel mean / std or a mean image) to a formed float batch. ``source.shape`` is
``(n, C, H, W)`` after the geometry, so the estimators' shape checks work unchanged.

Only NumPy is imported here; Pillow (decoding, resizing) and h5py are imported when used.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

__all__ = ["ImageTransform", "ImageSource", "ImageFileSource", "H5ImageSource",
           "ArrayImageSource", "concat_image_sources", "is_image_source", "detect_image_layout",
           "BACKBONE_INPUT", "IMAGE_LAYOUTS"]

#: (resize, crop) of the papers' backbones: images resized (shorter side) to the first number,
#: then centre-cropped (evaluation) or randomly cropped (training) to the second
BACKBONE_INPUT = {"cnnf": (256, 224), "alexnet": (256, 227)}

#: logical axis order of each layout (sample n, channel c, height h, width w); "hwcn" is
#: MATLAB's H x W x 3 x N
IMAGE_LAYOUTS = {"nchw": "nchw", "nhwc": "nhwc", "hwcn": "hwcn"}

_RESIZE_MODES = ("shorter", "square")


def _pil():
    try:
        from PIL import Image
    except ModuleNotFoundError as exc:  # pragma: no cover - Pillow is in cmhash[deep]
        raise ImportError("image files and resizing need Pillow: pip install 'cmhash[deep]'") \
            from exc
    return Image


def is_image_source(X: Any) -> bool:
    """True for the lazy image sources of this module (and their subsets)."""
    return bool(getattr(type(X), "_cmhash_image_source", False))


def _opt_int(value, name):
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < 1:
        raise ValueError(f"ImageTransform: {name} must be a positive integer or None, "
                         f"got {value!r}")
    return int(value)


def _opt_array(value, name):
    if value is None:
        return None
    a = np.array(value, dtype=np.float32)
    if a.ndim not in (1, 3) or a.size == 0 or not np.all(np.isfinite(a)):
        raise ValueError(f"ImageTransform: {name} must be one finite value per channel (C,) or "
                         f"a mean image (C, H, W), got shape {a.shape}")
    a.flags.writeable = False
    return a


# --------------------------------------------------------------------------------------------
# the transform
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class ImageTransform:
    """Geometry and normalisation of an image input.

    Geometry (per item, on the uint8 image, Pillow for resizing):

    * ``resize``: None (no resizing), or the shorter side is scaled to ``resize`` keeping the
      aspect ratio (``resize_mode="shorter"``), or the image to ``resize x resize``
      (``"square"``); bilinear, with Pillow's antialiasing. JPEG files are decoded at the
      smallest DCT scale that is still at least ``resize`` on both sides (Pillow's ``draft``).
    * ``size``: None (the image as it is), or a ``size x size`` crop: centred in evaluation,
      at a uniformly random place in training (``random_crop``).
    * ``random_flip``: in training, a horizontal flip with probability 1/2.

    Every random choice comes from a generator seeded by the caller
    (:func:`cmhash.deep._images.image_batches`: same seed, same batches).

    Normalisation (on a formed float batch): ``x = pixel * scale / 255`` (``scale`` 255: raw
    0-255 values; 1: values in [0, 1]), then ``(x - mean) / std`` with ``mean`` / ``std``
    given per channel ``(C,)`` or as an image ``(C, size, size)`` (e.g. MatConvNet's average
    image); None skips that step. :attr:`normalization_given` says whether a mean or std is
    set (the deep methods then do not standardise the images themselves).
    """

    size: int | None = None
    resize: int | None = None
    resize_mode: str = "shorter"
    random_crop: bool = True
    random_flip: bool = True
    mean: Any = None
    std: Any = None
    scale: float = 255.0

    def __post_init__(self):
        object.__setattr__(self, "size", _opt_int(self.size, "size"))
        object.__setattr__(self, "resize", _opt_int(self.resize, "resize"))
        if self.resize_mode not in _RESIZE_MODES:
            raise ValueError(f"ImageTransform: resize_mode must be one of {list(_RESIZE_MODES)}, "
                             f"got {self.resize_mode!r}")
        for flag in ("random_crop", "random_flip"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                raise ValueError(f"ImageTransform: {flag} must be True or False, got "
                                 f"{getattr(self, flag)!r}")
            object.__setattr__(self, flag, bool(getattr(self, flag)))
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float, np.number)) \
                or not np.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(f"ImageTransform: scale must be a positive number (255: pixels in "
                             f"0..255, 1: in [0, 1]), got {self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))
        mean, std = _opt_array(self.mean, "mean"), _opt_array(self.std, "std")
        if std is not None and np.any(std <= 0):
            raise ValueError(f"ImageTransform: std must be positive, got {std.ravel()[:6]}")
        for name, a in (("mean", mean), ("std", std)):
            if a is not None and a.ndim == 3 and self.size is not None \
                    and a.shape[1:] != (self.size, self.size):
                raise ValueError(f"ImageTransform: a {name} image must be (C, {self.size}, "
                                 f"{self.size}) for size={self.size}, got {a.shape}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def for_backbone(cls, kind: str, **kw) -> ImageTransform:
        """The papers' input geometry of a backbone (:data:`BACKBONE_INPUT`): CNN-F 224 and
        AlexNet 227, both cropped from images whose shorter side is resized to 256."""
        if kind not in BACKBONE_INPUT:
            raise ValueError(f"no input size known for backbone {kind!r}; known: "
                             f"{sorted(BACKBONE_INPUT)}")
        resize, size = BACKBONE_INPUT[kind]
        kw.setdefault("resize", resize)
        return cls(size=size, **kw)

    @classmethod
    def from_input_normalization(cls, norm, **kw) -> ImageTransform:
        """The geometry and normalisation of pretrained weights
        (:class:`cmhash.deep.normalization.InputNormalization`: ``size`` (H, W), ``resize``,
        ``mean``, ``std``, ``scale``): shorter side to ``resize`` then the ``size`` crop, or
        straight to ``size`` x ``size`` when ``resize`` is None. ``kw`` overrides fields."""
        size = None if norm.size is None else int(norm.size[0])
        if norm.size is not None and norm.size[0] != norm.size[1]:
            raise ValueError(f"only square network inputs are supported, got {norm.size}")
        mean = np.asarray(norm.mean)
        if mean.ndim == 3 and size is not None and mean.shape[1:] != (size, size):
            mean = mean.mean(axis=(1, 2))
        fields = {"size": size, "resize": norm.resize if norm.resize is not None else size,
                  "resize_mode": "shorter" if norm.resize is not None else "square",
                  "mean": mean, "std": np.asarray(norm.std), "scale": float(norm.scale)}
        fields.update(kw)
        return cls(**fields)

    def replace(self, **changes) -> ImageTransform:
        return dataclasses.replace(self, **changes)

    def with_normalization(self, mean=None, std=None, scale=None) -> ImageTransform:
        """The same geometry with another normalisation (``scale`` None: kept)."""
        return self.replace(mean=mean, std=std, scale=self.scale if scale is None else scale)

    def without_geometry(self) -> ImageTransform:
        """The same normalisation, images used as they are (no resize, crop or flip)."""
        return self.replace(size=None, resize=None, random_crop=False, random_flip=False)

    # ------------------------------------------------------------------ properties
    @property
    def has_geometry(self) -> bool:
        return self.size is not None or self.resize is not None

    @property
    def normalization_given(self) -> bool:
        return self.mean is not None or self.std is not None

    def output_shape(self, stored: tuple | None) -> tuple | None:
        """Per-item shape ``(C, H, W)`` after the geometry (``stored``: before it)."""
        if self.size is not None:
            c = stored[0] if stored is not None else 3
            return (int(c), self.size, self.size)
        if self.resize is not None:
            if self.resize_mode == "square":
                c = stored[0] if stored is not None else 3
                return (int(c), self.resize, self.resize)
            if stored is None:
                return None
            _, h, w = stored
            return (int(stored[0]),) + _shorter_side((w, h), self.resize)[::-1]
        return None if stored is None else tuple(int(s) for s in stored)

    # ------------------------------------------------------------------ geometry
    def target_size(self, w: int, h: int) -> tuple[int, int]:
        """``(width, height)`` after resizing an image of ``w x h``."""
        if self.resize is None:
            return (w, h)
        if self.resize_mode == "square":
            return (self.resize, self.resize)
        return _shorter_side((w, h), self.resize)

    def apply(self, image, *, train: bool = False, rng: np.random.Generator | None = None,
              what: str = "image") -> np.ndarray:
        """The geometry applied to one image: a PIL image or a ``(C, H, W)`` array -> a
        C-contiguous ``(C, H', W')`` array of the image's dtype. ``rng`` is needed when
        ``train`` and a random crop or flip is on."""
        arr = self._resized(image, what)
        c, h, w = arr.shape
        if self.size is not None:
            s = self.size
            if h < s or w < s:
                raise ValueError(f"{what} is {h} x {w} after resizing, smaller than the crop "
                                 f"size {s} (set ImageTransform(resize=...) >= {s})")
            if train and self.random_crop:
                top, left = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            else:
                top, left = (h - s) // 2, (w - s) // 2
            arr = arr[:, top:top + s, left:left + s]
        if train and self.random_flip and rng.random() < 0.5:
            arr = arr[:, :, ::-1]
        return np.ascontiguousarray(arr)

    def _resized(self, image, what: str) -> np.ndarray:
        Image = None
        if not isinstance(image, np.ndarray):          # a PIL image (files)
            Image = _pil()
            if self.resize is not None:
                size = self.target_size(*image.size)
                if size != image.size:
                    image = image.resize(size, Image.Resampling.BILINEAR)
            arr = np.asarray(image)
            arr = arr[:, :, None] if arr.ndim == 2 else arr
            return arr.transpose(2, 0, 1)
        if self.resize is None:
            return image
        c, h, w = image.shape
        size = self.target_size(w, h)
        if size == (w, h):
            return image
        if image.dtype != np.uint8:
            raise ValueError(f"{what}: resizing needs uint8 images, got {image.dtype} (resize "
                             f"float images before, or use ImageTransform(resize=None))")
        Image = _pil()
        planes = [np.asarray(Image.fromarray(np.ascontiguousarray(image[k])).resize(
            size, Image.Resampling.BILINEAR)) for k in range(c)]
        return np.stack(planes)

    # ------------------------------------------------------------------ normalisation
    def normalize(self, x: np.ndarray) -> np.ndarray:
        """The normalisation of a float batch ``(b, C, H, W)`` in NumPy (float32) -- the
        reference for the torch version in :mod:`cmhash.deep._images`."""
        x = np.asarray(x, dtype=np.float32)
        if self.scale != 255.0:
            x = x * np.float32(self.scale / 255.0)
        if self.mean is not None:
            x = x - self._broadcast(self.mean)
        if self.std is not None:
            x = x / self._broadcast(self.std)
        return x

    @staticmethod
    def _broadcast(a: np.ndarray) -> np.ndarray:
        return a.reshape(1, -1, 1, 1) if a.ndim == 1 else a[None]

    # ------------------------------------------------------------------ persistence
    def get_params(self) -> dict:
        return {"size": self.size, "resize": self.resize, "resize_mode": self.resize_mode,
                "random_crop": self.random_crop, "random_flip": self.random_flip,
                "scale": self.scale}

    def get_state(self) -> dict:
        return {k: np.asarray(getattr(self, k)) for k in ("mean", "std")
                if getattr(self, k) is not None}

    @classmethod
    def from_state(cls, params: dict, state: dict) -> ImageTransform:
        return cls(**params, mean=state.get("mean"), std=state.get("std"))

    def __repr__(self):
        parts = [f"{k}={v!r}" for k, v in self.get_params().items()]
        for k in ("mean", "std"):
            a = getattr(self, k)
            if a is not None:
                parts.append(f"{k}={a.tolist() if a.ndim == 1 else f'<image {a.shape}>'}")
        return f"ImageTransform({', '.join(parts)})"

    def __eq__(self, other):
        if not isinstance(other, ImageTransform):
            return NotImplemented
        return self.get_params() == other.get_params() and all(
            (a is None and b is None) or (a is not None and b is not None
                                          and np.array_equal(a, b))
            for a, b in ((self.mean, other.mean), (self.std, other.std)))

    __hash__ = None


def _shorter_side(size: tuple[int, int], resize: int) -> tuple[int, int]:
    """``(w, h)`` scaled so that the shorter side is exactly ``resize``."""
    w, h = size
    if w <= h:
        return (resize, max(resize, int(round(h * resize / w))))
    return (max(resize, int(round(w * resize / h))), resize)


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------
class ImageSource:
    """Base of the lazy image sources (see the module docstring).

    Subclasses implement ``_n_base()``, ``_load(positions)`` (a list of PIL images or
    ``(C, H, W)`` arrays for sorted distinct ``positions`` of the underlying storage),
    ``_stored_item_shape()`` (``(C, H, W)`` or None when it varies / is unknown) and
    ``_describe(position)`` (for error messages).
    """

    _cmhash_image_source = True
    ndim = 4

    def __init__(self, transform: ImageTransform | None = None):
        if transform is not None and not isinstance(transform, ImageTransform):
            raise TypeError(f"transform must be an ImageTransform or None, got "
                            f"{type(transform).__name__}")
        self._transform = transform if transform is not None else ImageTransform()
        self._positions: np.ndarray | None = None   # a subset of the storage rows
        self._probe_shape: tuple | None = None

    # -- to implement
    def _n_base(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load(self, positions: np.ndarray) -> list:  # pragma: no cover - abstract
        raise NotImplementedError

    def _stored_item_shape(self) -> tuple | None:
        return None

    def _describe(self, position: int) -> str:
        return f"image {position}"

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    # -- sizes
    def __len__(self) -> int:
        return self._n_base() if self._positions is None else int(self._positions.size)

    @property
    def transform(self) -> ImageTransform:
        return self._transform

    def positions(self) -> np.ndarray:
        """Storage rows of this source's items (int64)."""
        if self._positions is None:
            return np.arange(self._n_base(), dtype=np.int64)
        return self._positions

    def _position(self, i: int) -> int:
        return int(i) if self._positions is None else int(self._positions[int(i)])

    @property
    def item_shape(self) -> tuple:
        """``(C, H, W)`` of every item after the geometry."""
        stored = self._stored_item_shape()
        shape = self._transform.output_shape(stored)
        if shape is None:   # varying / unknown stored size and a geometry that keeps it
            if self._probe_shape is None:
                if len(self) == 0:
                    return (3, 0, 0)
                self._probe_shape = self._read_one(0).shape
            shape = self._transform.output_shape(self._probe_shape)
        return tuple(int(s) for s in shape)

    @property
    def shape(self) -> tuple:
        """``(n, C, H, W)`` after the geometry."""
        return (len(self),) + self.item_shape

    # -- copies
    def _copy(self) -> ImageSource:
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def with_transform(self, transform: ImageTransform) -> ImageSource:
        """The same images with another transform (nothing is read or copied)."""
        if not isinstance(transform, ImageTransform):
            raise TypeError(f"transform must be an ImageTransform, got "
                            f"{type(transform).__name__}")
        new = self._copy()
        new._transform = transform
        return new

    def subset(self, idx) -> ImageSource:
        """Items ``idx`` (int array, slice or boolean mask) as a lazy source."""
        n = len(self)
        if isinstance(idx, slice):
            rel = np.arange(n, dtype=np.int64)[idx]
        else:
            a = np.asarray(idx)
            if a.dtype == bool:
                if a.shape != (n,):
                    raise IndexError(f"boolean mask of shape {a.shape} for {n} images")
                rel = np.flatnonzero(a).astype(np.int64)
            elif a.size == 0:
                rel = np.zeros(0, dtype=np.int64)
            elif a.dtype.kind in "iu":
                rel = a.reshape(-1).astype(np.int64)
                if rel.min() < -n or rel.max() >= n:
                    raise IndexError(f"image index out of range for {n} images "
                                     f"(min {int(rel.min())}, max {int(rel.max())})")
                rel = np.where(rel < 0, rel + n, rel)
            else:
                raise IndexError(f"images are indexed by integers, slices or boolean masks, "
                                 f"got dtype {a.dtype}")
        new = self._copy()
        new._positions = rel if self._positions is None else self._positions[rel]
        if new._positions.size and new._positions.size == self._n_base() and \
                np.array_equal(new._positions, np.arange(self._n_base())):
            new._positions = None
        return new

    def __getitem__(self, key):
        """``source[i]``: item i after the (evaluation) geometry; ``source[idx]`` (array,
        slice, mask): a lazy subset."""
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            n = len(self)
            if not -n <= key < n:
                raise IndexError(f"image index {key} out of range for {n} images")
            return self.items(np.array([key % n]))[0]
        return self.subset(key)

    # -- reading
    def _read_one(self, i: int) -> np.ndarray:
        """Item ``i`` as stored (no geometry), ``(C, H, W)``."""
        item = self._load(np.array([self._position(i)]))[0]
        return ImageTransform().apply(item, what=self._describe(self._position(i)))

    def read(self, i: int) -> np.ndarray:
        """Item ``i`` as stored (decoded, no geometry), a ``(C, H, W)`` array."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"image index {i} out of range for {n} images")
        return self._read_one(int(i) % n)

    def _gather(self, idx: np.ndarray) -> tuple[list, np.ndarray]:
        """Stored items of rows ``idx`` (in that order) and their storage positions."""
        pos = self.positions()[np.asarray(idx, dtype=np.int64)]
        uniq, inv = np.unique(pos, return_inverse=True)
        loaded = self._load(uniq)
        return [loaded[k] for k in inv.reshape(-1)], pos

    def items(self, idx, *, train: bool = False, rng: np.random.Generator | None = None,
              expect: tuple | None = None) -> np.ndarray:
        """Rows ``idx`` after the geometry, stacked ``(b, C, H, W)`` in the stored dtype.

        ``train`` applies the random crop / flip with ``rng``; every item must have the shape
        ``expect`` (default :attr:`item_shape`), else a ValueError names the image.
        """
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        expect = self.item_shape if expect is None else tuple(expect)
        if train and rng is None and (self._transform.random_crop or self._transform.random_flip):
            raise ValueError("items(train=True) needs a seeded rng for the random crop / flip")
        fast = self._fast_items(idx, train)
        if fast is not None:
            return fast
        loaded, pos = self._gather(idx)
        out = np.empty((idx.size,) + expect, dtype=self.dtype)
        for k, (item, p) in enumerate(zip(loaded, pos)):
            what = self._describe(int(p))
            arr = self._transform.apply(item, train=train, rng=rng, what=what)
            if arr.shape != expect:
                raise ValueError(f"{what} has shape {arr.shape} after the transform but the "
                                 f"images have {expect}: images of different sizes need an "
                                 f"ImageTransform with size (and resize) set")
            out[k] = arr
        return out

    def _fast_items(self, idx, train):
        return None

    def __array__(self, dtype=None, copy=None):
        raise TypeError(f"a {type(self).__name__} is not converted to an array implicitly "
                        f"(that would decode every image); use .to_array() for small sets")

    def __iter__(self):
        raise TypeError(f"iterate over a {type(self).__name__} by batches (items(idx)), not "
                        f"item by item")

    def to_array(self) -> np.ndarray:
        """Every item after the evaluation geometry, as one array (small sets, tests)."""
        return self.items(np.arange(len(self)))

    def __repr__(self):
        return (f"{type(self).__name__}(n={len(self)}, shape={self.shape}, "
                f"transform={self._transform!r})")


class ImageFileSource(ImageSource):
    """Image files, decoded with Pillow and converted to RGB when read.

    ``paths``: one file per item; ``origins`` (optional, one string per item, e.g.
    ``"images.csv line 12"``) is added to every error message about that item. A file that
    Pillow cannot read is a ValueError naming the file (and its origin).
    """

    def __init__(self, paths, *, origins=None, transform: ImageTransform | None = None):
        super().__init__(transform)
        self._paths = [os.fspath(p) for p in paths]
        if origins is not None:
            origins = [str(o) for o in origins]
            if len(origins) != len(self._paths):
                raise ValueError(f"origins has {len(origins)} entries for {len(self._paths)} "
                                 f"paths")
        self._origins = origins

    @property
    def paths(self) -> list[str]:
        return [self._paths[p] for p in self.positions()]

    def _n_base(self) -> int:
        return len(self._paths)

    def _describe(self, position: int) -> str:
        where = f" ({self._origins[position]})" if self._origins is not None else ""
        return f"image file {self._paths[position]!r}{where}"

    def _open(self, position: int, draft: bool):
        """The decoded RGB image of storage row ``position`` (a PIL image). ``draft``: let
        the JPEG decoder scale down by a power of two while staying at least the resize
        target on both sides (much faster for large photos)."""
        Image = _pil()
        t = self._transform
        try:
            with Image.open(self._paths[position]) as im:
                if draft and t.resize is not None:
                    target = min(t.target_size(*im.size))
                    im.draft("RGB", (target, target))
                return im.convert("RGB")
        except FileNotFoundError:
            raise FileNotFoundError(f"{self._describe(position)} not found") from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ValueError(f"cannot read {self._describe(position)}: "
                             f"{type(exc).__name__}: {exc}") from None

    def _load(self, positions):
        return [self._open(int(p), draft=True) for p in positions]

    def _read_one(self, i):
        p = self._position(i)
        return ImageTransform().apply(self._open(p, draft=False), what=self._describe(p))


def detect_image_layout(shape: tuple, *, n: int | None = None, channels=(3,)) -> str:
    """``"nchw"``, ``"nhwc"`` or ``"hwcn"`` for a 4-D array of ``shape`` (logical order: as
    NumPy / MATLAB write it). The channel axis must have a size in ``channels``; ``n`` (the
    number of samples, when known) must be the size of the sample axis. Ambiguous or
    unrecognised shapes are a ValueError asking for ``layout=``."""
    if len(shape) != 4:
        raise ValueError(f"an image array must be 4-D, got shape {tuple(shape)}")
    found = []
    for name in ("nchw", "nhwc", "hwcn"):
        c_axis, n_axis = name.index("c"), name.index("n")
        if shape[c_axis] in channels and (n is None or shape[n_axis] == n):
            found.append(name)
    if len(found) > 1 and n is None:
        # a sample axis of size 3 is unlikely: prefer layouts whose sample axis is not 3
        found = [f for f in found if shape[f.index("n")] not in channels] or found
    if len(found) != 1:
        why = "matches several layouts" if found else "matches no layout"
        raise ValueError(f"image array of shape {tuple(shape)} {why} of N x 3 x H x W, "
                         f"N x H x W x 3 and (MATLAB) H x W x 3 x N"
                         f"{'' if n is None else f' with N = {n}'}; pass layout=")
    return found[0]


def _layout_perm(layout: str) -> tuple[int, int, int, int]:
    """Axes of an array in ``layout`` taken in the order (n, c, h, w)."""
    return tuple(layout.index(k) for k in "nchw")


def _check_layout(layout: str) -> str:
    if layout not in IMAGE_LAYOUTS:
        raise ValueError(f"layout must be 'auto' or one of {sorted(IMAGE_LAYOUTS)}, got "
                         f"{layout!r}")
    return layout


class ArrayImageSource(ImageSource):
    """An in-memory image array, ``N x C x H x W`` or ``N x H x W x C`` (``layout="auto"``:
    the axis of size 3 is the channel axis). The array is kept as it is (a view, any dtype):
    items are gathered per batch."""

    def __init__(self, array, *, layout: str = "auto", transform: ImageTransform | None = None):
        super().__init__(transform)
        a = np.asarray(array)
        if a.ndim != 4:
            raise ValueError(f"ArrayImageSource needs a 4-D array, got shape {a.shape}")
        layout = detect_image_layout(a.shape) if layout == "auto" else _check_layout(layout)
        if layout == "hwcn":
            raise ValueError("an in-memory H x W x C x N array: pass np.moveaxis(a, -1, 0) "
                             "(a view) with layout='nhwc'")
        self.layout = layout
        self._array = a if layout == "nchw" else a.transpose(_layout_perm(layout))

    @property
    def dtype(self):
        return self._array.dtype

    def _n_base(self):
        return int(self._array.shape[0])

    def _stored_item_shape(self):
        return tuple(int(s) for s in self._array.shape[1:])

    def _load(self, positions):
        return list(self._array[positions])

    def _fast_items(self, idx, train):
        t = self._transform
        if t.has_geometry or (train and t.random_flip):
            return None
        pos = self.positions()[idx]
        return np.ascontiguousarray(self._array[pos])


class H5ImageSource(ImageSource):
    """A 4-D image array inside an HDF5 file (``.h5`` or MATLAB v7.3 ``.mat``), read lazily.

    ``key``: the dataset's path in the file. ``layout="auto"`` detects ``N x 3 x H x W``,
    ``N x H x W x 3`` or MATLAB's ``H x W x 3 x N`` (``n``, the number of samples when known,
    settles ambiguous shapes). For a MATLAB file (``matlab=None``: detected from the file's
    ``MATLAB`` header or the dataset's ``MATLAB_class`` attribute) the layout is the MATLAB
    one: h5py shows such arrays with the axes reversed, and that is undone per batch.
    Each batch reads contiguous runs of rows with h5py slices (only those rows are read);
    the file is opened once per process (worker processes reopen it).
    """

    def __init__(self, path, key: str, *, layout: str = "auto", n: int | None = None,
                 matlab: bool | None = None, transform: ImageTransform | None = None):
        super().__init__(transform)
        import h5py

        self.path = os.fspath(path)
        self.key = str(key)
        self._handle = None
        self._pid = None
        try:
            with h5py.File(self.path, "r") as f:
                if self.key not in f or not isinstance(f[self.key], h5py.Dataset):
                    raise ValueError(f"{self.path}: no dataset {self.key!r}")
                ds = f[self.key]
                h5shape = tuple(int(s) for s in ds.shape)
                self._dtype = np.dtype(ds.dtype)
                mcls = ds.attrs.get("MATLAB_class", None)
        except OSError as exc:
            raise ValueError(f"{self.path} is not a readable HDF5 file ({exc})") from exc
        if self._dtype.kind not in "biuf":
            raise ValueError(f"{self.path}:{self.key} is not a numeric array ({self._dtype})")
        if matlab is None:
            matlab = mcls is not None or _has_matlab_header(self.path)
        self.matlab = bool(matlab)
        logical = h5shape[::-1] if self.matlab else h5shape
        self.layout = (detect_image_layout(logical, n=n) if layout == "auto"
                       else _check_layout(layout))
        # h5 axis of each logical axis; then the (n, c, h, w) axes in the h5 array
        h5_axis = [3 - k for k in range(4)] if self.matlab else list(range(4))
        self._axes = tuple(h5_axis[self.layout.index(k)] for k in "nchw")
        self._h5shape = h5shape

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"] = None
        state["_pid"] = None
        return state

    def _copy(self):
        new = super()._copy()
        new._handle, new._pid = None, None
        return new

    def _dataset(self):
        if self._handle is None or self._pid != os.getpid():
            import h5py

            self._handle = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._handle[self.key]

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None

    @property
    def dtype(self):
        return self._dtype

    def _n_base(self):
        return self._h5shape[self._axes[0]]

    def _stored_item_shape(self):
        return tuple(self._h5shape[a] for a in self._axes[1:])

    def _describe(self, position):
        return f"image {position} of {self.path}:{self.key}"

    def _read_rows(self, positions: np.ndarray) -> np.ndarray:
        """Rows ``positions`` (sorted, distinct) as ``(b, C, H, W)``."""
        ds = self._dataset()
        n_axis = self._axes[0]
        breaks = np.flatnonzero(np.diff(positions) != 1) + 1
        blocks = []
        for run in np.split(positions, breaks):
            sel = [slice(None)] * 4
            sel[n_axis] = slice(int(run[0]), int(run[-1]) + 1)
            blocks.append(ds[tuple(sel)])
        block = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=n_axis)
        return np.ascontiguousarray(block.transpose(self._axes))

    def _load(self, positions):
        return list(self._read_rows(np.asarray(positions, dtype=np.int64)))

    def _fast_items(self, idx, train):
        t = self._transform
        if t.has_geometry or (train and t.random_flip):
            return None
        pos = self.positions()[idx]
        uniq, inv = np.unique(pos, return_inverse=True)
        rows = self._read_rows(uniq)
        return rows if np.array_equal(uniq, pos) else rows[inv.reshape(-1)]


def _has_matlab_header(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(6) == b"MATLAB"
    except OSError:
        return False


class _ConcatImageSource(ImageSource):
    """Several sources one after the other (row-wise)."""

    def __init__(self, parts, transform=None):
        super().__init__(transform if transform is not None else parts[0].transform)
        self._parts = list(parts)
        self._offsets = np.cumsum([0] + [len(p) for p in self._parts])

    def _n_base(self):
        return int(self._offsets[-1])

    @property
    def dtype(self):
        return self._parts[0].dtype

    def _stored_item_shape(self):
        shapes = {p._stored_item_shape() for p in self._parts}
        return shapes.pop() if len(shapes) == 1 else None

    def _locate(self, position):
        k = int(np.searchsorted(self._offsets, position, side="right") - 1)
        return k, int(position - self._offsets[k])

    def _describe(self, position):
        k, j = self._locate(position)
        p = self._parts[k]
        return p._describe(p._position(j))

    def _load(self, positions):
        out = []
        for p in positions:
            k, j = self._locate(int(p))
            part = self._parts[k]
            out.extend(part._load(np.array([part._position(j)])))
        return out


def concat_image_sources(parts) -> ImageSource:
    """Sources (or in-memory 4-D arrays) joined row-wise into one lazy source; the transform
    of the first part is kept."""
    parts = [p if is_image_source(p) else ArrayImageSource(p) for p in parts]
    if not parts:
        raise ValueError("concat_image_sources needs at least one source")
    if len(parts) == 1:
        return parts[0]
    return _ConcatImageSource(parts)
