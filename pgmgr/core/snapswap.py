"""The swap of a restore or upgrade: a staged directory of the store put where the data
directory is, and the data directory where the staged one was, as root through the
store's fds (see :mod:`pgmgr.core.snapstore`), made durable before the record that
follows names the new directory (see :mod:`pgmgr.core.intent`)."""

from __future__ import annotations

import errno
import os

from pgmgr.core import diskio, testhook
from pgmgr.core.errors import doing
from pgmgr.core.snapstore import RENAME_EXCHANGE, Store, renameat2


def exchange(a_fd: int, a: str, b_fd: int, b: str) -> None:
    renameat2(a_fd, a, b_fd, b, RENAME_EXCHANGE)


def hold_name(staged: str) -> str:
    return staged + ".hold"


def swap_in(store: Store, staged: str) -> None:
    """Put the directory ``<store>/<staged>`` where the data directory is, and the data
    directory where ``staged`` was: one atomic exchange (at no moment is there no data
    directory), or, on filesystems without it (ZFS before 2.2, NFS), three renames, the
    first undone if the second fails. Between those the data directory waits in the store
    as :func:`hold_name` of ``staged`` (not swept when ``staged`` is not: a kill there is
    settled by :mod:`pgmgr.core.intent`).
    """
    if not _exchanged(store, staged):
        _three_renames(store, staged)
    _durable(store)


def _exchanged(store: Store, staged: str) -> bool:
    """The one atomic exchange; False where the filesystem lacks it."""
    try:
        if os.environ.get("PGMGR_SWAP") == "rename":  # tests: a filesystem without it
            raise OSError(errno.EINVAL, "RENAME_EXCHANGE disabled by PGMGR_SWAP")
        with doing("replace", store.datadir):
            exchange(store.fd, staged, store.parent_fd, store.datadir.name)
        return True
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
        return False


def _three_renames(store: Store, staged: str) -> None:
    name = store.datadir.name
    hold = hold_name(staged)
    with doing("replace", store.datadir):
        os.rename(name, hold, src_dir_fd=store.parent_fd, dst_dir_fd=store.fd)
    testhook.pause("swap-held")
    try:
        with doing("replace", store.datadir):
            os.rename(staged, name, src_dir_fd=store.fd, dst_dir_fd=store.parent_fd)
    except BaseException:
        os.rename(hold, name, src_dir_fd=store.fd, dst_dir_fd=store.parent_fd)
        raise
    os.rename(hold, staged, src_dir_fd=store.fd, dst_dir_fd=store.fd)


def _durable(store: Store) -> None:
    """The swap reaches the disk before the record that follows it names the new
    directory (the record may be on another filesystem: after a power cut it pinned the
    new directory while the old one was back in place, and the instance was refused)."""
    with doing("replace", store.datadir):
        diskio.fsync_dirs(store.parent_fd, store.fd)
