"""Writing files safely: every model, index and codes file cmhash saves goes through here."""
from __future__ import annotations

import contextlib
import functools
import os
import tempfile


@functools.lru_cache(maxsize=None)
def _default_file_mode() -> int:
    """The mode a new file gets under the process umask. Reading the umask means setting it,
    which is process-wide: done once per process, not on every save from any thread."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Open a temporary file next to ``path`` for writing; on success it replaces ``path`` in
    one step (``os.replace``, with the permissions a new file would get), on any error it is
    removed and ``path`` is left as it was. A crash, a full disk or Ctrl-C while saving
    therefore never leaves a truncated file under the final name, nor destroys the previous
    file of that name."""
    name = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(name) + ".", suffix=".part",
                               dir=os.path.dirname(os.path.abspath(name)))
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_json(path, obj, **dump_kwargs) -> None:
    """``json.dump(obj)`` into ``path`` atomically (:func:`atomic_write`; indent 2 unless given)."""
    import json
    dump_kwargs.setdefault("indent", 2)
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, **dump_kwargs)
