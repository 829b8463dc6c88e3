"""Bad inputs to snapshot, branch and init found by review: names that end in a line break,
and data directories put where a snapshot delete, a restore or a destroy would take them
along (inside a snapshot store, inside another data directory). On real PostgreSQL 15
servers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pgmgr import DatabaseException, Manager
from tests.helpers import error_lines
from tests.snap.conftest import Inst
from tests.snap.test_branch import _held_branch


def _refused(inst: Inst, args: tuple[str, ...], code: int, text: str) -> None:
    proc = inst.pgmgr(*args)
    lines = error_lines(proc.stderr)
    assert proc.returncode == code, (args, proc.stderr)
    assert lines and lines[0].startswith("Error: ") and text in lines[0], (args, lines)
    assert len(lines) <= 2 and all(ln.startswith(("Error: ", "Hint: ")) for ln in lines)
    assert "Traceback" not in proc.stderr


def test_names_ending_in_a_line_break_are_refused(inst: Inst) -> None:
    """``$`` in a pattern matches before a final newline: 's2\\n' was a valid snapshot
    name (a directory 's2\\n' in the store) and 'b\\n' a valid instance name."""
    inst.ok("snapshot", "dev", "s1", "-q")
    _refused(inst, ("snapshot", "dev", "s2\n"), 2, "invalid snapshot name")
    _refused(inst, ("restore", "dev", "s1\n", "--yes"), 2, "invalid snapshot name")
    _refused(inst, ("branch", "dev", "b\n"), 2, "invalid instance name")
    other = inst.datadir.parent / "other"
    _refused(inst, ("init", "-d", str(other), "--name", "x\n"), 2, "invalid instance name")
    assert sorted(os.listdir(inst.store)) == ["s1"]
    assert [i["name"] for i in json.loads(inst.ok("status", "--json").stdout)] == ["dev"]
    assert not other.exists()


def test_no_data_directory_inside_a_store_or_another_data_directory(inst: Inst) -> None:
    """A branch made with -d inside the source's store was listed as one of its snapshots,
    and 'pgmgr snapshot dev evil --delete' deleted the branch's (running) data directory;
    one inside the source's data directory copied the source into itself ("Too many open
    files") and left a store in it. Refused before anything is made, like init there."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.sql("INSERT INTO t VALUES (-7)")
    ops = inst.datadir.parent
    before = sorted(os.listdir(inst.datadir))
    store = ops / ".pgmgr-snapshots"
    for args, text in [
        (("branch", "dev", "b1", "-d", str(inst.store / "evil")), "inside the snapshot store"),
        (("branch", "dev", "b2", "-d", str(inst.datadir / "sub")), "inside the data directory"),
        (("branch", "dev", "b3", "-d", str(inst.datadir / "base" / "x")), "inside the data"),
        (("init", "-d", str(inst.store / "s9"), "--name", "i1"), "inside the snapshot store"),
        (("init", "-d", str(inst.datadir / "sub"), "--name", "i2"), "inside the data directory"),
        (("init", "-d", str(ops / "x" / ".pgmgr-snapshots"), "--name", "i3"), "snapshot store"),
    ]:
        _refused(inst, args, 1, text)
    copy = inst.store / "s1" / "data"  # a snapshot's copy: never registered, never started
    files = {p.name: p.stat().st_mtime_ns for p in copy.iterdir()}
    _refused(inst, ("start", "-d", str(copy), "-p", "auto"), 1, "inside the snapshot store")
    with pytest.raises(DatabaseException, match="inside the snapshot store"):
        Manager(db_dir=str(copy)).start()  # the library registers it the same way
    assert {p.name: p.stat().st_mtime_ns for p in copy.iterdir()} == files
    os.symlink(inst.datadir, ops / "lnk")  # the path is resolved
    _refused(inst, ("branch", "dev", "b4", "-d", str(ops / "lnk" / "sub")), 1, "inside the data")
    assert sorted(os.listdir(inst.datadir)) == before
    assert sorted(os.listdir(inst.store)) == ["s1"]
    assert sorted(os.listdir(store)) == ["data"]
    assert not (ops / "x").exists()
    assert [i["name"] for i in json.loads(inst.ok("status", "--json").stdout)] == ["dev"]
    assert inst.state() == "running"
    assert inst.sql("SELECT count(*) FROM t WHERE x = -7") == "1"
    assert [s["snapshot"] for s in inst.snaps()] == ["s1"]


def test_a_branch_beside_a_data_directory_is_still_fine(inst: Inst) -> None:
    """The check is about ancestors: a sibling whose name starts like the store's is not."""
    target = inst.datadir.parent / ".pgmgr-snapshots-not"
    inst.ok("branch", "dev", "b", "-d", str(target), "-q")
    try:
        assert inst.state("b") == "running"
    finally:
        inst.pgmgr("stop", "b", "-m", "immediate", "-q")


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


def test_json_is_one_document_on_stdout_and_errors_one_line(inst: Inst) -> None:
    """With --json: success prints the document and nothing else ('snapshot --delete
    --json' also said "Deleted snapshot" on stderr); an error prints nothing on stdout and
    one Error line (maybe a Hint) on stderr."""
    for args in (
        ("snapshot", "dev", "s1", "--json"),
        ("snapshots", "dev", "--json"),
        ("restore", "dev", "s1", "--yes", "--json"),
        ("branch", "dev", "b", "--from", "s1", "--json"),
        ("destroy", "b", "--yes", "--json"),
        ("snapshot", "dev", "s1", "--delete", "--json"),
    ):
        proc = inst.pgmgr(*args)
        assert proc.returncode == 0 and proc.stderr == "", (args, proc.stderr)
        json.loads(proc.stdout)
    for args, code in (
        (("snapshot", "dev", "s1", "--delete", "--json"), 4),
        (("snapshot", "dev", "bad/name", "--json"), 2),
        (("restore", "dev", "s1", "--yes", "--json"), 4),
        (("restore", "dev", "s1", "--json"), 2),
        (("branch", "dev", "dev", "--json"), 2),
        (("branch", "dev", "b", "--from", "s1", "--json"), 4),
        (("snapshots", "ghost", "--json"), 4),
        (("upgrade", "dev", "-v", "15", "--json"), 2),
        (("upgrade", "dev", "-v", "14", "--json"), 2),
    ):
        proc = inst.pgmgr(*args)
        lines = error_lines(proc.stderr)
        assert proc.returncode == code and proc.stdout == "", (args, proc.stdout, lines)
        assert lines[0].startswith("Error: ") and len(lines) <= 2, (args, lines)


def test_a_standby_is_not_branched(inst: Inst) -> None:
    """A branch of a standby (or of a standby's snapshot) was a standby too, on the source's
    replication slot: it started, failed to set its password ("read-only transaction")
    and was removed; made without starting, it was registered that way. Refused first."""
    inst.ok("replica", "dev", "--name", "rep", "-q")
    try:
        inst.ok("snapshot", "rep", "s1", "-q")
        pid = inst.pid("rep")
        _refused(inst, ("branch", "rep", "b"), 1, "cannot branch: 'rep' is a standby")
        _refused(inst, ("branch", "rep", "b", "--from", "s1"), 1, "is of a standby")
        assert inst.pid("rep") == pid  # not stopped for a copy
        names = [i["name"] for i in json.loads(inst.ok("status", "--json").stdout)]
        assert names == ["dev", "rep"]
        assert not (inst.datadir.parent / "b").exists()
        slots = "SELECT count(*) FROM pg_replication_slots WHERE active"
        assert inst.sql(slots) == "1"
    finally:
        inst.pgmgr("stop", "rep", "-m", "immediate", "-q")


def test_a_branch_of_a_pre_upgrade_snapshot_is_of_its_major(scratch: Path) -> None:
    """A branch of the pre-upgrade snapshot got the source's record: PostgreSQL 18's
    binaries and settings for a 15 data directory ("Started 'old' (PostgreSQL 18.6...)",
    and a setting 15 does not know refused its start). Now the snapshot's major, the
    binaries pgmgr finds for it, and the settings the instance had then."""
    it = Inst("up", scratch / "up")
    it.ok("init", "-q", "-d", str(it.datadir), "--name", "up", "-v", "15")
    real = str(it.record()["bindir"])
    it.ok("start", "up", "-q", "-p", "auto")
    try:
        it.ok("upgrade", "up", "-v", "18", "--yes", "-q")
        it.ok("config", "up", "set", "io_method=sync", "-q")  # new in 18
        out = json.loads(it.ok("branch", "up", "old", "--from", "pre-upgrade-15", "--json").stdout)
        assert out["started"] is True
        rec = Inst("old", scratch / "old").record()
        assert rec["major"] == "15" and rec["bindir"] == real
        assert "io_method" not in rec["settings"]  # type: ignore[operator]
        assert it.sql("SHOW server_version_num", "old").startswith("15")
        assert it.record()["major"] == "18" and it.state() == "running"
    finally:
        it.pgmgr("stop", "--all", "-m", "immediate", "-q")


def test_restore_of_a_stopped_untouched_instance(inst: Inst) -> None:
    """Snapshot a stopped instance, restore it without starting it in between: the
    restore by difference hard-linked the data directory's own pg_control into the staged
    copy, which changed its ctime, and every second restore was refused with "'dev' was
    started during the restore"."""
    inst.ok("stop", "dev", "-q")
    inst.ok("snapshot", "dev", "s1", "-q")
    for _ in range(3):
        out = json.loads(inst.ok("restore", "dev", "s1", "--yes", "--json").stdout)
        assert out["unchanged_files"] > 0
    assert inst.state() == "stopped"
    inst.ok("start", "dev", "-q")
    assert inst.sql("SELECT count(*) FROM t") == "1000"


def test_a_taken_port_is_refused_before_the_source_is_stopped(inst: Inst) -> None:
    """'branch -p PORT' with PORT taken by another program stopped the running source,
    copied it, and only then found the port taken. Now refused first."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        pid = inst.pid()
        _refused(inst, ("branch", "dev", "b", "-p", str(port)), 1, "already in use")
        assert inst.pid() == pid  # never stopped
    assert not (inst.datadir.parent / "b").exists()


def test_destroy_says_when_it_left_an_unsafe_store_alone(inst: Inst) -> None:
    """'destroy --with-snapshots' of an instance whose store is unsafe (here: group
    readable) left the snapshots, rightly, but said nothing: 0 removed, 0 kept."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.store.chmod(0o750)
    out = json.loads(inst.ok("destroy", "dev", "--yes", "--with-snapshots", "--json").stdout)
    assert out["snapshots_removed"] == 0
    assert "refusing to use" in out["snapshots_problem"] and "mode 750" in out["snapshots_problem"]
    assert (inst.store / "s1" / "data").is_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a filesystem needs root")
def test_a_data_directory_that_is_a_mount_point_is_refused_first(ops_dir: Path) -> None:
    """A data directory that is a mount point (its own volume): a snapshot went to the
    parent's filesystem (a plain read copy), and a restore or an upgrade stopped the
    server, copied or ran pg_upgrade, then failed on the swap with "Device or resource
    busy: data". Now refused before anything, in one line."""
    import pwd
    import subprocess

    data = ops_dir / "mnt" / "data"
    data.mkdir(parents=True)
    opts = "size=128m,mode=0700"
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(data)], check=True)
    it = Inst("mp", data)
    try:
        pg = pwd.getpwnam("postgres")
        os.chown(data, pg.pw_uid, pg.pw_gid)
        it.ok("init", "-q", "-d", str(data), "--name", "mp", "-v", "15")
        it.ok("start", "mp", "-q", "-p", "auto")
        pid = it.pid("mp")
        for args in (
            ("snapshot", "mp", "s1"),
            ("restore", "mp", "s1", "--yes"),
            ("upgrade", "mp", "-v", "18", "--yes"),
        ):
            _refused(it, args, 1, "is a mount point")
        assert it.pid("mp") == pid  # never stopped
        assert not (ops_dir / "mnt" / ".pgmgr-snapshots").exists()
    finally:
        it.pgmgr("stop", "--all", "-m", "immediate", "-q")
        subprocess.run(["umount", "-l", str(data)], check=False)


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


def test_a_restore_says_the_standbys_cannot_follow(inst: Inst) -> None:
    """Restoring (or upgrading) a primary breaks its standbys for good (their WAL no
    longer continues the primary's: "record with incorrect prev-link", not ready after a
    restart), and pgmgr said nothing. Now it says which, and how to make them again. (The
    upgrade here also runs with a TMPDIR the server user cannot write: it failed.)"""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.ok("replica", "dev", "--name", "rep", "-q")
    try:
        out = json.loads(inst.ok("restore", "dev", "s1", "--yes", "--json").stdout)
        assert out["standbys_not_following"] == ["rep"]
        proc = inst.ok("restore", "dev", "s1", "--yes")
        assert "Note: the standbys of 'dev' (rep) cannot follow a restore" in proc.stderr
        proc = inst.ok("upgrade", "dev", "-v", "18", "--yes")
        assert "Note: the standbys of 'dev' (rep) cannot follow an upgrade" in proc.stderr
    finally:
        inst.pgmgr("stop", "rep", "-m", "immediate", "-q")


def test_failed_branches_and_destroys_leave_no_empty_stores(inst: Inst) -> None:
    """Each branch made its store (.pgmgr-snapshots/NEW, where it stages the copy) and a
    failed one, or a destroy without snapshots, left it behind: one per name ever used."""
    top = inst.datadir.parent / ".pgmgr-snapshots"
    _refused(inst, ("branch", "dev", "x", "--from", "nope"), 4, "has no snapshot named")
    inst.ok("stop", "dev", "-q")
    inst.ok("branch", "dev", "b", "-q")
    assert sorted(os.listdir(top)) == ["b"]  # b's own (empty) store, while b exists
    inst.ok("destroy", "b", "--yes", "-q")
    assert os.listdir(top) == []
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.ok("branch", "dev", "c", "--from", "s1", "-q")
    inst.ok("snapshot", "c", "c1", "-q")
    proc = inst.ok("destroy", "c", "--yes")  # its snapshot is kept, and so is its store
    assert "Kept its 1 snapshot(s)" in proc.stderr
    assert sorted(os.listdir(top)) == ["c", "data"]


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
    for snap, why in (("s1", "pg_control is unreadable"), ("s2", "PostgreSQL garbage")):
        _refused(inst, ("restore", "dev", snap, "--yes"), 1, f"snapshot {snap!r} is damaged")
        _refused(inst, ("branch", "dev", "b", "--from", snap), 1, why)
    assert [i["name"] for i in json.loads(inst.ok("status", "--json").stdout)] == ["dev"]
    assert inst.state() == "running" and inst.sql("SELECT count(*) FROM t") == "1000"


def test_a_branch_where_its_store_cannot_be_made_is_one_clear_line(inst: Inst) -> None:
    """-d under /proc said "no snapshots of /proc/x" (exit 4); as root, -d in a directory
    the server user cannot reach failed with "Permission denied" after making
    .pgmgr-snapshots there (the server user's)."""
    _refused(inst, ("branch", "dev", "b", "-d", "/proc/pgmgr-x"), 1, "cannot create /proc/pgmgr-x")
    if os.geteuid() == 0:
        private = inst.datadir.parent / "private"
        private.mkdir(mode=0o700)
        _refused(inst, ("branch", "dev", "b", "-d", str(private / "b")), 1, "cannot reach")
        assert os.listdir(private) == []
    assert [i["name"] for i in json.loads(inst.ok("status", "--json").stdout)] == ["dev"]
