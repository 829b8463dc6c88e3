"""The copies of the user's entries made for an upgrade's check, kept for its switch.

:func:`pgmgr.core.upgradefiles.placed` copies the entries of the old data directory that
are not PostgreSQL's into the new cluster while the server runs, so that the new major
can be checked with them; the switch carries them again once pg_upgrade is done, during
the downtime. A big file kept there (a backup, an image) was copied twice, the second
time while the server was stopped. Now the check's copies are moved aside in the work
directory (:data:`KEPT`, private as the store is) and an entry is moved into place at the
switch when nothing of it changed since: the same inode, size, mtime, ctime and mode of
the entry and of everything under it, not following symlinks (:func:`stamp`), taken
before it was copied. Any change (a write, a rename over it, an entry added or removed
in a directory, a chmod) changes one of them, and the entry is copied again.

One write in the clock tick of the stamp could leave every field as it was (timestamps
are the kernel's coarse clock): an entry whose ctime is not older than the stamp by
:data:`RACY_NS` is copied again too (as git treats a "racily clean" file). A write through
a shared ``mmap`` to a page already dirty updates no timestamp: a program writing in
the data directory that way during an upgrade gets the content of the check's time.

As the server user, through directory descriptors (``O_NOFOLLOW``), as the copies.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: The directory the check's copies wait in, beside the new data directory.
KEPT = "pgmgr-kept"
#: An entry changed less than this before its stamp may have changed within its tick.
RACY_NS = 1_000_000_000
#: One entry of a stamp: path under the top, mode, inode, size, mtime and ctime (ns).
Entry = tuple[str, int, int, int, int, int]


def now() -> int:
    """The time a stamp is taken at (before any of it)."""
    return time.time_ns()


def stamp(dfd: int, name: str) -> list[Entry]:
    """The entry ``name`` of the directory ``dfd`` and, for a directory, everything under
    it (sorted), as :data:`Entry` tuples; not following symlinks.

    :raises OSError: it vanished, or cannot be read."""
    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    out = [_entry(name, st)]
    if stat.S_ISDIR(st.st_mode):
        fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
        try:
            _walk(fd, name + "/", out)
        finally:
            os.close(fd)
    return out


def _entry(rel: str, st: os.stat_result) -> Entry:
    return (rel, st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _walk(fd: int, rel: str, out: list[Entry]) -> None:
    with os.scandir(fd) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        st = e.stat(follow_symlinks=False)
        out.append(_entry(rel + e.name, st))
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(e.name, _DIR_FLAGS, dir_fd=fd)
            try:
                _walk(sub, f"{rel}{e.name}/", out)
            finally:
                os.close(sub)


def unchanged(dfd: int, name: str, before: list[Entry], since: int) -> bool:
    """Whether ``name`` in ``dfd`` is as :func:`stamp` found it (``before``), taken at
    ``since`` (:func:`now`), and was then last changed long enough before it."""
    if not before or any(e[5] >= since - RACY_NS for e in before):
        return False
    try:
        return [tuple(e) for e in stamp(dfd, name)] == [tuple(e) for e in before]
    except OSError:
        return False


def set_aside(new: Path, names: list[str]) -> bool:
    """Move the entries ``names`` (a directory's ending with ``/``) of ``new`` into
    :data:`KEPT` beside it (made here); whether all were. As the user."""
    kept = new.parent / KEPT
    os.mkdir(kept, 0o700)
    nfd = os.open(new, _DIR_FLAGS)
    try:
        kfd = os.open(kept, _DIR_FLAGS)
        try:
            for name in names:
                os.rename(name.rstrip("/"), name.rstrip("/"), src_dir_fd=nfd, dst_dir_fd=kfd)
        finally:
            os.close(kfd)
    finally:
        os.close(nfd)
    return True


def take(kfd: int | None, nfd: int, name: str) -> bool:
    """Move the kept ``name`` from ``kfd`` into ``nfd`` (the caller saw no ``name`` there:
    what the new cluster has of its own is never replaced): whether it was (False: no
    such kept entry, or no kept directory)."""
    if kfd is None:
        return False
    try:
        os.rename(name, name, src_dir_fd=kfd, dst_dir_fd=nfd)
    except FileNotFoundError:
        return False
    return True


def opened(new: Path) -> int | None:
    """The kept directory beside ``new`` opened, or None where there is none."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        return os.open(new.parent / KEPT, _DIR_FLAGS)
    return None
