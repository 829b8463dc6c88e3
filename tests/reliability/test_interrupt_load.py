"""Faults 8, 10 and 11: Ctrl-C, clients that hold a smart stop, and a restart under load."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from pgmgr.core import process
from tests.pause import Paused
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

PGBENCH = Path("/usr/lib/postgresql/15/bin/pgbench")


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in process.children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def _init_running_initdb(datadir: Path) -> subprocess.Popen[bytes]:
    """``pgmgr init`` that runs initdb itself (no template copy)."""
    return subprocess.Popen(
        pgmgr_argv("init", "-d", str(datadir), "-v", "15"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PGMGR_NO_TEMPLATE": "1"},
    )


def _wait_for_initdb(proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in descendants(proc.pid):
            argv = process.cmdline(pid)
            if argv and os.path.basename(argv[0]) == "initdb":
                return pid
        assert proc.poll() is None, "pgmgr finished before initdb was seen"
        time.sleep(0.002)
    raise AssertionError("initdb never ran")


# --------------------------------------------------------------------------- 8: Ctrl-C


@pytest.mark.parametrize("existing", [False, True], ids=["pgmgr-made", "pre-existing-empty"])
def test_ctrl_c_during_init(work: Path, existing: bool) -> None:
    datadir = work / "data"
    if existing:
        datadir.mkdir(mode=0o755)
        if os.geteuid() == 0:
            shutil.chown(datadir, "postgres", "postgres")
    proc = _init_running_initdb(datadir)
    initdb = _wait_for_initdb(proc)
    time.sleep(0.1)  # let initdb start writing
    proc.send_signal(signal.SIGINT)  # to pgmgr alone, as `kill -INT`
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert b"Traceback" not in err
    assert not process.is_alive(initdb)
    left = wait_gone_all(work)
    assert not left, f"initdb/postgres left running: {left}"
    if existing:
        assert datadir.is_dir() and os.listdir(datadir) == []  # kept, and empty
    else:
        assert not datadir.exists()  # pgmgr made it, pgmgr removed it
    assert pgmgr("status", "--json").json() == []  # nothing registered
    run = pgmgr("start", "--init", "-d", str(datadir), "--port", "auto")  # and it still works
    assert run.returncode == 0, str(run)
    inst = Inst(datadir.name, datadir)
    assert inst.sql("SELECT 1") == [(1,)]
    assert pgmgr("stop", "-d", str(datadir)).returncode == 0


def test_ctrl_c_during_init_stops_initdbs_postgres(work: Path) -> None:
    """initdb runs postgres (bootstrap, then single-user) as its own child: a Ctrl-C stops
    that child too, before pgmgr removes the directory it writes in. Held stopped here,
    the child cannot end by itself when initdb goes (EOF on its input); pgmgr killed only
    initdb before, and the child outlived the command."""
    datadir = work / "data"
    proc = _init_running_initdb(datadir)
    initdb = _wait_for_initdb(proc)
    held = _hold_initdbs_postgres(proc, initdb)
    try:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert not process.is_alive(held), "initdb's postgres outlived pgmgr"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(held, signal.SIGKILL)
            os.kill(held, signal.SIGCONT)
    assert wait_gone_all(work) == []
    assert not datadir.exists()
    assert pgmgr("status", "--json").json() == []


def _hold_initdbs_postgres(proc: subprocess.Popen[bytes], initdb: int) -> int:
    """Stop (SIGSTOP) the postgres initdb runs in bootstrap or single-user mode, once it
    runs. Not initdb's first child: that was a short-lived 'sh -c "postgres -V"' (or
    --check), gone when a test descheduled for a few ms sent its SIGSTOP (ProcessLookupError)."""
    deadline = time.monotonic() + 30
    while True:
        for pid in descendants(initdb):
            if {"--boot", "--single"} & set(process.cmdline(pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                    if process.is_alive(pid):  # held, not a zombie
                        return pid
        assert time.monotonic() < deadline and proc.poll() is None, "initdb ran no postgres"
        time.sleep(0.002)


def wait_gone_all(root: Path, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := postgres_pids_under(root)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return left


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_ctrl_c_during_start(cluster: InstFactory, hooks: Path, sig: int) -> None:
    """Documented outcome: the start is cancelled, the server pgmgr spawned is stopped.
    pgmgr waits for a postmaster that cannot become ready (frozen from its spawn on) when
    the Ctrl-C comes. The test used to spot the spawned postmaster by polling and freeze
    it then: late by ~150 ms (a start's time), it found the start done (exit 0).
    SIGTERM (a CI timeout, ``timeout``, systemd) and SIGHUP (a closed terminal) act like
    Ctrl-C: they killed pgmgr outright and left the server running, unrecorded."""
    inst = cluster()
    assert inst.start("--port", "auto").returncode == 0
    token = inst.commit_canary()
    assert inst.stop().returncode == 0
    paused, child = start_frozen_before_ready(inst, hooks)
    proc = paused.proc
    try:
        (hooks / "start-spawned.go").touch()  # on into its wait for the server
        time.sleep(0.05)  # in that wait, most likely; the same handler acts just before it
        proc.send_signal(sig)
        time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGCONT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert wait_gone_all(inst.datadir) == [], (child, err)
    assert assert_truthful(inst) == "stopped"
    assert inst.start().returncode == 0 and inst.has_canary(token)
    assert inst.stop().returncode == 0
    no_orphans(inst)


def test_ctrl_c_between_spawn_and_wait(cluster: InstFactory, hooks: Path) -> None:
    """A Ctrl-C after postgres is spawned but before pgmgr waits for it (CI once caught
    one there: 'Interrupted', exit 130, and the server left running unrecorded in its own
    session). The test-only pause holds pgmgr in that window; on the old code the
    postmaster and its children outlived the command."""
    inst = cluster()
    assert inst.start("--port", "auto").returncode == 0
    token = inst.commit_canary()
    assert inst.stop().returncode == 0
    paused = Paused(hooks, "start-spawned", "start", inst.name, "--port", "auto")
    paused.reached()
    assert postgres_pids_under(inst.datadir)  # spawned: the window is real
    assert paused.kill(signal.SIGINT) == 130
    assert wait_gone_all(inst.datadir) == []
    assert assert_truthful(inst) == "stopped"
    assert inst.start().returncode == 0 and inst.has_canary(token)
    assert inst.stop().returncode == 0
    no_orphans(inst)


# --------------------------------------------------------------------------- 10: smart stop


def test_smart_stop_waits_then_names_the_sessions(cluster: InstFactory) -> None:
    inst = cluster()
    assert inst.start("--port", "auto").returncode == 0
    token = inst.commit_canary()
    conn = inst.connect(autocommit=True)
    t0 = time.monotonic()
    run = inst.stop("-m", "smart", "--timeout", "1")
    waited = time.monotonic() - t0
    err = one_error(run)
    assert waited >= 1.0
    assert "1 client session" in err and "smart" in err, str(run)
    assert "Hint:" in run.stderr and "-m fast" in run.stderr
    assert conn.execute("SELECT 42").fetchone() == (42,)  # smart never cut it off
    assert assert_truthful(inst) == "stopping"
    run = inst.stop("-m", "fast")
    assert run.returncode == 0, str(run)
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    assert assert_truthful(inst) == "stopped"
    no_orphans(inst)
    assert inst.start().returncode == 0 and inst.has_canary(token)
    assert inst.stop("-m", "smart").returncode == 0  # nobody connected: smart just stops


# --------------------------------------------------------------------------- 11: load


LEDGER_SCRIPT = (
    "\\set n :n + 1\nINSERT INTO ledger (run, client, n) VALUES (:run, :client_id, :n);\n"
)


@pytest.mark.skipif(not PGBENCH.exists(), reason="pgbench not installed")
def test_restart_under_pgbench_load(cluster: InstFactory, work: Path) -> None:
    """Every transaction pgbench logged as done is in the ledger after a fast stop and a
    start in the middle of the load.

    Each pgbench client numbers its transactions itself (``\\set n :n + 1``, variables live
    as long as the client), and ``-l`` logs each completed one in order; so client c's k-th
    logged transaction of run r is the row (r, c, k), and each must be present.
    """
    inst = cluster()
    assert inst.start("--port", "auto").returncode == 0
    token = inst.commit_canary()
    inst.sql("CREATE TABLE ledger (run int, client int, n int, PRIMARY KEY (run, client, n))")
    ci = inst.conninfo()
    conn_args = ["-h", ci["host"], "-p", str(ci["port"]), "-U", "postgres"]
    init = subprocess.run(
        [str(PGBENCH), "-i", "-s", "1", "-q", *conn_args, "postgres"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert init.returncode == 0, init.stderr
    script = work / "ledger.sql"
    script.write_text(LEDGER_SCRIPT)
    logs = work / "logs"
    logs.mkdir()
    stop_load = threading.Event()
    reports: list[tuple[int, str]] = []

    def load() -> None:
        run = 0
        while not stop_load.is_set():
            run += 1
            proc = subprocess.run(
                [
                    *(str(PGBENCH), "-n", "-c", "4", "-j", "1", "-T", "2", "-f", str(script)),
                    *("-D", "n=0", "-D", f"run={run}", "-l", f"--log-prefix={logs}/r{run}"),
                    *conn_args,
                    "postgres",
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=60,  # -T 2: its clients stop after 2 s, the server up or down
            )
            reports.append((run, proc.stdout + proc.stderr))
            if proc.returncode != 0:
                time.sleep(0.02)  # the server is down: try again

    # A daemon: one still running after the join below (a pgbench that hangs) must not
    # keep this pytest worker from exiting after its last test.
    driver = threading.Thread(target=load, daemon=True)
    driver.start()
    try:
        time.sleep(0.8)
        down = pgmgr("stop", inst.name, "-m", "fast")
        time.sleep(0.1)
        up = pgmgr("start", inst.name)
        time.sleep(0.8)
    finally:
        stop_load.set()
        driver.join(timeout=90)
    assert not driver.is_alive(), "pgbench still ran 90 s after the load was stopped"
    assert down.returncode == 0 and up.returncode == 0, f"{down}\n{up}"
    logged: set[tuple[int, int, int]] = set()
    reported = 0
    for run, out in reports:
        m = re.search(r"number of transactions actually processed: (\d+)", out)
        reported += int(m.group(1)) if m else 0
        per_client: dict[int, int] = {}
        for path in logs.glob(f"r{run}.*"):
            for line in path.read_text().splitlines():
                client = int(line.split()[0])
                per_client[client] = per_client.get(client, 0) + 1
                logged.add((run, client, per_client[client]))
    rows = set(inst.sql("SELECT run, client, n FROM ledger"))
    lost = logged - rows
    assert len(reports) >= 2, reports  # the load really spanned the restart
    assert reported == len(logged) > 0, (reported, len(logged))
    assert not lost, f"{len(lost)} acknowledged transactions lost: {sorted(lost)[:10]}"
    assert inst.sql("SELECT count(*) FROM pgbench_accounts") == [(100000,)]
    assert inst.has_canary(token)
    print(f"pgbench: {reported} acknowledged transactions, {len(rows)} rows, 0 lost")
    assert assert_truthful(inst) == "running"
    assert inst.stop().returncode == 0
    no_orphans(inst)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_init_interrupted_once_built_not_yet_registered(work: Path, hooks: Path, sig: int) -> None:
    """The data directory is in place, its record not yet saved (pinning it, writing the
    record: some ms): 'pgmgr init' said 'Interrupted' and left a complete, unregistered
    data directory whose password was lost with the record (SIGTERM killed it outright
    there). Now that step is part of the init it completes: interrupted, it is undone."""
    datadir = work / "data"
    paused = Paused(hooks, "init-built", "init", "-d", str(datadir), "-v", "15")
    paused.reached()
    assert (datadir / "PG_VERSION").is_file()  # built: the window is real
    assert paused.kill(sig) == 130
    assert not datadir.exists()
    assert pgmgr("status", "--json").json() == []


def test_init_killed_while_it_undoes_a_built_directory(work: Path, hooks: Path) -> None:
    """Interrupted once built (above), then killed with -9 while the directory is emptied
    again: what is left must not count as a data directory (half of one, PG_VERSION still
    there, was taken for an instance), and the next init clears it and initializes."""
    datadir = work / "data"
    (hooks / "unmaking").touch()
    paused = Paused(hooks, "init-built", "init", "-d", str(datadir), "-v", "15")
    paused.reached()
    paused.proc.send_signal(signal.SIGINT)
    paused.reached_also("unmaking", timeout=30)
    (hooks / "unmaking").unlink()
    paused.kill(signal.SIGKILL)
    assert not (datadir / "PG_VERSION").exists()
    run = pgmgr("init", "-d", str(datadir), "-v", "15")
    assert run.returncode == 0 and "Initialized" in run.stderr, str(run)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_init_interrupted_once_registered_keeps_both(work: Path, hooks: Path, sig: int) -> None:
    """Interrupted once its record is saved, before the init has returned (the end of the
    record's write, the way out of the build): the build was undone under a record that
    was kept, which named a data directory gone ('pgmgr status' showed it missing). Once
    registered, the init is complete: the signal still says 'Interrupted', and the
    directory stays with its record."""
    datadir = work / "data"
    paused = Paused(hooks, "init-registered", "init", "-d", str(datadir), "-v", "15")
    paused.reached()
    assert paused.kill(sig) == 130
    assert (datadir / "PG_VERSION").is_file()
    (rec,) = pgmgr("status", "--json").json()
    assert rec["name"] == "data" and rec["state"] == "stopped", rec
    started = pgmgr("start", "data", "-p", "auto")
    assert started.returncode == 0, str(started)
    assert pgmgr("stop", "data").returncode == 0


def test_init_interrupted_while_it_waits_to_register(
    work: Path, hooks: Path, rel_isolation: Path
) -> None:
    """Another pgmgr registering an instance (the registry's lock held here): a Ctrl-C
    while the init waits for that lock, its data directory built, ends it at once and
    undoes the build; it must not hold the signal for the wait (30 s) and then fail with
    'another pgmgr is registering an instance'."""
    datadir = work / "data"
    locks = rel_isolation / "locks"
    locks.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(locks / "registry.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        paused = Paused(hooks, "init-built", "init", "-d", str(datadir), "-v", "15")
        paused.reached()
        (hooks / "init-built.go").touch()
        time.sleep(0.5)  # into the wait for the lock
        assert paused.kill(signal.SIGINT) == 130
    finally:
        os.close(fd)
    assert not datadir.exists()
    assert pgmgr("status", "--json").json() == []
