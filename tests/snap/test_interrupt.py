"""Interrupted snapshot and restore (real signals at varied points) leave the instance as it
was: the same rows, running again, no half-made snapshot; what SIGKILL leaves is swept.
Not enough disk space is mocked (``os.fstatvfs``): the one thing that cannot be real here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import error_lines, killed
from tests.snap.conftest import Inst, leftovers

DELAYS = (0.0, 0.1, 0.3, 0.6, 1.0, 1.6)


def big(inst: Inst) -> None:
    """~150 MB, so that a copy takes long enough to be interrupted in the middle."""
    inst.sql("CREATE TABLE big AS SELECT g, repeat('x', 500) AS pad "
             "FROM generate_series(1, 250000) g")  # fmt: skip


def wait_for_lock(proc: subprocess.Popen[str]) -> None:
    """Until ``pid`` holds an instance lock: it has started its work (a signal during
    Python's start-up is not what these tests are about)."""
    pid = proc.pid
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            targets = []
        if any("/locks/" in t for t in targets):
            return
        time.sleep(0.005)
    if proc.poll() is None:
        raise AssertionError("the command never took the instance lock")


def interrupt(inst: Inst, args: list[str], delay: float, sig: int) -> int:
    env = dict(os.environ)
    env.update(inst.env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgmgr", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # xdist workers ignore SIGINT, and an ignored signal stays ignored across exec:
        # give the command the default disposition a shell would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for_lock(proc)
    time.sleep(delay)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    said = out + err  # what it did: on stdout, or on stderr when stdout is not a terminal
    finished = said.strip() and "Interrupted" not in err and "Error:" not in err
    if proc.returncode == -sig != -signal.SIGKILL and finished:
        # The command had finished and said so: the signal met Python's own exit, which
        # restores the default disposition (what the command did stands, as with exit 0).
        return 0
    assert proc.returncode in (0, 130, -signal.SIGKILL), err
    return proc.returncode


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_snapshot(inst: Inst, sig: int) -> None:
    big(inst)
    outcomes = []
    for i, delay in enumerate(DELAYS):
        code = interrupt(inst, ["snapshot", "dev", f"s{i}"], delay, sig)
        outcomes.append(code)
        assert inst.state() == "running", (delay, code)
        assert inst.sql("SELECT count(*) FROM big") == "250000"
        names = [s["snapshot"] for s in inst.snaps()]
        assert (f"s{i}" in names) == (code == 0), (delay, code, names)
        assert leftovers(inst.store) == []
    assert any(c != 0 for c in outcomes), outcomes  # some hit the middle


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_restore(inst: Inst, sig: int) -> None:
    big(inst)
    inst.ok("snapshot", "dev", "base", "-q")
    outcomes = []
    for delay in DELAYS:
        inst.sql("TRUNCATE t")
        code = interrupt(inst, ["restore", "dev", "base", "--yes"], delay, sig)
        outcomes.append(code)
        assert inst.state() == "running", (delay, code)
        # all or nothing: restored (1000 rows) on success, untouched (0) when interrupted
        assert inst.sql("SELECT count(*) FROM t") == ("1000" if code == 0 else "0"), code
        assert inst.sql("SELECT count(*) FROM big") == "250000"
        assert leftovers(inst.store) == []
    assert any(c != 0 for c in outcomes), outcomes


def start_after_kill(inst: Inst) -> None:
    """``pgmgr start``; a kill during the fast stop leaves the server finishing its
    shutdown checkpoint, which start reports (exit 3) rather than waits for: wait."""
    deadline = time.monotonic() + 30
    while True:
        proc = inst.pgmgr("start", "dev", "-q")
        if proc.returncode != 3 or "shutting down" not in proc.stderr:
            break
        assert time.monotonic() < deadline, proc.stderr
        time.sleep(0.1)
    assert proc.returncode == 0, proc.stderr


def test_killed_snapshot_and_restore_lose_nothing(inst: Inst) -> None:
    """SIGKILL cannot be cleaned up after: the data is intact, a start brings the server
    back if the kill came while it was stopped, and the next command sweeps the leftovers."""
    big(inst)
    inst.ok("snapshot", "dev", "base", "-q")
    for i, delay in enumerate(DELAYS):
        inst.sql("TRUNCATE t")
        args = ["snapshot", "dev", f"k{i}"] if i % 2 else ["restore", "dev", "base", "--yes"]
        interrupt(inst, args, delay, signal.SIGKILL)
        start_after_kill(inst)
        assert inst.sql("SELECT count(*) FROM t") in ("0", "1000")
        assert inst.sql("SELECT count(*) FROM big") == "250000"
        inst.ok("snapshots", "dev")
    inst.ok("snapshot", "dev", "last", "-q")  # sweeps under the lock
    assert leftovers(inst.store) == []


def test_not_enough_disk_space(inst: Inst) -> None:
    """``os.fstatvfs`` is mocked to report 1 MB free: filling the disk for real would
    disturb every other test on the machine."""
    from typer.testing import CliRunner

    from pgmgr.cli import app

    inst.ok("snapshot", "dev", "s1", "-q")
    inst.sql("INSERT INTO t VALUES (-1)")
    real = os.fstatvfs

    def tiny(fd: int) -> os.statvfs_result:
        st = real(fd)
        fields = list(st)
        fields[4] = 1024 * 1024 // st.f_frsize  # f_bavail
        return os.statvfs_result(fields)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fstatvfs", tiny)
        for args in (["snapshot", "dev", "s2"], ["restore", "dev", "s1", "--yes"]):
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 1, result.output
            lines = error_lines(result.output)
            assert lines[0].startswith("Error: not enough disk space for "), lines
            assert "nothing was changed" in lines[0]
    assert [s["snapshot"] for s in inst.snaps()] == ["s1"]
    assert inst.state() == "running"
    assert inst.sql("SELECT count(*) FROM t WHERE x = -1") == "1"
    assert leftovers(inst.store) == []
    json.dumps(inst.snaps())


@pytest.mark.parametrize("step", ["restore-swapped", "restore-completed"])
def test_restore_killed_right_after_the_swap(inst: Inst, tmp_path: Path, step: str) -> None:
    """SIGKILL between the exchange of the directories and the record's update (the new
    directory's identity not yet pinned): the instance starts again, on the snapshot's
    state, and the next command sweeps the replaced one. (The record pinned the replaced
    directory: start refused the restored one as "replaced", exit 4.) Also right after
    the record's update: the replaced directory, held by no intent any more, was left in
    the store for good under its ``.held-`` name, which the sweep leaves alone."""
    from pgmgr.core import testhook

    inst.ok("snapshot", "dev", "base", "-q")
    inst.sql("TRUNCATE t")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    hooks.chmod(0o777)
    (hooks / step).touch()
    env = {**os.environ, **inst.env, testhook.ENV: str(hooks)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgmgr", "restore", "dev", "base", "--yes"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (hooks / f"{step}.reached").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    killed(proc)
    start = inst.pgmgr("start", "dev", "-q")
    assert start.returncode == 0, start.stderr
    assert inst.sql("SELECT count(*) FROM t") == "1000"
    inst.ok("snapshot", "dev", "after", "-q")
    assert leftovers(inst.store) == []
