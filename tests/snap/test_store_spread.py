"""The snapshot store is marked as the top of unrelated trees (``chattr +T``, ext2/3/4), so
that ext4's allocator puts each snapshot and each branch's staged copy in a block group of
its own (see :func:`pgmgr.core.diskio.spread_subdirs`). Real directories and flags; the
speed it buys is measured in bench/, not here."""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
from pathlib import Path

import pytest

from pgmgr.core import diskio, snapstore


def _topdir(path: Path) -> bool:
    buf = bytearray(4)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, diskio._FS_IOC_GETFLAGS, buf, True)
    finally:
        os.close(fd)
    return bool(int.from_bytes(buf, sys.byteorder) & diskio._FS_TOPDIR_FL)


def _spreads(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return diskio.spread_subdirs(fd)
    finally:
        os.close(fd)


def _datadir(parent: Path) -> Path:
    parent.chmod(0o755)
    datadir = parent / "data"
    datadir.mkdir(mode=0o700)
    return datadir


def test_the_store_is_the_top_of_its_snapshots(tmp_path: Path) -> None:
    (tmp_path / "probe").mkdir()
    if not _spreads(tmp_path / "probe"):
        pytest.skip(f"{tmp_path}'s filesystem has no such flag (tmpfs, XFS)")
    parent = tmp_path / "srv"
    parent.mkdir()
    datadir = _datadir(parent)
    with snapstore.opened(datadir, None):
        pass
    store = snapstore.store_path(datadir)
    assert _topdir(store)
    assert not _topdir(store.parent)  # .pgmgr-snapshots: one store per data directory
    (store / "s1").mkdir()
    assert not _topdir(store / "s1")  # not inherited: only the store's own entries spread


def test_a_store_on_a_filesystem_without_the_flag_is_as_before() -> None:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as top:
        datadir = _datadir(Path(top))
        with snapstore.opened(datadir, None) as store:
            assert store.path.is_dir()
        assert not _spreads(Path(top))
