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
