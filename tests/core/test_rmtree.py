"""pgmgr.core.rmtree: a tree removed through fds, never following a symlink, with the files
of a directory unlinked by several threads where the first unlinks waited for the disk.

Whether unlinks wait for the disk depends on the filesystem (ext4 with ``-o discard`` and no
journal: they do), so the threaded path is forced by setting the threshold to zero (every
unlink counts as slow) and the in-line one by setting it out of reach; the unlinks are real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from pgmgr.core import rmtree
from tests.helpers import run_as_server_user


class _Counting(threading.Thread):
    started: list[str] = []  # noqa: RUF012

    def start(self) -> None:
        _Counting.started.append(self.name)
        super().start()


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The threads the removal starts (a spy: they are real)."""
    _Counting.started = []
    monkeypatch.setattr(rmtree.threading, "Thread", _Counting)
    return _Counting.started


def _tree(top: Path, outside: Path) -> None:
    """Many files in one directory (more than the sample and the workers), nested
    directories, an empty one, symlinks to a directory and a file outside."""
    (top / "base" / "5").mkdir(parents=True)
    (top / "empty").mkdir()
    for i in range(200):
        (top / "base" / "5" / str(i)).write_bytes(b"x" * 8192)
    for i in range(3):
        (top / f"f{i}").write_text("y")
    (top / "base" / "5" / "dirlink").symlink_to(outside)
    (top / "base" / "5" / "filelink").symlink_to(outside / "keep")
    (top / "toplink").symlink_to(outside)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir()
    (out / "keep").write_text("precious")
    (out / "sub").mkdir()
    (out / "sub" / "also").write_text("precious too")
    return out


@pytest.mark.parametrize("slow", [True, False], ids=["threads", "in line"])
def test_removes_everything_and_follows_nothing(
    tmp_path: Path, outside: Path, threads: list[str], monkeypatch: pytest.MonkeyPatch, slow: bool
) -> None:
    monkeypatch.setattr(rmtree, "SLOW", 0.0 if slow else 3600.0)
    top = tmp_path / "data"
    _tree(top, outside)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        rmtree.remove_at(fd, "data")
        rmtree.remove_at(fd, "data")  # gone already: fine
    finally:
        os.close(fd)
    assert not os.path.lexists(top)
    assert (outside / "keep").read_text() == "precious"
    assert (outside / "sub" / "also").read_text() == "precious too"
    assert len(threads) == (rmtree.WORKERS if slow else 0)
    assert not [t for t in threading.enumerate() if t.name == "pgmgr-rm"]


def test_a_symlink_or_a_file_named_is_removed_itself(tmp_path: Path, outside: Path) -> None:
    (tmp_path / "link").symlink_to(outside)
    (tmp_path / "file").write_text("z")
    rmtree.remove(tmp_path / "link")
    rmtree.remove(tmp_path / "file")
    rmtree.remove(tmp_path / "missing")
    rmtree.remove(tmp_path / "no" / "parent")
    assert not os.path.lexists(tmp_path / "link") and not (tmp_path / "file").exists()
    assert (outside / "keep").read_text() == "precious"


def _pin(path: Path) -> None:
    """Make ``path`` (a file) impossible to unlink, for real: immutable as root (no
    permission stops root), else its directory read-only."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("no chattr")
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("the filesystem has no immutable flag")
    else:
        path.parent.chmod(0o500)


def _unpin(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], check=False)
    else:
        path.parent.chmod(0o700)


@pytest.mark.parametrize("slow", [True, False], ids=["threads", "in line"])
def test_an_error_is_raised_unless_ignored(
    tmp_path: Path, outside: Path, monkeypatch: pytest.MonkeyPatch, slow: bool
) -> None:
    """The first error is raised (after every worker is done); with ``ignore_errors``
    everything else is removed and nothing is raised."""
    monkeypatch.setattr(rmtree, "SLOW", 0.0 if slow else 3600.0)
    top = tmp_path / "data"
    _tree(top, outside)
    pinned = top / "base" / "5" / "150"
    _pin(pinned)
    try:
        with pytest.raises(PermissionError):
            rmtree.remove(top)
        assert not [t for t in threading.enumerate() if t.name == "pgmgr-rm"]
        rmtree.remove(top, ignore_errors=True)
        if os.geteuid() == 0:  # only the pinned file (and the directories above it) is left
            left = sorted(str(p.relative_to(top)) for p in top.rglob("*"))
            assert left == ["base", "base/5", "base/5/150"]
    finally:
        _unpin(pinned)
    rmtree.remove(top)
    assert not os.path.lexists(top)
    assert (outside / "keep").read_text() == "precious"


_NO_THREADS = """
import os, resource, sys
sys.path.insert(0, sys.argv[2])
from pgmgr.core import privileges, rmtree, userfs
rmtree.SLOW = 0.0  # every unlink counts as slow: the threads are wanted


def remove(fd: int) -> None:
    resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))  # this user may start no thread now
    userfs.rmtree_at(fd, "data")


fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
userfs.as_user(privileges.lookup("postgres") if os.geteuid() == 0 else None, remove, fd)
"""


def test_a_removal_that_may_start_no_thread_goes_on_in_line(tmp_path: Path) -> None:
    """A process that may not start a thread (its user at its process limit: ``ulimit -u``,
    a container's or a systemd unit's pids limit, the server user's backends counting) still
    removes the tree, in line: ``can't start new thread`` (RuntimeError, not an OSError)
    went through every caller's ``except OSError`` (a traceback), even ``ignore_errors``,
    and left the tree. Real: the child of as_user, the server user with RLIMIT_NPROC 1."""
    box = tmp_path / "box"  # the server user's, as root
    top = box / "data"
    (top / "base").mkdir(parents=True)
    for i in range(100):
        (top / "base" / str(i)).write_bytes(b"x" * 8192)
    run = run_as_server_user(_NO_THREADS, box)
    assert run.returncode == 0, run.stderr
    assert not os.path.lexists(top)


_WRITE_ONLY_PARENT = """
import os, shutil, sys
sys.path.insert(0, sys.argv[2])
from pgmgr.core import privileges, rmtree, userfs


def both(box: str) -> list[str]:
    for tree in ("a", "b"):
        os.makedirs(f"{box}/{tree}/sub")
        open(f"{box}/{tree}/sub/file", "w").close()
    os.chmod(box, 0o300)  # the parent: written to and searched, not listed
    try:
        shutil.rmtree(f"{box}/a", ignore_errors=True)
        rmtree.remove(f"{box}/b", ignore_errors=True)
    finally:
        os.chmod(box, 0o700)
    return sorted(os.listdir(box))


user = privileges.lookup("postgres") if os.geteuid() == 0 else None
print(userfs.as_user(user, both, sys.argv[1]))
"""


def test_a_parent_that_may_not_be_listed_is_enough() -> None:
    """As :func:`shutil.rmtree`, a tree is removed from a parent the caller may write and
    search but not read (a drop directory, mode 0300 or 1733; a TMPDIR of 0711): its
    parent was opened O_RDONLY, EACCES, and with ``ignore_errors`` (bundle, import and
    temporary clean-ups) the tree was left without a word. Real: as root, the server
    user (root's rights would bypass the mode), in a directory of the temp dir it owns."""
    box = Path(tempfile.mkdtemp(prefix="pgmgr-test-rm-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(box, "postgres", "postgres")
        run = subprocess.run(
            [sys.executable, "-c", _WRITE_ONLY_PARENT, str(box), str(Path(__file__).parents[2])],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == "[]", run.stdout  # shutil's tree and ours: both gone
    finally:
        box.chmod(0o700)
        shutil.rmtree(box)
