"""``pgmgr export`` / ``import`` of databases with odd but valid names, on real servers."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from tests.ops.conftest import Instance


def _connect(inst: Instance, name: str) -> psycopg.Connection[object]:
    rec = json.loads(inst.pgmgr("status", name, "--json").stdout)
    return psycopg.connect(
        host=str(rec["socket_dir"]), port=int(rec["port"]), user="postgres", autocommit=True
    )


def test_a_database_name_with_a_line_break_round_trips(fresh: Instance, ops_dir: Path) -> None:
    """PostgreSQL allows it and export wrote it into the manifest, but import refused that
    manifest ("a database name is not a one-line string"): a bundle its own export made
    could not be imported."""
    with _connect(fresh, "fresh") as c:
        c.execute('CREATE DATABASE "two\nlines"')
    bundle = ops_dir / "bundle"
    assert fresh.pgmgr("export", "fresh", str(bundle), "-q").returncode == 0
    proc = fresh.pgmgr("import", str(bundle), "-d", str(ops_dir / "imp"), "--name", "imp")
    assert proc.returncode == 0, proc.stderr
    with _connect(fresh, "imp") as c:
        rows = c.execute("SELECT 1 FROM pg_database WHERE datname = %s", ["two\nlines"])
        assert rows.fetchall() == [(1,)]
