"""process.exit_waiter: a nap that ends when the process exits (pidfd), else a plain sleep;
wait_gone built on it. Real processes (``sleep``), no server needed: the waits are the
same for a postmaster, whose other ways of being gone (postmaster.pid removed) the
lifecycle tests cover."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from pgmgr.core import process


def open_pidfds() -> set[str]:
    """This process's open pidfds. Only those: other fds of the pytest worker may open or
    close meanwhile (a subprocess pipe of an earlier test collected now), which made a
    comparison of all fds fail by chance in CI."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed since the listing (the listing's own fd, among others)
            continue
        if target == "anon_inode:[pidfd]":
            found.add(fd)
    return found


def test_nap_ends_when_the_process_exits(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        before = open_pidfds()
        with process.exit_waiter(child.pid) as nap:
            assert nap is not time.sleep  # Linux >= 5.3 here: a pidfd
            assert len(open_pidfds() - before) == 1  # the probe sees it while open
            threading.Timer(0.2, child.send_signal, [signal.SIGTERM]).start()
            t0 = time.monotonic()
            nap(60)  # returns at the exit, not after a minute
            waited = time.monotonic() - t0
        assert waited < 30, waited
        assert child.poll() is not None
        assert open_pidfds() == before  # the pidfd is closed
    finally:
        child.kill()
        child.wait()


def test_wait_gone_of_a_process_that_exits_or_not(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "30"])
    # the pid file stays: only the exit can end the wait
    (tmp_path / process.PIDFILE).write_text(f"{child.pid}\n{tmp_path}\n")
    try:
        assert process.wait_gone(child.pid, tmp_path, 0.05) is False  # still running
        threading.Timer(0.1, child.send_signal, [signal.SIGTERM]).start()
        assert process.wait_gone(child.pid, tmp_path, 60) is True  # a zombie counts as gone
    finally:
        child.kill()
        child.wait()


def test_no_pidfd_for_a_gone_pid_is_a_plain_sleep(tmp_path: Path) -> None:
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: the pid is free
    with process.exit_waiter(child.pid) as nap:
        assert nap is time.sleep
    assert process.wait_gone(child.pid, tmp_path, 0) is True
