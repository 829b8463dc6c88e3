"""``pgmgr import`` of an instance that archives its WAL, on real servers.

Its archive_command is never applied (a command of the machine the bundle was made on), and
archive_mode was kept without it: the new server marked every WAL file ready to archive and
kept it for ever (PostgreSQL keeps what it cannot archive), until its disk was full."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from tests.ops.conftest import Instance


def test_an_imported_instance_does_not_keep_its_wal_for_an_archiver_it_lacks(
    fresh: Instance, ops_dir: Path
) -> None:
    set_ = fresh.pgmgr(
        "config", "fresh", "set", "archive_mode=on", "archive_command=/bin/true", "--restart"
    )
    assert set_.returncode == 0, set_.stderr
    bundle = ops_dir / "bundle"
    assert fresh.pgmgr("export", "fresh", str(bundle), "-q").returncode == 0
    assert json.loads((bundle / "manifest.json").read_text())["settings"]["archive_mode"] == "on"
    target = ops_dir / "imp"
    proc = fresh.pgmgr("import", str(bundle), "-d", str(target), "--name", "imp")
    assert proc.returncode == 0, proc.stderr
    note = next(ln for ln in proc.stderr.splitlines() if ln.startswith("Note: not applied"))
    assert "archive_command, archive_mode (" in note, note
    rec = json.loads(fresh.pgmgr("status", "imp", "--json").stdout)
    with psycopg.connect(
        host=str(rec["socket_dir"]), port=int(rec["port"]), user="postgres", autocommit=True
    ) as c:
        row = c.execute("SHOW archive_mode").fetchone()
        for _ in range(3):
            c.execute("CREATE TABLE IF NOT EXISTS t (x int); INSERT INTO t VALUES (1)")
            c.execute("SELECT pg_switch_wal()")
        c.execute("CHECKPOINT")
    assert row == ("off",)
    assert list((target / "pg_wal" / "archive_status").glob("*.ready")) == []
