"""Data layer: the dataset object, file loaders, benchmark presets, synthetic generators.

Row-sample convention: a modality is ``(n, d)`` dense float or CSR (images ``(n, 3, H, W)``),
labels are ``(n, c)`` multi-hot. See ``docs/data.md``.
"""

from .dataset import (
    STANDARD_SPLITS,
    CrossModalDataset,
    DataSplit,
    DataWarning,
    as_label_matrix,
    labels_from_indices,
)
from .images import (
    ArrayImageSource,
    H5ImageSource,
    ImageFileSource,
    ImageSource,
    ImageTransform,
    is_image_source,
)
from .loaders import (
    SPARSE_DENSITY_THRESHOLD,
    default_shared_dir,
    load_dataset,
    read_arrays,
    save_dataset,
    shared_path,
)
from .manifest import load_image_text_dataset
from .presets import PRESETS, DatasetPreset, detect_preset, get_preset, preset_names
from .synthetic import (
    SYNTHETIC_PRESETS,
    make_synthetic,
    make_synthetic_image_text,
    parse_synthetic_spec,
)
from .text import TextVocabulary

__all__ = [
    "CrossModalDataset",
    "DataSplit",
    "DataWarning",
    "STANDARD_SPLITS",
    "as_label_matrix",
    "labels_from_indices",
    "load_dataset",
    "save_dataset",
    "read_arrays",
    "default_shared_dir",
    "shared_path",
    "SPARSE_DENSITY_THRESHOLD",
    "PRESETS",
    "DatasetPreset",
    "get_preset",
    "detect_preset",
    "preset_names",
    "SYNTHETIC_PRESETS",
    "make_synthetic",
    "make_synthetic_image_text",
    "parse_synthetic_spec",
    "ImageSource",
    "ImageFileSource",
    "H5ImageSource",
    "ArrayImageSource",
    "ImageTransform",
    "is_image_source",
    "load_image_text_dataset",
    "TextVocabulary",
]
