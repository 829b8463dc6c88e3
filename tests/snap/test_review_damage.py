"""Snapshots damaged after they were taken, found by the second review: a file of the copy
truncated, removed or added (by hand, a full disk, a bad clean-up). On real PostgreSQL 15
servers."""

from __future__ import annotations

import json
import os

from tests.snap.conftest import Inst
from tests.snap.test_review_inputs import _refused


def _relation(inst: Inst, table: str) -> str:
    return inst.sql(f"SELECT pg_relation_filepath('{table}')")


def test_a_snapshot_whose_files_changed_since_it_was_taken_is_refused(inst: Inst) -> None:
    """A relation file of a snapshot truncated by hand (8 kB left of 3.6 MB): restore
    (a full copy: --save-current) and branch --from copied it and said "Restored": the
    table had 226 rows of 100,000, and nothing told. The snapshot records how many files
    and bytes its copy holds (snapshot.json); a copy that holds others is refused before
    anything is stopped, as a damaged pg_control is. A file removed or added: the same."""
    inst.sql("CREATE TABLE big AS SELECT g FROM generate_series(1, 100000) g")
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.ok("snapshot", "dev", "s2", "-q")
    inst.ok("snapshot", "dev", "s3", "-q")
    rel = _relation(inst, "big")
    data = {s: inst.store / s / "data" for s in ("s1", "s2", "s3")}
    owner = os.stat(inst.store)
    # Each its own file first (snapshots share unchanged files by hard links).
    victim = data["s1"] / rel
    body = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(body[:8192])
    (data["s2"] / "PG_VERSION").unlink()
    extra = data["s3"] / "base" / "stray"
    extra.write_text("x")
    for path in (victim, extra):
        os.chown(path, owner.st_uid, owner.st_gid)
    inst.sql("INSERT INTO big VALUES (0)")
    pid = inst.pid()
    for snap in ("s1", "s3"):
        for extra_args in ((), ("--save-current",)):
            args = ("restore", "dev", snap, "--yes", *extra_args)
            _refused(inst, args, 1, f"snapshot {snap!r} is damaged")
        _refused(inst, ("branch", "dev", "b", "--from", snap), 1, f"snapshot {snap!r} is damaged")
    _refused(inst, ("restore", "dev", "s2", "--yes"), 1, "snapshot 's2' is damaged")
    proc = inst.pgmgr("restore", "dev", "s1", "--yes")
    assert "files" in proc.stderr and "bytes" in proc.stderr, proc.stderr
    # Nothing was changed, nothing stopped, no branch, no snapshot saved.
    assert inst.pid() == pid and inst.sql("SELECT count(*) FROM big") == "100001"
    assert [i["name"] for i in json.loads(inst.ok("status", "--json").stdout)] == ["dev"]
    assert sorted(n for n in os.listdir(inst.store) if not n.startswith(".")) == [
        "s1", "s2", "s3"
    ]  # fmt: skip
    # An intact snapshot still restores, by difference and as a full copy.
    inst.ok("snapshot", "dev", "good", "-q")
    inst.sql("DELETE FROM big")
    inst.ok("restore", "dev", "good", "--yes", "-q")
    assert inst.sql("SELECT count(*) FROM big") == "100001"
    inst.sql("DELETE FROM big")
    inst.ok("restore", "dev", "good", "--yes", "-q", "--save-current")
    assert inst.sql("SELECT count(*) FROM big") == "100001"
    kept = [s["snapshot"] for s in inst.snaps() if s["kind"] == "saved"]
    inst.ok("branch", "dev", "b", "--from", str(kept[0]), "--start", "-q")
    assert inst.sql("SELECT count(*) FROM big", "b") == "0"
