"""Found by the second review of snapshots: a snapshot damaged after it was taken (a file of
the copy truncated, removed or added); the status of a replaced record reading every
snapshot; a restore by difference refused for want of room for a whole copy; the stores of
branches killed before they were placed piling up. On real PostgreSQL 15 servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pgmgr.core import rebind, registry, snapmeta, userfs
from pgmgr.core.instance import Server
from tests.pause import Paused
from tests.snap.conftest import Inst
from tests.snap.test_disk_full import small_fs  # noqa: F401
from tests.snap.test_review_inputs import _refused
from tests.snap.test_two_registrations import twice  # noqa: F401


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


def test_the_status_of_a_replaced_record_reads_only_what_it_needs(
    twice: tuple[Inst, Inst],  # noqa: F811
    ops_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each ``status`` of a record whose directory was replaced (pgmgr.core.rebind) read
    every snapshot.json of the store, in a process of the server user's (two of them as
    root): 20 snapshots, ~12 ms in-process and the import of the store's modules. Now a
    restore under the other registration reads up to the first snapshot that holds the
    cluster, and another cluster at the path, with no pre-upgrade snapshot, reads none
    and starts no process (the store's names, by fds). Counted in-process: the one place
    a process of the server user's is started (userfs.as_user) runs its function in
    this process here, so that the reads can be counted (root reads the server user's
    files in this test only)."""
    dev, other = twice
    for i in range(2, 7):
        dev.ok("snapshot", "dev", f"s{i}", "-q")
    dev.ok("restore", "dev", "s1", "--yes", "-q")
    reads: list[Path] = []
    forks: list[object] = []
    real_read = snapmeta.read_meta

    def read_meta(snapdir: Path) -> snapmeta.Meta:
        reads.append(snapdir)
        return real_read(snapdir)

    def as_user(user: object, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        forks.append(fn)
        return fn(*args, **kwargs)

    monkeypatch.setattr(snapmeta, "read_meta", read_meta)
    monkeypatch.setattr(userfs, "as_user", as_user)

    def follow() -> str | None:
        with monkeypatch.context() as m:  # the pgmgr commands below use dev's registry
            m.setenv("PGMGR_STATE_DIR", other.env["PGMGR_STATE_DIR"])
            return rebind.follow(Server(registry.load("other")))

    assert follow() == "restored"
    assert len(reads) == 1 and len(forks) <= 1, (reads, forks)
    # Another cluster at the path (a data directory made anew by hand).
    dev.ok("stop", "dev", "-q")
    fresh = ops_dir / "w" / "fresh"
    third = Inst("third", fresh, env={"PGMGR_STATE_DIR": str(ops_dir / "state3")})
    third.ok("init", "-q", "-d", str(fresh), "--name", "third")
    dev.datadir.rename(ops_dir / "w" / "away")
    fresh.rename(dev.datadir)
    reads.clear()
    forks.clear()
    assert follow() is None
    assert reads == [] and forks == [], (reads, forks)
    assert other.status()["state"] == "replaced"


def test_a_restore_by_difference_asks_room_for_what_it_copies(
    small_fs: Path,  # noqa: F811
    template: Path,
) -> None:
    """A data directory of ~74 MB and a snapshot of it on a 180 MB filesystem (~32 MB
    left), then a small change: the restore, which links the unchanged files and copies
    ~17 MB, was refused ("not enough disk space for restoring 's1': 73.7 MB needed, 32.4
    MB free"), however the change was small; no restore could ever work there. Now it
    asks room for what it copies (as a snapshot does for what it does not share)."""
    datadir = small_fs / "data"
    subprocess.run(["cp", "-a", str(template), str(datadir)], check=True)
    inst = Inst("dev", datadir)
    try:
        inst.ok("start", "-q", "--init", "-d", str(datadir), "--name", "dev", "--port", "auto")
        inst.sql("CREATE TABLE t AS SELECT g AS x, repeat('x', 300) AS pad "
                 "FROM generate_series(1, 60000) g; CHECKPOINT")  # fmt: skip
        inst.ok("snapshot", "dev", "s1", "-q")
        st = os.statvfs(small_fs)
        size = int(inst.snaps()[0]["size"])  # type: ignore[call-overload]
        assert st.f_bavail * st.f_frsize < size, "the filesystem must be short of a copy"
        inst.sql("CREATE TABLE u (x int); INSERT INTO u VALUES (1)")
        done = json.loads(inst.ok("restore", "dev", "s1", "--yes", "--json").stdout)
        assert done["unchanged_files"] > 0 and done["copied_bytes"] < size / 2, done
        assert inst.sql("SELECT count(*) FROM t") == "60000"
        assert inst.sql("SELECT to_regclass('u') IS NULL") == "t"
    finally:
        inst.pgmgr("stop", "--all", "-m", "immediate", "-q")


def test_branches_killed_before_they_are_placed_leave_no_stores(inst: Inst) -> None:
    """A branch killed (-9) before its copy was placed left its store behind
    (.pgmgr-snapshots/NEW): its staged copy was removed by the next branch, the directory
    itself never, one per name ever tried; one killed before it copied anything was not
    even looked at. The next branch now removes such a store once it is empty and no
    data directory of that name stands beside it."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.ok("stop", "dev", "-q")
    hooks = inst.datadir.parent / "hooks"
    hooks.mkdir()
    hooks.chmod(0o777)
    top = inst.datadir.parent / ".pgmgr-snapshots"
    for step, args in (
        ("branch-from-snapshot", ("branch", "dev", "b1", "--from", "s1")),
        ("branch-copied", ("branch", "dev", "b2")),
    ):
        with Paused(hooks, step, *args) as run:
            run.reached()
            assert run.kill(signal.SIGKILL) == -signal.SIGKILL
    assert os.listdir(top / "b2") == [".tmp-branch"]  # b1's, empty: gone with that branch
    inst.ok("branch", "dev", "b3", "-q")
    assert sorted(os.listdir(top)) == ["b3", "data"]
    listed = json.loads(inst.ok("status", "--json").stdout)
    assert sorted(i["name"] for i in listed) == ["b3", "dev"]
    inst.ok("branch", "dev", "b1", "-q")  # the names are free


def test_delete_with_online_is_a_usage_error(inst: Inst) -> None:
    """``snapshot dev s1 --online --delete`` deleted s1 and said nothing of --online (a
    slip for ``snapshot dev s1 --online``, which takes one)."""
    inst.ok("snapshot", "dev", "s1", "-q")
    _refused(inst, ("snapshot", "dev", "s1", "--online", "--delete"), 2, "--online")
    assert [s["snapshot"] for s in inst.snaps()] == ["s1"]


def test_a_lost_data_directory_is_branched_from_its_snapshot(inst: Inst) -> None:
    """The data directory gone (removed by mistake): restore said "create it with 'pgmgr
    init -d'", which makes another cluster that no snapshot restores into, and
    ``branch --from SNAP``, which never touches its source, refused too ("data directory
    ... does not exist"): the snapshots could not be used. Now the branch is made, and
    restore's hint names it."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.ok("stop", "dev", "-q")
    inst.datadir.rename(inst.datadir.parent / "lost")
    _refused(inst, ("restore", "dev", "s1", "--yes"), 4, "does not exist")
    proc = inst.pgmgr("restore", "dev", "s1", "--yes")
    assert "pgmgr branch dev NEW --from s1" in proc.stderr, proc.stderr
    inst.ok("branch", "dev", "back", "--from", "s1", "--start", "-q")
    assert inst.sql("SELECT count(*) FROM t", "back") == "1000"


def test_what_cannot_replace_the_directory_stops_nothing(inst: Inst) -> None:
    """Where the data directory cannot be renamed (a parent its user cannot write: the
    server user's registration of root's instance), ``destroy`` stopped the server, then
    failed with "Permission denied: data -> .data.pgmgr-trash-PID": the instance left
    stopped for nothing, and a line that says neither what nor why; ``upgrade`` ran
    pg_upgrade, the server stopped for it, then failed at the swap ("cannot replace").
    Now both are refused first, as restore is, nothing stopped. (Root writes anywhere:
    there the parent is made immutable.)"""
    inst.ok("snapshot", "dev", "s1", "-q")
    pid = inst.pid()
    parent = inst.datadir.parent
    root = os.geteuid() == 0
    if root:
        made = subprocess.run(["chattr", "+i", str(parent)], capture_output=True, check=False)
        if made.returncode != 0:
            pytest.skip(f"cannot make {parent} immutable: {made.stderr!r}")
    else:
        parent.chmod(0o555)
    try:
        for extra in ((), ("--with-snapshots",)):
            _refused(inst, ("destroy", "dev", "--yes", *extra), 1, "cannot destroy 'dev'")
        _refused(inst, ("upgrade", "dev", "-v", "18", "--yes"), 1, "cannot upgrade 'dev'")
        _refused(inst, ("restore", "dev", "s1", "--yes"), 1, "cannot restore 'dev'")
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(parent)], check=True)
        else:
            parent.chmod(0o755)
    assert inst.pid() == pid and inst.sql("SELECT count(*) FROM t") == "1000"
    assert [s["snapshot"] for s in inst.snaps()] == ["s1"]


def test_stop_all_goes_on_past_a_replaced_instance(inst: Inst) -> None:
    """``stop --all`` ended at the first instance it could not stop (one whose data
    directory was replaced, as a copy put back by hand leaves it): "Error: refusing to
    stop 'aa'", and the instances after it kept running. Now each is stopped, the one
    that cannot be is named (a warning) and the exit code is 1."""
    inst.ok("branch", "dev", "aa", "-q")  # started: dev runs
    inst.ok("stop", "aa", "-q")
    aa = inst.datadir.parent / "aa"
    subprocess.run(["cp", "-a", str(aa), str(aa) + ".copy"], check=True)
    aa.rename(str(aa) + ".old")
    Path(str(aa) + ".copy").rename(aa)  # another inode, no snapshot: replaced
    assert inst.state("aa") == "replaced" and inst.state() == "running"
    proc = inst.pgmgr("stop", "--all", "--json")
    assert proc.returncode == 1, proc.stderr
    assert "'aa' was not stopped" in proc.stderr and "Traceback" not in proc.stderr
    assert inst.state() == "stopped"
    done = {r["name"]: r for r in json.loads(proc.stdout)}
    assert done["dev"]["was_running"] and "replaced" in done["aa"]["error"], done
