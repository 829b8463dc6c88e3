"""``start`` of a server that is starting or stopping (issue 11.6), on real servers.

- starting: a crash recovery whose postmaster is frozen (SIGSTOP) right while its
  ``postmaster.pid`` says ``starting``; ``start`` waits for ready within ``--timeout``, and
  never kills a server it did not start.
- stopping: a smart stop held open by a client session; ``start`` exits 3 and says why.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pgmgr.core import privileges, process, server
from pgmgr.core.versions import Installation
from tests.reliability.conftest import Inst, InstFactory, one_error, pgmgr, pgmgr_argv

ATTEMPTS: list[int] = []


def _spawn_frozen_in_starting(inst: Inst, line: str | None = "starting") -> int:
    """Spawn the instance's postgres (after an immediate stop: crash recovery) and freeze
    it while postmaster.pid says ``starting``; retried until the window is hit. With
    ``line`` None: while postmaster.pid has no status line yet (its first lines are
    written before the sockets and shared memory are made, ~10 ms; polling catches it
    every time here), as another process's start leaves it for a moment: SIGSTOP is the
    one way to hold a real postmaster in that window."""
    rec = inst.record()
    install = Installation(rec["major"], rec["version"], Path(rec["bindir"]), "record")
    su = privileges.server_user(inst.datadir, rec.get("server_user"))
    argv = server.postgres_argv(
        install,
        inst.datadir,
        host="127.0.0.1",
        port=rec["port"],
        socket_dir=Path(rec["socket_dir"]),
        settings={},
    )
    for attempt in range(1, 51):
        child = server.spawn(argv, inst.datadir.parent / "spawn.log", su)
        hit = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and child.poll() is None:
            pf = process.PidFile.read(inst.datadir)
            if pf is not None and pf.pid == child.pid and (pf.status or line is None):
                if pf.status == line:
                    os.kill(child.pid, signal.SIGSTOP)
                    now = process.PidFile.read(inst.datadir)
                    hit = now is not None and now.status == line
                break
        if hit:
            ATTEMPTS.append(attempt)
            return child.pid
        os.kill(child.pid, signal.SIGCONT)
        server.stop(child.pid, inst.datadir, "immediate", 10)  # crash recovery next time
        child.wait(10)
    raise AssertionError("never caught the server in 'starting' in 50 attempts")


def test_start_of_a_starting_server_waits_for_ready(cluster: InstFactory) -> None:
    inst = cluster()
    assert inst.start("-p", "auto").returncode == 0
    token = inst.commit_canary()
    assert inst.stop("-m", "immediate").returncode == 0  # the next start recovers
    pid = _spawn_frozen_in_starting(inst)
    try:
        run = inst.start("--timeout", "1")
        err = one_error(run)
        assert run.returncode == 1 and "still starting" in err, str(run)
        assert process.is_alive(pid) and process.serves(pid, inst.datadir)  # not killed
        waiting = subprocess.Popen(
            pgmgr_argv("start", inst.name, "--timeout", "60"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        assert waiting.poll() is None, waiting.communicate()  # still waiting for ready
    finally:
        os.kill(pid, signal.SIGCONT)
    _, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert "already running" in err and "Traceback" not in err
    assert process.PidFile.read(inst.datadir).status == "ready"  # type: ignore[union-attr]
    assert inst.has_canary(token)
    run = inst.status()
    assert run.json()["state"] == "running" and run.json()["pid"] == pid
    assert inst.stop().returncode == 0
    print(f"caught 'starting' after {ATTEMPTS} attempt(s)")


def test_a_server_without_its_status_line_yet_is_starting(cluster: InstFactory) -> None:
    """Another process has just spawned postgres: postmaster.pid is there, its status line
    not yet, connections are refused. It is not ready: status says starting, and start
    (the CLI's and the library's) waits for it as for its own spawn."""
    from pgmgr import Manager, WorkerError

    inst = cluster()
    assert inst.start("-p", "auto").returncode == 0 and inst.stop().returncode == 0
    pid = _spawn_frozen_in_starting(inst, line=None)
    try:
        run = inst.status()
        assert run.returncode == 0 and run.json()["state"] == "starting", str(run)
        text = pgmgr("status", inst.name)
        assert "starting" in text.stdout and "running" not in text.stdout, str(text)
        run = inst.start("--timeout", "1")
        err = one_error(run)
        assert run.returncode == 1 and "still starting" in err, str(run)
        with pytest.raises(WorkerError, match="still starting"):
            Manager("127.0.0.1", inst.record()["port"], inst.datadir).start(timeout=1)
        assert process.is_alive(pid) and process.serves(pid, inst.datadir)  # not killed
        waiting = subprocess.Popen(
            pgmgr_argv("start", inst.name, "--timeout", "60"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        assert waiting.poll() is None, waiting.communicate()  # still waiting for ready
    finally:
        os.kill(pid, signal.SIGCONT)
    _, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0 and "already running" in err, err
    assert inst.sql("SELECT 1") == [(1,)]  # it said so once it accepts connections
    assert inst.status().json()["state"] == "running"
    assert inst.stop().returncode == 0


def test_start_of_a_stopping_server_exits_3(cluster: InstFactory) -> None:
    inst = cluster()
    assert inst.start("-p", "auto").returncode == 0
    conn = inst.connect(autocommit=True)
    try:
        run = inst.stop("-m", "smart", "--timeout", "1")
        assert run.returncode == 1 and "client session" in one_error(run), str(run)
        assert inst.status().json()["state"] == "stopping"
        run = inst.start()
        err = one_error(run)
        assert run.returncode == 3, str(run)
        assert "shutting down" in err and "-m fast" in run.stderr, str(run)
        assert inst.status().json()["state"] == "stopping"  # start changed nothing
    finally:
        conn.close()
    pid = inst.pid()
    assert pid is None or process.wait_gone(pid, inst.datadir, 30)
    assert pgmgr("status", inst.name).returncode == 3
    assert inst.start().returncode == 0 and inst.stop().returncode == 0
