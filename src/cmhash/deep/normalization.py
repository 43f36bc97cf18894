"""The input normalisation that belongs to a set of pretrained image weights (NumPy only).

A network trained on ImageNet expects its inputs prepared as in its training: MatConvNet's
``imagenet-vgg-f.mat`` subtracts an average image from 0-255 RGB pixels, torchvision's models
take [0, 1] RGB pixels standardised by ImageNet's per-channel mean and standard deviation,
Caffe's AlexNet subtracts the per-channel ILSVRC-2012 mean from 0-255 pixels (in BGR order;
cmhash converts its first convolution to RGB on load, so the mean is given in RGB here).

:class:`InputNormalization` records that recipe once, whatever the source::

    x_net = (x * scale / 255 - mean) / std        x: 0-255 RGB pixels, (C, H, W) per image

and :meth:`InputNormalization.pixel_stats` turns it into a mean and a scale in 0-255 pixel
units, ``x_net = (x - mean_px) / std_px``, which is what the deep estimators store and apply
(``input_means_`` / ``input_scales_``). The object is kept on a fitted estimator as
``input_normalization_`` and saved with the model (``get_state`` / ``from_state``), so an image
pipeline can resize, crop and normalise new images exactly as the weights expect.

This module does not import torch: the model files of :mod:`cmhash.base` can restore it.
"""
from __future__ import annotations

import numpy as np

__all__ = ["InputNormalization", "TORCHVISION_IMAGENET", "CAFFE_ILSVRC2012"]


class InputNormalization:
    """How pixels are prepared for a pretrained network (channel order: RGB).

    Parameters
    ----------
    mean : array of shape (C,) or (C, H, W)
        Per-channel mean, or an average image (MatConvNet's ``averageImage``, stored
        H x W x C in the file, channel-first here), in the units given by ``scale``.
    std : array of shape (C,) or float
        Per-channel standard deviation in the same units (1 where the source only subtracts
        a mean).
    scale : {255.0, 1.0}
        The pixel range ``mean`` and ``std`` refer to: 255 for 0-255 pixels (MatConvNet,
        Caffe), 1 for pixels divided by 255 first (torchvision).
    size : (int, int) or None
        The network's input (H, W) (vgg-f / torchvision: 224 x 224; Caffe AlexNet: 227 x 227).
    resize : int or None
        Shorter image side before the centre crop to ``size`` (256 for the ImageNet models),
        None when the images are resized straight to ``size``.
    source : str
        Where the recipe comes from (for messages and docs), e.g. ``"matconvnet"``.
    """

    channel_order = "RGB"

    def __init__(self, mean, std=1.0, scale: float = 255.0, size=None, resize=None,
                 source: str = ""):
        mean = np.asarray(mean, dtype=np.float64)
        if mean.ndim not in (1, 3) or mean.size == 0 or not np.isfinite(mean).all():
            raise ValueError(f"mean must be a finite per-channel vector (C,) or an average image "
                             f"(C, H, W); got shape {mean.shape}")
        channels = mean.shape[0]
        std = np.asarray(std, dtype=np.float64).reshape(-1)
        if std.size == 1:
            std = np.repeat(std, channels)
        if std.size != channels or not (np.isfinite(std).all() and (std > 0).all()):
            raise ValueError(f"std must be one positive value or one per channel ({channels}); "
                             f"got {std.tolist()}")
        if float(scale) not in (1.0, 255.0):
            raise ValueError(f"scale must be 255 (0-255 pixels) or 1 ([0, 1] pixels), got "
                             f"{scale!r}")
        self.mean, self.std, self.scale = mean, std, float(scale)
        self.size = None if size is None else tuple(int(s) for s in size)
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise ValueError(f"size must be (H, W) of positive ints, got {size!r}")
        self.resize = None if resize is None else int(resize)
        self.source = str(source)

    @property
    def n_channels(self) -> int:
        return int(self.mean.shape[0])

    def pixel_stats(self, image_shape=None) -> tuple[np.ndarray, np.ndarray]:
        """``(mean_px, std_px)`` in 0-255 pixel units, float32, shaped to broadcast against a
        batch (n, C, H, W): ``x_net = (x - mean_px) / std_px``.

        ``image_shape`` is the per-image (C, H, W) of the inputs. An average image is used as
        it is when the images have its size; for other sizes its per-channel mean is used (the
        usual approximation, e.g. MatConvNet's own ``rgbMean``). A channel count other than
        the normalisation's is an error.
        """
        mean = self.mean
        if image_shape is not None:
            image_shape = tuple(int(s) for s in image_shape)
            if len(image_shape) != 3:
                raise ValueError(f"the input normalisation of {self.source or 'these'} weights "
                                 f"applies to images (C, H, W); got samples of shape "
                                 f"{image_shape}")
            if image_shape[0] != self.n_channels:
                raise ValueError(f"the {self.source or 'pretrained'} weights expect "
                                 f"{self.n_channels}-channel ({self.channel_order}) images; got "
                                 f"{image_shape[0]} channels (shape (C, H, W) = {image_shape})")
            if mean.ndim == 3 and mean.shape[1:] != image_shape[1:]:
                mean = mean.mean(axis=(1, 2))
        units = 255.0 / self.scale
        mean_px = mean * units
        if mean_px.ndim == 1:
            mean_px = mean_px[:, None, None]
        std_px = (self.std * units)[:, None, None]
        return mean_px.astype(np.float32), std_px.astype(np.float32)

    def apply(self, X) -> np.ndarray:
        """Normalised float32 copy of 0-255 RGB images ``X`` (n, C, H, W) or one image (C, H, W)."""
        X = np.asarray(X)
        one = X.ndim == 3
        batch = X[None] if one else X
        if batch.ndim != 4:
            raise ValueError(f"apply() takes images (n, C, H, W) or (C, H, W), got shape {X.shape}")
        mean, std = self.pixel_stats(batch.shape[1:])
        out = (batch.astype(np.float32) - mean) / std
        return out[0] if one else out

    # ---------------------------------------------------------------- persistence
    def get_params(self) -> dict:
        return {"scale": self.scale, "size": None if self.size is None else list(self.size),
                "resize": self.resize, "source": self.source}

    def get_state(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_state(cls, params: dict, state: dict) -> "InputNormalization":
        return cls(state["mean"], state["std"], **params)

    def __eq__(self, other):
        if not isinstance(other, InputNormalization):
            return NotImplemented
        return (self.get_params() == other.get_params() and self.mean.shape == other.mean.shape
                and np.array_equal(self.mean, other.mean) and np.array_equal(self.std, other.std))

    __hash__ = None

    def __repr__(self):
        mean = (f"average image {self.mean.shape}" if self.mean.ndim == 3
                else np.round(self.mean, 4).tolist())
        return (f"InputNormalization(source={self.source!r}, mean={mean}, "
                f"std={np.round(self.std, 4).tolist()}, scale={self.scale:g}, size={self.size}, "
                f"resize={self.resize})")


#: torchvision's ImageNet models (AlexNet, VGG-16, ResNet-50 "V1" weights): [0, 1] RGB pixels,
#: resize 256, centre crop 224, ImageNet mean / std
TORCHVISION_IMAGENET = InputNormalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                          scale=1.0, size=(224, 224), resize=256,
                                          source="torchvision")

#: Caffe's bvlc_alexnet: 0-255 pixels minus the ILSVRC-2012 mean (ilsvrc_2012_mean averaged over
#: its pixels: B 104.00698793, G 116.66876762, R 122.67891434), resize 256, crop 227; given in
#: RGB order because the first convolution is converted to RGB on load
CAFFE_ILSVRC2012 = InputNormalization(mean=(122.67891434, 116.66876762, 104.00698793), std=1.0,
                                      scale=255.0, size=(227, 227), resize=256, source="caffe")
