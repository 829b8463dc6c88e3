"""A failed ``start --init`` leaves nothing it created (issue 11.5), on real servers: a busy
port and a bad ``-c`` are refused before anything is initialized; a failure found only by
the server (a missing preload library) removes the data directory, record and log this
command made, and never anything that existed before."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.helpers import postgres_pids_under
from tests.pause import Paused, ok
from tests.reliability.conftest import InstFactory, needs_root, one_error, pgmgr
from tests.reliability.users import run_as

BAD_LIB = "shared_preload_libraries=pgmgr_no_such_lib"


def _state(rel_isolation: Path) -> tuple[list[str], list[str]]:
    def ls(d: Path) -> list[str]:
        return sorted(os.listdir(d)) if d.is_dir() else []

    return ls(rel_isolation / "instances"), ls(rel_isolation / "logs")


def test_busy_port_is_refused_before_init(work: Path, rel_isolation: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        run = pgmgr("start", "--init", "-d", str(work / "new"), "-p", str(port))
        assert "already in use" in one_error(run), str(run)
        assert "Initialized" not in run.stderr
    assert not (work / "new").exists()
    assert _state(rel_isolation) == ([], [])


@pytest.mark.parametrize(
    ("setting", "why"),
    [
        ("work_mem=lots", 'invalid value for parameter "work_mem"'),
        ("no_such_setting=1", 'unrecognized configuration parameter "no_such_setting"'),
        ("server_version=1", "server_version"),
    ],
)
def test_bad_setting_is_refused_before_init(
    work: Path, rel_isolation: Path, setting: str, why: str
) -> None:
    (work / "empty").mkdir()
    for target in (work / "new", work / "empty"):
        run = pgmgr("start", "--init", "-d", str(target), "-p", "auto", "-c", setting)
        assert why in one_error(run), str(run)
        assert "Initialized" not in run.stderr
    assert not (work / "new").exists()
    assert os.listdir(work / "empty") == []
    assert _state(rel_isolation) == ([], [])
    assert not [n for n in os.listdir(os.environ["TMPDIR"]) if n.startswith("pgmgr-cfg-")]


def test_failure_at_start_removes_what_this_command_made(work: Path, rel_isolation: Path) -> None:
    (work / "empty").mkdir(mode=0o755)
    for target in (work / "new", work / "empty"):
        run = pgmgr("start", "--init", "-d", str(target), "-p", "auto", "-c", BAD_LIB)
        assert run.returncode == 1 and "pgmgr_no_such_lib" in run.stderr, str(run)
        assert "Traceback" not in run.stderr
    assert not (work / "new").exists()
    assert (work / "empty").is_dir() and os.listdir(work / "empty") == []
    assert _state(rel_isolation) == ([], [])
    assert not postgres_pids_under(work)
    run = pgmgr("start", "--init", "-d", str(work / "new"), "-p", "auto")  # all fine now
    assert run.returncode == 0, str(run)
    assert pgmgr("stop", "new").returncode == 0


def test_existing_instance_is_never_removed(cluster: InstFactory, rel_isolation: Path) -> None:
    inst = cluster()
    assert inst.start("-p", "auto").returncode == 0
    token = inst.commit_canary()
    assert inst.stop().returncode == 0
    before = _state(rel_isolation)
    run = pgmgr("start", "--init", "-d", str(inst.datadir), "-p", "auto", "-c", BAD_LIB)
    assert run.returncode == 1, str(run)
    assert (inst.datadir / "PG_VERSION").exists() and _state(rel_isolation) == before
    assert inst.start("-p", "auto").returncode == 0 and inst.has_canary(token)
    assert inst.stop().returncode == 0


@needs_root
def test_settings_check_is_made_where_the_server_user_can_reach_it(work: Path, hooks: Path) -> None:
    """As root with a private temp dir (``TMPDIR`` 0700, root's: pam_tmpdir's
    ``/tmp/user/0``, or one in root's home), the directory of the ``-c`` check was made
    there: the server user's ``postgres -C`` could not enter it, and the check answered
    only because postgres happens to parse ``-c`` before it opens its data directory.
    It is made where the server user can reach it (/tmp), as the upgrade's socket dir is."""
    private = work / "root-tmp"
    private.mkdir(mode=0o700)
    datadir = work / "db"
    args = ("start", "--init", "-d", str(datadir), "-v", "15", "-p", "auto", "-c", "work_mem=8MB")
    try:
        with Paused(hooks, "settings-check", *args, env={"TMPDIR": str(private)}) as paused:
            paused.reached()
            mine = f"pgmgr-cfg-{paused.proc.pid}-*"
            (check,) = [*private.glob(mine), *Path("/tmp").glob(mine)]
            seen = run_as("postgres", "test", "-r", str(check / "postgresql.conf"))
            ok(paused.go())
    finally:
        pgmgr("stop", "-d", str(datadir))
    assert seen.returncode == 0, f"the server user cannot read {check}/postgresql.conf"
    assert not check.exists()
    bad = pgmgr(*args[:-1], "work_mem=lots", env={"TMPDIR": str(private)})
    assert 'invalid value for parameter "work_mem"' in one_error(bad), str(bad)
