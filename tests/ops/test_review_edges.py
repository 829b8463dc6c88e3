"""Edges found by a review of replica, import, service, config and run: files that are not
UTF-8, settings pgmgr owns, unit files that are not files, and run's temporary directory as
root under a directory another user controls."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import error_lines
from tests.ops.conftest import Instance

LATIN1_COMMENT = b"# caf\xe9: a comment in Latin-1\n"


def test_a_primary_whose_pg_hba_conf_is_not_utf8_gets_a_replica_and_keeps_its_bytes(
    fresh: Instance,
) -> None:
    hba = fresh.datadir / "pg_hba.conf"
    with open(hba, "ab") as f:
        f.write(LATIN1_COMMENT)
    before = hba.read_bytes()
    made = fresh.pgmgr("replica", "fresh", "--name", "l1", "-q")
    assert made.returncode == 0, made.stderr
    assert LATIN1_COMMENT in hba.read_bytes()
    gone = fresh.pgmgr("destroy", "l1", "--yes", "-q")
    assert gone.returncode == 0, gone.stderr
    assert error_lines(gone.stderr) == []
    assert hba.read_bytes() == before
