"""Progress reporting that can be silenced (``verbose=False`` / ``--quiet``)."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(iterable=None, *, total=None, desc: str = "", verbose: bool = True, leave=False):
    """Wrap ``iterable`` in a progress bar on stderr, or return it unchanged when quiet."""
    return tqdm(iterable, total=total, desc=desc, disable=not verbose, leave=leave,
                file=sys.stderr, dynamic_ncols=True)


def log(message: str, verbose: bool = True) -> None:
    """Print a status line to stderr unless quiet."""
    if verbose:
        print(message, file=sys.stderr, flush=True)
