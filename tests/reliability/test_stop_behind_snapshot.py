"""A stop that waits behind a snapshot's brief stop-copy-start, on real servers.

No stop takes over a snapshot's fast stop (its copy must be of a clean shutdown): the stop
behind it waits, up to its --timeout. When that ran out after the snapshot's stop was over
(the snapshot copying with the server stopped, or the server running again while the
snapshot names its copy), the error still said the server was "still being stopped by a
fast stop of 'pgmgr snapshot'". It says the state as it is when the wait ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pgmgr.core import process
from tests.helpers import Run, wait_for_note
from tests.pause import Paused
from tests.reliability.conftest import InstFactory, one_error, pgmgr_argv


def _queued(pid: int) -> bool:
    """Whether pgmgr ``pid`` has an instance's lock file open: it waits for that lock
    (and reads the note beside it at once, then every 20 ms)."""
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if "/locks/" in target and target.endswith(".lock"):
            return True
    return False


@pytest.mark.parametrize(
    ("step", "state"), [("snapshot-copied", "is stopped"), ("awaiting-spawned", "is running")]
)
def test_a_stop_that_times_out_behind_a_snapshot_says_the_state_it_ends_in(
    cluster: InstFactory, hooks: Path, step: str, state: str
) -> None:
    inst = cluster()
    assert inst.start("-p", "auto").returncode == 0
    pid = inst.pid()
    assert pid is not None
    (ckpt,) = [p for p in process.children(pid) if "checkpointer" in " ".join(process.cmdline(p))]
    os.kill(ckpt, signal.SIGSTOP)  # the snapshot's fast stop lasts (its shutdown checkpoint)
    thawed = False
    with Paused(hooks, step, "snapshot", inst.name) as snap:
        try:
            deadline = time.monotonic() + 60
            while (pf := process.PidFile.read(inst.datadir)) is None or pf.status != "stopping":
                assert time.monotonic() < deadline and snap.proc.poll() is None, "no stop began"
                time.sleep(0.005)
            wait_for_note(inst.datadir, snap.proc)  # its stop waits: the next one sees it
            stop = subprocess.Popen(
                pgmgr_argv("stop", inst.name, "--timeout", "8"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            while not _queued(stop.pid):
                assert time.monotonic() < deadline and stop.poll() is None, stop.communicate()
                time.sleep(0.01)
            time.sleep(0.3)  # it read the snapshot's note
        finally:
            os.kill(ckpt, signal.SIGCONT)
            thawed = True
        snap.reached()  # the snapshot's stop is over; it still holds the instance
        if step == "awaiting-spawned":
            while (pf := process.PidFile.read(inst.datadir)) is None or pf.status != "ready":
                assert time.monotonic() < deadline, "never ready again"
                time.sleep(0.01)
        out, err = stop.communicate(timeout=60)
        assert stop.returncode == 1, err
        line = one_error(Run(pgmgr_argv("stop"), stop.returncode, out, err))
        assert "still being stopped" not in line, line
        assert line.startswith(f"Error: '{inst.name}' {state}"), line
        assert f"the fast stop of 'pgmgr snapshot' (pgmgr pid {snap.proc.pid}) is over" in line
        assert "'pgmgr snapshot' still holds the instance" in line, line
        assert f"wait for 'pgmgr snapshot' to finish, then run 'pgmgr stop {inst.name}'" in err
        assert snap.go().returncode == 0
    assert thawed and inst.status().json()["state"] == "running"
    assert inst.stop().returncode == 0
