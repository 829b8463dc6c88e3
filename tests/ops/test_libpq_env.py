"""The user's libpq environment (PGOPTIONS, PGSSLMODE, PGSERVICE, PGHOSTADDR ...) changes
nothing pgmgr does for itself: its commands, the ``Manager`` API and the pytest plugin, on
real servers. What pgmgr runs for the user (``pgmgr run``, ``pgmgr psql``) keeps the user's
session settings, but never connects anywhere else than where pgmgr points it.

The environments are a few representative sets, not every variable with every command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pgmgr import Manager
from pgmgr.core.server import free_port
from tests.helpers import postmasters_under, run_pgmgr
from tests.ops.conftest import VERSION

READ_ONLY = "-c default_transaction_read_only=on"
UNICODE_DB = "données-日本"

#: A service that would send a connection elsewhere, read-only, over SSL to a standby, as
#: a WAL sender (no SQL).
SERVICE = """[hostile]
host=/nonexistent
port=1
user=nobody
dbname=nowhere
hostaddr=127.0.0.2
options=-c default_transaction_read_only=on
sslmode=require
target_session_attrs=standby
replication=true
"""

#: What a library caller's environment may hold (pgmgr cannot drop it from their process).
LIBRARY_SETS = {
    "options": {"PGOPTIONS": READ_ONLY, "PGCLIENTENCODING": "LATIN1", "PGAPPNAME": "x"},
    "transport": {
        "PGSSLMODE": "require",
        "PGGSSENCMODE": "require",
        "PGSSLNEGOTIATION": "direct",
        "PGHOSTADDR": "127.0.0.2",
        "PGTARGETSESSIONATTRS": "standby",
        "PGREQUIREAUTH": "password",
        "PGCHANNELBINDING": "require",
    },
    "service": {"PGSERVICE": "hostile", "PGSERVICEFILE": "{dir}/pg_service.conf"},
}
#: Also for the command: what libpq sends whatever the parameters, a service it cannot find.
CLI_SETS = {
    **LIBRARY_SETS,
    "startup": {
        "PGTZ": "Bogus/Zone",
        "PGDATESTYLE": "bogus",
        "PGGEQO": "bogus",
        "PGSERVICE": "missing",
        "PGCONNECT_TIMEOUT": "bogus",
        "PGPASSWORD": "wrong",
        "PGHOST": "/nonexistent",
        "PGPORT": "1",
        "PGUSER": "nobody",
        "PGDATABASE": "nowhere",
    },
}


def hostile(sets: dict[str, dict[str, str]], which: str, where: Path) -> dict[str, str]:
    (where / "pg_service.conf").write_text(SERVICE)
    return {k: v.format(dir=where) for k, v in sets[which].items()}


def clean(url: str) -> str:
    """``url`` as a conninfo that no variable changes, for the test's own checks."""
    from psycopg.conninfo import conninfo_to_dict

    from pgmgr.core import ownconn

    return ownconn.conninfo({k: str(v) for k, v in conninfo_to_dict(url).items()})


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"{proc.args}\n{proc.stderr}"
    return proc


@pytest.mark.parametrize("which", sorted(CLI_SETS))
def test_commands_ignore_the_libpq_environment(which: str, ops_dir: Path) -> None:
    env = hostile(CLI_SETS, which, ops_dir)

    def pgmgr(*args: str) -> subprocess.CompletedProcess[str]:
        return ok(run_pgmgr(*args, env=env, timeout=120))

    try:
        # the first start sets the generated password through the socket
        pgmgr("start", "-q", "--init", "-d", str(ops_dir / "h"), "--name", "h", "-p", "auto",
              "-v", VERSION)  # fmt: skip
        rec = json.loads(pgmgr("status", "h", "--check", "--json").stdout)
        assert rec["state"] == "running"
        with psycopg.connect(clean(rec["tcp_url"]), autocommit=True) as conn:
            conn.execute("CREATE TABLE t AS SELECT 1 AS x")
            conn.execute(f'CREATE DATABASE "{UNICODE_DB}"')  # none of it in PGCLIENTENCODING
        pgmgr("snapshot", "h", "s1", "--online")
        pgmgr("branch", "h", "b", "-d", str(ops_dir / "b"), "-p", "auto", "--start")
        pgmgr("export", "h", str(ops_dir / "bundle"))
        pgmgr("import", str(ops_dir / "bundle"), "-d", str(ops_dir / "imp"), "--name", "imp",
              "-p", "auto")  # fmt: skip
        for name in ("b", "imp"):
            rec = json.loads(pgmgr("status", name, "--check", "--json").stdout)
            assert rec["state"] == "running", rec
            with psycopg.connect(clean(rec["tcp_url"])) as conn:
                assert conn.execute("SELECT x FROM t").fetchone() == (1,)
                sql = "SELECT count(*) FROM pg_database WHERE datname = %s"
                assert conn.execute(sql, (UNICODE_DB,)).fetchone() == (1,)
        pgmgr("extensions", "h")
    finally:
        run_pgmgr("stop", "--all", "-m", "immediate", "-q")
    assert postmasters_under(ops_dir) == []


def test_replica_promote_and_upgrade_check_ignore_it(ops_dir: Path) -> None:
    env = {**hostile(CLI_SETS, "transport", ops_dir), "PGOPTIONS": READ_ONLY}

    def pgmgr(*args: str) -> subprocess.CompletedProcess[str]:
        return ok(run_pgmgr(*args, env=env, timeout=180))

    try:
        pgmgr("start", "-q", "--init", "-d", str(ops_dir / "p"), "--name", "p", "-p", "auto",
              "-v", VERSION)  # fmt: skip
        pgmgr("replica", "p", "--name", "r", "-d", str(ops_dir / "r"), "-p", "auto")
        rec = json.loads(pgmgr("status", "r", "--json").stdout)
        assert rec["role"] == "standby", rec
        pgmgr("promote", "r")
        pgmgr("stop", "r", "-q")
        pgmgr("upgrade", "p", "-v", "18", "--check")
    finally:
        run_pgmgr("stop", "--all", "-m", "immediate", "-q")
    assert postmasters_under(ops_dir) == []


@pytest.mark.parametrize("which", sorted(LIBRARY_SETS))
def test_manager_ignores_it(which: str, ops_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in hostile(LIBRARY_SETS, which, ops_dir).items():
        monkeypatch.setenv(key, value)
    pg = Manager("127.0.0.1", free_port("127.0.0.1"), ops_dir / "m", initialize=True,
                 pg_version=VERSION)  # fmt: skip
    try:
        pg.start()  # waits until ready, sets the password
        pg.health()
        assert pg.status(check=True).state == "running"
        with psycopg.connect(clean(pg.url)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pg.stop()
    assert postmasters_under(ops_dir) == []


PLUGIN_EXAMPLE = """
import os
import psycopg


def test_one(pgmgr_db, pgmgr_server):
    pgmgr_server.execute("INSERT INTO t VALUES (1)", dbname=pgmgr_db.name)


def test_two(pgmgr_db, pgmgr_server):
    pgmgr_server.execute("INSERT INTO t VALUES (2)", dbname=pgmgr_db.name)


def test_own_connections_keep_the_users_options(pgmgr_db):
    if os.environ.get("PGOPTIONS"):
        with psycopg.connect(pgmgr_db.dsn) as conn:
            assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
"""

PLUGIN_CONFTEST = """
import pytest


@pytest.fixture(scope="session")
def pgmgr_template(pgmgr_server, pgmgr_template):
    pgmgr_server.execute("CREATE TABLE t (x int PRIMARY KEY)", dbname=pgmgr_template)
    return pgmgr_template
"""


@pytest.mark.parametrize("which", sorted(LIBRARY_SETS))
def test_plugin_ignores_it(
    which: str, pytester: pytest.Pytester, ops_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini(
        f"[pytest]\npgmgr_version = {VERSION}\npgmgr_pool_size = 2\n"
        f"pgmgr_tmpdir = {ops_dir / 'tmp'}\n"
    )
    pytester.makeconftest(PLUGIN_CONFTEST)
    pytester.makepyfile(test_example=PLUGIN_EXAMPLE)
    for key, value in hostile(LIBRARY_SETS, which, ops_dir).items():
        monkeypatch.setenv(key, value)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=150)
    result.assert_outcomes(passed=3)
    assert postmasters_under(ops_dir / "tmp") == []


MARKED_EXAMPLE = """
import os
import psycopg
import pytest


@pytest.mark.pgmgr
def test_marked():
    with psycopg.connect("") as conn:  # PGHOST, PGPORT ... the marker set
        sql = "SELECT current_database(), current_setting('default_transaction_read_only')"
        assert conn.execute(sql).fetchone() == (os.environ["PGDATABASE"], "on")
"""


def test_plugin_marker_keeps_the_users_settings_but_not_their_server(
    pytester: pytest.Pytester, ops_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini(f"[pytest]\npgmgr_version = {VERSION}\npgmgr_tmpdir = {ops_dir / 'tmp'}\n")
    pytester.makepyfile(test_marked=MARKED_EXAMPLE)
    env = {**hostile(CLI_SETS, "service", ops_dir), "PGHOSTADDR": "127.0.0.2",
           "PGOPTIONS": READ_ONLY}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=150)
    result.assert_outcomes(passed=1)
    assert postmasters_under(ops_dir / "tmp") == []


def test_run_and_psql_keep_the_users_settings_but_not_their_server(ops_dir: Path) -> None:
    """``pgmgr run`` and ``pgmgr psql``: the user's PGOPTIONS reach their session; their
    PGSERVICE (whose host beats PGHOST) and PGHOSTADDR do not send it elsewhere."""
    env = {**hostile(CLI_SETS, "service", ops_dir), "PGHOSTADDR": "127.0.0.2",
           "PGOPTIONS": READ_ONLY}  # fmt: skip
    show = "SHOW default_transaction_read_only"
    code = f"import psycopg; print(psycopg.connect('').execute({show!r}).fetchone()[0])"
    probe = [sys.executable, "-c", code]  # PGHOST, PGPORT ... from pgmgr run
    ran = ok(run_pgmgr("run", "-q", "-v", VERSION, "--", *probe, env=env, timeout=120))
    assert ran.stdout.strip() == "on"
    try:
        ok(run_pgmgr("start", "-q", "--init", "-d", str(ops_dir / "u"), "--name", "u",
                     "-p", "auto", "-v", VERSION))  # fmt: skip
        out = ok(run_pgmgr("psql", "u", "--", "-XAtc", show, env=env)).stdout
        assert out.strip() == "on"
        # pgmgr env: what it prints unsets them in the shell that evaluates it
        shell = f'eval "$({sys.executable} -m pgmgr env u)" && exec "$@"'
        argv = ["sh", "-c", shell, "sh", *probe]
        got = ok(subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True))
        assert got.stdout.strip() == "on"
    finally:
        run_pgmgr("stop", "--all", "-m", "immediate", "-q")
    assert postmasters_under(ops_dir) == []


def test_every_parameter_libpq_takes_from_the_environment_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no variable set, each parameter the installed libpq reads from one has an
    explicit value of pgmgr's (a newer libpq's new one fails here: give it a value)."""
    from pgmgr.core import ownconn

    for name in [k for k in os.environ if ownconn.is_libpq_var(k)]:
        monkeypatch.delenv(name)
    base = {"host": "/tmp", "port": "5432", "user": "postgres", "dbname": "postgres"}
    given = ownconn.params(base)
    backed = {opt.keyword.decode() for opt in psycopg.pq.Conninfo.get_defaults() if opt.envvar}
    assert backed - set(given) == {"service"}
    assert given["sslmode"] == "disable" and given["gssencmode"] == "disable"


def test_reload_in_process_ignores_it(ops_dir: Path) -> None:
    """``pgmgr.entry.main(argv)`` (a library caller's in-process command) keeps the
    caller's environment: reload's check of the files (pg_file_settings) and its
    'not in effect' session connect as pgmgr's own connections do."""
    try:
        ok(run_pgmgr("start", "-q", "--init", "-d", str(ops_dir / "r"), "--name", "r",
                     "-p", "auto", "-v", VERSION))  # fmt: skip
        env = {**os.environ, **hostile(LIBRARY_SETS, "transport", ops_dir)}
        code = "from pgmgr.entry import main; main(['reload', 'r', '-q'])"
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    finally:
        run_pgmgr("stop", "--all", "-m", "immediate", "-q")
    assert postmasters_under(ops_dir) == []
