"""ICU collations, and a new major built without ICU (the wheel's 18; Debian's 15 has it):
pg_upgrade's checks passed (``--check`` said the instance could be upgraded), then, the
server stopped, pg_upgrade failed to restore the schema ("ICU is not supported in this
build"). Refused first now, before anything is stopped. Real servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pgmgr.core import upgradeicu, versions
from tests.helpers import error_lines
from tests.snap.conftest import Inst, leftovers, running15

HINT = (
    "Hint: use a PostgreSQL 18 built with ICU, or move to libc collations (e.g. ALTER TABLE "
    '... ALTER COLUMN ... TYPE ... COLLATE "C"; DROP COLLATION)'
)


@pytest.fixture
def ic(scratch: Path) -> Iterator[Inst]:
    if not upgradeicu.lacks_icu(versions.select("18").installation):
        pytest.skip("this PostgreSQL 18 has ICU")
    with running15(scratch, "ic") as it:
        yield it


def _in(it: Inst, db: str, query: str) -> None:
    proc = it.pgmgr("psql", "ic", "--", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", query)
    assert proc.returncode == 0, proc.stderr


def _refused(it: Inst, use: str, *args: str) -> None:
    record = it.record()
    proc = it.pgmgr("upgrade", "ic", "-v", "18", *args)
    assert proc.returncode == 1, (args, proc.stderr)
    assert error_lines(proc.stderr) == [
        f"Error: cannot upgrade 'ic': this PostgreSQL 18 is built without ICU, and {use}: "
        "pg_upgrade would fail once the server is stopped; nothing was changed",
        HINT,
    ], proc.stderr
    assert it.record() == record and it.snaps() == [] and leftovers(it.store) == []


def test_icu_collations_are_refused_before_anything(ic: Inst) -> None:
    """Created, or pg_catalog's used by a column, in any database; the server is never
    stopped (it was, for a pg_upgrade that failed)."""
    ic.sql("CREATE DATABASE app")
    _in(ic, "app", "CREATE COLLATION de_icu (provider = icu, locale = 'de-DE')")
    _in(ic, "app", "CREATE TABLE t (x text COLLATE de_icu)")
    pid = ic.pid()
    for args in (["--check"], ["--yes"]):
        _refused(ic, "database app uses ICU collation de_icu", *args)
        assert ic.pid() == pid
    _in(ic, "app", "DROP TABLE t; DROP COLLATION de_icu")
    ic.sql('CREATE TABLE t2 (x text COLLATE "de-DE-x-icu")')
    _refused(ic, "database postgres uses ICU collation de-DE-x-icu", "--yes")
    assert ic.pid() == pid
    ic.sql("DROP TABLE t2")
    ic.sql("CREATE DATABASE icu LOCALE_PROVIDER icu ICU_LOCALE 'de-DE' TEMPLATE template0")
    ic.ok("stop", "ic", "-q")  # a stopped one is asked too, and stays stopped
    _refused(ic, "database icu's locale provider is ICU", "--check")
    assert ic.state() == "stopped"
    ic.ok("start", "ic", "-q")
    ic.sql("DROP DATABASE icu")
    ic.ok("upgrade", "ic", "-v", "18", "--check")  # none left: it can be upgraded
