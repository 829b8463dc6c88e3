"""The copy engine keeps a sparse file's holes when it does not clone: only the data extents
are copied (``SEEK_DATA``/``SEEK_HOLE``), the size set by ``ftruncate``. Real files on this
machine's ext4 (the tmp directory), on tmpfs (/dev/shm) and on a loop-mounted XFS
(tests/reflink.py), through each method; nothing mocked but a spy on ``os.lseek``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgmgr.core import copy, copydata
from tests.reflink import xfs_dir, xfs_mount  # noqa: F401

MB = 1 << 20
GB = 1 << 30


def _sparse(path: Path, size: int, pieces: list[tuple[int, bytes]]) -> None:
    """A file of ``size`` bytes, holes but for ``pieces`` (offset, data)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        os.ftruncate(fd, size)
        for off, data in pieces:
            os.pwrite(fd, data, off)
    finally:
        os.close(fd)


def _one_mb_in_a_gb() -> list[tuple[int, bytes]]:
    """1 MiB of data in 16 pieces of 64 KiB spread over 1 GiB (one unaligned)."""
    return [(i * 64 * MB + (12345 if i == 3 else 0), os.urandom(64 << 10)) for i in range(16)]


def _same(a: Path, b: Path) -> bool:
    """Whether the two files hold the same bytes, every one read (8 MiB blocks; holes are
    read as zeros through the page cache: ~4 s for two 1 GiB files on this ext4)."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(8 * MB), fb.read(8 * MB)
            if x != y:
                return False
            if not x:
                return True


def _data(path: Path) -> list[tuple[int, int]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        found = copydata.extents(fd, size)
        return [(0, size)] if found is None else found
    finally:
        os.close(fd)


def _same_data(a: Path, b: Path) -> bool:
    """:func:`_same`, faster: same size, the copy's data extents (the kernel's SEEK_DATA)
    inside the source's, and the bytes of the source's extents the same in both. Elsewhere
    both are holes, which read as zeros."""
    if os.stat(a).st_size != os.stat(b).st_size:
        return False
    ours = _data(a)
    if any(not any(s <= x and y <= e for s, e in ours) for x, y in _data(b)):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for start, end in ours:
            fa.seek(start)
            fb.seek(start)
            if fa.read(end - start) != fb.read(end - start):
                return False
    return True


def _used(path: Path) -> int:
    return os.stat(path).st_blocks * 512


@pytest.fixture(params=["ext4", "tmpfs"])
def where(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory on this machine's disk (the tmp directory, ext4 here) or on tmpfs."""
    base = "/dev/shm" if request.param == "tmpfs" else None
    if base is not None and not os.path.isdir(base):
        pytest.skip("no /dev/shm")
    with tempfile.TemporaryDirectory(prefix="pgmgr-sparse-", dir=base) as d:
        yield Path(d)


@pytest.mark.parametrize("method", ["copy_file_range", "read"])
@pytest.mark.parametrize("flush", [False, True])
def test_a_gb_sparse_file_with_a_mb_of_data_copies_as_a_mb(
    where: Path, method: str, flush: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through copy_tree (its pool thread takes files of 8 MiB and more): the copy has the
    same bytes and size, and allocates ~1 MiB, not 1 GiB (the old copy wrote the holes out)."""
    monkeypatch.setenv(copy.ENV_METHOD, method)
    src = where / "src"
    src.mkdir()
    _sparse(src / "disk.img", GB, _one_mb_in_a_gb())
    (src / "dense").write_bytes(os.urandom(3 * MB))
    stats = copy.copy_tree(src, where / "dst", flush=flush)
    assert stats.method == method and stats.files == 2
    assert stats.bytes == GB + 3 * MB  # what the files hold, as before
    copied = where / "dst" / "disk.img"
    assert os.stat(copied).st_size == GB
    assert _used(copied) < 2 * MB, f"the copy allocated {_used(copied)} bytes"
    # Every byte read once (the snapshot's case: the default method, flushed), else faster.
    full = method == "copy_file_range" and flush
    assert (_same if full else _same_data)(src / "disk.img", copied)
    assert _same(src / "dense", where / "dst" / "dense")
    assert os.stat(copied).st_mode & 0o777 == 0o640


def test_holes_at_either_end_and_a_file_of_holes_only(where: Path) -> None:
    """copy_file (no pool): a leading hole, a trailing hole (the size comes from
    ftruncate), one unaligned byte, and a file that is one hole."""
    src, dst = where / "src", where / "dst"
    src.mkdir()
    dst.mkdir()
    _sparse(src / "tail", 50 * MB, [(0, b"head" * 1000)])
    _sparse(src / "lead", 50 * MB, [(50 * MB - 1, b"z")])
    _sparse(src / "holes", 50 * MB, [])
    sfd, dfd = os.open(src, os.O_RDONLY), os.open(dst, os.O_RDONLY)
    try:
        for name in ("tail", "lead", "holes"):
            copy.copy_file(sfd, dfd, name)
    finally:
        os.close(sfd)
        os.close(dfd)
    for name in ("tail", "lead", "holes"):
        assert os.stat(dst / name).st_size == 50 * MB
        assert _used(dst / name) <= 64 << 10, name
        assert _same(src / name, dst / name), name


def test_a_sparse_file_with_much_data_is_copied_in_parallel_ranges(
    where: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """72 MiB of data (over copydata.PARALLEL_MIN) in three extents of a 300 MiB file: the
    ranges split across threads, each copying only the data in its part."""
    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # four ranges, whatever the machine
    src = where / "src"
    src.mkdir()
    pieces = [(0, os.urandom(24 * MB)), (100 * MB + 4096, os.urandom(24 * MB)),
              (276 * MB, os.urandom(24 * MB))]  # fmt: skip
    _sparse(src / "f", 300 * MB, pieces)
    copy.copy_tree(src, where / "dst")
    assert _same_data(src / "f", where / "dst" / "f")
    assert _used(where / "dst" / "f") < 80 * MB


def test_a_dense_file_costs_no_probe(where: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL's files are dense: their st_blocks already say so, and no SEEK_HOLE is
    asked (a spy on os.lseek: the copy is real)."""
    src = where / "src"
    src.mkdir()
    for i in range(3):
        (src / f"seg{i}").write_bytes(os.urandom(MB) * (1 + 9 * i))  # in line and pooled
    os.sync()  # allocated, whatever the filesystem's delayed allocation reports meanwhile
    seeks: list[int] = []
    real = os.lseek

    def spy(fd: int, pos: int, how: int) -> int:
        seeks.append(how)
        return real(fd, pos, how)

    monkeypatch.setattr(os, "lseek", spy)
    copy.copy_tree(src, where / "dst")
    assert os.SEEK_HOLE not in seeks and os.SEEK_DATA not in seeks
    for i in range(3):
        assert _same(src / f"seg{i}", where / "dst" / f"seg{i}")


def test_extents_of_a_dense_file_is_one_seek() -> None:
    with tempfile.TemporaryFile() as f:
        f.write(b"x" * 100_000)
        f.flush()
        assert copydata.extents(f.fileno(), 100_000) is None


def test_on_xfs_a_clone_shares_and_a_forced_copy_keeps_the_holes(
    xfs_dir: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a reflink filesystem (a 320 MiB XFS): the 1 GiB sparse file is cloned (FICLONE
    shares it, holes and all); with the fallback forced, copied with its holes kept."""
    src = xfs_dir / "src"
    src.mkdir()
    _sparse(src / "disk.img", GB, _one_mb_in_a_gb())
    assert copy.copy_tree(src, xfs_dir / "clone").method == "reflink"
    assert _same_data(src / "disk.img", xfs_dir / "clone" / "disk.img")
    monkeypatch.setenv(copy.ENV_METHOD, "copy_file_range")
    assert copy.copy_tree(src, xfs_dir / "copy").method == "copy_file_range"
    copied = xfs_dir / "copy" / "disk.img"
    assert os.stat(copied).st_size == GB and _used(copied) < 2 * MB
    assert _same_data(src / "disk.img", copied)


@pytest.mark.parametrize(
    ("method", "layout"),
    [("copy_file_range", "sparse"), ("read", "sparse"), ("copy_file_range", "dense")],
)
def test_a_file_that_shrank_before_its_copy_gets_no_zeros_past_its_end(
    where: Path, method: str, layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file cut short between the fstat that sized the copy and the copy (a user's log
    truncated while a snapshot or an upgrade copies it) is copied as it then is, as a
    plain copy_file_range or read copies it: the copies that set the size first
    (ftruncate: a sparse file's extents, the parallel ranges of a large one) kept the old
    size, zeros past the end the file never had. Fails before the fix (the copy kept
    the old size)."""
    monkeypatch.setattr(copydata, "PARALLEL_MIN", 4 * MB)  # the parallel ranges, cheaply
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    src, dst = where / "src", where / "dst"
    if layout == "sparse":
        _sparse(src, 16 * MB, [(0, os.urandom(MB)), (9 * MB, os.urandom(5 * MB))])
    else:
        src.write_bytes(os.urandom(16 * MB))
    fin = os.open(src, os.O_RDONLY)
    fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        st = os.fstat(fin)
        os.truncate(src, 10 * MB)  # after the fstat, before the copy
        copydata.copy_data(fin, fout, st.st_size, [method], None, copydata.may_be_sparse(st))
    finally:
        os.close(fin)
        os.close(fout)
    assert os.stat(dst).st_size == 10 * MB
    assert _same(src, dst)


@pytest.mark.parametrize("seek_hole", [True, False])
def test_the_room_a_tree_asks_is_what_its_copy_writes(
    where: Path, seek_hole: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """copy.tree_allocated (what the room checks ask) against a real copy's blocks. With
    SEEK_HOLE: the holes left out of both. Without (NFSv3, FUSE: the kernel's generic
    lseek says the whole file is data; here a spy on os.lseek answers so, as it would:
    mocked because no such filesystem can be mounted here), the copy writes every byte
    of a file whose st_blocks fall short of its size: it was counted by its st_blocks,
    1 MiB for the 64 MiB the copy then wrote, and the disk filled during the copy.
    Fails before the fix (without SEEK_HOLE)."""
    src = where / "src"
    src.mkdir()
    _sparse(src / "img", 64 * MB, [(i * 8 * MB, os.urandom(128 << 10)) for i in range(8)])
    (src / "dense").write_bytes(os.urandom(MB))
    if not seek_hole:
        real = os.lseek

        def generic(fd: int, pos: int, how: int) -> int:
            if how == os.SEEK_HOLE:
                return os.fstat(fd).st_size
            return pos if how == os.SEEK_DATA else real(fd, pos, how)

        monkeypatch.setattr(os, "lseek", generic)
    asked = copy.tree_allocated(src)
    copy.copy_tree(src, where / "dst")
    written = _used(where / "dst" / "img") + _used(where / "dst" / "dense")
    assert written <= asked + (64 << 10), (written, asked)  # a block per file of slack
    assert asked <= (65 if not seek_hole else 3) * MB, asked
    assert _same(src / "img", where / "dst" / "img")


def test_a_tree_sized_in_bytes_has_none_of_its_files_probed(
    where: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """copy.tree_size (a snapshot's recorded size, the template cache's) wants bytes: no
    sparse file is opened and probed for it, as tree_allocated does (a spy on os.lseek:
    the walk is real). Fails on the commit that added the probe (every sparse file was)."""
    _sparse(where / "img", 64 * MB, [(MB, b"x")])
    seeks: list[int] = []
    real = os.lseek

    def spy(fd: int, pos: int, how: int) -> int:
        seeks.append(how)
        return real(fd, pos, how)

    monkeypatch.setattr(os, "lseek", spy)
    assert copy.tree_size(where) == 64 * MB
    assert seeks == []
    assert copy.tree_allocated(where) < MB
    assert os.SEEK_HOLE in seeks
