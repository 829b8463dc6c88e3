"""Restore by difference (pgmgr.core.delta): only what changed since the snapshot is copied
back, the rest is hard-linked from the replaced directory. Real servers; the checks are on
rows, on what the restore reports, and on the files themselves (the restored directory
never shares a file with the snapshot, and keeps no second name for any of its files)."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pgmgr.core import delta
from tests.pause import Paused
from tests.snap.conftest import Inst, leftovers, plant_undeletable


def hooks_dir(tmp_path: Path) -> Path:
    """A pause directory the restore can reach as the server user."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    hooks.chmod(0o777)
    return hooks


def inodes(top: Path) -> dict[int, str]:
    """inode -> path of every regular file under ``top`` (as root the test reads them)."""
    found: dict[int, str] = {}
    for dirpath, _, names in os.walk(top):
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            if os.path.isfile(os.path.join(dirpath, n)):
                found[st.st_ino] = os.path.join(dirpath, n)
    return found


def restore(inst: Inst, snap: str, *extra: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(
        inst.ok("restore", "dev", snap, "--yes", "--json", *extra).stdout
    )
    return data


def test_only_changes_are_copied_back(inst: Inst) -> None:
    """A big table left alone is kept; a small one changed is copied back; then the big
    one changed is copied back too. Rows come back each time."""
    inst.sql("CREATE TABLE big AS SELECT g AS x, repeat('y', 100) AS pad "
             "FROM generate_series(1, 40000) g")  # fmt: skip
    big = int(inst.sql("SELECT pg_relation_size('big')"))
    inst.ok("snapshot", "dev", "s1", "-q")
    size = int(inst.snaps()[0]["size"])  # type: ignore[call-overload]
    inst.sql("DELETE FROM t WHERE x > 10")
    out = restore(inst, "s1")
    assert inst.sql("SELECT count(*) FROM t") == "1000"
    assert out["unchanged_files"] > 100  # type: ignore[operator]
    assert out["copied_bytes"] <= size - big

    inst.sql("UPDATE big SET x = -x WHERE x % 100 = 0")
    out = restore(inst, "s1")
    assert inst.sql("SELECT count(*) FROM big WHERE x < 0") == "0"
    assert out["copied_bytes"] >= big  # type: ignore[operator]
    # Still by difference: the first restore indexed what it restored, after dropping
    # the replaced directory's second names (whose removal would change their ctimes).
    assert out["unchanged_files"] > 100  # type: ignore[operator]

    snap = inodes(inst.store / "s1" / "data")
    live = inodes(inst.datadir)
    assert not set(snap) & set(live), "the restored directory shares files with the snapshot"
    linked = [p for p in live.values() if os.lstat(p).st_nlink > 1]
    assert linked == [], "the replaced directory still holds names of restored files"
    assert leftovers(inst.store) == []


def test_rewritten_in_place_with_the_old_mtime(inst: Inst) -> None:
    """A file overwritten in place, same size, its mtime set back (``cp -p`` or a tool
    that restores timestamps does that): its ctime gives it away, and the snapshot's bytes
    come back. (With inode, size and mtime alone the garbage would be kept.)"""
    inst.ok("snapshot", "dev", "s1", "-q")
    rel = inst.sql("SELECT pg_relation_filepath('t')")
    inst.ok("stop", "dev", "-q")
    path = inst.datadir / rel
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.write(b"\xff" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns
    out = restore(inst, "s1")
    assert out["copied_bytes"] >= st.st_size  # type: ignore[operator]
    inst.ok("start", "dev", "-q")
    assert inst.sql("SELECT count(*), sum(x) FROM t") == "1000|500500"


def test_bad_index_means_a_full_copy(inst: Inst) -> None:
    """A damaged index costs a full copy, never a wrong restore, and is written afresh."""
    inst.ok("snapshot", "dev", "s1", "-q")
    index = inst.store / "s1" / delta.INDEX
    index.write_text('{"format": 1, "dev": "x", "files": {"PG_VERSION": [1]}}')
    inst.sql("TRUNCATE t")
    out = restore(inst, "s1")
    assert out["unchanged_files"] == 0
    assert inst.sql("SELECT count(*) FROM t") == "1000"
    assert json.loads(index.read_text())["format"] == delta.FORMAT
    inst.sql("TRUNCATE t")
    assert restore(inst, "s1")["unchanged_files"] > 0  # type: ignore[operator]
    assert inst.sql("SELECT count(*) FROM t") == "1000"


def test_save_current_shares_nothing(inst: Inst) -> None:
    """``--save-current`` keeps the replaced state as a snapshot: a full copy, so that the
    kept snapshot shares no file with the running instance."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.sql("TRUNCATE t")
    saved = str(restore(inst, "s1", "--save-current")["saved_current_as"])
    assert inst.sql("SELECT count(*) FROM t") == "1000"
    kept = inodes(inst.store / saved / "data")
    assert not set(kept) & set(inodes(inst.datadir))
    restore(inst, saved)
    assert inst.sql("SELECT count(*) FROM t") == "0"


def test_killed_after_linking(inst: Inst, tmp_path: Path) -> None:
    """SIGKILL once the new directory is built (files linked from the live one) but not
    swapped in: the instance starts on its own state, and the next restore is right."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.sql("DELETE FROM t WHERE x > 500")
    run = Paused(hooks_dir(tmp_path), "restore-staged", "restore", "dev", "s1", "--yes",
                 env=inst.env)  # fmt: skip
    run.reached()
    assert run.kill(signal.SIGKILL) == -signal.SIGKILL
    inst.ok("start", "dev", "-q")
    assert inst.sql("SELECT count(*) FROM t") == "500"
    inst.sql("INSERT INTO t VALUES (-1)")
    out = restore(inst, "s1")
    assert inst.sql("SELECT count(*), min(x) FROM t") == "1000|1"
    # The killed run's links changed every file's ctime: nothing matches the index now.
    assert out["unchanged_files"] == 0
    assert leftovers(inst.store) == []


def test_interrupted_restore_with_unremovable_staging(inst: Inst, tmp_path: Path) -> None:
    """SIGTERM with the copy staged (the server stopped) and something in it that its user
    cannot remove (something still writing there, say): "Interrupted" (130), not the
    clean-up's error; the instance runs as before, and the next command sweeps what is left."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.sql("DELETE FROM t WHERE x > 500")
    run = Paused(hooks_dir(tmp_path), "restore-staged", "restore", "dev", "s1", "--yes",
                 env=inst.env)  # fmt: skip
    run.reached()
    (staged,) = [n for n in leftovers(inst.store, wait=0) if n.startswith(".tmp-restore")]
    stuck = plant_undeletable(inst.store / staged)
    run.proc.send_signal(signal.SIGTERM)
    done = run.go()
    assert done.returncode == 130, str(done)
    assert done.stderr.strip() == "Interrupted", str(done)
    assert inst.state() == "running"
    assert inst.sql("SELECT count(*) FROM t") == "500"
    assert staged in leftovers(inst.store, wait=0)
    stuck.chmod(0o700)
    assert inst.pgmgr("snapshot", "dev", "nosuch", "--delete").returncode == 4  # swept first
    assert leftovers(inst.store, wait=0) == []


def test_settle_waits_for_the_file_clock(tmp_path: Path) -> None:
    """An index whose newest ctime is ahead of the clock: settle returns only once the
    clock the kernel stamps files with has passed it."""
    clock = getattr(time, "CLOCK_REALTIME_COARSE", 5)
    ahead = time.clock_gettime_ns(clock) + 30_000_000
    assert delta.settle(delta.Index(0, {"f": (1, 0, 0, ahead)}), tmp_path)
    assert time.clock_gettime_ns(clock) > ahead
    f = tmp_path / "f"
    f.touch()
    assert os.stat(f).st_ctime_ns > ahead


def test_deeply_nested_index_is_no_index(tmp_path: Path) -> None:
    """An index nested too deep for the JSON parser (RecursionError, not a ValueError)
    is a damaged index like any other: a full copy, not a traceback."""
    (tmp_path / delta.INDEX).write_text('{"format": 1, "dev": 1, "files": ' + "[" * 100_000)
    assert delta.load(tmp_path) is None


def test_index_of_another_boot_is_not_trusted(inst: Inst) -> None:
    """An index taken before the machine last booted is not used: a crash can leave a
    file written since with its new data and its old times (fdatasync, lazytime). The
    restore is a full copy, and indexes afresh for this boot."""
    inst.ok("snapshot", "dev", "s1", "-q")
    index = inst.store / "s1" / delta.INDEX
    doc = json.loads(index.read_text())
    assert doc["boot"] == delta.boot_id() != ""
    doc["boot"] = "00000000-0000-0000-0000-000000000000"
    index.write_text(json.dumps(doc))
    inst.sql("TRUNCATE t")
    assert restore(inst, "s1")["unchanged_files"] == 0
    assert inst.sql("SELECT count(*) FROM t") == "1000"
    assert json.loads(index.read_text())["boot"] == delta.boot_id()
    inst.sql("TRUNCATE t")
    assert restore(inst, "s1")["unchanged_files"] > 0  # type: ignore[operator]
    assert inst.sql("SELECT count(*) FROM t") == "1000"


def test_mostly_changed_is_still_by_difference(inst: Inst) -> None:
    """When most of the snapshot's bytes changed since (a big table rewritten), the
    restore still links what did not change (it copied the whole snapshot, every file
    created anew, to keep that copy out of the downtime; the copy by difference is made
    while the server runs now, see test_written_after_it_was_linked)."""
    inst.sql("CREATE TABLE big AS SELECT g AS x, repeat('y', 200) AS pad "
             "FROM generate_series(1, 250000) g")  # fmt: skip
    big = int(inst.sql("SELECT pg_relation_size('big')"))
    inst.ok("snapshot", "dev", "s1", "-q")
    size = int(inst.snaps()[0]["size"])  # type: ignore[call-overload]
    inst.sql("UPDATE big SET x = -x")
    inst.sql("CHECKPOINT")
    out = restore(inst, "s1")
    assert out["unchanged_files"] > 100  # type: ignore[operator]
    assert big <= out["copied_bytes"] < size  # type: ignore[operator]
    assert inst.sql("SELECT count(*) FROM big WHERE x < 0") == "0"
    assert inst.sql("SELECT count(*) FROM t") == "1000"


def test_written_after_it_was_linked(inst: Inst, tmp_path: Path) -> None:
    """The copy by difference is made while the server runs: a file linked from the live
    directory (unchanged since the snapshot) that the server writes before it is stopped
    must come from the snapshot after all, not with the rows written meanwhile (the
    pause 'restore-linked': the staged copy made, the server still running)."""
    inst.sql("CREATE TABLE u AS SELECT g AS x FROM generate_series(1, 100) g")
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.sql("DELETE FROM t WHERE x > 500")  # t changes: copied; u does not: linked
    rel = inst.sql("SELECT pg_relation_filepath('u')")
    run = Paused(hooks_dir(tmp_path), "restore-linked", "restore", "dev", "s1", "--yes",
                 "--json", env=inst.env)  # fmt: skip
    try:
        run.reached()
        staged = [p for p in inst.store.iterdir() if p.name.startswith(".tmp-restore")]
        assert len(staged) == 1, staged
        assert os.lstat(staged[0] / rel).st_ino == os.lstat(inst.datadir / rel).st_ino
        # The SELECT sets the new rows' hint bits: were the page kept, they would show.
        inst.sql("INSERT INTO u SELECT g FROM generate_series(101, 200) g")
        inst.sql("SELECT count(*) FROM u")
        inst.sql("CHECKPOINT")
        assert (inst.datadir / rel).read_bytes() != (inst.store / "s1" / "data" / rel).read_bytes()
    finally:
        done = run.go()
    assert done.returncode == 0, done.stderr
    assert (inst.datadir / rel).read_bytes() == (inst.store / "s1" / "data" / rel).read_bytes()
    assert inst.sql("SELECT count(*), max(x) FROM u") == "100|100"
    assert inst.sql("SELECT count(*) FROM t") == "1000"
    assert json.loads(done.stdout)["unchanged_files"] > 100
    assert [p for p in inodes(inst.datadir).values() if os.lstat(p).st_nlink > 1] == []
    assert leftovers(inst.store) == []


def test_started_by_hand_while_a_stopped_instance_is_linked(inst: Inst, tmp_path: Path) -> None:
    """The instance is stopped; while the restore links its files, a server is started
    on it by hand (``pg_ctl``, bypassing pgmgr's lock) and stopped again: it may have
    written into linked files after the restore last looked at them. The restore is
    refused, nothing changed (it compared ``pg_control`` with its state once the files
    were rechecked, which already held that start)."""
    from pgmgr.core.listen import free_port

    inst.ok("snapshot", "dev", "s1", "-q")
    inst.sql("DELETE FROM t WHERE x > 500")
    inst.ok("stop", "dev", "-q")
    run = Paused(hooks_dir(tmp_path), "restore-linked", "restore", "dev", "s1", "--yes",
                 env=inst.env)  # fmt: skip
    try:
        run.reached()
        stray = inst.datadir.parent / "stray"
        stray.mkdir()
        port = free_port("127.0.0.1")
        pg_ctl = [inst.bin("pg_ctl"), "-w", "-s", "-D", str(inst.datadir)]
        start = [*pg_ctl, "start", "-l", str(stray / "log"),
                 "-o", f"-p {port} -k {stray} -c listen_addresses="]  # fmt: skip
        stop = [*pg_ctl, "stop", "-m", "fast"]
        if os.geteuid() == 0:
            os.chown(stray, pwd.getpwnam("postgres").pw_uid, -1)
            start, stop = (["runuser", "-u", "postgres", "--", *a] for a in (start, stop))
        subprocess.run(start, check=True, timeout=60)
        subprocess.run(stop, check=True, timeout=60)
    finally:
        done = run.go()
    assert done.returncode == 1, done.stderr
    assert "started during the restore; nothing was changed" in done.stderr
    assert inst.state() == "stopped"
    inst.ok("start", "dev", "-q")
    assert inst.sql("SELECT count(*) FROM t") == "500"
    assert leftovers(inst.store) == []
    restore(inst, "s1")
    assert inst.sql("SELECT count(*) FROM t") == "1000"


def test_started_during_the_restore(inst: Inst, tmp_path: Path) -> None:
    """A server started by hand (``pg_ctl``, bypassing pgmgr's lock) while a restore has
    it stopped: it runs again on the directory being replaced, whose files the new one
    shares, and replays its WAL into them. The restore must not swap (the restored
    directory would share files with a running server): it stops, having changed
    nothing, and the instance runs."""
    from pgmgr.core.listen import free_port

    inst.ok("snapshot", "dev", "s1", "-q")
    inst.sql("DELETE FROM t WHERE x > 500")
    run = Paused(hooks_dir(tmp_path), "restore-staged", "restore", "dev", "s1", "--yes",
                 env=inst.env)  # fmt: skip
    try:
        run.reached()
        stray = inst.datadir.parent / "stray"  # reachable by the server user
        stray.mkdir()
        port = free_port("127.0.0.1")
        argv = [inst.bin("pg_ctl"), "start", "-w", "-s", "-D", str(inst.datadir), "-l",
                str(stray / "log"), "-o", f"-p {port} -k {stray} -c listen_addresses="]  # fmt: skip
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
            os.chown(stray, pwd.getpwnam("postgres").pw_uid, -1)
        subprocess.run(argv, check=True, timeout=60)
    finally:
        done = run.go()
    err = done.stderr
    assert done.returncode == 1, err
    assert "started during the restore; nothing was changed" in err
    assert inst.state() == "running"
    assert inst.sql("SELECT count(*) FROM t") == "500"
    live = inodes(inst.datadir)
    assert [p for p in live.values() if os.lstat(p).st_nlink > 1] == []
    assert leftovers(inst.store) == []
    restore(inst, "s1")
    assert inst.sql("SELECT count(*) FROM t") == "1000"


def test_removed_between_the_check_and_the_link(
    inst: Inst, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy by difference is made while the server runs: a file that matched the
    index when it was checked may be gone by the link (a relation's free space map and
    visibility map are unlinked as soon as DROP TABLE commits; a checkpoint removes or
    recycles WAL segments). It comes from the snapshot instead; the restore failed with
    "No such file or directory". In-process, the check of the FSM fork of ``u`` made the
    window: PostgreSQL drops ``u`` in it."""
    from pgmgr.actions import resolve
    from pgmgr.core import restore as restoring

    inst.sql("CREATE TABLE u AS SELECT g AS x FROM generate_series(1, 1000) g")
    inst.sql("VACUUM u")
    fsm = inst.sql("SELECT pg_relation_filepath('u')") + "_fsm"
    assert (inst.datadir / fsm).exists()
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.sql("DELETE FROM t WHERE x > 500")
    record = inst.record()
    psql = [inst.bin("psql"), "-XAtq", "-h", str(record["socket_dir"]), "-p",
            str(record["port"]), "-U", str(record["superuser"]), "-d", "postgres",
            "-c", "DROP TABLE u"]  # fmt: skip
    real = delta.Index.unchanged

    def unchanged(self: delta.Index, rel: str, st: os.stat_result) -> bool:
        if rel == fsm:  # between its stat and its link (as the server user, as root)
            subprocess.run(psql, check=True, capture_output=True, timeout=60)
        return real(self, rel, st)

    monkeypatch.setattr(delta.Index, "unchanged", unchanged)
    out = restoring.restore(resolve("dev", None), "s1")
    assert out.kept > 100
    assert not (inst.store / "s1" / "data" / fsm).samefile(inst.datadir / fsm)
    assert (inst.datadir / fsm).read_bytes() == (inst.store / "s1" / "data" / fsm).read_bytes()
    assert inst.sql("SELECT count(*) FROM u") == "1000"
    assert inst.sql("SELECT count(*) FROM t") == "1000"
    assert leftovers(inst.store) == []
