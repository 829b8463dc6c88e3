"""Files in a data directory are the server user's: pgmgr (root, often) reads them without
following a symlink and without blocking. A FIFO as ``postmaster.pid`` hung ``status``,
``stop --all``, ``forget`` and ``destroy``; a symlink to ``/dev/zero`` made ``status`` eat
gigabytes; a FIFO as the socket lock hung ``start`` (found by review, reproduced as root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.conftest import InstFactory, pgmgr, wait_no_processes


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
