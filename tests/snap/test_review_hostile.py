"""Hostile or broken files in the snapshot store, found by review: the server user (who
owns the store) swapping in symlinks, editing snapshot.json (binaries root would run,
settings pgmgr keeps for itself, numbers JSON allows but nothing handles), damaged copies;
and two server users' stores side by side, as root. On real PostgreSQL 15 servers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import error_lines
from tests.snap.conftest import Inst
from tests.snap.test_branch import _held_branch
from tests.snap.test_review_inputs import _refused


def test_a_branch_copy_swapped_for_a_symlink_is_not_registered(inst: Inst, tmp_path: Path) -> None:
    """The server user (who owns the target's store) swaps the staged copy for a symlink
    before it is renamed into place: the branch was registered unpinned, a symlink to
    wherever the user chose sat at the new data directory's path (as root: in a directory
    only root can write), and the command said "Branched". Now refused, nothing left."""
    ops = inst.datadir.parent
    victim = ops / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    hooks.chmod(0o777)
    inst.ok("stop", "dev", "-q")  # so the branch is not started (which failed, confusingly)
    proc = _held_branch(inst, hooks, "dev", "evil")
    try:
        staged = ops / ".pgmgr-snapshots" / "evil" / ".tmp-branch"
        os.rename(staged, staged.parent / ".tmp-moved")
        os.symlink(victim, staged)
        owner = os.stat(staged.parent)
        os.lchown(staged, owner.st_uid, owner.st_gid)  # the server user's, as root
    finally:
        (hooks / "branch-copied.go").touch()
        out, err = proc.communicate(timeout=60)
    lines = error_lines(err)
    assert proc.returncode == 1, (out, err)
    assert lines[0].startswith("Error: ") and "was replaced while it was made" in lines[0]
    assert not os.path.lexists(ops / "evil")
    assert (victim / "keep").read_text() == "x"
    assert [i["name"] for i in json.loads(inst.ok("status", "--json").stdout)] == ["dev"]
    assert inst.state() == "stopped"


def test_a_snapshot_that_is_a_symlink_is_deleted_not_followed(inst: Inst) -> None:
    """The server user made snapshot 's1' a symlink (to a directory beside it): '--delete'
    failed with "Cannot call rmtree on a symbolic link" after renaming it out of the
    listing, and the sweep never removed the renamed symlink. Now the symlink goes, what it
    points to stays; a work entry that is a symlink is swept."""
    inst.ok("snapshot", "dev", "s1", "-q")
    store = inst.store
    os.rename(store / "s1", store / ".real")
    os.symlink(".real", store / "s1")
    os.symlink(".real", store / ".tmp-stale")
    owner = os.stat(store)
    for name in ("s1", ".tmp-stale"):
        os.lchown(store / name, owner.st_uid, owner.st_gid)
    proc = inst.pgmgr("snapshot", "dev", "s1", "--delete")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(store)) == [".real"]
    assert (store / ".real" / "data" / "PG_VERSION").is_file()
    assert inst.snaps() == []


def test_a_rollback_never_takes_binaries_from_the_snapshot_metadata(scratch: Path) -> None:
    """The server user owns the store, so it can edit the pre-upgrade snapshot's
    snapshot.json: a rollback recorded its 'bindir' as the instance's binaries, and root's
    next 'pgmgr psql' ran that directory's psql as root; and its settings unchecked. The
    record now gets the binaries pgmgr itself finds for that major, and settings checked
    as -c ones are."""
    it = Inst("up", scratch / "up")
    it.ok("init", "-q", "-d", str(it.datadir), "--name", "up", "-v", "15")
    real = str(it.record()["bindir"])
    it.ok("start", "up", "-q", "-p", "auto")
    it.ok("upgrade", "up", "-v", "18", "--yes", "-q")
    fake = scratch / "fakebin"
    fake.mkdir()
    marker = scratch / "psql-ran"
    os.symlink(Path(real) / "postgres", fake / "postgres")
    (fake / "psql").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (fake / "psql").chmod(0o755)
    meta = it.store / "pre-upgrade-15" / "snapshot.json"
    data = json.loads(meta.read_text())
    assert data["bindir"] == real
    data["bindir"] = str(fake)
    try:
        # nor settings pgmgr keeps for itself (the server would listen on every address)
        meta.write_text(json.dumps({**data, "settings": {"listen_addresses": "*"}}))
        proc = it.pgmgr("restore", "up", "pre-upgrade-15", "--yes")
        assert proc.returncode == 1, proc.stderr
        assert error_lines(proc.stderr) == [
            "Error: snapshot 'pre-upgrade-15' is damaged: its settings: setting "
            "'listen_addresses' is managed by pgmgr: use --host, --port or --socket-dir; "
            "nothing was changed"
        ]
        assert it.record()["major"] == "18" and it.state() == "running"
        meta.write_text(json.dumps(data))  # owner and mode kept: the server user's file
        it.ok("restore", "up", "pre-upgrade-15", "--yes", "-q")
        assert it.record()["bindir"] == real and it.record()["major"] == "15"
        assert it.sql("SHOW server_version_num", "up").startswith("15")
        assert not marker.exists()
    finally:
        it.pgmgr("stop", "--all", "-m", "immediate", "-q")


def test_edited_or_broken_metadata_is_one_line(inst: Inst) -> None:
    """snapshot.json is the server user's file: a copied snapshot keeps the other's name
    (restore inspected the snapshot the file named, and copied the one asked for), wrong
    types, a truncated file, a FIFO. Each is one line, nothing changes, nothing hangs."""
    for name in ("s1", "s2", "s3", "s4"):
        inst.ok("snapshot", "dev", name, "-q")
    inst.sql("INSERT INTO t VALUES (-7)")
    store = inst.store
    owner = os.stat(store)

    def edit(snap: str, changes: dict[str, object]) -> None:
        meta = store / snap / "snapshot.json"
        meta.write_text(json.dumps({**json.loads(meta.read_text()), **changes}))

    edit("s1", {"name": "elsewhere"})
    edit("s2", {"settings": "work_mem=1MB"})
    (store / "s3" / "snapshot.json").write_text('{"name": "s3", "inst')
    (store / "s4" / "snapshot.json").unlink()
    os.mkfifo(store / "s4" / "snapshot.json")
    os.chown(store / "s4" / "snapshot.json", owner.st_uid, owner.st_gid)
    listed = {s["snapshot"]: s["problem"] for s in inst.snaps()}
    assert listed["s1"] is None
    assert listed["s2"] == "'settings' must map names to strings"
    assert listed["s3"] and listed["s4"] == "not a regular file"
    for name, why in (("s2", "must map names"), ("s3", "unreadable"), ("s4", "regular file")):
        _refused(inst, ("restore", "dev", name, "--yes"), 1, why)
        _refused(inst, ("branch", "dev", f"b{name}", "--from", name), 1, why)
    assert inst.sql("SELECT count(*) FROM t WHERE x = -7") == "1"
    inst.ok("restore", "dev", "s1", "--yes", "-q")
    assert inst.sql("SELECT count(*) FROM t WHERE x = -7") == "0"
    assert [i["name"] for i in json.loads(inst.ok("status", "--json").stdout)] == ["dev"]


@pytest.mark.skipif(os.geteuid() != 0, reason="two server users need root")
def test_two_server_users_beside_each_other_both_have_snapshots(inst: Inst) -> None:
    """As root, two instances in one directory run by different OS users: the first one's
    snapshot made .pgmgr-snapshots its user's (0700), and the second could never snapshot,
    branch or upgrade ("refusing to use .pgmgr-snapshots: owned by uid 101 ... remove it
    if you did not make it", a hint that deletes the first one's snapshots). The top is
    root's now, each user's store inside it private to them."""

    from tests.reliability.users import os_user

    with os_user("snap") as user:
        _two_users(inst, user.name, user.uid, user.gid)


def _two_users(inst: Inst, name: str, uid: int, gid: int) -> None:
    import stat

    inst.ok("snapshot", "dev", "s1", "-q")
    other = inst.datadir.parent / "other"
    other.mkdir(mode=0o700)
    os.chown(other, uid, gid)
    inst.ok("init", "-q", "-d", str(other), "--name", "other", "-v", "15")
    inst.ok("snapshot", "other", "o1", "-q")
    mine = inst.datadir.parent / ".pgmgr-snapshots" / "other"
    st = mine.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (uid, 0o700)
    assert (mine / "o1" / "data").stat().st_uid == uid
    assert [s["snapshot"] for s in inst.snaps("other")] == ["o1"]
    assert [s["snapshot"] for s in inst.snaps()] == ["s1"]
    inst.ok("restore", "other", "o1", "--yes", "-q")
    inst.ok("destroy", "other", "--yes", "--with-snapshots", "-q")
    assert not mine.exists()
    assert [s["snapshot"] for s in inst.snaps()] == ["s1"]


def test_out_of_range_numbers_in_metadata_are_one_line(inst: Inst) -> None:
    """JSON has NaN, 1e308 and 10**400: 'pgmgr snapshots' (root's listing of every
    instance included) died with a traceback on them ("timestamp out of range", "integer
    division result too large"), and so did a restore's space check."""
    for name in ("s1", "s2", "s3"):
        inst.ok("snapshot", "dev", name, "-q")
    for name, text in (("s1", '"created": NaN'), ("s2", '"created": 1e308'),
                       ("s3", '"size": 1' + "0" * 400)):  # fmt: skip
        meta = inst.store / name / "snapshot.json"
        data = json.loads(meta.read_text())
        key = text.split('"')[1]
        data[key] = 0
        meta.write_text(json.dumps(data).replace(f'"{key}": 0', text))
    for args in (("snapshots", "dev"), ("snapshots",), ("snapshots", "--json")):
        proc = inst.ok(*args)
        assert "Traceback" not in proc.stderr and "NaN" not in proc.stdout
    assert {s["problem"] for s in inst.snaps()} == {"'created' or 'size' is out of range"}
    _refused(inst, ("restore", "dev", "s3", "--yes"), 1, "out of range")


def test_a_damaged_snapshot_copy_is_one_line_for_restore_and_branch(inst: Inst) -> None:
    """A snapshot whose pg_control is a FIFO made restore die with a traceback ("ValueError:
    global/pg_control is truncated"); branch --from copied a snapshot restore refuses as
    damaged (here: PG_VERSION says garbage) and registered an instance that cannot start."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.ok("snapshot", "dev", "s2", "-q")
    owner = os.stat(inst.store)
    control = inst.store / "s1" / "data" / "global" / "pg_control"
    control.unlink()  # its own file now: the others keep theirs
    os.mkfifo(control)
    version = inst.store / "s2" / "data" / "PG_VERSION"
    version.unlink()
    version.write_text("garbage\n")
    for path in (control, version):
        os.chown(path, owner.st_uid, owner.st_gid)
    for snap, why in (
        ("s1", "pg_control is not a regular file"),
        ("s2", "PG_VERSION is invalid ('garbage'"),
    ):
        _refused(inst, ("restore", "dev", snap, "--yes"), 1, f"snapshot {snap!r} is damaged")
        _refused(inst, ("branch", "dev", "b", "--from", snap), 1, why)
    assert [i["name"] for i in json.loads(inst.ok("status", "--json").stdout)] == ["dev"]
    assert inst.state() == "running" and inst.sql("SELECT count(*) FROM t") == "1000"


def test_metadata_nested_too_deep_is_one_line(inst: Inst) -> None:
    """A snapshot.json nested deeper than the JSON parser goes (RecursionError, which is
    not a ValueError): 'pgmgr snapshots' (root's listing of every instance too), restore,
    branch, and root's look at a replaced data directory (pgmgr.core.rebind) died with a
    traceback on the server user's file."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.ok("snapshot", "dev", "deep", "-q")
    (inst.store / "deep" / "snapshot.json").write_text('{"name": ' + "[" * 100_000)
    for args in (("snapshots", "dev"), ("snapshots",), ("snapshots", "--json")):
        proc = inst.ok(*args)
        assert "Traceback" not in proc.stderr
    listed = {s["snapshot"]: s["problem"] for s in inst.snaps()}
    assert listed["s1"] is None and "nested too deep" in str(listed["deep"]), listed
    _refused(inst, ("restore", "dev", "deep", "--yes"), 1, "nested too deep")
    _refused(inst, ("branch", "dev", "b", "--from", "deep"), 1, "nested too deep")
    inst.ok("restore", "dev", "s1", "--yes", "-q")  # the others are fine


@pytest.mark.parametrize(
    ("key", "value"),
    [("files", "x"), ("files", None), ("files", []), ("files", True), ("files", -1),
     ("format", "1"), ("bindir", 5), ("method", None)],
)  # fmt: skip
def test_a_wrong_type_in_metadata_is_one_line(inst: Inst, key: str, value: object) -> None:
    """snapshot.json is the server user's file: a 'files' of "x" (or null, a list) passed
    the type checks, which named only some fields, and restore and branch --from died with
    a TypeError comparing it to 0. Every field is checked: the snapshot is listed with its
    problem, and restore and branch refuse it in one line, changing nothing."""
    inst.ok("snapshot", "dev", "s1", "-q")
    meta = inst.store / "s1" / "snapshot.json"
    data = json.loads(meta.read_text())
    data[key] = value
    meta.write_text(json.dumps(data))
    pid = inst.pid()
    _refused(inst, ("restore", "dev", "s1", "--yes"), 1, f"'{key}'")
    _refused(inst, ("branch", "dev", "b", "--from", "s1"), 1, f"'{key}'")
    assert [f"'{key}'" in str(s["problem"]) for s in inst.snaps()] == [True]
    assert inst.pid() == pid
    assert [i["name"] for i in json.loads(inst.ok("status", "--json").stdout)] == ["dev"]
