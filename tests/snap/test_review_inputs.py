"""Bad inputs and clumsy uses of snapshot, restore, branch, upgrade and destroy found by
review: names ending in a line break; data directories inside a snapshot store or another
data directory, or a mount point; standbys; taken ports; --json shapes; stores left
behind. On real PostgreSQL 15 servers (hostile files: test_review_hostile.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pgmgr import DatabaseException, Manager
from tests.helpers import error_lines
from tests.snap.conftest import Inst


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
            ("upgrade", "mp", "-v", "18", "--check"),  # said the checks passed
        ):
            _refused(it, args, 1, "is a mount point")
        assert it.pid("mp") == pid  # never stopped
        assert not (ops_dir / "mnt" / ".pgmgr-snapshots").exists()
    finally:
        it.pgmgr("stop", "--all", "-m", "immediate", "-q")
        subprocess.run(["umount", "-l", str(data)], check=False)


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
