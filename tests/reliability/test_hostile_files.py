"""Files in a data directory are the server user's: pgmgr (root, often) reads them without
following a symlink and without blocking. A FIFO as ``postmaster.pid`` hung ``status``,
``stop --all``, ``forget`` and ``destroy``; a symlink to ``/dev/zero`` made ``status`` eat
gigabytes; a FIFO as the socket lock hung ``start`` (found by review, reproduced as root)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.reliability.conftest import InstFactory, one_error, pgmgr, wait_no_processes


def plant(path: Path, kind: str) -> None:
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")


@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_a_hostile_postmaster_pid_never_hangs_pgmgr(cluster: InstFactory, kind: str) -> None:
    inst = cluster("hostile")
    plant(inst.datadir / "postmaster.pid", kind)
    for args in (("status",), ("status", "hostile", "--json"), ("stop", "--all")):
        run = pgmgr(*args, timeout=30)  # a hang fails here (TimeoutExpired)
        assert run.returncode in (0, 3), str(run)
    status = pgmgr("status", "hostile", "--json", timeout=30)
    assert status.json()["state"] == "stopped", str(status)
    run = pgmgr("forget", "hostile", timeout=30)
    assert run.returncode == 0, str(run)


@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_a_hostile_socket_lock_never_hangs_start(cluster: InstFactory, kind: str) -> None:
    inst = cluster("lockfifo")
    from pgmgr.core.server import free_port

    port = free_port("127.0.0.1")
    plant(inst.datadir / f".s.PGSQL.{port}.lock", kind)
    # Either outcome passes (below); a FIFO makes postgres block until --timeout, which only
    # bounds that wait: 5 s (was 10) still shows pgmgr gives up and leaves nothing running.
    run = pgmgr("start", "lockfifo", "-p", str(port), "--timeout", "5", timeout=60)
    assert "Traceback" not in run.stderr, str(run)
    if run.returncode != 0:  # postgres itself blocked on the FIFO: it must not be left behind
        assert wait_no_processes(inst.datadir, timeout=30) == [], str(run)
    pgmgr("stop", "lockfifo", "-m", "immediate", timeout=30)


@pytest.mark.parametrize("name", ["postgresql.conf", "postgresql.auto.conf", "pg_hba.conf"])
def test_a_fifo_for_a_config_file_is_named_and_bounded_by_the_start_timeout(
    cluster: InstFactory, name: str
) -> None:
    """A FIFO the server user put in place of a configuration file: postgres waits for
    ever to open it, its signals blocked (15). The start gave up at its --timeout, then
    waited 35 s more (a fast stop the server could not act on, 30 s, then an immediate
    one, 5 s: both waited through postmaster.pid, which it had not written yet). It
    stops it at once now (SIGKILL: nothing else reaches it), and says why. pg_hba.conf is
    read once postmaster.pid and the shared memory are made: those stay, the instance is
    then 'crashed', and the next start clears them (PostgreSQL removes a killed
    postmaster's segments, found through its postmaster.pid)."""
    inst = cluster("conffifo")
    conf = inst.datadir / name
    saved, owner = conf.read_bytes(), conf.stat()
    conf.unlink()
    os.mkfifo(conf, 0o600)
    os.chown(conf, owner.st_uid, owner.st_gid)
    t0 = time.monotonic()
    try:
        run = pgmgr("start", "conffifo", "-p", "auto", "--timeout", "2", timeout=90)
    finally:
        took = time.monotonic() - t0
        conf.unlink()
        conf.write_bytes(saved)
        os.chown(conf, owner.st_uid, owner.st_gid)
    assert run.returncode == 1, str(run)
    assert f"waits for ever to open {conf}, a FIFO" in one_error(run), str(run)
    assert took < 12, f"{took:.1f} s for --timeout 2"
    assert wait_no_processes(inst.datadir, timeout=5) == []
    state = pgmgr("status", "conffifo", "--json").json()["state"]
    assert state == ("crashed" if name == "pg_hba.conf" else "stopped")
    assert pgmgr("start", "conffifo", "-p", "auto").returncode == 0  # clears what is left
    assert pgmgr("stop", "conffifo").returncode == 0


@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_a_hostile_pg_version_is_not_a_data_directory(tmp_path: Path, kind: str) -> None:
    from pgmgr.core import server

    plant(tmp_path / "PG_VERSION", kind)
    assert server.datadir_major(tmp_path) is None


def test_a_server_log_is_never_opened_through_a_symlink(cluster: InstFactory, work: Path) -> None:
    """The log is opened by pgmgr for postgres: a link planted at its path is refused, and
    the file it points to is never created or written."""
    from pgmgr import DatabaseException, Manager
    from pgmgr.core.server import free_port

    inst = cluster("logs", register=False)
    target = work / "elsewhere.txt"
    link = work / "server.log"
    link.symlink_to(target)
    m = Manager("127.0.0.1", free_port("127.0.0.1"), inst.datadir, log_file=str(link))
    with pytest.raises(DatabaseException, match="cannot open the server log"):
        m.start()
    assert not target.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root opens logs for another user")
def test_root_never_opens_a_log_where_another_user_can_write(
    cluster: InstFactory, work: Path
) -> None:
    """Found by review: Manager(log_file=...) let root open (and create) a file in a
    directory another user can write, following whatever link they swap in."""
    from pgmgr import DatabaseException, Manager
    from pgmgr.core.server import free_port

    inst = cluster("logs2", register=False)
    shared = work / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    m = Manager("127.0.0.1", free_port("127.0.0.1"), inst.datadir, log_file=str(shared / "l"))
    with pytest.raises(DatabaseException, match="another user can change that place"):
        m.start()
    assert list(shared.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: two throwaway OS users")
def test_a_log_file_another_user_planted_is_refused(work: Path) -> None:
    """User A starts a server with ``--log-file`` in a sticky shared directory (/tmp-like)
    where user B made that file first, open to all: A's server log went into B's file,
    which B read (and could write lines into that pgmgr parses). Refused in one line, and
    nothing is written there."""
    from tests.reliability.users import os_user, pgmgr_as, run_as

    shared = work / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    log = shared / "a.log"
    with os_user("lga", home=True) as a, os_user("lgb") as b:
        datadir = Path(a.home) / "db"
        env = {"HOME": a.home}
        made = run_as(b.name, "sh", "-c", f"touch {log} && chmod 666 {log}")
        assert made.returncode == 0, made
        try:
            proc = pgmgr_as(
                a.name, "start", "--init", "-d", str(datadir), "--port", "auto",
                "--log-file", str(log), env=env,
            )  # fmt: skip
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
            assert proc.returncode != 0 and len(errors) == 1, proc
            assert "server log" in errors[0], proc
            assert log.stat().st_size == 0
        finally:
            pgmgr_as(a.name, "stop", "-d", str(datadir), "-m", "immediate", env=env)
            wait_no_processes(Path(a.home))
