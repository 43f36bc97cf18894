"""Progress of long loops: a tqdm bar on a terminal, ``logging`` elsewhere.

``progress(iterable, desc=..., verbose=...)`` shows a bar on stderr only when stderr is a
terminal (or in a Jupyter / IPython kernel); when it is not (a pipe, a file, a batch job) the
loop is reported through the ``"cmhash"`` logger instead -- a line at most every
``LOG_INTERVAL`` seconds and one when it ends -- so that logs are not filled with bar redraws.
``verbose=False`` silences both. Status messages use :func:`log` (the same logger, level INFO).
"""
from __future__ import annotations

import logging
import sys
import time

from tqdm.auto import tqdm

logger = logging.getLogger("cmhash")

#: seconds between the log lines of a loop that runs without a terminal
LOG_INTERVAL = 30.0


def interactive() -> bool:
    """Whether progress bars can be drawn: stderr is a terminal, or a Jupyter kernel runs."""
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):   # a replaced or closed stderr
        pass
    return "ipykernel" in sys.modules


def progress(iterable=None, *, total=None, desc: str = "", verbose: bool = True, leave=False):
    """Wrap ``iterable`` in a progress bar on a terminal, in a logging reporter elsewhere, or
    return it unchanged when quiet (``verbose=False``)."""
    if not verbose:
        return iterable if iterable is not None else range(total or 0)
    if interactive():
        return tqdm(iterable, total=total, desc=desc, leave=leave, file=sys.stderr,
                    dynamic_ncols=True)
    return _LoggedLoop(iterable, total, desc)


class _LoggedLoop:
    """Iterates like the wrapped iterable; logs ``desc: k/total`` every LOG_INTERVAL seconds
    and ``desc: done, k items in s`` at the end (level INFO)."""

    def __init__(self, iterable, total, desc):
        self.iterable = iterable if iterable is not None else range(total or 0)
        self.total = total if total is not None else (
            len(self.iterable) if hasattr(self.iterable, "__len__") else None)
        self.desc = desc or "progress"

    def __len__(self):
        return len(self.iterable)

    def __iter__(self):
        start = last = time.perf_counter()
        count = 0
        of = f"/{self.total}" if self.total is not None else ""
        for item in self.iterable:
            yield item
            count += 1
            now = time.perf_counter()
            if now - last >= LOG_INTERVAL and count != self.total:
                logger.info(f"{self.desc}: {count}{of} after {now - start:.0f} s")
                last = now
        logger.info(f"{self.desc}: {count}{of} done in {time.perf_counter() - start:.1f} s")


def log(message: str, verbose: bool = True) -> None:
    """A status message through the ``"cmhash"`` logger (INFO) unless quiet."""
    if verbose:
        logger.info(message)
