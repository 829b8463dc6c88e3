"""tests/leftovers.py: a killed test run's directories (and servers in them) are removed by
the next run, and never while another run is alive. On a private place and lock directory,
not /tmp: the runs of other users (or of this one, in parallel) must not be touched."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgmgr.core import process
from tests import leftovers
from tests.helpers import postmasters_under, run_pgmgr
from tests.ops.conftest import make_dir


@pytest.fixture
def place(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.delenv("PGMGR_TEST_NO_SWEEP", raising=False)  # the run's own opt-out
    path = make_dir("pgmgr-ops-")
    try:
        yield path
    finally:
        leftovers.sweep([path])  # a server a failed test left
        shutil.rmtree(path, ignore_errors=True)


def _dead_run(place: Path, template: Path) -> tuple[Path, int]:
    """A killed run's directory: a running server in it, as a SIGKILLed suite leaves one."""
    left = place / "pgmgr-ops-dead"
    left.mkdir(mode=0o755)
    subprocess.run(["cp", "-a", str(template), str(left / "data")], check=True)
    env = {"PGMGR_STATE_DIR": str(left / "state"), "PGMGR_CACHE_DIR": str(left / "cache")}
    started = run_pgmgr("start", "-q", "-d", str(left / "data"), "--init", "-p", "auto", env=env)
    assert started.returncode == 0, started.stderr
    (pid,) = postmasters_under(left)
    return left, pid


def _release() -> None:
    os.close(leftovers._held.pop())


def test_a_killed_runs_directory_and_server_go_and_nothing_else(
    place: Path, template: Path
) -> None:
    left, pid = _dead_run(place, template)
    other = place / "pgmgr-notatest"
    other.mkdir()
    target = make_dir("pgmgr-ops-")
    (place / "pgmgr-cli-link").symlink_to(target)
    lock = str(place / "lock")
    os.mkdir(lock)
    try:
        assert leftovers.hold_and_sweep(lock, [place]) == [left]
        _release()
        assert not left.exists() and not postmasters_under(left)
        assert not process.is_alive(pid)
        assert other.is_dir() and target.is_dir()  # not a test name; a symlink not followed
    finally:
        os.rmdir(target)


def test_nothing_is_swept_while_another_run_is_alive(place: Path, template: Path) -> None:
    left, pid = _dead_run(place, template)
    lock = str(place / "lock")
    os.mkdir(lock)
    alive = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         f"fd = os.open({lock!r}, os.O_RDONLY)\n"
         "fcntl.flock(fd, fcntl.LOCK_SH)\n"
         "print('held', flush=True)\n"
         "time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert alive.stdout is not None and alive.stdout.readline() == "held\n"
        assert leftovers.hold_and_sweep(lock, [place]) == []
        _release()
        assert left.is_dir() and postmasters_under(left) == [pid]
    finally:
        alive.kill()
        alive.wait(30)
    # that run was killed: its lock went with it, and the next run sweeps
    assert leftovers.hold_and_sweep(lock, [place]) == [left]
    held = leftovers._held[-1]
    with pytest.raises(BlockingIOError):  # this run holds its share now
        fcntl.flock(os.open(lock, os.O_RDONLY | os.O_CLOEXEC), fcntl.LOCK_EX | fcntl.LOCK_NB)
    _release()
    assert held not in leftovers._held


def test_a_mount_a_killed_run_left_is_unmounted(place: Path) -> None:
    """As root, a disk-full test mounts a small tmpfs in its directory: killed, its run left
    the mount (and the directory, whose removal stopped at it) for good."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    left = place / "pgmgr-ops-deadmount"
    fs = left / "fs"
    fs.mkdir(parents=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(fs)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {made.stderr.strip()}")
    try:
        (fs / "file").write_text("x")
        assert leftovers.sweep([place]) == [left]
        assert not os.path.ismount(fs)
        assert not left.exists()
    finally:
        if os.path.ismount(fs):
            subprocess.run(["umount", "-l", str(fs)], check=False)


def test_a_killed_runs_graveyard_and_dead_servers_segments_go(place: Path) -> None:
    """A run killed while its graveyard (tests.helpers.Graveyard) still held a test
    directory left the hidden ``.pgmgr-test-graves-*`` for good, and the servers a sweep
    kills (or a kill -9 killed) leave their shared memory segments in /dev/shm."""
    graves = place / ".pgmgr-test-graves-dead"
    (graves / "data-1").mkdir(parents=True)
    assert leftovers.sweep([place]) == [graves]
    shm = place / "shm"
    shm.mkdir()
    dead, live = shm / "PostgreSQL.1", shm / "PostgreSQL.2"
    for seg in (dead, live):
        seg.write_bytes(b"x")
    os.utime(dead, (0, 0))  # made before any server now running: a dead server's
    future = time.time() + 3600  # made after every running server started: maybe live
    os.utime(live, (future, future))
    assert leftovers.drop_dead_segments(shm) == ["PostgreSQL.1"]
    assert not dead.exists() and live.exists()
