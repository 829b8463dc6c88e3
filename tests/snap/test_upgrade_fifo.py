"""A FIFO the server user puts where an upgrade reads a configuration file of the data
directory: refused in one line, never waited on."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.helpers import error_lines, postgres_pids_under
from tests.pause import Paused
from tests.snap.conftest import Inst, leftovers
from tests.snap.test_upgrade import facts, up  # noqa: F401


@pytest.mark.parametrize("name", ["postgresql.auto.conf", "postgresql.conf"])
def test_a_fifo_for_a_config_file_is_refused_not_waited_on(up: Inst, name: str) -> None:  # noqa: F811
    """The upgrade reads postgresql.auto.conf (the settings it carries over) and
    postgresql.conf (to say what it does not carry); a FIFO in their place, which no one
    ever writes to, made it wait for ever, holding the instance's lock (as root, in its
    child working as the server user). The running server read its files at its start."""
    before = facts(up)
    conf = up.datadir / name
    saved, owner = conf.read_bytes(), conf.stat()
    conf.unlink()
    os.mkfifo(conf, 0o600)
    os.chown(conf, owner.st_uid, owner.st_gid)  # the server user's
    try:
        run = up.pgmgr("upgrade", "up", "-v", "18", "--yes", timeout=90)
    finally:
        conf.unlink()
        conf.write_bytes(saved)
        os.chown(conf, owner.st_uid, owner.st_gid)
    assert run.returncode == 1, run.stderr
    assert error_lines(run.stderr)[0] == (
        f"Error: cannot upgrade 'up': {conf} is not a regular file; nothing was changed"
    ), run.stderr
    assert "Traceback" not in run.stderr
    assert up.state() == "running" and up.record()["major"] == "15"
    assert facts(up) == before
    assert leftovers(up.store) == []


@pytest.mark.parametrize("name", ["postgresql.conf", "pg_hba.conf"])
def test_a_fifo_swapped_in_after_the_checks_ends_pg_upgrade(
    up: Inst,  # noqa: F811
    scratch: Path,
    name: str,
) -> None:
    """The same FIFO put in place after pgmgr's checks (as pg_upgrade starts: pgmgr
    reads both after the new cluster's initdb, postgresql.conf for its include lines,
    pg_hba.conf to check it): the server pg_upgrade's pg_ctl starts on the old cluster
    waited for ever to open it, its signals blocked, pg_ctl gave up after its 60 s, and
    the subreaper's stop of what was left took 20 s more, its cause unsaid. pgmgr sees
    the process wait on the FIFO, kills it, and says which file (the instance, stopped, is
    left as it was: no start to wait on the same FIFO)."""
    before = facts(up)
    assert up.pgmgr("stop", "up").returncode == 0
    conf = up.datadir / name
    saved, owner = conf.read_bytes(), conf.stat()
    hooks = scratch / "hooks"
    hooks.mkdir(mode=0o777, exist_ok=True)
    hooks.chmod(0o777)
    try:
        with Paused(
            hooks, "run-pg_upgrade", "upgrade", "up", "-v", "18", "--yes", env=up.env
        ) as run:
            run.reached()
            conf.unlink()
            os.mkfifo(conf, 0o600)
            os.chown(conf, owner.st_uid, owner.st_gid)  # the server user's
            t0 = time.monotonic()
            done = run.go(timeout=150)
            took = time.monotonic() - t0
    finally:
        conf.unlink(missing_ok=True)
        conf.write_bytes(saved)
        os.chown(conf, owner.st_uid, owner.st_gid)
    assert done.returncode == 1, str(done)
    first = error_lines(done.stderr)[0]
    assert first.startswith("Error: pg_upgrade failed: process "), str(done)
    assert f"waits for ever to open {conf}, a FIFO" in first, str(done)
    assert first.endswith("; nothing was changed"), str(done)
    assert took < 30, f"{took:.0f} s"
    assert up.record()["major"] == "15"
    assert leftovers(up.store) == []
    assert up.pgmgr("start", "up").returncode == 0
    assert facts(up) == before


def test_a_fifo_swapped_in_before_the_settings_are_read_is_named(
    up: Inst,  # noqa: F811
    scratch: Path,
) -> None:
    """The FIFO put in place right after the checks, the instance stopped: the server
    pgmgr runs to read the cluster's settings waited for ever to open it, its signals
    blocked: pgmgr waited 60 s for it to be ready, 60 s more for it to stop, and it then
    outlived pgmgr (its death signal blocked too). It is killed and named."""
    assert up.pgmgr("stop", "up").returncode == 0
    conf = up.datadir / "postgresql.conf"
    saved, owner = conf.read_bytes(), conf.stat()
    hooks = scratch / "hooks"
    hooks.mkdir(mode=0o777, exist_ok=True)
    hooks.chmod(0o777)
    try:
        with Paused(
            hooks, "upgrade-checked", "upgrade", "up", "-v", "18", "--yes", env=up.env
        ) as run:
            run.reached()
            conf.unlink()
            os.mkfifo(conf, 0o600)
            os.chown(conf, owner.st_uid, owner.st_gid)  # the server user's
            t0 = time.monotonic()
            done = run.go(timeout=200)
            took = time.monotonic() - t0
        left = postgres_pids_under(up.datadir)
    finally:
        conf.unlink(missing_ok=True)
        conf.write_bytes(saved)
        os.chown(conf, owner.st_uid, owner.st_gid)
    assert done.returncode == 1, str(done)
    assert error_lines(done.stderr)[0].startswith("Error: cannot upgrade 'up': process "), str(done)
    assert f"waits for ever to open {conf}, a FIFO" in done.stderr, str(done)
    assert took < 30, f"{took:.0f} s"
    assert left == [], f"left running: {left}"
    assert up.record()["major"] == "15"
    assert leftovers(up.store) == []
    assert up.pgmgr("start", "up").returncode == 0
