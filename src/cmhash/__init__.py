"""cmhash: supervised cross-modal hashing.

Importing :mod:`cmhash` is cheap and never imports PyTorch; the deep methods load it on use.
"""

__version__ = "0.1.0"
