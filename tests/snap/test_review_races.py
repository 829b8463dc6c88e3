"""Two commands at once on one instance, each waiting for the other at the worst moment
(the test-only pauses of pgmgr.core.testhook): what the second one does must take what the
first one did into account."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.helpers import pgmgr_argv, run_pgmgr
from tests.pause import Paused, ok
from tests.snap.conftest import Inst
from tests.snap.test_delta import hooks_dir
from tests.snap.test_interrupt import wait_for_lock
from tests.snap.test_switch_waiters import waiting_for_lock


def waiting(inst: Inst, *args: str) -> subprocess.Popen[str]:
    """``pgmgr ARGS`` started, once it waits for the instance's lock."""
    proc = subprocess.Popen(
        pgmgr_argv(*args), env={**os.environ, **inst.env}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for_lock(proc)
    return proc


def test_destroy_with_snapshots_takes_the_snapshot_it_waited_for(
    inst: Inst, tmp_path: Path
) -> None:
    """destroy counted the snapshots before it waited for the lock: with --with-snapshots
    it left the one a snapshot then took (unlisted: its instance is gone) and said
    nothing; without, it did not say it kept it."""
    taking = Paused(hooks_dir(tmp_path), "snapshot-copied", "snapshot", "dev", "s1",
                    env=inst.env)  # fmt: skip
    taking.reached()
    destroy = waiting(inst, "destroy", "dev", "--yes", "--with-snapshots", "--json")
    ok(taking.go())
    out, err = destroy.communicate(timeout=60)
    assert destroy.returncode == 0, err
    assert json.loads(out)["snapshots_removed"] == 1
    assert not inst.store.exists()


def test_two_registries_of_one_data_directory_wait_for_each_other(
    inst: Inst, ops_dir: Path, tmp_path: Path
) -> None:
    """The instance's lock is in the state directory of whoever runs pgmgr: root and the
    server user who both registered one data directory did not wait for each other, and
    one's sweep of the shared snapshot store removed the other's snapshot under way
    ("Error: No such file or directory: .../.tmp-snap-*/.snapshot.json.*"). Two state
    directories of one user are the same case."""
    inst.ok("stop", "dev", "-q")  # the other record does not know the port it runs on
    other = {**inst.env, "PGMGR_STATE_DIR": str(ops_dir / "other-state")}
    ok(run_pgmgr("init", "-q", "-d", str(inst.datadir), "--name", "again", env=other))
    taking = Paused(hooks_dir(tmp_path), "snapshot-copied", "snapshot", "dev", "s1",
                    env=inst.env)  # fmt: skip
    taking.reached()
    second = subprocess.Popen(
        pgmgr_argv("snapshot", "again", "s2"), env={**os.environ, **other},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    waiting_for_lock(second, inst.datadir)  # for the first's lock (a 1 s sleep only hoped so)
    ok(taking.go())
    _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert sorted(str(s["snapshot"]) for s in inst.snaps()) == ["s1", "s2"]
    assert inst.state() == "stopped"


def test_a_branch_under_way_in_another_registry_is_not_swept(
    inst: Inst, ops_dir: Path, tmp_path: Path
) -> None:
    """A branch sweeps the staged copies that killed branches left beside its own store,
    those whose instance lock is free: the lock of its own user, so it removed the copy of
    a branch under way by the pgmgr of another user (or state directory)."""
    inst.ok("stop", "dev", "-q")
    other = {**inst.env, "PGMGR_STATE_DIR": str(ops_dir / "other-state")}
    ok(run_pgmgr("init", "-q", "-d", str(inst.datadir), "--name", "again", env=other))
    making = Paused(hooks_dir(tmp_path), "branch-copied", "branch", "dev", "k", env=inst.env)
    making.reached()
    ok(run_pgmgr("branch", "again", "b2", "-q", env=other))
    ok(making.go())
    inst.ok("start", "k", "-q")  # made from a stopped source: not started
    try:
        assert inst.sql("SELECT count(*) FROM t", "k") == "1000"
    finally:
        inst.ok("stop", "k", "-q")
