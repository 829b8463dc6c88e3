"""A sparse file in a data directory (a user's 1 GiB disk image holding 1 MiB) on a small
tmpfs (root: a mount; skipped otherwise): the room checks count what the copies allocate
(holes kept: see tests/core/test_copy_sparse.py), so snapshot, restore and branch go
through where they were refused for lack of 1 GiB; the copies keep the holes and the
bytes. Real servers, nothing mocked."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tests.snap.conftest import Inst, running15, small_tmpfs

MB = 1 << 20
GB = 1 << 30


def _image(it: Inst) -> Path:
    """``disk.img`` in the data directory, as its owner would keep it: 1 GiB, 1 MiB of
    data in 16 pieces."""
    path = it.datadir / "disk.img"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, GB)
        for i in range(16):
            os.pwrite(fd, os.urandom(64 << 10), i * 64 * MB + 777)
    finally:
        os.close(fd)
    st = it.datadir.stat()
    os.chown(path, st.st_uid, st.st_gid)
    return path


def _digest(path: Path) -> str:
    """Of every byte (holes read as zeros)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MB):
            h.update(chunk)
    return h.hexdigest()


def _check(path: Path, digest: str) -> None:
    st = os.stat(path)
    assert st.st_size == GB and st.st_blocks * 512 < 2 * MB, (path, st.st_blocks)
    assert _digest(path) == digest, path


def test_a_sparse_file_is_snapshotted_restored_and_branched_on_a_small_disk(
    scratch: Path,
) -> None:
    with small_tmpfs(scratch, "250m") as fs, running15(fs, "sp") as it:
        image = _image(it)
        digest = _digest(image)
        it.sql("CREATE TABLE t AS SELECT 1 AS x")
        it.ok("snapshot", "sp", "s1", "-q")
        _check(it.store / "s1" / "data" / "disk.img", digest)
        it.sql("INSERT INTO t VALUES (2)")
        os.pwrite(fd := os.open(image, os.O_WRONLY), b"changed", 5)
        os.close(fd)
        it.ok("restore", "sp", "s1", "--yes", "-q")
        assert it.sql("SELECT count(*) FROM t") == "1"
        _check(image, digest)
        it.ok("branch", "sp", "b1", "-q", "-p", "auto")
        _check(fs / "b1" / "disk.img", digest)
        it.ok("branch", "sp", "b2", "--from", "s1", "-q", "-p", "auto")
        _check(fs / "b2" / "disk.img", digest)
        assert it.sql("SELECT count(*) FROM t", "b2") == "1"
