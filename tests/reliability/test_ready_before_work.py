"""An online snapshot or an upgrade of a server another process is still starting, on
real servers: a crash recovery whose startup process and checkpointer the test froze
(SIGSTOP) keeps postmaster.pid without its 'ready' line while the postmaster refuses
connections ("the database system is starting up"), as a long recovery does. (Freezing
the postmaster itself, as test_start_states does, queues connections instead of refusing
them: the work went through once it was let go. A standby without hot standby will not
do either: postmaster.pid says 'standby' there.)

pg_basebackup and pg_upgrade need a server that accepts connections: the commands failed
with their own text. Now they wait for it to be ready, as 'pgmgr start' does (bounded),
then do their work; a stop run meanwhile ends that wait, and they say so, nothing changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pgmgr.core import privileges, process, server
from pgmgr.core.versions import Installation
from tests.helpers import wait_for_note
from tests.reliability.conftest import Inst, InstFactory, one_error, pgmgr, pgmgr_argv

WORK = {
    "snapshot": ("snapshot", "{name}", "s1", "--online", "--json"),
    "upgrade": ("upgrade", "{name}", "-v", "18", "--check", "--json"),
}


def _recovering(inst: Inst) -> tuple[int, list[int], str]:
    """The instance's server spawned by another process after a crash, its startup
    process and checkpointer frozen during the recovery (tried again when the recovery
    was over first); its pid, theirs, and a canary committed before the crash."""
    assert inst.start("-p", "auto").returncode == 0
    token = inst.commit_canary()
    inst.sql(
        "CREATE TABLE filler AS SELECT g, repeat('x', 200) AS t FROM generate_series(1, 100000) g"
    )
    assert inst.stop("-m", "immediate").returncode == 0  # the next start recovers
    pid, frozen = spawn_frozen(inst, "spawn.log", "the recovery")
    return pid, frozen, token


def spawn_frozen(inst: Inst, log: str, what: str) -> tuple[int, list[int]]:
    """``inst``'s server (stopped by an immediate stop) spawned by another process, its
    startup process and checkpointer frozen while it recovers (:func:`freeze_recovery`;
    stopped immediately and tried again when ``what`` was over first); its pid, theirs."""
    rec = inst.record()
    install = Installation(rec["major"], rec["version"], Path(rec["bindir"]), "record")
    su = privileges.server_user(inst.datadir, rec.get("server_user"))
    argv = server.postgres_argv(
        install, inst.datadir, host="127.0.0.1", port=rec["port"],
        socket_dir=Path(rec["socket_dir"]), settings={},
    )  # fmt: skip
    for _ in range(20):
        child = server.spawn(argv, inst.datadir.parent / log, su)
        frozen = freeze_recovery(inst.datadir, child.pid)
        if frozen is not None:
            return child.pid, frozen
        server.stop(child.pid, inst.datadir, "immediate", 10)  # it recovers next time
        child.wait(10)
    raise AssertionError(f"never caught {what} in 20 attempts")


def freeze_recovery(datadir: Path, postmaster: int) -> list[int] | None:
    """Freeze (SIGSTOP) the startup process and checkpointer of ``postmaster``, which
    recovers from a crash; their pids, or None (all thawed again) when the recovery was
    over first."""
    frozen: list[int] = []
    deadline = time.monotonic() + 10
    while len(frozen) < 2 and time.monotonic() < deadline and process.is_alive(postmaster):
        for pid in process.children(postmaster):
            title = " ".join(process.cmdline(pid))
            if pid not in frozen and ("startup" in title or "checkpointer" in title):
                os.kill(pid, signal.SIGSTOP)
                frozen.append(pid)
    pf = process.PidFile.read(datadir)
    if len(frozen) == 2 and pf is not None and pf.pid == postmaster and pf.phase == "starting":
        return frozen
    _thaw(frozen)
    return None


def _signals_pending(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    return any(
        int(ln.split()[1], 16)
        for ln in status.splitlines()
        if ln.startswith(("ShdPnd:", "SigPnd:"))
    )


def _thaw(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _background(inst: Inst, what: str) -> subprocess.Popen[str]:
    args = [a.format(name=inst.name) for a in WORK[what]]
    return subprocess.Popen(
        pgmgr_argv(*args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("what", sorted(WORK))
def test_work_on_a_starting_server_waits_for_it_to_be_ready(
    cluster: InstFactory, what: str
) -> None:
    inst = cluster()
    pid, frozen, token = _recovering(inst)
    try:
        proc = _background(inst, what)
        time.sleep(1.5)
        assert proc.poll() is None, proc.communicate()  # waits for ready, not failed
    finally:
        _thaw(frozen)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in err, err
    result = json.loads(out)
    if what == "snapshot":
        assert result["kind"] == "online" and result["downtime_ms"] is None, result
    else:
        assert result["check_only"] is True, result
    assert inst.pid() == pid and process.PidFile.read(inst.datadir).status == "ready"  # type: ignore[union-attr]
    assert inst.has_canary(token)
    assert inst.stop().returncode == 0


@pytest.mark.parametrize("what", sorted(WORK))
def test_a_stop_ends_the_wait_and_the_work_says_so(cluster: InstFactory, what: str) -> None:
    """A stop run while the command waits for the starting server ends that wait (it
    stops the server, as behind a start), at once; the command says which stop stopped
    it, exit 3, nothing changed."""
    inst = cluster()
    pid, frozen, token = _recovering(inst)
    try:
        proc = _background(inst, what)
        wait_for_note(inst.datadir, proc)  # it waits for ready: the stop will see it
        stop = subprocess.Popen(
            pgmgr_argv("stop", inst.name),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30  # its signal reached the frozen recovery
        while not any(_signals_pending(p) for p in frozen):
            assert time.monotonic() < deadline and stop.poll() is None, stop.communicate()
            time.sleep(0.01)
    finally:
        _thaw(frozen)
    _, said = stop.communicate(timeout=60)
    assert stop.returncode == 0, said
    assert f"'pgmgr {WORK[what][0]}' (pgmgr pid {proc.pid}) waited for it to be ready" in said
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "Traceback" not in err, err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    assert "was starting" in line and "a fast stop" in line and "nothing was changed" in line
    assert not process.is_alive(pid) and inst.status().json()["state"] == "stopped"
    assert inst.start().returncode == 0 and inst.has_canary(token)
    assert inst.stop().returncode == 0


def test_work_on_a_stopping_server_is_refused_in_one_line(cluster: InstFactory) -> None:
    """A server a smart stop of another process (pg_ctl, another registration) shuts
    down: refused in one line that says so and what to do, not pg_basebackup's text."""
    inst = cluster()
    assert inst.start("-p", "auto").returncode == 0
    conn = inst.connect(autocommit=True)
    pid = inst.pid()
    assert pid is not None
    try:
        os.kill(pid, signal.SIGTERM)  # smart: waits for the client
        deadline = time.monotonic() + 30
        while (pf := process.PidFile.read(inst.datadir)) is None or pf.status != "stopping":
            assert time.monotonic() < deadline, "never stopping"
            time.sleep(0.01)
        for what in sorted(WORK):
            run = pgmgr(*[a.format(name=inst.name) for a in WORK[what]])
            err = one_error(run)
            assert run.returncode == 3 and "is shutting down; nothing was changed" in err, err
            assert "-m fast" in run.stderr, str(run)
    finally:
        conn.close()
    assert process.wait_gone(pid, inst.datadir, 30)


def test_a_start_that_lasts_is_waited_for_a_bounded_time(cluster: InstFactory) -> None:
    """Still starting after the wait (30 s for the commands; 1 s here, in-process): one
    line that says so and what to do; the server another process starts is left be."""
    from pgmgr.core.errors import WorkerError
    from pgmgr.core.instance import Server
    from pgmgr.core.locked import locked
    from pgmgr.core.readyfirst import ready_first

    inst = cluster()
    pid, frozen, _ = _recovering(inst)
    try:
        with locked(Server.load(inst.name)) as srv, pytest.raises(WorkerError) as e:
            ready_first(srv, "snapshot", f"take an online snapshot of '{inst.name}'", 1.0)
        assert e.value.message == (
            f"cannot take an online snapshot of '{inst.name}': '{inst.name}' (pid {pid}) is "
            "still starting after 1 s (crash recovery, or a standby catching up), started by "
            "another process; nothing was changed"
        )
        assert e.value.hint and "--timeout 600" in e.value.hint
        assert process.is_alive(pid) and process.PidFile.read(inst.datadir).phase == "starting"  # type: ignore[union-attr]
    finally:
        _thaw(frozen)
    assert inst.start().returncode == 0 and inst.stop().returncode == 0


def test_a_replica_of_a_starting_or_stopping_server_is_refused_in_one_line(
    cluster: InstFactory,
) -> None:
    """'pgmgr replica SRC' of a SRC another process is still starting (or stopping) was
    made, then undone, on the error of the first connection ("the database system is
    starting up"): now refused before anything is made, saying so and what to do."""
    inst = cluster()
    pid, frozen, _ = _recovering(inst)
    try:
        run = pgmgr("replica", inst.name)
        err = one_error(run)
        assert run.returncode == 3 and "is still starting" in err, str(run)
        assert "nothing was created" in err and "pgmgr status" in run.stderr, str(run)
        assert not (inst.datadir.parent / f"{inst.name}-replica").exists()
        assert pgmgr("status", f"{inst.name}-replica").returncode == 4
    finally:
        _thaw(frozen)
    assert inst.start().returncode == 0
    conn = inst.connect(autocommit=True)
    pid = inst.pid()
    assert pid is not None
    try:
        os.kill(pid, signal.SIGTERM)  # a smart stop of another process, held by the client
        deadline = time.monotonic() + 30
        while (pf := process.PidFile.read(inst.datadir)) is None or pf.status != "stopping":
            assert time.monotonic() < deadline, "never stopping"
            time.sleep(0.01)
        run = pgmgr("replica", inst.name)
        err = one_error(run)
        assert run.returncode == 3 and "is shutting down" in err, str(run)
    finally:
        conn.close()
    assert process.wait_gone(pid, inst.datadir, 30)
