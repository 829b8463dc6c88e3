"""A damaged ``global/pg_control`` of the right size: pgmgr checked only its length and
system identifier, so a snapshot whose pg_control had one byte changed was restored (and
the instance then refused to start: "incorrect checksum in control file"), and a stopped
instance's damaged one was copied into a snapshot. Now its CRC-32C is checked as
PostgreSQL checks it. On real files of PostgreSQL 15 and 18."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pgmgr.core import pgcontrol
from tests.helpers import run_pgmgr
from tests.snap.conftest import Inst
from tests.snap.test_review_inputs import _refused


def _flip(path: Path, offset: int) -> None:
    """One bit of ``path`` changed in place (its owner, size and mode kept)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))


def _crc_end(control: bytes) -> int:
    """The end of the struct's CRC field, found by the CRC itself."""
    for n in range(0, 400, 4):
        if pgcontrol.intact(control[: n + 4]) and not pgcontrol.intact(control[: n + 3]):
            return n + 4
    raise AssertionError("no CRC found")


def test_every_changed_byte_of_the_struct_is_caught(ops_dir: Path, template: Path) -> None:
    """Real pg_control files of 15 (the test template) and 18 pass; one changed bit anywhere
    in the struct or its CRC fails; a change in the zero padding after it passes, as it
    does for PostgreSQL."""
    new = ops_dir / "d18"
    proc = run_pgmgr("init", "-q", "-d", str(new), "-v", "18")
    assert proc.returncode == 0, proc.stderr
    try:
        for datadir, end in ((template, 292), (new, 296)):
            control = (datadir / "global" / "pg_control").read_bytes()
            assert len(control) == 8192 and pgcontrol.intact(control)
            assert _crc_end(control) == end
            for offset in range(end):
                damaged = bytearray(control)
                damaged[offset] ^= 0x01
                assert not pgcontrol.intact(bytes(damaged)), (datadir, offset)
            damaged = bytearray(control)
            damaged[4000] ^= 0x01
            assert pgcontrol.intact(bytes(damaged))
    finally:
        run_pgmgr("destroy", str(new), "--yes", "-q")


def test_a_snapshot_with_a_damaged_pg_control_is_refused(inst: Inst) -> None:
    """One bit of the snapshot's pg_control (not in the system identifier) changed:
    restore and branch --from refuse it as damaged, in one line; the instance runs on with
    its data."""
    inst.ok("snapshot", "dev", "s1", "-q")
    control = inst.store / "s1" / "data" / "global" / "pg_control"
    _flip(control, 100)
    _refused(inst, ("restore", "dev", "s1", "--yes"), 1, "snapshot 's1' is damaged")
    _refused(inst, ("branch", "dev", "b", "--from", "s1"), 1, "checksum mismatch")
    assert [i["name"] for i in json.loads(inst.ok("status", "--json").stdout)] == ["dev"]
    assert inst.state() == "running" and inst.sql("SELECT count(*) FROM t") == "1000"


def test_a_stopped_instance_with_a_damaged_pg_control_is_not_snapshotted(inst: Inst) -> None:
    """The copy would be one restore refuses: refused first, nothing left in the store, the
    instance's files as they were."""
    inst.ok("stop", "dev", "-q")
    control = inst.datadir / "global" / "pg_control"
    _flip(control, 100)
    before = control.read_bytes()
    _refused(inst, ("snapshot", "dev", "s1"), 1, "global/pg_control is damaged")
    assert control.read_bytes() == before
    assert not [n for n in os.listdir(inst.store) if n != "." and not n.startswith(".lock")]
    _flip(control, 100)
    inst.ok("start", "dev", "-q")
    assert inst.sql("SELECT count(*) FROM t") == "1000"
