"""One data directory registered twice: by root and by its server user, each in their own
registry (here: two state directories of one OS user, which is the same to pgmgr). Each
pgmgr's instance lock is in its own state directory, so the two do not wait for each other
there; they share the snapshot store and its lock."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import copy_datadir, error_lines, pgmgr_argv, postmasters_under
from tests.pause import Paused
from tests.snap.conftest import Inst


@pytest.fixture
def twice(ops_dir: Path, template: Path) -> Iterator[tuple[Inst, Inst]]:
    """A running instance 'dev' with a table t (1000 rows) and a snapshot s1, and the same
    data directory registered as 'other' in a second registry."""
    datadir = copy_datadir(template, ops_dir / "w" / "data")
    dev = Inst("dev", datadir)
    state2 = ops_dir / "state2"
    other = Inst("other", datadir, env={"PGMGR_STATE_DIR": str(state2)})
    try:
        dev.ok("start", "-q", "--init", "-d", str(datadir), "--name", "dev", "--port", "auto")
        dev.sql("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000)")
        dev.ok("snapshot", "dev", "s1", "-q")
        other.ok("init", "-q", "-d", str(datadir), "--name", "other")
        yield dev, other
    finally:
        dev.pgmgr("stop", "--all", "-m", "immediate", "-q")
        other.pgmgr("stop", "--all", "-m", "immediate", "-q")


def hooks(ops_dir: Path) -> Path:
    path = ops_dir / "hooks"
    path.mkdir(exist_ok=True)
    path.chmod(0o777)
    return path


def test_a_branch_from_a_snapshot_holds_the_store_against_a_delete(
    twice: tuple[Inst, Inst], ops_dir: Path
) -> None:
    """``branch --from SNAP`` read the source's store without its lock: a ``snapshot
    --delete`` (or a restore's sweep) by the pgmgr of the other registration removed the
    snapshot under the copy. Now the branch holds the store (shared) while it copies, and
    the delete waits for it."""
    dev, other = twice
    run = Paused(hooks(ops_dir), "branch-from-snapshot", "branch", "dev", "b1", "--from", "s1")
    delete = None
    try:
        run.reached()
        fd = os.open(dev.store, os.O_RDONLY | os.O_DIRECTORY)
        try:  # what a delete, a restore or a snapshot takes: refused while the copy runs
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        delete = subprocess.Popen(
            pgmgr_argv("snapshot", "other", "s1", "--delete"),
            env={**os.environ, **other.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        done = run.go()
        if delete is not None:
            _, err = delete.communicate(timeout=60)
    assert done.returncode == 0, done.stderr
    assert dev.sql("SELECT count(*) FROM t", "b1") == "1000"
    assert delete is not None and delete.returncode == 0, err
    assert "s1" not in os.listdir(dev.store)


def _status(it: Inst) -> dict[str, object]:
    proc = it.pgmgr("status", it.name, "--json")
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def test_a_restore_under_one_registration_is_followed_by_the_other(
    twice: tuple[Inst, Inst],
) -> None:
    """A restore through 'dev' put a copy at the path: 'other' said "replaced" (status
    exit 4; start, stop, destroy refused) for good. The copy holds the same cluster and
    is the server user's, in a directory only they and root can write: 'other' follows."""
    dev, other = twice
    dev.sql("DELETE FROM t")
    dev.ok("restore", "dev", "s1", "--yes", "-q")
    st = _status(other)
    assert st["state"] == "running" and st["pid"] == dev.pid(), st
    other.ok("stop", "other", "-q")
    assert dev.state() == "stopped"
    other.ok("start", "other", "-q", "--port", "auto")
    assert other.sql("SELECT count(*) FROM t", "other") == "1000"
    other.ok("snapshot", "other", "s2", "-q")
    other.ok("stop", "other", "-q")
    pinned = other.record()
    assert (pinned["dev"], pinned["ino"]) == (
        os.stat(dev.datadir).st_dev,
        os.stat(dev.datadir).st_ino,
    )  # saved by the start: the next command does not look again


def test_an_upgrade_under_one_registration_is_followed_by_the_other(
    twice: tuple[Inst, Inst],
) -> None:
    """An upgrade through 'dev' (another system identifier) is followed by 'other' through
    the snapshot it kept for rollback; so is the rollback. A setting of 'other' that the
    new major rejects (gone in 16) is dropped and said, as the upgrade does for 'dev': its
    start failed ('unrecognized configuration parameter "vacuum_defer_cleanup_age"')."""
    dev, other = twice
    dev.ok("stop", "dev", "-q")
    other.ok("start", "other", "-q", "--port", "auto", "-c", "vacuum_defer_cleanup_age=0",
             "-c", "work_mem=5MB")  # fmt: skip
    other.ok("stop", "other", "-q")
    dev.ok("start", "dev", "-q")
    dev.ok("upgrade", "dev", "-v", "18", "--yes", "-q")
    st = _status(other)
    assert st["state"] == "running" and str(st["version"]).startswith("18"), st
    dev.ok("stop", "dev", "-q")
    proc = other.ok("start", "other", "--port", "auto")
    assert "(PostgreSQL 18" in proc.stderr
    assert "vacuum_defer_cleanup_age" in proc.stderr, proc.stderr
    assert other.record()["settings"] == {"work_mem": "5MB"}
    assert other.sql("SHOW work_mem", "other") == "5MB"
    assert other.sql("SELECT count(*) FROM t", "other") == "1000"
    assert other.record()["major"] == "18"
    other.ok("stop", "other", "-q")
    dev.ok("restore", "dev", "pre-upgrade-15", "--yes", "-q")  # the rollback: 15 again
    st = _status(other)
    assert st["state"] == "stopped" and str(st["version"]).startswith("15"), st


def test_another_cluster_at_the_path_is_still_replaced(twice: tuple[Inst, Inst]) -> None:
    """What is not provably the instance is not followed: another cluster (a branch,
    its own system identifier) moved to the path by hand."""
    dev, other = twice
    dev.ok("branch", "dev", "b1", "-q")
    dev.ok("stop", "--all", "-q")
    parent = dev.datadir.parent
    os.rename(dev.datadir, parent / "data.old")
    os.rename(parent / "b1", dev.datadir)
    for it in (dev, other):
        proc = it.pgmgr("status", it.name, "--json")
        assert proc.returncode == 4 and json.loads(proc.stdout)["state"] == "replaced"
        proc = it.pgmgr("start", it.name)
        assert proc.returncode == 4 and "was replaced" in proc.stderr, proc.stderr


def test_a_switch_where_others_can_write_is_not_followed(twice: tuple[Inst, Inst]) -> None:
    """A copy of the cluster at the path is followed only if nobody but root and the
    server user could have put it there: not in a directory anyone can write."""
    dev, other = twice
    dev.ok("restore", "dev", "s1", "--yes", "-q")
    parent = dev.datadir.parent
    parent.chmod(0o777)
    try:
        proc = other.pgmgr("status", "other", "--json")
        assert proc.returncode == 4 and json.loads(proc.stdout)["state"] == "replaced"
    finally:
        parent.chmod(0o755)
    assert _status(other)["state"] == "running"


def test_the_server_users_registration_follows_roots_restore_and_upgrade(
    ops_dir: Path, template: Path
) -> None:
    """The case itself: root registers the data directory as 'dev', its server user
    (postgres) as 'pg' in their own registry; root restores, then upgrades. 'pg' said
    "replaced" after either; now its status, stop and start follow."""
    if os.geteuid() != 0:
        pytest.skip("needs root (two OS users)")
    import pwd

    from tests.reliability.users import pgmgr_as

    datadir = copy_datadir(template, ops_dir / "w" / "data")
    pg_state = ops_dir / "pg-state"
    pg_state.mkdir(mode=0o700)
    owner = pwd.getpwnam("postgres")
    os.chown(pg_state, owner.pw_uid, owner.pw_gid)
    env = {"PGMGR_STATE_DIR": str(pg_state), "PGMGR_CACHE_DIR": str(pg_state / "cache"),
           "PGMGR_RUNTIME_DIR": str(pg_state / "run"), "HOME": str(pg_state)}  # fmt: skip

    def pg(*args: str) -> subprocess.CompletedProcess[str]:
        return pgmgr_as("postgres", *args, env=env)

    dev = Inst("dev", datadir)
    try:
        dev.ok("start", "-q", "--init", "-d", str(datadir), "--name", "dev", "--port", "auto")
        dev.sql("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 10)")
        dev.ok("snapshot", "dev", "s1", "-q")
        assert pg("init", "-q", "-d", str(datadir), "--name", "pg").returncode == 0
        dev.ok("restore", "dev", "s1", "--yes", "-q")
        st = json.loads(pg("status", "pg", "--json").stdout)
        assert st["state"] == "running" and st["pid"] == dev.pid(), st
        dev.ok("upgrade", "dev", "-v", "18", "--yes", "-q")
        st = json.loads(pg("status", "pg", "--json").stdout)
        assert st["state"] == "running" and str(st["version"]).startswith("18"), st
        proc = pg("stop", "pg")
        assert proc.returncode == 0, proc.stderr
        assert dev.state() == "stopped"
    finally:
        dev.pgmgr("stop", "--all", "-m", "immediate", "-q")
        pg("stop", "--all", "-m", "immediate", "-q")


def test_a_snapshot_nested_too_deep_does_not_break_the_follow(
    twice: tuple[Inst, Inst],
) -> None:
    """The other registration reads the store's snapshot.json files (the server user's) to
    follow a restore: one nested deeper than the JSON parser goes made its status die
    with a traceback (RecursionError); it is one unreadable snapshot among the others."""
    dev, other = twice
    dev.ok("snapshot", "dev", "deep", "-q")
    (dev.store / "deep" / "snapshot.json").write_text('{"name": ' + "[" * 100_000)
    dev.ok("restore", "dev", "s1", "--yes", "-q")
    proc = other.pgmgr("status", "other", "--json")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["state"] == "running"


@pytest.mark.parametrize("stopped", [False, True], ids=["running", "stopped-again"])
def test_an_upgrade_refuses_a_server_the_other_registration_started_meanwhile(
    twice: tuple[Inst, Inst], ops_dir: Path, stopped: bool
) -> None:
    """Once pg_upgrade had read the stopped cluster, 'other' (whose instance lock is not
    the upgrade's) started it and a row was written. The upgrade swapped all the same:
    the row was missing from the upgraded instance, which said it was upgraded, and the
    old server ran on in the moved directory, now the rollback snapshot (writing into
    it). As a restore does, the upgrade now refuses before the swap; nothing changed."""
    dev, other = twice
    run = Paused(hooks(ops_dir), "upgrade-ran", "upgrade", "dev", "-v", "18", "--yes")
    try:
        run.reached()
        other.ok("start", "other", "-q", "--port", "auto")
        other.sql("INSERT INTO t VALUES (-1)", "other")
        if stopped:
            other.ok("stop", "other", "-q")
    finally:
        done = run.go()
    assert done.returncode == 1, done.stderr
    assert error_lines(done.stderr)[0] == (
        "Error: 'dev' was started during the upgrade; nothing was changed"
    ), done.stderr
    assert postmasters_under(dev.store) == []
    assert dev.record()["major"] == "15" and dev.state() == "running"  # as it was
    assert dev.sql("SELECT count(*) FROM t WHERE x = -1") == "1"
    assert [s["snapshot"] for s in dev.snaps()] == ["s1"]


def test_a_branch_refuses_a_copy_of_a_server_the_other_registration_started_meanwhile(
    twice: tuple[Inst, Inst], ops_dir: Path
) -> None:
    """A branch stops its source and copies its files. 'other' (whose instance lock is not
    the branch's) started it before the copy: the branch was registered from the files of
    a running server, copied one after the other while it wrote (no backup mode, not a
    crash-consistent image). As a snapshot does, the branch now refuses a copy of a
    directory a server ran on meanwhile; nothing is made, and the source runs."""
    dev, other = twice
    run = Paused(hooks(ops_dir), "branch-copying", "branch", "dev", "b1")
    try:
        run.reached()
        other.ok("start", "other", "-q", "--port", "auto")
        other.sql("INSERT INTO t VALUES (-1)", "other")
    finally:
        done = run.go()
    assert done.returncode == 1, done.stderr
    assert error_lines(done.stderr)[0] == (
        f"Error: a server was started on {dev.datadir} during the branch; nothing was changed"
    ), done.stderr
    assert dev.pgmgr("status", "b1").returncode == 4
    assert not (dev.datadir.parent / "b1").exists()
    assert dev.state() == "running"
    assert dev.sql("SELECT count(*) FROM t WHERE x = -1") == "1"
