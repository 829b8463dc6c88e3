"""A stop behind a stop in progress (see pgmgr.core.stopwait), on real servers.

A smart stop held open by a client session holds the instance's lock while it waits; its
own error says to stop with ``-m fast``. That stronger stop (the CLI's, the library's) takes
the shutdown over and returns once the server is down; the smart stop then says who ended it.
A stop as strong waits for it (its timeout), and a start behind it starts one server, after.
A start waiting for its server to be ready (crash recovery) holds the lock too: a stop
behind it stops the server, and the start says so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from pgmgr.core import process
from pgmgr.core.errors import Busy
from pgmgr.core.instance import Server
from pgmgr.core.locked import locked
from tests.helpers import killed, postmasters_under, wait_for_note
from tests.pause import Paused
from tests.reliability.conftest import (
    Inst,
    InstFactory,
    one_error,
    pgmgr,
    pgmgr_argv,
    start_frozen_before_ready,
)
from tests.reliability.test_ready_before_work import freeze_recovery
from tests.reliability.test_start_states import _spawn_frozen_in_starting


def _smart_stop_waiting(inst: Inst, command: str = "stop") -> tuple[subprocess.Popen[str], Any]:
    """``pgmgr COMMAND NAME -m smart`` (a stop, ``--json``; or a restart) waiting for a
    client session (returned, open)."""
    assert inst.start("-p", "auto").returncode == 0
    conn = inst.connect(autocommit=True)
    json = ["--json"] if command == "stop" else []
    proc = subprocess.Popen(
        pgmgr_argv(command, inst.name, "-m", "smart", "--timeout", "120", *json),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while (pf := process.PidFile.read(inst.datadir)) is None or pf.status != "stopping":
        assert time.monotonic() < deadline and proc.poll() is None, f"no smart {command} began"
        time.sleep(0.005)
    return proc, conn


def _ended(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, dict[str, Any], str]:
    import json

    out, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in err, err
    return proc.returncode, json.loads(out) if out else {}, err


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_stronger_stop_ends_a_smart_stop_in_progress(cluster: InstFactory, mode: str) -> None:
    inst = cluster()
    smart, conn = _smart_stop_waiting(inst)
    try:
        pid = inst.pid()
        t0 = time.monotonic()
        run = inst.stop("-m", mode, "--json")
        assert run.returncode == 0, str(run)
        assert time.monotonic() - t0 < 20, str(run)  # not the lock's 30 s
        assert run.json()["was_running"] is True and run.json()["pid"] == pid, str(run)
        assert run.json()["took_over"]["mode"] == "smart", str(run)
        assert "this stop ended it" in run.stderr, str(run)
        assert pid is not None and not process.is_alive(pid)
        code, result, err = _ended(smart)
        assert code == 0, err
        assert result["was_running"] is True and result["ended_by"]["mode"] == mode, result
        assert f"ended by {'an' if mode == 'immediate' else 'a'} {mode} stop" in err, err
        assert inst.status().json()["state"] == "stopped"
    finally:
        conn.close()
        if smart.poll() is None:
            killed(smart)


def test_manager_stop_fast_ends_a_smart_stop_in_progress(cluster: InstFactory) -> None:
    from pgmgr import Manager

    inst = cluster()
    smart, conn = _smart_stop_waiting(inst)
    try:
        m = Manager("127.0.0.1", inst.record()["port"], inst.datadir)
        assert m.stop(mode="fast", timeout=20) is True
        assert inst.pid() is None
        code, result, err = _ended(smart)
        assert code == 0 and result["ended_by"]["mode"] == "fast", err
    finally:
        conn.close()
        if smart.poll() is None:
            killed(smart)


def test_an_equal_stop_waits_for_the_stop_in_progress_and_start_follows_it(
    cluster: InstFactory,
) -> None:
    """A second smart stop waits for the first within its own timeout and says why; a start
    behind the stop waits for it, then starts the one server (never a second beside it)."""
    inst = cluster()
    smart, conn = _smart_stop_waiting(inst)
    start = None
    try:
        run = inst.stop("-m", "smart", "--timeout", "1")
        err = one_error(run)
        assert run.returncode == 1 and "still being stopped by a smart stop" in err, str(run)
        assert "-m fast" in run.stderr, str(run)
        assert inst.status().json()["state"] == "stopping"
        what = r"a smart stop \(pgmgr pid \d+\) waits for the server to go"
        with pytest.raises(Busy, match=what) as busy, locked(Server.load(inst.name), 0.5):
            pass  # what any command says once its wait for the lock ends
        assert busy.value.hint and "-m fast" in busy.value.hint
        start = subprocess.Popen(
            pgmgr_argv("start", inst.name),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        assert start.poll() is None, start.communicate()  # waits behind the stop
        assert len(postmasters_under(inst.datadir)) == 1
    finally:
        conn.close()  # the smart stop completes
    code, result, err = _ended(smart)
    assert code == 0 and result["ended_by"] is None and "ended by" not in err, err
    _, err = start.communicate(timeout=60)
    assert start.returncode == 0 and "Started" in err, err
    assert len(postmasters_under(inst.datadir)) == 1
    assert inst.sql("SELECT 1") == [(1,)]
    assert inst.stop().returncode == 0


def _stop_in_background(inst: Inst) -> subprocess.Popen[str]:
    return subprocess.Popen(
        pgmgr_argv("stop", inst.name, "-m", "fast", "--json"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _pending(pid: int, sig: int) -> bool:
    """Whether the frozen ``pid`` has ``sig`` pending."""
    status = Path(f"/proc/{pid}/status").read_text()
    pending = [ln for ln in status.splitlines() if ln.startswith(("ShdPnd:", "SigPnd:"))]
    return any(int(ln.split()[1], 16) & (1 << (sig - 1)) for ln in pending)


def _signalled(pid: int, sig: int, timeout: float = 30) -> None:
    """Wait until the frozen ``pid`` has ``sig`` pending (a stop sent it)."""
    deadline = time.monotonic() + timeout
    while not _pending(pid, sig):
        assert time.monotonic() < deadline, "the stop never signalled the server"
        time.sleep(0.01)


def test_a_stop_ends_a_start_waiting_for_a_recovering_server(cluster: InstFactory) -> None:
    """A start that waits for a server still starting (crash recovery: held in 'starting'
    by SIGSTOP, see test_start_states) holds the lock; a stop behind it stops that server
    (the fast signal waits, pending, until the test lets it go on) and returns at once; the
    start says so, exit 3."""
    inst = cluster()
    assert inst.start("-p", "auto").returncode == 0
    assert inst.stop("-m", "immediate").returncode == 0  # the next start recovers
    pid = _spawn_frozen_in_starting(inst)
    stop = None
    start = subprocess.Popen(
        pgmgr_argv("start", inst.name, "--timeout", "120"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_note(inst.datadir, start)  # it waits for ready
        stop = _stop_in_background(inst)
        _signalled(pid, signal.SIGINT)
    finally:
        os.kill(pid, signal.SIGCONT)
    code, result, err = _ended(stop, 60)
    assert code == 0 and result["took_over"]["mode"] == "start", err
    assert "this stop ended that wait" in err, err
    _, err = start.communicate(timeout=60)
    assert start.returncode == 3 and "was stopped by a fast stop" in err, err
    assert not process.is_alive(pid) and inst.status().json()["state"] == "stopped"


def test_a_stop_ends_a_start_waiting_for_its_own_server(cluster: InstFactory, hooks: Path) -> None:
    """The same for the server the start spawned itself (frozen before it was ready)."""
    inst = cluster()
    assert inst.start("-p", "auto").returncode == 0 and inst.stop().returncode == 0
    paused, pid = start_frozen_before_ready(inst, hooks)
    with paused:
        try:
            (hooks / f"{paused.step}.go").touch()  # the start goes on to wait for ready
            wait_for_note(inst.datadir, paused.proc)
            stop = _stop_in_background(inst)
            _signalled(pid, signal.SIGINT)
        finally:
            os.kill(pid, signal.SIGCONT)
        code, result, err = _ended(stop, 60)
        assert code == 0 and result["took_over"]["mode"] == "start", err
        _, err = paused.proc.communicate(timeout=60)
        assert paused.proc.returncode == 3 and "was stopped by a fast stop" in err, err
    assert not process.is_alive(pid) and inst.status().json()["state"] == "stopped"
    assert inst.start().returncode == 0 and inst.stop().returncode == 0


def _start_init_stopped(work: Path, hooks: Path, *args: str) -> tuple[Path, list[str]]:
    """``pgmgr start --init -d WORK/fresh --name fresh ARGS`` whose wait for ready a
    'pgmgr stop' ends (its postmaster frozen before ready); the data directory and the
    postmaster's argv."""
    datadir = work / "fresh"
    for _attempt in range(10):
        caught = _start_init_frozen(datadir, hooks, *args)
        if caught is not None:
            return caught
    raise AssertionError("the postmaster was ready before it could be frozen, 10 times")


def _start_init_frozen(datadir: Path, hooks: Path, *args: str) -> tuple[Path, list[str]] | None:
    """:func:`_start_init_stopped` once; None when its postmaster was ready before the
    SIGSTOP (under load, the test's steps after the pause can take longer than its
    start-up): then the start applies the new password through a connection the frozen
    server never answers, and writes no note, as its wait was quick. The instance it made
    is destroyed."""
    with Paused(hooks, "start-spawned", "start", "--init", "-d", str(datadir), "--name",
                "fresh", *args) as paused:  # fmt: skip
        paused.reached()
        (pid,) = [p for p in process.children(paused.proc.pid) if "-D" in process.cmdline(p)]
        argv = process.cmdline(pid)
        os.kill(pid, signal.SIGSTOP)
        pf = process.PidFile.read(datadir)
        if pf is not None and pf.pid == pid and pf.phase in ("ready", "standby"):
            os.kill(pid, signal.SIGCONT)
            (hooks / f"{paused.step}.go").touch()
            _, err = paused.proc.communicate(timeout=60)
            assert paused.proc.returncode == 0, err
            for cmd in (("stop", "fresh", "-q"), ("destroy", "fresh", "--yes", "-q")):
                done = subprocess.run(pgmgr_argv(*cmd), capture_output=True, text=True)
                assert done.returncode == 0, done.stderr
            return None
        try:
            (hooks / f"{paused.step}.go").touch()
            wait_for_note(datadir, paused.proc)  # it waits for ready
            stop = subprocess.Popen(
                pgmgr_argv("stop", "fresh", "--json"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            _signalled(pid, signal.SIGINT)
        finally:
            os.kill(pid, signal.SIGCONT)
        code, result, err = _ended(stop, 60)
        _, started = paused.proc.communicate(timeout=60)
        assert code == 0 and result["took_over"]["mode"] == "start", (err, started)
        assert paused.proc.returncode == 3 and "was stopped by a fast stop" in started, started
    assert not process.is_alive(pid)
    return datadir, argv


def test_a_stop_during_start_init_keeps_the_new_instance(work: Path, hooks: Path) -> None:
    """A 'start --init' whose start a stop ends has not failed its init: the instance it
    made stays, stopped (a start that fails by itself removes it)."""
    datadir, _ = _start_init_stopped(work, hooks, "-p", "auto")
    assert (datadir / "PG_VERSION").is_file()  # kept
    run = pgmgr("start", "fresh", "-p", "auto")
    assert run.returncode == 0, str(run)
    assert pgmgr("stop", "fresh").returncode == 0


@pytest.mark.parametrize("asked", ["auto", "given"])
def test_a_start_init_ended_by_a_stop_records_what_it_started_with(
    work: Path, hooks: Path, asked: str
) -> None:
    """The instance a stop kept has the record a start then a stop leave: the port asked
    for (or chosen by '-p auto') and the -c settings, so that a later 'pgmgr start NAME'
    starts it as asked (its record had no port: 5432, and no settings)."""
    from pgmgr.core import listen, registry

    port = "auto" if asked == "auto" else str(listen.free_port("127.0.0.1"))
    _, argv = _start_init_stopped(work, hooks, "-p", port, "-c", "work_mem=7MB")
    ran_on = int(argv[argv.index("-p") + 1])
    assert port == "auto" or ran_on == int(port)
    rec = registry.load("fresh").to_dict()
    assert rec["port"] == ran_on and rec["pid"] is None, rec
    assert rec["settings"] == {"work_mem": "7MB"}, rec
    run = pgmgr("start", "fresh", "--json")
    try:
        assert run.returncode == 0 and run.json()["port"] == ran_on, str(run)
        pf = process.PidFile.read(work / "fresh")
        assert pf is not None and pf.port == ran_on
        with __import__("psycopg").connect(
            host=pf.socket_dir, port=ran_on, user="postgres", dbname="postgres"
        ) as conn:
            assert conn.execute("SHOW work_mem").fetchone() == ("7MB",)
    finally:
        assert pgmgr("stop", "fresh").returncode == 0


def test_a_stop_behind_a_smart_restart_ends_its_stop_then_stops_what_it_started(
    cluster: InstFactory,
) -> None:
    """A restart's smart stop is taken over as a stop's is: the restart goes on (it starts
    the server again, with a new pid), and the stop behind it stops that one: stopped last,
    as asked last."""
    inst = cluster()
    restart, conn = _smart_stop_waiting(inst, "restart")
    try:
        run = inst.stop("-m", "fast", "--json")
        assert run.returncode == 0 and run.json()["took_over"]["mode"] == "smart", str(run)
        assert "of 'pgmgr restart'" in run.stderr, str(run)
    finally:
        conn.close()
    _, err = restart.communicate(timeout=60)
    assert restart.returncode == 0 and "Restarted" in err, err
    assert inst.pid() is None and inst.status().json()["state"] == "stopped"


def test_an_immediate_stop_leaves_a_snapshots_fast_stop_alone(cluster: InstFactory) -> None:
    """A snapshot copies a cleanly shut-down server: a stop behind its stop waits for it,
    and never turns it into an immediate one. (Its checkpointer is frozen, so that the
    shutdown checkpoint of its fast stop lasts while postmaster.pid says stopping.)"""
    inst = cluster()
    assert inst.start("-p", "auto").returncode == 0
    pid = inst.pid()
    assert pid is not None
    (ckpt,) = [p for p in process.children(pid) if "checkpointer" in " ".join(process.cmdline(p))]
    log = Path(inst.record()["log_file"])
    os.kill(ckpt, signal.SIGSTOP)
    snap = subprocess.Popen(
        pgmgr_argv("snapshot", inst.name),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while (pf := process.PidFile.read(inst.datadir)) is None or pf.status != "stopping":
            assert time.monotonic() < deadline and snap.poll() is None, "no stop began"
            time.sleep(0.005)
        wait_for_note(inst.datadir, snap)  # its stop waits: the next one sees it
        run = inst.stop("-m", "immediate", "--timeout", "1")
        err = one_error(run)
        assert "still being stopped by a fast stop of 'pgmgr snapshot'" in err, str(run)
        # the way out is to wait: an immediate stop (which the hint said) does not end it
        (hint,) = [ln for ln in run.stderr.splitlines() if ln.startswith("Hint:")]
        assert "wait for 'pgmgr snapshot'" in hint and "-m immediate" not in hint, hint
        with pytest.raises(Busy) as busy, locked(Server.load(inst.name), 0.5):
            pass
        assert busy.value.hint and "-m immediate" not in busy.value.hint, busy.value.hint
        assert "immediate shutdown request" not in log.read_text()
    finally:
        os.kill(ckpt, signal.SIGCONT)
    _, err = snap.communicate(timeout=120)
    assert snap.returncode == 0, err
    assert inst.status().json()["state"] == "running"
    assert inst.stop().returncode == 0


def test_a_fast_restart_ends_a_smart_stop_in_progress_and_starts_again(
    cluster: InstFactory,
) -> None:
    """``pgmgr restart -m fast`` behind a smart stop held open by a client takes that stop
    over as ``pgmgr stop -m fast`` does (not 30 s for the lock, then an error naming it),
    then starts the server again; the smart stop says a fast stop of a restart ended it."""
    inst = cluster()
    smart, conn = _smart_stop_waiting(inst)
    try:
        pid = inst.pid()
        t0 = time.monotonic()
        run = pgmgr("restart", inst.name, "-m", "fast", "--json")
        assert run.returncode == 0, str(run)
        assert time.monotonic() - t0 < 20, str(run)  # not the lock's 30 s
        assert run.json()["was_running"] is True and run.json()["state"] == "running", str(run)
        assert run.json()["took_over"]["mode"] == "smart", str(run)
        assert pid is not None and not process.is_alive(pid) and inst.pid() != pid
        code, result, err = _ended(smart)
        assert code == 0 and result["ended_by"]["mode"] == "fast", err
        assert "of 'pgmgr restart'" in err, err  # why it runs again, though it 'stopped'
    finally:
        conn.close()
        if smart.poll() is None:
            smart.kill()
            smart.communicate()
    assert inst.sql("SELECT 1") == [(1,)]
    assert len(postmasters_under(inst.datadir)) == 1
    assert inst.stop().returncode == 0


def test_a_command_behind_a_smart_restart_is_told_to_restart_fast(cluster: InstFactory) -> None:
    """Behind a restart's smart stop, the way out is 'restart -m fast' (it ends that stop,
    and the server runs after both), not 'stop -m fast', which the errors said: the
    restart then started the server again and that stop, behind it, stopped it for good."""
    inst = cluster()
    first, conn = _smart_stop_waiting(inst, "restart")
    try:
        wait_for_note(inst.datadir, first)  # its stop waits: the next one sees it
        way_out = f"'pgmgr restart {inst.name} -m fast'"
        run = inst.stop("-m", "smart", "--timeout", "1")
        assert "of 'pgmgr restart'" in one_error(run) and way_out in run.stderr, str(run)
        with pytest.raises(Busy) as busy, locked(Server.load(inst.name), 0.5):
            pass  # what any command says once its wait for the lock ends
        assert busy.value.hint and way_out in busy.value.hint, busy.value.hint
        run = pgmgr("restart", inst.name, "-m", "fast", "--json")
        assert run.returncode == 0 and run.json()["took_over"]["mode"] == "smart", str(run)
    finally:
        conn.close()
    _, err = first.communicate(timeout=60)
    assert first.returncode == 0 and "ended by a fast stop of 'pgmgr restart'" in err, err
    assert inst.status().json()["state"] == "running"
    assert inst.sql("SELECT 1") == [(1,)]
    assert inst.stop().returncode == 0


def test_a_stop_from_outside_pgmgr_during_start_init_keeps_the_new_instance(
    work: Path, hooks: Path
) -> None:
    """A stop that is not this registration's 'pgmgr stop' ('pg_ctl stop', systemd, the
    pgmgr of another registration of the directory, whose lock and note are its own) sends
    the same signal; the start saw postgres exit, called it a failed start and undid its
    init: the data directory removed. It says a fast shutdown was asked for (exit 3) and
    keeps the instance, as for a 'pgmgr stop'."""
    datadir = work / "fresh"
    with Paused(hooks, "start-spawned", "start", "--init", "-d", str(datadir), "--name",
                "fresh", "-p", "auto") as paused:  # fmt: skip
        paused.reached()
        (pid,) = [p for p in process.children(paused.proc.pid) if "-D" in process.cmdline(p)]
        os.kill(pid, signal.SIGSTOP)
        try:
            (hooks / f"{paused.step}.go").touch()
            wait_for_note(datadir, paused.proc)  # it waits for ready
            os.kill(pid, signal.SIGINT)  # what 'pg_ctl stop -m fast' sends
        finally:
            os.kill(pid, signal.SIGCONT)
        _, err = paused.proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert paused.proc.returncode == 3 and "shutdown request from outside" in err, err
    assert (datadir / "PG_VERSION").is_file()  # kept
    run = pgmgr("start", "fresh")
    assert run.returncode == 0, str(run)
    assert pgmgr("stop", "fresh").returncode == 0


def test_a_stop_from_outside_pgmgr_during_a_recovery_is_said_as_such(
    cluster: InstFactory, hooks: Path
) -> None:
    """The same once postgres handles the request (it exits 0 then): a start waiting for
    its server's crash recovery (startup process and checkpointer frozen) that 'pg_ctl
    stop' ends says so, exit 3, not "postgres exited during start-up"."""
    inst = cluster()
    assert inst.start("-p", "auto").returncode == 0
    inst.sql(
        "CREATE TABLE filler AS SELECT g, repeat('x', 200) AS t FROM generate_series(1, 100000) g"
    )
    for _ in range(10):
        assert inst.stop("-m", "immediate").returncode == 0  # the next start recovers
        with Paused(hooks, "start-spawned", "start", inst.name) as paused:
            paused.reached()
            (pid,) = [p for p in process.children(paused.proc.pid) if "-D" in process.cmdline(p)]
            (hooks / f"{paused.step}.go").touch()
            frozen = freeze_recovery(inst.datadir, pid)
            if frozen is None:  # recovered first: again
                _, err = paused.proc.communicate(timeout=60)
                assert paused.proc.returncode == 0, err
                continue
            try:
                os.kill(pid, signal.SIGINT)  # what 'pg_ctl stop -m fast' sends
                log = Path(inst.record()["log_file"])
                deadline = time.monotonic() + 30  # postgres took it (its children are frozen)
                while "received fast shutdown request" not in log.read_text()[-2000:]:
                    assert time.monotonic() < deadline, "postgres never took the request"
                    time.sleep(0.01)
            finally:
                for p in frozen:
                    os.kill(p, signal.SIGCONT)
            _, err = paused.proc.communicate(timeout=60)
        assert "Traceback" not in err, err
        assert paused.proc.returncode == 3 and "shutdown request from outside" in err, err
        assert not process.is_alive(pid) and inst.status().json()["state"] == "stopped"
        return
    raise AssertionError("the recovery was over before the test could freeze it, 10 times")
