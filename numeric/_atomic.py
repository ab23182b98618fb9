"""Atomic file writes: a temporary file beside the target, then ``os.replace``.

Imports no torch (the results of a check are written through it).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["write_atomically"]


def write_atomically(path: str | os.PathLike, write: Callable[[IO], object], *,
                     binary: bool = False, suffix: str = "", readable: bool = False) -> None:
    """Write ``path`` through ``write(handle)`` so that a reader never sees half a file.

    The parent folders are made; the content goes to a temporary file
    ``.<name>.<random><suffix>`` in the same folder, is flushed and synced to disk, and
    the file is then renamed onto ``path`` (``os.replace``). If anything fails (or is
    interrupted) the temporary file is removed and the exception propagates.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write (replaced if it exists).
    write : callable
        ``write(handle)`` writes the content to the open file ``handle``.
    binary : bool, default False
        Open the temporary file in binary mode (``"wb"``) instead of text mode (``"w"``).
    suffix : str, default ""
        Ending of the temporary file's name.
    readable : bool, default False
        Give the file the permissions of an ordinary new file (``0o666`` less the umask);
        otherwise it stays private to its owner (``0o600``, as made by
        :func:`tempfile.mkstemp`).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "sub" / "note.txt"
    >>> write_atomically(target, lambda handle: handle.write("done"))
    >>> target.read_text(), [p.name for p in target.parent.iterdir()]
    ('done', ['note.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    if readable:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes it private
    try:
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
