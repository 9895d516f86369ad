"""Files that are never half-written: data go to a uniquely named temporary file in the
target's folder, renamed onto the target once complete; a failure leaves nothing behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

__all__ = ["atomic_path", "atomic_text"]


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary file name next to ``path``; rename it onto ``path`` on success.

    Parameters
    ----------
    path
        The file to (re)write. Its folder must exist and be writable.

    Yields
    ------
    str
        The temporary file's name (the file exists, empty), to be written by the caller.
        On any exception in the block it is removed and the exception re-raised; ``path``
        is then left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.resolve().parent, prefix=f".{path.name}.",
                               suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_text(path: str | os.PathLike[str], *, fsync: bool = False) -> Iterator[TextIO]:
    """Write a UTF-8 text file atomically (see :func:`atomic_path`).

    Parameters
    ----------
    path
        The file to (re)write.
    fsync
        Flush the data to disk before the rename (for files a crash must not leave empty).

    Yields
    ------
    TextIO
        The open temporary file (``newline=""``: what is written is what is stored).
    """
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        yield fh
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
