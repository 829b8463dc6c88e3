"""A hurried user's slips with snapshot, restore, branch and destroy, found by the
clumsy-user review: a running server whose ``postmaster.pid`` was damaged or removed (it
looks stopped); a snapshot store the server user cannot read; a branch's -d under a
directory the server user cannot enter. On real PostgreSQL 15 servers."""

from __future__ import annotations

import json
import os
import pwd
import shutil

import pytest

from pgmgr.core import dirpath, privileges, userfs
from tests.snap.conftest import Inst
from tests.snap.test_review_inputs import _refused


@pytest.mark.parametrize("damage", ["garbled", "removed"])
def test_a_server_whose_pid_file_is_damaged_is_not_copied_or_replaced(
    inst: Inst, damage: str
) -> None:
    """``postmaster.pid`` of a running server garbled (or removed) by hand: the server
    looked stopped, so 'snapshot' copied its live data directory as if it were a cold one,
    'branch' made an instance of that copy, and 'restore' swapped another data directory
    in under the running postmaster ("Restored 'dev' to 's1'; PostgreSQL 15.18, stopped"),
    which went on writing into the old one. 'start' already refused ("postgres processes
    still use ... but no postmaster serves it"); these now do too, changing nothing."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.sql("INSERT INTO t VALUES (-1)")
    pidfile = inst.datadir / "postmaster.pid"
    body = pidfile.read_bytes()
    owner = os.stat(pidfile)
    try:
        if damage == "garbled":
            pidfile.write_text("garbage\n")
        else:
            pidfile.unlink()
        assert inst.state() == "stopped"
        what = "but no postmaster serves it"
        _refused(inst, ("snapshot", "dev", "s2"), 1, what)
        _refused(inst, ("branch", "dev", "b"), 1, what)
        _refused(inst, ("restore", "dev", "s1", "--yes"), 1, what)
        _refused(inst, ("restore", "dev", "s1", "--yes", "--save-current"), 1, what)
        assert [s["snapshot"] for s in inst.snaps()] == ["s1"]
        assert not (inst.datadir.parent / "b").exists()
    finally:
        pidfile.write_bytes(body)
        os.chown(pidfile, owner.st_uid, owner.st_gid)
    # The server never noticed: the row is there, and a branch of the snapshot still works.
    assert inst.state() == "running"
    assert inst.sql("SELECT count(*) FROM t WHERE x = -1") == "1"
    inst.ok("branch", "dev", "b", "--from", "s1", "-q")


def test_destroy_leaves_a_store_it_cannot_read_alone(inst: Inst) -> None:
    """A snapshot store made unreadable by hand (chmod 000): as root, 'destroy' (with or
    without --with-snapshots) failed with "Error: Permission denied: <store>" and the
    instance could not be destroyed at all, where an unsafe store is left alone and said
    (as the server user, this one is: it cannot open its own store)."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.store.chmod(0)
    try:
        proc = inst.ok("destroy", "dev", "--yes", "--with-snapshots", "--json")
    finally:
        inst.store.chmod(0o700)
    out = json.loads(proc.stdout)
    assert out["removed_datadir"] and out["snapshots_removed"] == 0, out
    assert "Permission denied" in out["snapshots_problem"], out
    assert (inst.store / "s1" / "data").is_dir()
    assert not inst.datadir.exists()


def test_a_branch_under_a_directory_it_cannot_enter_says_so(inst: Inst) -> None:
    """'branch dev b -d DIR/b', DIR a directory the server user cannot enter (another
    user's home): "Error: Permission denied: DIR/PG_VERSION", a file the user never named
    (the look for a data directory above the new one). Now the parent it cannot write is
    said, as for any other. As root, pgmgr itself can look there: the look is run as the
    server user, as a pgmgr run by that user does it."""
    closed = inst.datadir.parent / "closed"
    closed.mkdir()
    if os.geteuid() == 0:
        os.chown(closed, pwd.getpwnam("postgres").pw_uid, -1)
    closed.chmod(0)
    target = closed / "b"
    try:
        if os.geteuid() == 0:
            user = privileges.lookup("postgres")
            userfs.as_user(user, dirpath.check_datadir_place, target, "create")
        else:
            _refused(inst, ("branch", "dev", "b", "-d", str(target)), 1, f"cannot create {target}")
    finally:
        closed.chmod(0o700)
    assert not target.exists()


def test_a_snapshot_whose_copy_was_removed_is_listed_as_not_restorable(inst: Inst) -> None:
    """A snapshot's ``data/`` removed by hand (its snapshot.json left): 'snapshots' listed
    it as a good one, and restore said "its data directory is PostgreSQL unknown, not 15"."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.ok("snapshot", "dev", "s2", "-q")
    shutil.rmtree(inst.store / "s1" / "data")
    rows = {s["snapshot"]: s["problem"] for s in inst.snaps()}
    assert rows == {"s1": "its copy (data/) is missing", "s2": None}, rows
    what = "snapshot 's1' is damaged: its copy (data/) is missing"
    _refused(inst, ("restore", "dev", "s1", "--yes"), 1, what)
    _refused(inst, ("branch", "dev", "b", "--from", "s1"), 1, what)
    inst.ok("snapshot", "dev", "s1", "--delete", "-q")
    assert [s["snapshot"] for s in inst.snaps()] == ["s2"]


def test_a_saved_state_damaged_by_hand_is_not_restored(inst: Inst) -> None:
    """The state a 'restore --save-current' keeps (and the one an upgrade keeps) is the
    data directory itself, renamed: no file of it was counted, so the check that finds a
    snapshot's copy changed since (a file removed or truncated) let it through, and a
    restore of it with base/ removed by hand replaced the instance's data by a server
    without its databases. Now they are counted when kept, and checked as any copy."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.sql("INSERT INTO t VALUES (-7)")
    out = inst.ok("restore", "dev", "s1", "--yes", "--save-current", "--json").stdout
    mine = json.loads(out)["saved_current_as"]
    shutil.rmtree(inst.store / mine / "data" / "base")
    _refused(inst, ("restore", "dev", mine, "--yes"), 1, f"snapshot '{mine}' is damaged")
    assert inst.state() == "running"
    assert inst.sql("SELECT count(*) FROM t") == "1000"  # s1's state, as before the refusal


def test_a_running_server_whose_pg_version_is_damaged_is_not_stopped(inst: Inst) -> None:
    """PG_VERSION of a running server garbled by hand: 'snapshot' and 'branch' stopped the
    server, copied the garbage into a snapshot (or a new instance) that cannot start, then
    failed to start the source again ("... PG_VERSION ... is invalid ...; nothing was
    done"), leaving it stopped. They now refuse while it runs, and nothing is made."""
    inst.ok("snapshot", "dev", "s1", "-q")
    pid = inst.pid()
    version = inst.datadir / "PG_VERSION"
    body = version.read_bytes()
    version.write_text("abc\n")
    try:
        _refused(inst, ("snapshot", "dev", "s2"), 1, "PG_VERSION")
        _refused(inst, ("branch", "dev", "b"), 1, "PG_VERSION")
        assert inst.pid() == pid
        assert [s["snapshot"] for s in inst.snaps()] == ["s1"]
        assert not (inst.datadir.parent / "b").exists()
    finally:
        version.write_bytes(body)
    assert inst.pid() == pid


def test_a_stopped_instance_whose_pg_version_is_damaged_can_be_restored(inst: Inst) -> None:
    """A garbled PG_VERSION is what a snapshot repairs, and the error's hint says to
    restore it: 'restore' refused ("the data directory's PG_VERSION ... is invalid"), so
    the snapshot could not be put back. The snapshot's own major and the system identifier
    in pg_control still decide; the instance's major is the record's."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.ok("stop", "dev", "-q")
    version = inst.datadir / "PG_VERSION"
    body = version.read_bytes()
    version.write_text("abc\n")
    inst.ok("restore", "dev", "s1", "--yes", "-q")
    assert version.read_bytes() == body
    inst.ok("start", "dev", "-q")
    assert inst.state() == "running"
