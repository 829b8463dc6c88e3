"""Snapshot, restore and branch on a real reflink filesystem (a loop-mounted XFS, see
tests/reflink.py; skipped where it cannot be made): the copies are FICLONE clones and the
instances behave as on any other filesystem."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reflink import xfs_dir, xfs_mount  # noqa: F401
from tests.snap.conftest import Inst, leftovers


@pytest.fixture
def xinst(ops_dir: Path, template: Path, xfs_dir: Path) -> Iterator[Inst]:  # noqa: F811
    """A running PostgreSQL 15 instance whose data directory is on the XFS filesystem."""
    datadir = xfs_dir / "data"
    subprocess.run(["cp", "-a", str(template), str(datadir)], check=True)
    it = Inst("xdev", datadir)
    try:
        it.ok("start", "-q", "--init", "-d", str(datadir), "--name", "xdev", "--port", "auto")
        it.sql("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000)")
        yield it
    finally:
        it.pgmgr("stop", "--all", "-m", "immediate", "-q")


def test_snapshot_restore_by_reflink(xinst: Inst) -> None:
    taken = json.loads(xinst.ok("snapshot", "xdev", "s1", "--json").stdout)
    assert taken["method"] == "reflink" and taken["was_running"] is True
    meta = json.loads((xinst.store / "s1" / "snapshot.json").read_text())
    assert meta["method"] == "reflink"
    xinst.sql("DELETE FROM t WHERE x > 10")
    xinst.ok("restore", "xdev", "s1", "--yes", "-q")
    assert xinst.state() == "running"
    assert xinst.sql("SELECT count(*) FROM t") == "1000"
    xinst.sql("DELETE FROM t")  # the snapshot shares no block with the instance any more
    xinst.ok("restore", "xdev", "s1", "--yes", "-q")
    assert xinst.sql("SELECT count(*) FROM t") == "1000"
    assert leftovers(xinst.store) == []


def test_branch_by_reflink_diverges(xinst: Inst) -> None:
    out = json.loads(xinst.ok("branch", "xdev", "xfeat", "--json").stdout)
    assert out["method"] == "reflink" and out["started"] is True
    xinst.sql("INSERT INTO t VALUES (-1)")
    xinst.sql("DELETE FROM t WHERE x > 0", "xfeat")
    assert xinst.sql("SELECT count(*) FROM t") == "1001"
    assert xinst.sql("SELECT count(*) FROM t", "xfeat") == "0"
    xinst.ok("snapshot", "xdev", "b1", "-q")
    out = json.loads(xinst.ok("branch", "xdev", "xfeat2", "--from", "b1", "--json").stdout)
    assert out["method"] == "reflink"
    xinst.ok("start", "xfeat2", "-q")
    assert xinst.sql("SELECT count(*) FROM t", "xfeat2") == "1001"


def test_restore_after_most_bytes_changed_goes_by_difference(xinst: Inst) -> None:
    """On a filesystem that clones, a restore copies only the changed files back even when
    they are most of the bytes (a clone moves no data); elsewhere (ext4) that case is a
    full copy made while the server runs (test_snapdiff)."""
    from pgmgr.core import copy

    xinst.sql("CREATE TABLE big AS SELECT g, repeat('x', 200) AS pad "
              "FROM generate_series(1, 40000) g; CHECKPOINT")  # fmt: skip
    xinst.ok("snapshot", "xdev", "s1", "-q")
    sample = xinst.store / "s1" / "data" / "PG_VERSION"
    assert copy.clones(xinst.store / "s1", sample)
    xinst.sql("UPDATE big SET pad = repeat('y', 200); DELETE FROM t; CHECKPOINT")
    out = json.loads(xinst.ok("restore", "xdev", "s1", "--yes", "--json").stdout)
    meta = json.loads((xinst.store / "s1" / "snapshot.json").read_text())
    assert out["copied_bytes"] > meta["size"] // 2, (out, meta["size"])  # most changed
    assert out["unchanged_files"] > 0, out  # and still by difference
    assert xinst.sql("SELECT count(*) FROM t") == "1000"
    assert xinst.sql("SELECT count(*) FROM big WHERE pad LIKE 'x%'") == "40000"
    assert leftovers(xinst.store) == []


def test_clones_is_false_without_reflink(tmp_path: Path) -> None:
    """The probe on this machine's ordinary filesystem (ext4 or tmpfs: no FICLONE), and
    with PGMGR_COPY_METHOD forcing another method on any filesystem."""
    from pgmgr.core import copy

    sample = tmp_path / "f"
    sample.write_bytes(b"x" * 4096)
    assert copy.clones(tmp_path, sample) is False
    assert copy.clones(tmp_path, tmp_path / "missing") is False
