"""The commands that connect to a running server (reload, export, config, extensions, psql)
on one another process is still starting or stopping, on real servers: a crash recovery
frozen as in :mod:`tests.reliability.test_ready_before_work`, and a smart stop held open by
a client.

They failed at once with libpq's text ("cannot connect to db: connection failed:
connection to server on socket ... failed: FATAL: the database system is starting up"; a
'config set' had kept its settings by then). Now they wait for ready, as 'pgmgr start'
does, then do their work; a stop meanwhile ends the wait (exit 3, nothing changed), and a
server shutting down is refused in one line, as an online snapshot and an upgrade are.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pgmgr.core import process
from tests.helpers import wait_for_note
from tests.reliability.conftest import Inst, InstFactory, one_error, pgmgr, pgmgr_argv
from tests.reliability.test_ready_before_work import (
    _recovering,
    _signals_pending,
    _thaw,
    spawn_frozen,
)

WORK = {
    "reload": ("reload", "{name}", "--json"),
    "export": ("export", "{name}", "{work}/bundle", "--json"),
    "config-set": ("config", "{name}", "set", "work_mem=2MB", "--json"),
    "config": ("config", "{name}", "--json"),
    "extensions": ("extensions", "{name}", "--json"),
    "psql": ("psql", "{name}", "-X", "-A", "-t", "-c", "SELECT 'psql-ran'"),
}


def _argv(inst: Inst, work: Path, what: str) -> list[str]:
    return [a.format(name=inst.name, work=work) for a in WORK[what]]


def _background(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        pgmgr_argv(*args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _did(inst: Inst, work: Path, what: str, out: str) -> None:
    """What each command did, once the server was ready."""
    if what == "psql":
        assert out.strip() == "psql-ran", out
        return
    result = json.loads(out)
    if what == "reload":
        assert result["conf_load_time"] > result["conf_load_time_before"], result
    elif what == "export":
        assert (work / "bundle" / "manifest.json").is_file(), result
    elif what == "config-set":
        # kept, and read from the server once ready (the test's spawn reads no pgmgr.conf:
        # not reloaded, it says it waits for a restart)
        (entry,) = result["settings"]
        assert entry["value"] == "2MB" and entry["live"] == "4MB", result
        assert inst.record()["settings"] == {"work_mem": "2MB"}, result
    elif what == "config":
        assert result["name"] == inst.name and result["running"] is True, result
    else:
        assert result["running"] is True and result["instance"] == inst.name, result


@pytest.mark.parametrize("what", sorted(WORK))
def test_a_command_on_a_starting_server_waits_for_it_to_be_ready(
    cluster: InstFactory, work: Path, what: str
) -> None:
    inst = cluster()
    pid, frozen, token = _recovering(inst)
    try:
        proc = _background(*_argv(inst, work, what))
        time.sleep(1.5)
        assert proc.poll() is None, proc.communicate()  # waits for ready, not failed
    finally:
        _thaw(frozen)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in err and "starting up" not in err, err
    _did(inst, work, what, out)
    assert inst.pid() == pid and inst.has_canary(token)
    assert inst.stop().returncode == 0


@pytest.mark.parametrize("what", ["reload", "config-set", "psql"])
def test_a_stop_ends_the_wait_and_the_command_says_so(
    cluster: InstFactory, work: Path, what: str
) -> None:
    """A stop run while the command waits for the starting server stops it at once, as
    behind a start; the command says which stop stopped it, exit 3, nothing changed."""
    inst = cluster()
    pid, frozen, token = _recovering(inst)
    kept = inst.record()["settings"]
    try:
        proc = _background(*_argv(inst, work, what))
        wait_for_note(inst.datadir, proc)  # it waits for ready: the stop will see it
        stop = _background("stop", inst.name)
        deadline = time.monotonic() + 30  # its signal reached the frozen recovery
        while not any(_signals_pending(p) for p in frozen):
            assert time.monotonic() < deadline and stop.poll() is None, stop.communicate()
            time.sleep(0.01)
    finally:
        _thaw(frozen)
    _, said = stop.communicate(timeout=60)
    assert stop.returncode == 0, said
    command = WORK[what][0]
    assert f"'pgmgr {command}' (pgmgr pid {proc.pid}) waited for it to be ready" in said
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "Traceback" not in err, err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    assert "was starting" in line and "a fast stop" in line and "nothing was changed" in line
    assert not process.is_alive(pid) and inst.status().json()["state"] == "stopped"
    assert inst.record()["settings"] == kept  # 'config set' kept nothing
    assert inst.start().returncode == 0 and inst.has_canary(token)
    assert inst.stop().returncode == 0


def test_a_command_behind_a_start_that_waits_for_the_recovery(
    cluster: InstFactory, work: Path
) -> None:
    """Behind a 'pgmgr start' that waits (holding the instance) for a server in crash
    recovery: the reload waits for that start, then reloads."""
    inst = cluster()
    pid, frozen, _ = _recovering(inst)
    try:
        start = _background("start", inst.name, "--timeout", "120")
        wait_for_note(inst.datadir, start)  # the start waits for ready now
        proc = _background(*_argv(inst, work, "reload"))
        time.sleep(1.5)
        assert proc.poll() is None, proc.communicate()
    finally:
        _thaw(frozen)
    _, err = start.communicate(timeout=120)
    assert start.returncode == 0, err
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in err, err
    _did(inst, work, "reload", out)
    assert inst.pid() == pid and inst.stop().returncode == 0


def test_a_command_on_a_stopping_server_is_refused_in_one_line(
    cluster: InstFactory, work: Path
) -> None:
    """A server a smart stop of another process shuts down: each command refuses in one
    line that says so and what to do, not libpq's "the database system is shutting down"."""
    inst = cluster()
    assert inst.start("-p", "auto").returncode == 0
    kept = inst.record()["settings"]
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
            run = pgmgr(*_argv(inst, work, what))
            err = one_error(run)
            assert run.returncode == 3 and "is shutting down; nothing was changed" in err, err
            assert "-m fast" in run.stderr, str(run)
        check = pgmgr("status", inst.name, "--check", "--json")
        assert check.json()["state"] == "stopping" and check.json()["detail"] is None, str(check)
    finally:
        conn.close()
    assert process.wait_gone(pid, inst.datadir, 30)
    assert not (work / "bundle").exists() and inst.record()["settings"] == kept


def test_status_check_of_a_starting_server_says_starting_only(cluster: InstFactory) -> None:
    """'status --check' connected to a starting server too, and put libpq's text in
    the detail ("unreachable: ... the database system is starting up")."""
    inst = cluster()
    _, frozen, _ = _recovering(inst)
    try:
        run = pgmgr("status", inst.name, "--check", "--json")
    finally:
        _thaw(frozen)
    assert run.json()["state"] == "starting" and run.json()["detail"] is None, str(run)
    assert inst.start().returncode == 0 and inst.stop().returncode == 0


def _standby_recovering(rep: Inst) -> tuple[int, list[int]]:
    """``rep``'s standby spawned by another process after an immediate stop, its startup
    process and checkpointer frozen before it is consistent (postmaster.pid says
    ``starting``, not ``standby``: it refuses connections); its pid, theirs."""
    assert rep.stop("-m", "immediate").returncode == 0
    return spawn_frozen(rep, "spawn-rep.log", "the standby before it was consistent")


def test_a_promote_of_a_starting_standby_waits_for_it(cluster: InstFactory, work: Path) -> None:
    """'pgmgr promote' of a standby another process still starts (before it is consistent)
    failed with libpq's "the database system is starting up": it waits, then promotes."""
    inst = cluster()
    assert inst.start("-p", "auto").returncode == 0
    made = pgmgr("replica", inst.name, "--name", "rep", "-p", "auto", timeout=120)
    assert made.returncode == 0, str(made)
    rep = Inst("rep", work / "rep")
    try:
        pid, frozen = _standby_recovering(rep)
        try:
            proc = _background("promote", "rep", "--json")
            time.sleep(1.5)
            assert proc.poll() is None, proc.communicate()  # waits for ready, not failed
        finally:
            _thaw(frozen)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "Traceback" not in err, err
        assert rep.pid() == pid and rep.sql("SELECT pg_is_in_recovery()") == [(False,)], out
    finally:
        pgmgr("stop", "rep", "-m", "immediate")
    assert inst.stop().returncode == 0


def test_a_standby_destroyed_while_its_primary_starts_says_so(
    cluster: InstFactory, work: Path
) -> None:
    """A destroy of a standby cleans up on its primary when that runs, without waiting
    for it: one another process still starts is named as such in the note of what is
    left there, not with libpq's text."""
    inst = cluster()
    assert inst.start("-p", "auto").returncode == 0
    made = pgmgr("replica", inst.name, "--name", "rep", "-p", "auto", timeout=120)
    assert made.returncode == 0, str(made)
    pgmgr("stop", "rep", "-m", "fast")
    pid, frozen, _ = _recovering(inst)
    try:
        run = pgmgr("destroy", "rep", "--yes")
    finally:
        _thaw(frozen)
    assert run.returncode == 0, str(run)
    (note,) = [ln for ln in run.stderr.splitlines() if ln.startswith("Note:")]
    assert f"(cannot connect to {inst.name}: it (pid {pid}) is still starting and" in note, note
    assert "starting up" not in run.stderr and "socket" not in run.stderr, str(run)
    assert inst.start().returncode == 0 and inst.stop().returncode == 0
