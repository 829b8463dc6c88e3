"""What a test leaves in its database, through example suites run with pytester against
real servers: the next test and the session end are unaffected, pool or no pool."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ops.test_plugin import assert_nothing_left
from tests.ops.test_pool import ini, run

PREPARED = """
import psycopg


def test_leaves_a_prepared_transaction(pgmgr_db):
    with psycopg.connect(pgmgr_db.dsn, autocommit=True) as conn:
        conn.execute("begin")
        conn.execute("create table t (x int)")
        conn.execute("prepare transaction 'left behind'")


def test_next(pgmgr_db):
    with psycopg.connect(pgmgr_db.dsn) as conn:
        conn.execute("create table t (x int)")
"""


@pytest.mark.parametrize("pool_size", [2, 0], ids=["pool", "no-pool"])
def test_a_prepared_transaction_left_behind_is_not_an_error(
    pytester: pytest.Pytester, ops_dir: Path, pool_size: int
) -> None:
    """Its database cannot be dropped while the server runs: it stays until the session's
    end. Without the pool the test errored at teardown with psycopg's ObjectInUse (the
    pool left it quietly)."""
    pytester.makeini(
        ini(ops_dir / "tmp", pool_size) + "pgmgr_settings = max_prepared_transactions=2\n"
    )
    pytester.makepyfile(test_prepared=PREPARED)
    result = run(pytester)
    result.assert_outcomes(passed=2)
    assert_nothing_left(ops_dir)


MADE_TEMPLATES = """
import time

import psycopg
import pytest


@pytest.mark.parametrize("i", range(5))
def test_makes_its_database_a_template(pgmgr_db, pgmgr_server, i):
    pgmgr_server.execute(f'alter database "{pgmgr_db.name}" is_template true')


def test_pause():
    time.sleep(3)  # the pool's worker, full, goes on to the drops meanwhile


@pytest.mark.parametrize("i", range(8))
def test_next(pgmgr_db, i):
    with psycopg.connect(pgmgr_db.dsn) as conn:
        conn.execute("create table t (x int)")


def test_all_dropped(pgmgr_server, pgmgr_pool):
    names = []
    for _ in range(100):
        with psycopg.connect(pgmgr_server.dsn) as conn:
            rows = conn.execute("select datname from pg_database where datistemplate")
            names = [r[0] for r in rows]
        if not [n for n in names if n.startswith("test_")]:
            return
        time.sleep(0.05)
    raise AssertionError(f"not dropped: {names}")
"""


@pytest.mark.parametrize("pool_size", [2, 0], ids=["pool", "no-pool"])
def test_a_database_a_test_made_a_template_is_dropped(
    pytester: pytest.Pytester, ops_dir: Path, pool_size: int
) -> None:
    """``ALTER DATABASE ... IS_TEMPLATE true`` in a test: DROP DATABASE refuses a template.
    The pool retried the drop for ever, and once it had failed 5 times in a row every test
    that found the pool empty errored ("the database pool cannot make databases: cannot
    drop a template database"); without the pool the test errored at teardown."""
    pytester.makeini(ini(ops_dir / "tmp", pool_size))
    pytester.makepyfile(test_templates=MADE_TEMPLATES)
    result = run(pytester)
    result.assert_outcomes(passed=15)
    assert_nothing_left(ops_dir)


GONE = """
def test_a_stops_the_server(pgmgr_db, pgmgr_server):
    pgmgr_server.server.stop("immediate")


def test_b_starts_it_again(pgmgr_server):
    pgmgr_server.restart()


def test_c_drops_the_template(pgmgr_server, pgmgr_template):
    pgmgr_server.execute(f'drop database "{pgmgr_template}"')


def test_d_next(pgmgr_db):
    pass
"""


def test_without_the_pool_a_failed_create_or_drop_is_one_pgmgr_error(
    pytester: pytest.Pytester, ops_dir: Path
) -> None:
    """The template gone (a test dropped it), the server stopped under the teardown: the
    test errors with one DatabaseException saying what could not be done, as the pool's
    PoolError does, not a psycopg error raised from inside the plugin."""
    pytester.makeini(ini(ops_dir / "tmp", 0))
    pytester.makeconftest(
        "import pytest\n\n\n@pytest.fixture(scope='session')\n"
        "def pgmgr_template(pgmgr_server):\n"
        "    pgmgr_server.create_database('tpl')\n"
        "    return 'tpl'\n"
    )
    pytester.makepyfile(test_gone=GONE)
    result = run(pytester)
    result.assert_outcomes(passed=3, errors=2)  # a's teardown, d's set-up
    out = result.stdout.str()
    assert "DatabaseException: cannot drop the test database test_" in out
    assert "DatabaseException: cannot make the test database test_" in out
    assert 'from tpl: template database "tpl" does not exist' in out
    raised = [line for line in out.splitlines() if line.startswith("E ")]
    assert not [line for line in raised if line.split()[1].startswith("psycopg")], raised
    assert_nothing_left(ops_dir)
