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
