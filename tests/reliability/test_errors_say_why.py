"""Errors say why (issue 11.13), on real servers: the FATAL/PANIC lines of a failed start,
a clean error for a non-UTF-8 data directory path, bad ``--socket-dir`` values refused
before anything is created, and a stop that stopped the server succeeds even when its
record cannot be written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgmgr.core import process
from tests.helpers import postgres_pids_under
from tests.reliability.conftest import InstFactory, one_error, pgmgr
from tests.reliability.test_storage import needs_mount, read_only


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("shared_buffers=900GB", "FATAL: could not map anonymous shared memory"),
        ("shared_preload_libraries=no_such_lib", 'FATAL: could not access file "no_such_lib"'),
        ("work_mem=lots", 'FATAL: invalid value for parameter "work_mem": "lots"'),
    ],
)
def test_failed_start_reports_the_fatal_line(
    cluster: InstFactory, setting: str, expected: str
) -> None:
    inst = cluster()
    run = inst.start("-p", "auto", "-c", setting)
    err = one_error(run)
    assert expected in err, str(run)
    assert "database system is shut down" not in err
    assert not postgres_pids_under(inst.datadir)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("shared_buffers = = 1", 'syntax error in file "{conf}" line {n}, near token "="'),
        ("include 'nope.conf'", 'could not open configuration file "{dir}/nope.conf"'),
        ("no_such = 1", 'unrecognized configuration parameter "no_such" in file "{conf}" line {n}'),
    ],
)
def test_an_error_in_postgresql_conf_is_named_where_it_is(
    cluster: InstFactory, line: str, expected: str
) -> None:
    """A hand edit of postgresql.conf that postgres refuses: start, restart and config set
    said 'configuration file ".../pgmgr.conf" contains errors' (pgmgr's file, which includes
    postgresql.conf), not the file and line to fix."""
    inst = cluster()
    conf = inst.datadir / "postgresql.conf"
    n = len(conf.read_text().splitlines()) + 1
    with conf.open("a") as f:
        f.write(line + "\n")
    want = expected.format(conf=conf, n=n, dir=inst.datadir)
    for args in (["start", "db", "-p", "auto"], ["config", "db", "set", "work_mem=9MB"]):
        run = pgmgr(*args)
        err = one_error(run)
        assert want in err and "pgmgr.conf" not in err, str(run)
    assert not postgres_pids_under(inst.datadir)


def test_non_utf8_datadir_is_a_clean_error(work: Path) -> None:
    raw = os.fsencode(str(work)) + b"/data-\xff"
    path = os.fsdecode(raw)
    for args in (["start", "--init", "-d", path, "-p", "auto"], ["init", "-d", path]):
        run = pgmgr(*args)
        err = one_error(run)
        assert run.returncode == 2 and "not valid UTF-8" in err, str(run)
        assert not os.path.lexists(raw)
    os.mkdir(raw)  # an existing (empty) one too
    run = pgmgr("start", "--init", "-d", path)
    assert "not valid UTF-8" in one_error(run)
    assert os.listdir(raw) == []
    run = pgmgr("status", "--json")
    assert run.returncode == 0 and run.json() == [], str(run)


@pytest.mark.parametrize("bad", ["sock\nx", 'sock"x', "sock\rx"])
def test_bad_socket_dir_refused_before_anything_is_made(work: Path, bad: str) -> None:
    sock = work / bad
    datadir = work / "data"
    run = pgmgr("start", "--init", "-d", str(datadir), "-p", "auto", "--socket-dir", str(sock))
    err = one_error(run)
    assert run.returncode == 2 and "socket directory" in err, str(run)
    assert sorted(os.listdir(work)) == [], "something was created"
    assert pgmgr("status", "--json").json() == []


@needs_mount
def test_stop_succeeds_when_the_record_cannot_be_written(
    cluster: InstFactory, rel_isolation: Path
) -> None:
    inst = cluster()
    assert inst.start("-p", "auto").returncode == 0
    token = inst.commit_canary()
    pid = inst.pid()
    assert pid is not None
    with read_only(rel_isolation):
        run = inst.stop()
        assert run.returncode == 0, str(run)
        assert "Stopped 'db'" in run.stderr and "could not update the record" in run.stderr
        assert "Error:" not in run.stderr
        assert process.wait_gone(pid, inst.datadir, 5)
        run = inst.status()
        assert run.returncode == 3 and run.json()["state"] == "stopped", str(run)
    assert inst.start("-p", "auto").returncode == 0 and inst.has_canary(token)
    assert inst.stop().returncode == 0


#: PG_VERSION contents that name no major version, and one that names an uninstalled one.
BAD_PG_VERSIONS = [b"abc\n", b"", b"\n", b"15.2\n", b"15 junk\n", b"\x01\xff\xfe", b"../15"]


@pytest.mark.parametrize("content", BAD_PG_VERSIONS, ids=ascii)
def test_a_garbage_pg_version_is_named_as_the_data_directorys(
    cluster: InstFactory, content: bytes
) -> None:
    """A data directory's PG_VERSION naming no major version was reported as the user's
    "invalid --version 'abc'" (start, restart, init -d, upgrade: a traceback there, int()
    of it); empty, postgres's own "not a valid data directory". Now one line naming the
    file, and nothing is done."""
    inst, other = cluster("db"), cluster("loose", register=False)
    for datadir in (inst.datadir, other.datadir):
        (datadir / "PG_VERSION").write_bytes(content)
    runs = [
        pgmgr("start", "db", "--port", "auto"),
        pgmgr("restart", "db"),
        pgmgr("upgrade", "db", "-v", "18", "--check"),
        pgmgr("init", "-d", str(other.datadir)),
        pgmgr("start", "-d", str(other.datadir), "--port", "auto"),
    ]
    for run in runs:
        err = one_error(run)
        assert "PG_VERSION (" in err and "is invalid" in err and "--version" not in err, err
    assert inst.pid() is None and other.pid() is None
    assert [r["name"] for r in pgmgr("status", "--json").json()] == ["db"]
    assert (inst.datadir / "PG_VERSION").read_bytes() == content


def test_an_uninstalled_pg_version_is_named_as_the_data_directorys(
    cluster: InstFactory,
) -> None:
    """PG_VERSION "99": not installed, and said to come from the data directory (the
    error said "from --version", which the user never gave)."""
    inst = cluster("db")
    (inst.datadir / "PG_VERSION").write_text("99\n")
    for args in (["start", "db", "--port", "auto"], ["restart", "db"]):
        err = one_error(pgmgr(*args))
        assert f"99 (from the PG_VERSION of {inst.datadir})" in err, err


@pytest.mark.parametrize("content", [b"abc\n", b"99\n"], ids=ascii)
def test_restart_of_a_running_server_with_a_bad_pg_version_leaves_it_running(
    cluster: InstFactory, content: bytes
) -> None:
    """restart checked PG_VERSION only when starting again: a running server whose
    PG_VERSION had become garbage (or an uninstalled major) was stopped, and the error
    said "nothing was done". Now it is refused before the stop: the server still runs."""
    inst = cluster("db")
    assert inst.start("--port", "auto").returncode == 0
    pid = inst.pid()
    assert pid is not None
    original = (inst.datadir / "PG_VERSION").read_bytes()
    (inst.datadir / "PG_VERSION").write_bytes(content)
    err = one_error(pgmgr("restart", "db"))
    assert "PG_VERSION" in err, err
    assert inst.pid() == pid
    (inst.datadir / "PG_VERSION").write_bytes(original)
    assert inst.stop().returncode == 0
