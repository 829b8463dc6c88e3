"""The disk around a copy: its size before, a disk that fills up during it, and making it
durable after (one ``syncfs`` for the whole tree, an fsync for a rename). Re-exported by
:mod:`pgmgr.core.copy`, where callers have always found them."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

from pgmgr.core.errors import DatabaseException, doing

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def disk_full(what: str, where: str | Path) -> Iterator[None]:
    """Turn a disk that filled up during a copy into one clear error (the caller removes
    the partial copy: nothing was changed).

    :raises DatabaseException: ENOSPC or EDQUOT inside the block.
    """
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DatabaseException(
            f"not enough disk space for {what}: the filesystem of {where} filled up "
            "during the copy; nothing was changed",
            hint="free some space (e.g. delete old snapshots with "
            "'pgmgr snapshot NAME SNAP --delete')",
        ) from None


def tree_size(path: str | Path | int) -> int:
    """Bytes in the regular files under ``path`` (a path or a directory fd), not following
    symlinks. Opens none of them (:func:`tree_sizes` probes sparse ones)."""
    return _walk(path, False)[0]


def tree_allocated(path: str | Path | int) -> int:
    """The bytes a copy of ``path`` by :mod:`pgmgr.core.copy` allocates: a sparse file's
    holes left out (:func:`tree_sizes`). What a room check before such a copy asks."""
    return tree_sizes(path)[1]


def tree_sizes(path: str | Path | int) -> tuple[int, int]:
    """The bytes in the regular files under ``path`` (a path or a directory fd, symlinks
    not followed), and the bytes a copy of them that keeps holes allocates
    (:func:`copydata.allocation`: only a file with fewer blocks than bytes is opened). One
    walk."""
    return _walk(path, True)


def _walk(path: str | Path | int, probe: bool) -> tuple[int, int]:
    fd = path if isinstance(path, int) else os.open(path, _DIR_FLAGS)
    try:
        return _size(fd, probe)
    finally:
        if not isinstance(path, int):
            os.close(fd)


def _size(fd: int, probe: bool) -> tuple[int, int]:
    from pgmgr.core import copydata  # here: it imports threading, which status never needs

    total = used = 0
    with os.scandir(fd) as entries:
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
                used += copydata.allocation(entry.name, st, fd) if probe else st.st_size
            elif stat.S_ISDIR(st.st_mode):
                with contextlib.suppress(OSError):
                    sub = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                    try:
                        t, u = _size(sub, probe)
                    finally:
                        os.close(sub)
                    total, used = total + t, used + u
    return total, used


def sync_fs(path: str | Path | int) -> None:
    """Flush the filesystem holding ``path`` (a path or an fd) to disk: ``syncfs(2)`` on
    Linux, ``sync(2)`` elsewhere."""
    import ctypes  # only here: the init path needs it, status and stop do not

    fd = path if isinstance(path, int) else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = getattr(libc, "syncfs", None)
        if syncfs is None:  # pragma: no cover - not Linux
            os.sync()
        elif syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        if not isinstance(path, int):
            os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so that a rename in it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dirs(*fds: int) -> None:
    """fsync directories already open (as root: fds reached with ``O_NOFOLLOW``, never a
    path resolved again), so that a rename in them, or between them, is on disk before a
    record that depends on it is written: for a rename across directories, both."""
    for fd in fds:
        os.fsync(fd)


def write_new(target: Path, tmp: Path, data: bytes, *, fsync: bool = False) -> None:
    """Put ``data`` at ``target`` atomically: written to the new file ``tmp`` (exclusive,
    never through a symlink), then renamed over ``target``. On failure (a full disk)
    ``tmp`` is not left behind, and the error names ``target``."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            with doing("write", target):
                os.write(fd, data)
                if fsync:
                    os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def human(n: float) -> str:
    """``1536 -> '1.5 kB'``: sizes as every message and table shows them."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


_FS_IOC_GETFLAGS = 0x80086601  # _IOR('f', 1, long), linux/fs.h (the kernel uses an int)
_FS_IOC_SETFLAGS = 0x40086602
_FS_TOPDIR_FL = 0x00020000


def spread_subdirs(fd: int) -> bool:
    """Mark the directory ``fd`` as the top of unrelated trees (``chattr +T``) where the
    filesystem has that flag (ext2/3/4): the Orlov allocator then puts each new
    subdirectory (a snapshot, a branch's staged copy) in a block group of its own with
    few directories, instead of beside its siblings. That matters on ext4 without a
    journal, which for a minute after many deletions scans past every recently freed
    inode of a group at each new file (~1 ms a file there: a 1,300-file copy made beside
    the one just deleted spent more time creating its files than writing 1.1 GB). Whether
    it is set; nothing changes where the filesystem has no such flag.
    """
    import fcntl  # in userfs.PRELOAD: usable in a child that became the server user

    buf = bytearray(4)
    try:
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buf, True)
        flags = int.from_bytes(buf, sys.byteorder)
        if flags & _FS_TOPDIR_FL:
            return True
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, (flags | _FS_TOPDIR_FL).to_bytes(4, sys.byteorder))
    except OSError:  # ENOTTY, EOPNOTSUPP (tmpfs, XFS), EPERM: it is only a hint
        return False
    return True
