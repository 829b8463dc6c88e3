"""``upgrade --check`` changes nothing: of an instance without snapshots, it (and an
upgrade that fails) left an empty snapshot store beside the data directory, made for its
work directory. Real servers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import error_lines
from tests.snap.conftest import Inst


@pytest.fixture
def ck(scratch: Path) -> Iterator[Inst]:
    it = Inst("ck", scratch / "ck")
    try:
        it.ok("init", "-q", "-d", str(it.datadir), "--name", "ck", "-v", "15")
        it.ok("start", "ck", "-q", "-p", "auto", "-c", "max_prepared_transactions=2")
        yield it
    finally:
        it.pgmgr("stop", "--all", "-m", "immediate", "-q")


def test_check_and_a_failed_upgrade_leave_no_store(ck: Inst) -> None:
    top = ck.datadir.parent / ".pgmgr-snapshots"
    record = ck.record()
    ck.ok("upgrade", "ck", "-v", "18", "--check", "-q")
    assert ck.record() == record
    assert os.listdir(top) == []  # the top directory stays, as a branch's does
    ck.sql("BEGIN; CREATE TABLE x (); PREPARE TRANSACTION 'p'")
    proc = ck.pgmgr("upgrade", "ck", "-v", "18", "--yes")
    assert proc.returncode == 1 and "prepared transactions" in error_lines(proc.stderr)[0]
    assert os.listdir(top) == [] and ck.record() == record
    ck.sql("COMMIT PREPARED 'p'")
    ck.ok("snapshot", "ck", "s1", "-q")  # a store that holds something is kept, of course
    ck.ok("upgrade", "ck", "-v", "18", "--check", "-q")
    assert os.listdir(top) == ["ck"] and os.listdir(top / "ck") != []
