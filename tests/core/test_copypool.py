"""The copy engine's pool (pgmgr/core/copypool.py): the bytes of large files copied by a
thread while the walk creates the others. The thresholds are made small so that a few MB
of real files cross them; the files and copies are real. Mocked: a failing disk (one
file's copy raising ENOSPC, one close reporting EIO), and a Ctrl-C at a chosen moment (a
real SIGINT sent to this process right after a hand-over, or while a thread starts)."""

from __future__ import annotations

import errno
import os
import signal
import stat
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from pgmgr.core import copy, copydata, copypool
from tests.helpers import run_as_server_user

BIG = (3 << 20) + 4321  # over both thresholds below, not a multiple of a chunk


@pytest.fixture(autouse=True)
def small_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copypool, "OFFLOAD_MIN", 1 << 20)
    monkeypatch.setattr(copydata, "PARALLEL_MIN", 2 << 20)
    monkeypatch.setattr(copydata, "_CHUNK", 256 << 10)


def _tree(top: Path) -> dict[str, tuple[bytes, int]]:
    """A small data directory: many small files, a few large ones, in several
    directories, with modes a copy must keep. Returns path -> (bytes, mode)."""
    want: dict[str, tuple[bytes, int]] = {}
    for d in ("base/1", "base/5", "pg_wal", "global"):
        (top / d).mkdir(parents=True)
        for i in range(30):
            want[f"{d}/{i}"] = (os.urandom(100 + i * 37), 0o600)
    for rel, size, mode in (
        ("base/5/16397", BIG, 0o600),
        ("base/5/16397.1", (1 << 20) + 1, 0o640),  # at the threshold; mode needs fchmod
        ("pg_wal/000000010000000000000001", 2 << 20, 0o600),
        ("global/big", BIG + 1, 0o400),
    ):
        want[rel] = (os.urandom(size), mode)
    for rel, (data, mode) in want.items():
        (top / rel).write_bytes(data)
        (top / rel).chmod(mode)
    return want


def _same(dst: Path, want: dict[str, tuple[bytes, int]]) -> None:
    got = {str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file()}
    assert got == set(want)
    for rel, (data, mode) in want.items():
        assert (dst / rel).read_bytes() == data, rel
        assert stat.S_IMODE((dst / rel).stat().st_mode) == mode, rel


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pgmgr-copy")]


class _Counting(threading.Thread):
    started: ClassVar[list[str]] = []

    def start(self) -> None:
        _Counting.started.append(self.name)
        super().start()


@pytest.mark.parametrize("method", ["", "copy_file_range", "read"])
@pytest.mark.parametrize("flush", [False, True], ids=["plain", "flush"])
def test_large_files_copied_by_the_pool_are_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, flush: bool
) -> None:
    monkeypatch.setenv(copy.ENV_METHOD, method)
    monkeypatch.setattr(copypool.threading, "Thread", _Counting)
    _Counting.started = []
    want = _tree(tmp_path / "src")
    before = _fds()
    stats = copy.copy_tree(tmp_path / "src", tmp_path / "dst", flush=flush)
    _same(tmp_path / "dst", want)
    assert _Counting.started.count("pgmgr-copy") == 1  # one pool, for the four large files
    assert not _pool_threads()
    assert _fds() == before
    assert stats.files == len(want)
    assert stats.bytes == sum(len(d) for d, _ in want.values())
    assert sum(stats.by_method.values()) == stats.bytes
    assert stats.method == (method or "copy_file_range")


def test_a_failed_large_file_fails_the_copy_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large file whose copy fails (the disk full: mocked) fails the whole copy with
    that error, naming the file, once the pool's thread has ended; nothing leaks."""
    _tree(tmp_path / "src")
    real = copydata.copy_data

    def failing(fin: int, fout: int, size: int, *a: object, **k: object) -> str:
        if size == BIG:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fin, fout, size, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(copydata, "copy_data", failing)
    before = _fds()
    with pytest.raises(OSError) as info:
        copy.copy_tree(tmp_path / "src", tmp_path / "dst")
    assert info.value.errno == errno.ENOSPC
    assert str(info.value.filename).endswith("base/5/16397")
    assert not _pool_threads()
    assert _fds() == before


def test_an_interrupt_in_the_walk_stops_the_pool_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C while the pool copies a large file: copy_tree raises it only once the
    thread has ended (the caller then removes the partial copy: no thread may still write
    into it), and the thread stops between two chunks instead of copying on."""
    _tree(tmp_path / "src")
    chunks: list[int] = []
    copying, gate = threading.Event(), threading.Event()

    def slow_writeback() -> copydata.Flush:
        def flush(fd: int, off: int, n: int) -> None:
            chunks.append(n)
            copying.set()
            gate.wait(10)  # the first chunks wait until the interrupt is being handled

        return flush

    monkeypatch.setattr(copydata, "writeback", slow_writeback)
    real_take = copypool.Pool.take

    def take_then_ctrl_c(self: copypool.Pool, *a: object) -> bool:
        taken = real_take(self, *a)  # type: ignore[arg-type]
        assert copying.wait(10)  # the pool is inside that file's copy
        os.kill(os.getpid(), signal.SIGINT)
        return taken

    monkeypatch.setattr(copypool.Pool, "take", take_then_ctrl_c)
    monkeypatch.setenv(copy.ENV_METHOD, "copy_file_range")
    real_close = copypool.Pool.close

    def close(self: copypool.Pool, ok: bool = True) -> None:
        gate.set()  # the interrupt is being handled: let the chunk end
        real_close(self, ok)

    monkeypatch.setattr(copypool.Pool, "close", close)
    before = _fds()
    with pytest.raises(KeyboardInterrupt):
        copy.copy_tree(tmp_path / "src", tmp_path / "dst", flush=True)
    assert not _pool_threads()
    assert _fds() == before
    # Stopped after the chunk under way, not at the end of the file (a large one is 5 to
    # 13 chunks; each parallel range may have begun one).
    assert 1 <= len(chunks) <= min(4, os.cpu_count() or 1), chunks


_NO_THREADS = """
import os, resource, sys
sys.path.insert(0, sys.argv[2])
from pgmgr.core import copy, copydata, copypool, privileges, userfs
copypool.OFFLOAD_MIN = 1 << 20
copydata.PARALLEL_MIN = 2 << 20
os.environ[copy.ENV_METHOD] = "copy_file_range"


def run(src: int, box: int) -> int:
    resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))  # this user may start no thread now
    return copy.copy_tree(src, "dst", dst_dir_fd=box, flush=True).bytes


user = privileges.lookup("postgres") if os.geteuid() == 0 else None
box = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
src = os.open("src", os.O_RDONLY | os.O_DIRECTORY, dir_fd=box)
print(userfs.as_user(user, run, src, box))
"""


def test_a_copy_that_may_start_no_thread_goes_on_in_line(tmp_path: Path) -> None:
    """A process that may not start a thread (its user at its process limit: ``ulimit -u``,
    a container's pids limit) still copies, in line: the parallel ranges of a large file
    raised ``can't start new thread`` (RuntimeError: a traceback, through every caller's
    ``except OSError``). Real: the child of as_user, the server user with RLIMIT_NPROC 1."""
    box = tmp_path / "box"
    box.mkdir()
    want = _tree(box / "src")
    run = run_as_server_user(_NO_THREADS, box)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) == sum(len(d) for d, _ in want.values())
    _same(box / "dst", want)


class _ClosingFails:
    """``os`` as copypool sees it, whose close of the copy of ``base/5/16397`` closes it
    and then reports EIO, as NFS reports at close a write it could not make."""

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    @staticmethod
    def close(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        os.close(fd)
        if path.endswith("dst/base/5/16397"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))


def test_a_close_that_fails_in_the_pool_fails_the_copy_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close of a large file's copy fails (EIO: mocked, see _ClosingFails): the copy
    fails with it, naming the file, as when the walk closed it. The pool's thread died of
    it (a traceback on stderr), and the copy then said it succeeded with the files queued
    after it left empty, or hung with a full queue and no thread to empty it."""
    want = _tree(tmp_path / "src")
    monkeypatch.setattr(copypool, "os", _ClosingFails())
    before = _fds()
    with pytest.raises(OSError) as info:
        copy.copy_tree(tmp_path / "src", tmp_path / "dst")
    assert info.value.errno == errno.EIO
    assert str(info.value.filename).endswith("base/5/16397")
    assert not _pool_threads()
    assert _fds() == before
    assert len(want) > 0


def _interrupted_start(module: object, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make ``module``'s threads get a real Ctrl-C (SIGINT to this process) while their
    start waits for them to run, the first time only: the thread runs, and the start
    raises KeyboardInterrupt. Returns the names of the threads so started."""
    hit: list[str] = []

    class Interrupted(threading.Thread):
        def start(self) -> None:
            super().start()
            if not hit:
                hit.append(self.name)
                os.kill(os.getpid(), signal.SIGINT)  # its handler raises here

    monkeypatch.setattr(module.threading, "Thread", Interrupted)  # type: ignore[attr-defined]
    return hit


def test_a_ctrl_c_while_the_pool_starts_leaks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C while the pool's thread starts (the first large file): the two descriptors
    of that file were neither closed by the walk (handed over) nor by the pool (not queued
    yet), and the thread, unknown to close(), waited for work for good."""
    _tree(tmp_path / "src")
    hit = _interrupted_start(copypool, monkeypatch)
    before = _fds()
    with pytest.raises(KeyboardInterrupt):
        copy.copy_tree(tmp_path / "src", tmp_path / "dst")
    assert hit == ["pgmgr-copy"]
    assert not _pool_threads()
    assert _fds() == before


def test_a_ctrl_c_while_a_range_starts_leaves_no_thread_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C while the thread of a parallel range starts (copy.copy_file, as a restore
    copies a file again; or a copy whose pool could not start): that thread was not
    waited for, and went on writing into the copy, through descriptor numbers the caller
    had closed and may have reused, after the interrupt was raised."""
    monkeypatch.setenv(copy.ENV_METHOD, "copy_file_range")
    data = os.urandom(BIG)
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    (tmp_path / "src" / "16397").write_bytes(data)
    real_range = copydata._copy_ranges_parallel

    def slow_ranges(fin: int, fout: int, size: int, flush: object = None) -> None:
        def slow(fd: int, off: int, n: int) -> None:  # each chunk takes a while
            threading.Event().wait(0.2)

        real_range(fin, fout, size, slow)

    monkeypatch.setattr(copydata, "_copy_ranges_parallel", slow_ranges)
    hit = _interrupted_start(copydata, monkeypatch)
    sfd = os.open(tmp_path / "src", os.O_RDONLY | os.O_DIRECTORY)
    dfd = os.open(tmp_path / "dst", os.O_RDONLY | os.O_DIRECTORY)
    try:
        before = _fds()
        with pytest.raises(KeyboardInterrupt):
            copy.copy_file(sfd, dfd, "16397")
        assert hit == ["pgmgr-copy-range"]
        assert not _pool_threads()
        assert _fds() == before
    finally:
        os.close(sfd)
        os.close(dfd)
