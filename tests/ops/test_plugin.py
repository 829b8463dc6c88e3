"""The pytest plugin, exercised by small example suites run with pytester."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import postmasters_under

EXAMPLE = """
import os
import psycopg
import pytest


def test_writes(pgmgr_db):
    with psycopg.connect(pgmgr_db.url) as conn:
        conn.execute("insert into t values (1)")
        assert conn.execute("select count(*) from t").fetchone() == (1,)


def test_sees_a_fresh_copy(pgmgr_db):
    with psycopg.connect(pgmgr_db.dsn) as conn:
        assert conn.execute("select count(*) from t").fetchone() == (0,)
        assert conn.execute("select current_database()").fetchone() == (pgmgr_db.name,)


@pytest.mark.pgmgr
def test_marker_points_pg_vars_at_a_fresh_db():
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        db = conn.execute("select current_database()").fetchone()[0]
    assert db == os.environ["PGDATABASE"] and db.startswith("test_")
    with psycopg.connect("") as conn:  # PGHOST, PGPORT, ... over the socket
        assert conn.execute("select count(*) from t").fetchone() == (0,)


def test_fast_settings(pgmgr_server):
    with psycopg.connect(pgmgr_server.url) as conn:
        assert conn.execute("show fsync").fetchone() == ("off",)
        assert conn.execute("show work_mem").fetchone() == ("6MB",)
        # the password is stored with few SCRAM iterations: TCP logins cost no PBKDF2 work
        sql = "select rolpassword from pg_authid where rolname = current_user"
        assert conn.execute(sql).fetchone()[0].startswith("SCRAM-SHA-256$16:")
"""

CONFTEST = """
import pytest


@pytest.fixture(scope="session")
def pgmgr_template(pgmgr_server, pgmgr_template):
    pgmgr_server.execute("create table t (x int)", dbname=pgmgr_template)
    return pgmgr_template
"""

INI = """
[pytest]
pgmgr_version = 15
pgmgr_settings =
    work_mem=6MB
"""


@pytest.fixture
def example(pytester: pytest.Pytester, ops_dir: Path) -> pytest.Pytester:
    pytester.makeini(INI + f"pgmgr_tmpdir = {ops_dir / 'tmp'}\n")  # checked for leftovers
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_example=EXAMPLE)
    return pytester


def assert_nothing_left(ops_dir: Path) -> None:
    assert postmasters_under(ops_dir / "tmp") == []
    assert list((ops_dir / "tmp").iterdir()) == []


def test_each_test_gets_its_own_database(example: pytest.Pytester, ops_dir: Path) -> None:
    result = example.runpytest_subprocess("-p", "no:cacheprovider", timeout=150)
    result.assert_outcomes(passed=4)
    assert_nothing_left(ops_dir)


@pytest.mark.skipif(importlib.util.find_spec("xdist") is None, reason="needs pytest-xdist")
def test_xdist_one_server_per_worker(
    example: pytest.Pytester, ops_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example.makeconftest(
        CONFTEST
        + """

@pytest.fixture(autouse=True)
def _record_port(pgmgr_server):
    import os

    out = os.path.join(os.environ["PORTS_DIR"], os.environ["PYTEST_XDIST_WORKER"])
    with open(out, "a") as f:
        f.write(str(pgmgr_server.server.inst.port) + "\\n")
"""
    )
    example.makepyfile(
        test_more="""
import pytest

@pytest.mark.parametrize("i", range(6))
def test_more(pgmgr_db, i):
    pass
"""
    )
    ports_dir = ops_dir / "ports"
    ports_dir.mkdir()
    monkeypatch.setenv("PORTS_DIR", str(ports_dir))
    result = example.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "xdist", "-n", "2", timeout=150
    )
    result.assert_outcomes(passed=10)
    ports = {f.name: set(f.read_text().split()) for f in ports_dir.iterdir()}
    assert len(ports) == 2 and all(len(p) == 1 for p in ports.values())
    assert len(set.union(*ports.values())) == 2  # two servers, two ports
    assert_nothing_left(ops_dir)


def test_nothing_starts_unless_asked(pytester: pytest.Pytester, ops_dir: Path) -> None:
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--pgmgr-version", "15", timeout=150
    )
    result.assert_outcomes(passed=1)
    assert list((ops_dir / "tmp").iterdir()) == []


def test_plugin_imports_nothing_heavy() -> None:
    code = (
        "import sys, pgmgr.pytest_plugin; "
        "heavy = ('psycopg', 'rich', 'typer', 'pgmgr.core.instance'); "
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "ini", "first_line"),
    [
        (
            ["--pgmgr-version", "9.1"],
            "",
            "ERROR: --pgmgr-version 9.1: PostgreSQL 9.1 is not installed",
        ),
        (
            ["--pgmgr-version", "sixteen"],
            "",
            "ERROR: invalid --pgmgr-version 'sixteen': expected a PostgreSQL version",
        ),
        ([], "9.1", "ERROR: ini option pgmgr_version 9.1: PostgreSQL 9.1 is not installed"),
    ],
)
def test_a_bad_version_is_one_usage_error_naming_the_option(
    pytester: pytest.Pytester, ops_dir: Path, args: list[str], ini: str, first_line: str
) -> None:
    """Before any test runs: no traceback, no error per test, no "(from --version)"."""
    if ini:
        pytester.makeini(f"[pytest]\npgmgr_version = {ini}\n")
    pytester.makepyfile(
        test_mixed="def test_db(pgmgr_db):\n    pass\n\ndef test_plain():\n    pass\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=150)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.errlines if line.strip()]
    assert len(errors) == 1 and errors[0].startswith(first_line), result.errlines
    assert "--version)" not in errors[0]
    assert "Traceback" not in "\n".join(result.outlines + result.errlines)
    assert_nothing_left(ops_dir)


@pytest.mark.parametrize(
    ("line", "first_line"),
    [
        ("garbage", "ERROR: pgmgr_settings: invalid setting 'garbage': expected name=value"),
        ("port=6000", "ERROR: pgmgr_settings: setting 'port' is managed by pgmgr"),
    ],
)
def test_a_bad_setting_is_one_usage_error(
    pytester: pytest.Pytester, ops_dir: Path, line: str, first_line: str
) -> None:
    """A malformed ``pgmgr_settings`` line stops the session before any test runs, as a
    bad version does: it was an error with a traceback in every test that used a server."""
    pytester.makeini(f"[pytest]\npgmgr_settings =\n    {line}\n")
    pytester.makepyfile(
        test_mixed="def test_db(pgmgr_db):\n    pass\n\ndef test_plain():\n    pass\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=150)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.errlines if line.strip()]
    assert len(errors) == 1 and errors[0].startswith(first_line), result.errlines
    assert "Traceback" not in "\n".join(result.outlines + result.errlines)
    assert_nothing_left(ops_dir)


#: A test that freezes the server (SIGSTOP: how one tests a client's timeouts against a hung
#: database).
FREEZE = """
import os, signal


def test_freeze(pgmgr_db, pgmgr_server):
    os.kill(pgmgr_server.server.running().pid, signal.SIGSTOP)
"""


def test_a_frozen_server_is_stopped_at_the_end(pytester: pytest.Pytester, ops_dir: Path) -> None:
    """A test freezes the server (SIGSTOP: how one tests a client's timeouts against a hung
    database): the session ends at once with nothing left. The immediate stop waited 30 s
    for a postmaster that could not act on it, twice, then removed its directory and left
    it running, frozen."""
    pytester.makeini(INI + f"pgmgr_tmpdir = {ops_dir / 'tmp'}\n")
    pytester.makepyfile(test_freeze=FREEZE)
    t0 = time.monotonic()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=150)
    result.assert_outcomes(passed=1)
    assert time.monotonic() - t0 < 30
    assert_nothing_left(ops_dir)


def test_a_frozen_server_without_a_pool_fails_the_drop_in_time(
    pytester: pytest.Pytester, ops_dir: Path
) -> None:
    """The same without the database pool (``pgmgr_pool_size = 0``): the test's database
    is dropped by the fixture's teardown itself, whose connection waited for the frozen
    server for as long as psycopg lets a connection wait by default: for ever before
    psycopg 3.2 (the session never ended), 130 s since. It gives up after 10 s: an error at
    teardown (the server did not answer), and the session ends with nothing left."""
    pytester.makeini(INI + f"pgmgr_pool_size = 0\npgmgr_tmpdir = {ops_dir / 'tmp'}\n")
    pytester.makepyfile(test_freeze=FREEZE)
    t0 = time.monotonic()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=150)
    result.assert_outcomes(passed=1, errors=1)
    assert "timeout expired" in "\n".join(result.outlines), result.outlines
    assert time.monotonic() - t0 < 60
    assert_nothing_left(ops_dir)
