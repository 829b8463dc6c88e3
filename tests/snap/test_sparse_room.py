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


def _dense(path: Path, size: int) -> None:
    """A file of ``size`` random bytes, as the data directory's owner would write it."""
    with open(path, "wb") as f:
        for _ in range(size // MB):
            f.write(os.urandom(MB))
    st = path.parent.stat()
    os.chown(path, st.st_uid, st.st_gid)


def _fill_to(fs: Path, free: int) -> None:
    """Leave about ``free`` bytes free on ``fs`` (a root-owned filler beside the instance)."""
    st = os.statvfs(fs)
    left = st.f_bavail * st.f_frsize - free
    if left > 0:
        _dense(fs / "filler", left // MB * MB)


def _refused(proc: object, what: str) -> None:
    """``proc`` (a finished pgmgr) was refused by the room check, before any copy."""
    err = proc.stderr  # type: ignore[attr-defined]
    assert proc.returncode == 1, err  # type: ignore[attr-defined]
    assert f"not enough disk space for {what}: " in err and " needed, " in err, err


def test_shared_files_are_taken_off_by_what_they_allocate_not_their_size(
    scratch: Path,
) -> None:
    """A snapshot (files shared with an earlier one) and a restore by difference (files
    kept) ask for the room of what they copy: the shared or kept files were taken off by
    their sizes from what the copy allocates, so a 1 GiB sparse image holding 1 MiB took
    off 1 GiB, and 100 MB that did not fit were let through, the copy then failing on a
    full disk with the server stopped. Fails before the fix (both went on)."""
    with small_tmpfs(scratch, "420m") as fs, running15(fs, "sh") as it:
        _image(it)
        big = it.datadir / "big.bin"
        _dense(big, 100 * MB)
        it.ok("snapshot", "sh", "s1", "-q")
        _dense(it.datadir / "new.bin", 100 * MB)  # in no snapshot: s2 copies it
        _fill_to(fs, 60 * MB)
        taken = it.pgmgr("snapshot", "sh", "s2", "-q")
        _refused(taken, "snapshot 's2'")
        (fs / "filler").unlink(missing_ok=True)
        (it.datadir / "new.bin").unlink()
        _dense(big, 100 * MB)  # changed since s1: a restore copies it back
        _fill_to(fs, 60 * MB)
        _refused(it.pgmgr("restore", "sh", "s1", "--yes", "-q"), "restoring 's1'")
        assert it.state() == "running"
