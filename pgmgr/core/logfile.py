"""Server log files: kept bounded by rotation at start, and followed across rotations.

Why rotate at start, in pgmgr, rather than with PostgreSQL's ``logging_collector``: pgmgr
gives postgres one file (``O_APPEND``) for its stdout and stderr, which also catches what it
prints before any collector exists (a bad setting, a busy port), and which ``pgmgr logs``,
start-up error messages and ``Manager`` callers read as one path. The collector would move
the log into the data directory under changing names and add a logger process to every
instance. So before each start pgmgr renames a log past :func:`max_bytes` to ``<log>.1``
(``.1`` to ``.2``; :data:`KEEP` old files, the oldest dropped): at most ``(KEEP + 1)`` logs of
about that size per instance. A single very long, very chatty run is not cut (postgres holds
the file); for that, use postgres's own ``-c logging_collector=on -c log_rotation_size=...``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pgmgr.core.errors import doing

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from typing import BinaryIO

    from pgmgr.core.privileges import ServerUser

#: Old logs kept next to the current one: ``<log>.1`` (newest) .. ``<log>.KEEP``.
KEEP = 2
#: Rotate a log larger than this (bytes) at the next start; ``PGMGR_LOG_MAX_BYTES`` overrides.
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
ENV_MAX_BYTES = "PGMGR_LOG_MAX_BYTES"


def max_bytes() -> int:
    """The rotation threshold: ``PGMGR_LOG_MAX_BYTES`` if it is a positive integer."""
    from pgmgr.core import numtext

    return numtext.whole(os.environ.get(ENV_MAX_BYTES)) or DEFAULT_MAX_BYTES


def check_path(path: Path) -> Path:
    """The absolute path of a log file the user named (``--log-file``).

    :raises UsageError: a directory, or under a file; or, as root, a place another user can
        change: root opens the log for postgres, and would follow a link swapped in there.
    """
    from pgmgr.core import dirpath, paths, userfs
    from pgmgr.core.errors import UsageError

    path = paths.check_path_text(Path(os.path.abspath(path)), "--log-file")  # it is recorded
    if path.is_dir():
        raise UsageError(f"invalid --log-file {str(path)!r}: it is a directory")
    why = dirpath.blocker(path, parents_only=True)
    if why is not None:
        raise UsageError(f"invalid --log-file {str(path)!r}: {why}")
    if os.geteuid() == 0 and userfs.others_can_write(path):
        raise UsageError(
            f"refusing --log-file {path} as root: another user can change that place "
            "(and swap the file for a link)",
            hint="choose a log file in a directory only root can write, or leave the "
            "default (pgmgr's state directory)",
        )
    return path


def rotated(log_file: Path, n: int) -> Path:
    return log_file.with_name(f"{log_file.name}.{n}")


def all_files(log_file: Path) -> list[Path]:
    """The log and its rotated predecessors (which may not exist)."""
    return [log_file, *(rotated(log_file, n) for n in range(1, KEEP + 1))]


def rotate_if_large(log_file: Path, limit: int | None = None) -> bool:
    """Rename ``log_file`` to ``<log>.1`` (shifting the older ones) if it is larger than
    ``limit``. Runs as whoever may change the log's directory (see :func:`rotate_as`).

    :returns: whether it rotated.
    """
    limit = max_bytes() if limit is None else limit
    try:
        with doing("look at"):
            st = os.lstat(log_file)
    except FileNotFoundError:
        return False
    if not os.path.isfile(log_file) or os.path.islink(log_file) or st.st_size <= limit:
        return False
    with doing("rename"):
        for n in range(KEEP, 1, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(rotated(log_file, n - 1), rotated(log_file, n))
        os.replace(log_file, rotated(log_file, 1))
    return True


def rotate_as(log_file: Path, user: ServerUser | None) -> bool:
    """:func:`rotate_if_large`, as the server ``user`` when another user than root and
    pgmgr's own could change the log's directory (pgmgr as root never renames entries
    there itself); else here."""
    from pgmgr.core import userfs

    if os.geteuid() == 0 and user is not None and userfs.others_can_write(log_file.parent):
        return userfs.as_user(user, rotate_if_large, log_file, max_bytes())
    return rotate_if_large(log_file)


def open_read(log_file: Path) -> BinaryIO:
    """``log_file`` opened for reading, never blocking: a FIFO put in its place, which no
    one writes to, made 'pgmgr logs' wait for ever to open it.

    :raises FileNotFoundError: there is none (yet).
    :raises DatabaseException: it is not a regular file.
    """
    from pgmgr.core.regular import open_regular

    return open_regular(log_file, "the server log")


class Tail:
    """Non-blocking reads of the complete lines appended to a log after ``offset`` (what
    ``start --foreground`` copies to its stderr while it waits for the server)."""

    def __init__(self, log_file: Path, offset: int) -> None:
        self.log_file = log_file
        self.offset = offset
        self.pending = b""

    def read(self) -> str:
        """The complete lines written since the last call ('' if none)."""
        from pgmgr.core.errors import DatabaseException

        try:
            with open_read(self.log_file) as f:
                if os.fstat(f.fileno()).st_size < self.offset:
                    self.offset = 0  # truncated
                f.seek(self.offset)
                chunk = f.read(1 << 20)
        except (FileNotFoundError, DatabaseException):  # none yet, or nothing to copy
            return ""
        self.offset += len(chunk)
        complete, _, self.pending = (self.pending + chunk).rpartition(b"\n")
        return complete.decode(errors="replace") + "\n" if complete else ""


def follow(
    log_file: Path, offset: int, poll: float = 0.1, done: Callable[[], bool] | None = None
) -> Iterator[str]:
    """Yield the complete lines appended to ``log_file`` after ``offset``, forever, or
    until ``done()`` (asked while nothing new comes) says to stop.

    Across a rotation (the path now names another file) the rest of the old file is read
    first, then the new one from its start; a file truncated in place is read again from
    its start.
    """
    pending = b""
    f = _open(log_file)
    if f is not None:
        f.seek(offset)
    try:
        while True:
            chunk = f.read() if f is not None else b""
            if chunk:
                pending += chunk
                complete, _, pending = pending.rpartition(b"\n")
                if complete:
                    yield complete.decode(errors="replace") + "\n"
                continue
            replaced = _replaced(log_file, f)
            if replaced:
                if f is not None:
                    f.close()
                f = _open(log_file)
            elif f is not None and os.fstat(f.fileno()).st_size < f.tell():
                f.seek(0)  # truncated in place
            elif done is not None and done():
                return
            else:
                time.sleep(poll)
    finally:
        if f is not None:
            f.close()


def _open(log_file: Path) -> BinaryIO | None:
    try:
        return open_read(log_file)
    except FileNotFoundError:
        return None


def _replaced(log_file: Path, f: BinaryIO | None) -> bool:
    """The path names another file than ``f`` (rotated, or made since)."""
    try:
        st = os.stat(log_file)
    except FileNotFoundError:
        return False
    if f is None:
        return True
    own = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) != (own.st_dev, own.st_ino)
