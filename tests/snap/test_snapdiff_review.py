"""Review of snapshots by difference (adversarial): scenarios mixing snapshot, restore,
--save-current, --online, deletes and kills. Real servers."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from pathlib import Path

import pytest

from tests.helpers import error_lines
from tests.pause import Paused
from tests.snap.conftest import Inst, leftovers
from tests.snap.test_delta import hooks_dir, inodes
from tests.snap.test_disk_full import small_fs  # noqa: F401


def snap(inst: Inst, name: str, *extra: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(inst.ok("snapshot", "dev", name, "--json", *extra).stdout)
    return data


def restore(inst: Inst, name: str, *extra: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(
        inst.ok("restore", "dev", name, "--yes", "--json", *extra).stdout
    )
    return data


def shared_with_live(inst: Inst) -> list[str]:
    """Files of any snapshot that are files of the data directory too."""
    live = inodes(inst.datadir)
    found = []
    for entry in os.listdir(inst.store):
        if not (inst.store / entry / "data").is_dir():
            continue
        for ino, path in inodes(inst.store / entry / "data").items():
            if ino in live:
                found.append(f"{path} = {live[ino]}")
    return found


def rows(inst: Inst) -> str:
    return inst.sql("SELECT count(*), coalesce(sum(x), 0) FROM t")


def test_restore_snapshot_restore_older_chain(inst: Inst) -> None:
    """Snapshot C, change, snapshot A (shares with C), change, restore A, change, snapshot
    B (shares with A), change; then restore C, B, A in turn, and once A is deleted, C and
    B again: each brings its own rows, and no snapshot ever shares a file with the data
    directory."""
    want = {}
    for name, change in (("c", "INSERT INTO t VALUES (-1)"), ("a", "DELETE FROM t WHERE x < 100")):
        snap(inst, name)
        want[name] = rows(inst)
        inst.sql(change)
    restore(inst, "a")
    inst.sql("INSERT INTO t VALUES (-2)")
    assert snap(inst, "b")["shared_with"] == "a"
    want["b"] = rows(inst)
    inst.sql("UPDATE t SET x = x + 1")
    for name in ("c", "b", "a"):
        restore(inst, name)
        assert rows(inst) == want[name], name
        assert shared_with_live(inst) == []
    inst.ok("snapshot", "dev", "a", "--delete", "-q")
    for name in ("c", "b"):
        restore(inst, name)
        assert rows(inst) == want[name], name
    assert leftovers(inst.store) == []


def test_online_snapshot_space_check_counts_no_sharing(
    small_fs: Path,  # noqa: F811
    template: Path,
) -> None:
    """``snapshot --online`` (pg_basebackup) shares nothing with an earlier snapshot, so its
    space check must ask for the whole size. With the sharing subtracted, the check passes
    on a disk that cannot hold the copy, and pg_basebackup fills the disk the running
    server writes its WAL to. A real small tmpfs (~48 MB free, ~66 MB to copy)."""
    datadir = small_fs / "data"
    subprocess.run(["cp", "-a", str(template), str(datadir)], check=True)
    inst = Inst("dev", datadir)
    try:
        inst.ok("start", "-q", "--init", "-d", str(datadir), "--name", "dev", "--port", "auto")
        inst.sql("CREATE TABLE t AS SELECT g AS x, repeat('x', 200) AS pad "
                 "FROM generate_series(1, 50000) g")  # fmt: skip
        inst.ok("snapshot", "dev", "s1", "-q")
        free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
        assert free < int(inst.snaps()[0]["size"])  # type: ignore[call-overload]
        run = inst.pgmgr("snapshot", "dev", "s2", "--online")
        assert run.returncode == 1, run
        assert "Traceback" not in run.stderr
        assert error_lines(run.stderr)[0].startswith("Error: not enough disk space"), run.stderr
        assert inst.state() == "running"
        assert inst.sql("SELECT count(*) FROM t") == "50000"
        assert [s["snapshot"] for s in inst.snaps()] == ["s1"]
        assert leftovers(inst.store) == []
    finally:
        inst.pgmgr("stop", "--all", "-m", "immediate", "-q")


def test_index_with_a_huge_number_is_no_index(inst: Inst) -> None:
    """A damaged index whose numbers overflow (``1e400`` or ``Infinity`` parse as a float
    infinity, and ``int()`` of it raises OverflowError, not ValueError) is no index: the
    next snapshot and restore copy everything, without a traceback."""
    inst.ok("snapshot", "dev", "s1", "-q")
    index = inst.store / "s1" / "index.json"
    good = json.loads(index.read_text())
    bad = json.loads(index.read_text())
    rel = next(iter(bad["own"]))
    bad["own"][rel][0] = float("inf")
    index.write_text(json.dumps(bad))
    inst.sql("INSERT INTO t VALUES (-1)")
    run = inst.pgmgr("snapshot", "dev", "s2", "--json")
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert json.loads(run.stdout)["shared_files"] == 0
    inst.sql("TRUNCATE t")
    good["dev"] = 1e400
    index.write_text(json.dumps(good))
    run = inst.pgmgr("restore", "dev", "s1", "--yes", "--json")
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert json.loads(run.stdout)["unchanged_files"] == 0
    assert rows(inst) == "1000|500500"


def _by_hand(inst: Inst, sql: str, datadir: Path | None = None) -> None:
    """Start PostgreSQL on the data directory with pg_ctl (bypassing pgmgr and its
    lock), run ``sql``, stop it: a script or a clumsy user."""
    bindir = Path(str(inst.record()["bindir"]))
    sock = inst.datadir.parent / "hand"  # reachable by the server user, unlike tmp_path
    sock.mkdir(exist_ok=True)
    sock.chmod(0o777)
    owner = pwd.getpwuid(inst.datadir.stat().st_uid).pw_name
    prefix = ["runuser", "-u", owner, "--"] if os.geteuid() == 0 else []
    opts = f"-c listen_addresses='' -c unix_socket_directories={sock} -p 5999"
    log = sock / "log"
    log.touch()
    log.chmod(0o666)
    pg_ctl = [*prefix, str(bindir / "pg_ctl"), "-D", str(datadir or inst.datadir), "-l", str(log)]
    started = subprocess.run([*pg_ctl, "-o", opts, "-w", "start"], capture_output=True)
    assert started.returncode == 0, log.read_text()
    try:
        subprocess.run([*prefix, str(bindir / "psql"), "-h", str(sock), "-p", "5999", "-U",
                        str(inst.record()["superuser"]), "-d", "postgres", "-XAtq",
                        "-v", "ON_ERROR_STOP=1", "-c", sql],
                       check=True, capture_output=True)  # fmt: skip
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], check=True, capture_output=True)


def test_server_started_by_hand_during_a_restore_by_difference(inst: Inst, tmp_path: Path) -> None:
    """While the restore builds the new directory by difference (the server stopped, the
    unchanged files of the live directory linked into it), a server is started by hand on
    the data directory, writes, and is stopped again before the swap. Its writes went
    into files the new directory shares: the restore must not swap that in (it did, and
    the restored instance held the hand-written row instead of the snapshot's rows)."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.sql("CREATE TABLE u (y int)")  # something changed: the restore has work to do
    run = Paused(hooks_dir(tmp_path), "restore-staged", "restore", "dev", "s1", "--yes",
                 env=inst.env)  # fmt: skip
    try:
        run.reached()
        _by_hand(inst, "INSERT INTO t VALUES (-99); CHECKPOINT")
    finally:
        done = run.go()
    if done.returncode == 0:
        inst.ok("start", "dev", "-q")
        rel = inst.sql("SELECT pg_relation_filepath('t')")
        same = (inst.datadir / rel).read_bytes() == (inst.store / "s1" / "data" / rel).read_bytes()
        # The hand-written tuple's xid is not committed in s1's pg_xact: hidden at first,
        # it shows once the instance's own transactions reach that xid and commit.
        for _ in range(5):
            inst.sql("SELECT txid_current()")
        assert (same, rows(inst)) == (True, "1000|500500"), "t is not s1's t"
    else:
        assert "Traceback" not in done.stderr and "started" in done.stderr, done.stderr
        inst.ok("start", "dev", "-q")
        assert inst.sql("SELECT count(*) FROM t WHERE x = -99") == "1"  # nothing lost
        restore(inst, "s1")
        assert rows(inst) == "1000|500500"
    assert leftovers(inst.store) == []


def test_server_started_by_hand_during_a_snapshot_by_difference(inst: Inst) -> None:
    """A server started by hand (pg_ctl) while the snapshot copies the stopped data
    directory, which writes and stops again: the files the index says are unchanged are
    linked from the earlier snapshot (their bytes from before the hand-made writes), the
    others copied with them. The snapshot must not be kept as a copy of the instance (it
    was: it lacked the row the data directory holds)."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.sql("CREATE TABLE u (y int)")
    hooks = inst.datadir.parent / "hooks"  # the pause is in the server user's process
    hooks.mkdir(mode=0o777)
    hooks.chmod(0o777)
    run = Paused(hooks, "snapshot-indexed", "snapshot", "dev", "s2", env=inst.env)
    try:
        run.reached()
        _by_hand(inst, "INSERT INTO t VALUES (-99); CHECKPOINT")
    finally:
        done = run.go()
    inst.ok("start", "dev", "-q")
    assert inst.sql("SELECT count(*) FROM t WHERE x = -99") == "1"  # nothing lost
    if done.returncode == 0:
        inst.sql("TRUNCATE t")
        restore(inst, "s2")
        assert rows(inst) == "1001|500401", "s2 is not what the data directory held"
    else:
        assert "Traceback" not in done.stderr and "started" in done.stderr, done.stderr
        assert [s["snapshot"] for s in inst.snaps()] == ["s1"]
    assert leftovers(inst.store) == []


def test_a_server_started_on_one_snapshot_changes_another(inst: Inst) -> None:
    """A clumsy user peeks into snapshot s1 by starting a server on its copy
    (``pg_ctl -D .pgmgr-snapshots/data/s1/data``) to write a row. Before snapshots by
    difference that damaged s1 alone; with them, s2, which shares the table's file with
    s1, restored a table that was not s2's. A snapshot's ``pg_control`` is read-only: the
    start fails, nothing is written, and s2 restores its rows (and runs: a restore makes
    ``pg_control`` writable again)."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.sql("CREATE TABLE u (y int)")
    assert snap(inst, "s2")["shared_with"] == "s1"
    rel = inst.sql("SELECT pg_relation_filepath('t')")
    before = (inst.store / "s2" / "data" / rel).read_bytes()
    with pytest.raises(AssertionError, match="Permission denied"):
        _by_hand(inst, "INSERT INTO t VALUES (-99); CHECKPOINT", inst.store / "s1" / "data")
    inst.sql("TRUNCATE t")
    restore(inst, "s2")
    assert inst.state() == "running"
    for _ in range(5):
        inst.sql("SELECT txid_current()")
    same = (inst.store / "s2" / "data" / rel).read_bytes() == before
    assert (same, rows(inst)) == (True, "1000|500500")
    assert (inst.datadir / "global" / "pg_control").stat().st_mode & 0o777 == 0o600
    assert (inst.store / "s2" / "data" / "global" / "pg_control").stat().st_mode & 0o777 == 0o400
