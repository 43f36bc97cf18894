"""Output of the ``cmhash`` commands: logging set-up, a closed pipe, result tables.

Results (tables, search hits) go to stdout. Status messages, warnings and errors go through
Python ``logging`` (logger ``"cmhash"``) to stderr -- plain messages, level INFO by default,
WARNING with ``--quiet``, DEBUG with ``--verbose`` -- and, with ``--log-file``, also to that
file with time stamps and levels (at INFO or below, whatever ``--quiet`` says). Python
warnings (``DataWarning``, ``OutOfDistributionWarning``, ...) are routed into the same log.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys

log = logging.getLogger("cmhash")

#: exit status after stdout was closed by the reader (``cmhash ... | head``): 128 + SIGPIPE,
#: the status of a program that the shell's pipe closed
BROKEN_PIPE_STATUS = 141


@contextlib.contextmanager
def configured_logging(*, quiet: bool = False, verbose: bool = False, log_file=None):
    """Handlers of the ``"cmhash"`` logger for one command (removed afterwards, so that
    ``main`` can run many times in one process)."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(logging.Formatter("%(message)s"))
    handlers = [console]
    if log_file:
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setLevel(min(level, logging.INFO))
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(fh)
    warn_log = logging.getLogger("py.warnings")
    old = (log.level, log.propagate, warn_log.propagate)
    log.setLevel(min(h.level for h in handlers))
    log.propagate = False
    for h in handlers:
        log.addHandler(h)
        warn_log.addHandler(h)
    warn_log.propagate = False
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for h in handlers:
            log.removeHandler(h)
            warn_log.removeHandler(h)
            h.close()
        log.level, log.propagate, warn_log.propagate = old


def silence_closed_stdout() -> None:
    """After stdout's reader went away (EPIPE), point stdout at /dev/null so that the
    interpreter's final flush does not raise again ("Exception ignored ... BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):   # no real file descriptor (e.g. captured)
        pass
