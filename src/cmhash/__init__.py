"""cmhash: supervised cross-modal hashing.

Importing :mod:`cmhash` is cheap and never imports PyTorch; names below load on first use.
"""

__version__ = "0.1.0"

_LAZY = {
    "make_hasher": "cmhash.base", "get_method": "cmhash.base", "load": "cmhash.base",
    "available_methods": "cmhash.base", "CrossModalHasher": "cmhash.base",
    "DegenerateCodesWarning": "cmhash._validation",
    "NumericalFallbackWarning": "cmhash._validation",
    "OutOfDistributionWarning": "cmhash._validation",
    "load_dataset": "cmhash.data", "CrossModalDataset": "cmhash.data",
    "load_image_text_dataset": "cmhash.data",
    "make_synthetic": "cmhash.data",
    "evaluate_hasher": "cmhash.protocol", "run_evaluation": "cmhash.protocol",
    "HammingIndex": "cmhash.index", "pack_codes": "cmhash.codes", "unpack_codes": "cmhash.codes",
    "mean_average_precision": "cmhash.metrics",
    "RBFAnchorFeatures": "cmhash.kernel",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cmhash' has no attribute {name!r}")
