"""Faults 1-3 and the reboot case of 5: processes that die or lie.

After each fault: a row committed before it is still there, ``pgmgr status`` agrees with the
process table, and no postgres process is left that should not be.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pgmgr.core import process
from tests.helpers import killed
from tests.reliability.conftest import (
    Inst,
    InstFactory,
    assert_truthful,
    no_orphans,
    one_error,
    pgmgr,
    pgmgr_argv,
    postgres_pids_under,
    start_frozen_before_ready,
)


def started(cluster: InstFactory, name: str = "db") -> tuple[Inst, str]:
    inst = cluster(name)
    run = inst.start("--port", "auto")
    assert run.returncode == 0, str(run)
    return inst, inst.commit_canary()


def sigkill_postmaster(inst: Inst) -> int:
    pid = inst.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while process.is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.005)
    return pid


def recovered(inst: Inst, token: str, also: Callable[[], None] | None = None) -> None:
    """Start works again (crash recovery), the row is there, status and processes agree;
    ``also`` runs while the server is up again."""
    run = inst.start()
    assert run.returncode == 0, str(run)
    assert inst.has_canary(token)
    if also is not None:
        also()
    assert assert_truthful(inst) == "running"
    no_orphans(inst)
    run = inst.stop()
    assert run.returncode == 0, str(run)
    assert assert_truthful(inst) == "stopped"
    no_orphans(inst)
    assert not postgres_pids_under(inst.datadir)


# --------------------------------------------------------------------------- 1: SIGKILL


def test_postmaster_sigkill_is_reported_and_recovered(cluster: InstFactory) -> None:
    inst, token = started(cluster)
    sigkill_postmaster(inst)
    run = inst.status()
    assert run.returncode == 3, str(run)
    assert run.json()["state"] == "crashed"
    assert "stale" in run.json()["detail"]
    assert assert_truthful(inst) == "crashed"
    recovered(inst, token)


def test_sigkill_with_open_session_and_uncommitted_work(cluster: InstFactory) -> None:
    inst, token = started(cluster)
    conn = inst.connect()
    conn.execute("INSERT INTO canary VALUES ('never-committed')")  # open transaction
    sigkill_postmaster(inst)
    # Start right away: the orphaned backends may still be exiting; start must cope.
    recovered(
        inst,
        token,
        lambda: (
            inst.sql("SELECT count(*) FROM canary WHERE token = 'never-committed'") == [(0,)]
            or pytest.fail("an uncommitted row survived the crash")
        ),
    )
    conn.close()


# --------------------------------------------------------------------------- 2: pgmgr killed


def test_pgmgr_killed_mid_start(cluster: InstFactory, hooks: Path) -> None:
    inst, token = started(cluster)
    assert inst.stop().returncode == 0
    # Freeze postgres between spawn and ready, kill pgmgr in its wait, then let postgres go on.
    paused, child = start_frozen_before_ready(inst, hooks, "--port", "auto")
    try:
        (hooks / "start-spawned.go").touch()  # on into its wait for a server frozen
        time.sleep(0.05)
        killed(paused.proc)
    finally:
        os.kill(child, signal.SIGCONT)
    # The server pgmgr spawned runs on; every command sees it and agrees about it.
    deadline = time.monotonic() + 60
    while inst.status().json()["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    st = inst.status()
    assert st.json()["state"] == "running", str(st)
    assert st.json()["pid"] == child
    real = inst.conninfo()
    assert st.json()["port"] == real["port"]
    assert st.json()["socket_dir"] == real["host"]
    assert f"port={real['port']}" in st.json()["url"], str(st)
    again = inst.start()
    assert again.returncode == 0, str(again)
    assert "already running" in again.stderr
    assert inst.record()["port"] == real["port"]
    assert inst.record()["socket_dir"] == real["host"]
    assert inst.has_canary(token)
    no_orphans(inst)
    run = inst.stop()
    assert run.returncode == 0 and "Stopped" in run.stderr, str(run)
    assert not process.is_alive(child)
    recovered(inst, token)


def test_pgmgr_killed_mid_stop(cluster: InstFactory) -> None:
    inst, token = started(cluster)
    conn = inst.connect(autocommit=True)  # holds a smart stop
    proc = subprocess.Popen(
        pgmgr_argv("stop", inst.name, "-m", "smart", "--timeout", "30"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while (pf := process.PidFile.read(inst.datadir)) is None or pf.status != "stopping":
        assert time.monotonic() < deadline and proc.poll() is None, "the smart stop never began"
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    st = inst.status()
    assert st.returncode == 0 and st.json()["state"] == "stopping", str(st)
    assert conn.execute("SELECT 1").fetchone() == (1,)  # smart: the session still works
    run = inst.stop("-m", "fast")
    assert run.returncode == 0, str(run)
    assert assert_truthful(inst) == "stopped"
    conn.close()
    recovered(inst, token)


# --------------------------------------------------------------------------- 3: stale pid file


def _fake_pidfile(inst: Inst, pid: int) -> None:
    """A postmaster.pid as postgres writes it, naming ``pid``."""
    (inst.datadir / "postmaster.pid").write_text(
        f"{pid}\n{inst.datadir}\n{int(time.time()) - 1000}\n5432\n/tmp\n127.0.0.1\n"
        "  1234567         0\nready   \n"
    )


def test_stale_pidfile_naming_another_process(cluster: InstFactory) -> None:
    inst, token = started(cluster)
    assert inst.stop().returncode == 0
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        _fake_pidfile(inst, sleeper.pid)
        assert inst.status().json()["state"] == "crashed"
        assert assert_truthful(inst) == "crashed"
        run = inst.start()
        assert run.returncode == 0, str(run)
        assert sleeper.poll() is None  # never signalled
        assert inst.has_canary(token)
        assert inst.pid() != sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()
    recovered(inst, token)


def test_stale_pidfile_naming_another_postgres(cluster: InstFactory) -> None:
    other, other_token = started(cluster, "other")
    inst, token = started(cluster, "db")
    assert inst.stop().returncode == 0
    other_pid = other.pid()
    assert other_pid is not None
    _fake_pidfile(inst, other_pid)
    assert inst.status().json()["state"] == "crashed"
    run = inst.start()
    assert run.returncode == 0, str(run)
    assert inst.pid() != other_pid
    assert other.pid() == other_pid and other.has_canary(other_token)  # untouched
    assert assert_truthful(other) == "running"
    recovered(inst, token)
    assert other.stop().returncode == 0


def test_stale_pidfile_kept_while_a_backend_lives(cluster: InstFactory) -> None:
    inst, token = started(cluster)
    conn = inst.connect(autocommit=True)
    backend = conn.info.backend_pid
    os.kill(backend, signal.SIGSTOP)  # an orphan that outlives its postmaster
    try:
        sigkill_postmaster(inst)
        pidfile = inst.datadir / "postmaster.pid"
        before = pidfile.read_text()
        run = inst.start()
        err = one_error(run)
        assert str(backend) in err and "still use" in err, str(run)
        assert pidfile.read_text() == before  # never removed while postgres uses the dir
        assert assert_truthful(inst) == "crashed"
    finally:
        os.kill(backend, signal.SIGKILL)
        os.kill(backend, signal.SIGCONT)
    conn.close()
    deadline = time.monotonic() + 5
    while process.is_alive(backend) and time.monotonic() < deadline:
        time.sleep(0.01)
    recovered(inst, token)


# --------------------------------------------------------------------------- 5: rebooted


def test_record_says_running_after_reboot(cluster: InstFactory) -> None:
    """After a power cut: postmaster.pid and the record name a pid that no longer exists."""
    from pgmgr.core import registry

    inst, token = started(cluster)
    sigkill_postmaster(inst)
    dead = _unused_pid()
    _fake_pidfile(inst, dead)
    rec = registry.load(inst.name)
    rec.pid = dead
    registry.save(rec)
    run = inst.status()
    assert run.returncode == 3 and run.json()["state"] == "crashed", str(run)
    assert run.json()["pid"] is None
    assert pgmgr("status").returncode == 0
    recovered(inst, token)
    assert registry.load(inst.name).pid is None


def _unused_pid() -> int:
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 7
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid
