"""Snapshots by difference (pgmgr.core.delta.Base): a snapshot shares, by hard links, the
files the data directory has not written since an earlier snapshot, and copies the rest.
Real servers; the checks are on rows, on what ``snapshot --json`` reports, and on the
files themselves (which inodes the snapshots and the data directory hold)."""

from __future__ import annotations

import json
import os

from pgmgr.core import delta
from tests.snap.conftest import Inst, leftovers
from tests.snap.test_delta import inodes


def snap(inst: Inst, name: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(inst.ok("snapshot", "dev", name, "--json").stdout)
    return data


def restore(inst: Inst, name: str) -> None:
    inst.ok("restore", "dev", name, "--yes", "-q")


def test_a_snapshot_shares_what_did_not_change(inst: Inst) -> None:
    """The second snapshot links the files left alone from the first and copies the
    changed ones; no snapshot shares a file with the data directory; each restores its
    own rows, also once the other is deleted."""
    first = snap(inst, "s1")
    assert first["shared_files"] == 0 and first["shared_with"] is None
    inst.sql("DELETE FROM t WHERE x > 10")
    second = snap(inst, "s2")
    assert second["shared_with"] == "s1"
    assert second["shared_files"] > 100  # type: ignore[operator]
    assert second["copied_bytes"] < second["size"] // 2  # type: ignore[operator]
    assert second["size"] == first["size"] or second["size"] > 0
    one, two = inodes(inst.store / "s1" / "data"), inodes(inst.store / "s2" / "data")
    assert len(set(one) & set(two)) == second["shared_files"]
    live = set(inodes(inst.datadir))
    assert not live & set(one) and not live & set(two)
    t = inst.sql("SELECT pg_relation_filepath('t')")
    assert (
        os.stat(inst.store / "s1" / "data" / t).st_ino
        != os.stat(inst.store / "s2" / "data" / t).st_ino
    ), "the changed table was linked, not copied"

    restore(inst, "s1")
    assert inst.sql("SELECT count(*) FROM t") == "1000"
    restore(inst, "s2")
    assert inst.sql("SELECT count(*) FROM t") == "10"
    inst.ok("snapshot", "dev", "s1", "--delete", "-q")
    inst.sql("TRUNCATE t")
    restore(inst, "s2")
    assert inst.sql("SELECT count(*) FROM t") == "10"
    assert leftovers(inst.store) == []


def test_a_changed_copy_in_the_store_is_not_shared(inst: Inst) -> None:
    """A file of the earlier snapshot's copy written since it was made (by hand, a
    broken disk) is not linked into the next one: the next holds the data directory's
    bytes. (With the data directory's stamps alone it would be linked.)"""
    inst.ok("snapshot", "dev", "s1", "-q")
    rel = inst.sql("SELECT pg_relation_filepath('t')")
    spoiled = inst.store / "s1" / "data" / rel
    size = spoiled.stat().st_size
    with open(spoiled, "r+b") as f:
        f.write(b"\xff" * size)
    second = snap(inst, "s2")
    assert second["shared_with"] == "s1"
    assert os.stat(inst.store / "s2" / "data" / rel).st_ino != spoiled.stat().st_ino
    inst.sql("TRUNCATE t")
    restore(inst, "s2")
    assert inst.sql("SELECT count(*), sum(x) FROM t") == "1000|500500"


def test_sharing_goes_on_after_restores_and_deletes(inst: Inst) -> None:
    """The reset loop of a test suite: keep ``base``; snapshot, change, restore, delete,
    again. Each snapshot shares with ``base`` (the restore handed the restored
    directory's stamps to every snapshot sharing files with the restored one), and a
    restore of ``base`` afterwards still brings back ``base``'s rows, not the others'."""
    inst.ok("snapshot", "dev", "base", "-q")
    inst.sql("INSERT INTO t VALUES (-1)")  # the runs' snapshots differ from base in t
    for run in range(2):
        out = snap(inst, "run")
        assert out["shared_with"] == "base", (run, out)
        assert out["copied_bytes"] < out["size"] // 2, (run, out)  # type: ignore[operator]
        inst.sql("DELETE FROM t")
        restore(inst, "run")
        assert inst.sql("SELECT count(*) FROM t") == "1001"
        inst.ok("snapshot", "dev", "run", "--delete", "-q")
    index = delta.load(inst.store / "base")
    assert index is not None and index.own
    restore(inst, "base")
    assert inst.sql("SELECT count(*), min(x) FROM t") == "1000|1"
    assert leftovers(inst.store) == []


def test_the_snapshot_sharing_most_is_the_base(inst: Inst) -> None:
    """Of several earlier snapshots, the one sharing most bytes is linked from (chosen
    before the server stops), not merely the newest."""
    inst.ok("snapshot", "dev", "old", "-q")
    inst.sql("CREATE TABLE big AS SELECT g AS x, repeat('y', 200) AS pad "
             "FROM generate_series(1, 20000) g")  # fmt: skip
    inst.ok("snapshot", "dev", "mid", "-q")
    inst.sql("DROP TABLE big")
    inst.ok("snapshot", "dev", "new", "-q")  # shares with old (big is gone) and mid
    inst.sql("CREATE TABLE big2 AS SELECT 1 AS x")
    inst.ok("snapshot", "dev", "new", "--delete", "-q")
    inst.ok("restore", "dev", "mid", "--yes", "-q")  # the data directory is mid again
    out = snap(inst, "last")
    assert out["shared_with"] == "mid", out
    assert out["copied_bytes"] < out["size"] // 2  # type: ignore[operator]
