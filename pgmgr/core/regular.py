"""Opening a file that must be a regular file (a symlink followed: the caller's own files),
never blocking on what was put in its place: a FIFO no one writes to made ``open`` wait
for ever (the server log for 'pgmgr logs', the configuration an upgrade reads, a bundle's
manifest)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from pgmgr.core.errors import DatabaseException


class NotRegular(DatabaseException):
    """``path`` is not a regular file (a FIFO, a device, a directory)."""

    def __init__(self, path: Path, what: str = "") -> None:
        super().__init__(f"{what}{' ' if what else ''}{path} is not a regular file")
        self.path = path


def open_regular(path: Path, what: str = "") -> BinaryIO:
    """``path`` opened for reading without blocking (``O_NONBLOCK``, then ``fstat``);
    ``what`` names it in the error ("the server log").

    :raises NotRegular: it is not a regular file.
    :raises OSError: it cannot be opened (FileNotFoundError: there is none).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        # fstat before fdopen: on a directory, fdopen raised "Is a directory: 9" (the fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegular(path, what)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
