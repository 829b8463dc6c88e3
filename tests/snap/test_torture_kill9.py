"""kill -9 in windows a randomized crash torture of snapshot, restore, branch and destroy
found (hundreds of SIGKILLs at random times, the invariants checked after each)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import pgmgr_argv
from tests.pause import Paused
from tests.snap.conftest import Inst
from tests.snap.test_delta import hooks_dir


def test_a_destroy_with_snapshots_killed_after_the_record_went_left_no_snapshots(
    inst: Inst, ops_dir: Path, tmp_path: Path
) -> None:
    """destroy --with-snapshots removed the record, then the snapshots: killed in between,
    the instance was gone and its snapshots stayed in the store for good (the same command
    then said "no instance named 'b'", and 'pgmgr snapshots' listed none of them). The
    snapshots now go first: once the record is gone, nothing of the command is left."""
    inst.ok("branch", "dev", "b", "-q")
    inst.ok("snapshot", "b", "s1", "-q")
    store = ops_dir / ".pgmgr-snapshots"
    assert "b" in os.listdir(store)
    run = Paused(hooks_dir(tmp_path), "destroy-forgotten", "destroy", "b", "--yes",
                 "--with-snapshots", env=inst.env)  # fmt: skip
    with run:
        run.reached()
        run.kill(signal.SIGKILL)
    assert inst.pgmgr("status", "b").returncode != 0  # the record is gone
    left = [n for n in os.listdir(store) if n == "b" or n.startswith(".tmp-delete")]
    assert not left, left  # 'b' (s1 in it) stayed, unlisted, for good


def test_a_destroy_with_snapshots_killed_before_the_record_went_is_finished_by_the_same(
    inst: Inst, ops_dir: Path, tmp_path: Path
) -> None:
    """Killed with the data directory gone and the record still there, the same command
    finishes: the snapshots go, then the record."""
    inst.ok("branch", "dev", "b", "-q")
    inst.ok("snapshot", "b", "s1", "-q")
    run = Paused(hooks_dir(tmp_path), "destroy-stopped", "destroy", "b", "--yes",
                 "--with-snapshots", env=inst.env)  # fmt: skip
    with run:
        run.reached()
        run.kill(signal.SIGKILL)
    assert "s1" in inst.ok("snapshots", "b").stdout
    inst.ok("destroy", "b", "--yes", "--with-snapshots", "-q")
    store = ops_dir / ".pgmgr-snapshots"
    assert "b" not in os.listdir(store)
    assert inst.pgmgr("status", "b").returncode != 0


@pytest.mark.parametrize(
    "then",
    [("snapshot", "dev", "s2"), ("restore", "dev", "s1", "--yes"),
     ("snapshot", "dev", "s1", "--delete")],
    ids=["snapshot", "restore", "delete"],
)  # fmt: skip
def test_a_killed_branchs_copy_is_swept_by_a_snapshot_restore_or_delete_beside_it(
    inst: Inst, ops_dir: Path, tmp_path: Path, then: tuple[str, ...]
) -> None:
    """A branch killed after its copy left that copy (a whole data directory) in
    ``.pgmgr-snapshots/b/.tmp-branch``: a start or stop of its source removed it, but
    snapshots, restores and deletes of the source (which sweep their own store themselves)
    left it for as long as no other command came, a test suite's snapshot-and-restore loop
    for ever."""
    inst.ok("snapshot", "dev", "s1", "-q")
    run = Paused(hooks_dir(tmp_path), "branch-copied", "branch", "dev", "b", "-q", env=inst.env)
    with run:
        run.reached()
        run.kill(signal.SIGKILL)
    staged = ops_dir / ".pgmgr-snapshots" / "b" / ".tmp-branch"
    assert staged.exists()
    inst.ok(*then, "-q")
    assert not staged.exists()
    assert "b" not in os.listdir(ops_dir / ".pgmgr-snapshots")  # nothing's store: it goes


def test_a_destroy_during_a_restore_waits_for_it_instead_of_calling_the_directory_replaced(
    inst: Inst, tmp_path: Path
) -> None:
    """destroy checked the data directory's identity before it took the instance's lock:
    during a restore's swap (the restored directory in place, the record not yet updated)
    it refused: "its data directory ... was replaced (another directory holding a copy of
    its cluster stands there)", with a hint to forget the instance. It now waits for the
    restore, as every other command, and destroys what the restore made."""
    inst.ok("snapshot", "dev", "s1", "-q")
    restore = Paused(hooks_dir(tmp_path), "restore-swapped", "restore", "dev", "s1", "--yes",
                     env=inst.env)  # fmt: skip
    with restore:
        restore.reached()
        destroy = subprocess.Popen(
            pgmgr_argv("destroy", "dev", "--yes", "--with-snapshots"),
            env={**os.environ, **inst.env}, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(1.5)  # it reads the record and the directory, then waits for the lock
        assert destroy.poll() is None, destroy.communicate()
        assert restore.go().returncode == 0
        _, err = destroy.communicate(timeout=60)
    assert destroy.returncode == 0, err
    assert not inst.datadir.exists()
    assert inst.pgmgr("status", "dev").returncode != 0


def test_status_during_a_restores_swap_says_stopped_by_the_restore(
    inst: Inst, tmp_path: Path
) -> None:
    """Between a restore's swap and the save of its record, 'status' saw a directory other
    than the recorded one and said "replaced" (exit 4, no stopped_by), as for a directory
    swapped by hand. The record's intent names that directory: it is the restore at work."""
    inst.ok("snapshot", "dev", "s1", "-q")
    restore = Paused(hooks_dir(tmp_path), "restore-swapped", "restore", "dev", "s1", "--yes",
                     env=inst.env)  # fmt: skip
    with restore:
        restore.reached()
        run = inst.pgmgr("status", "dev", "--json")
        st = json.loads(run.stdout)
        assert st["state"] == "stopped", st
        assert st["stopped_by"]["command"] == "restore" and st["stopped_by"]["active"], st
        assert restore.go().returncode == 0
    assert inst.state() == "running"


def test_a_sweep_killed_while_it_removed_a_dead_branchs_copy_is_finished_later(
    inst: Inst, ops_dir: Path, tmp_path: Path
) -> None:
    """The sweep renames a killed branch's copy (``.tmp-branch``) to a work name, then
    removes it: killed in between, the copy stayed in ``.pgmgr-snapshots/b/.tmp-drop-*``
    for good, since sweeps looked for ``.tmp-branch`` only (a whole data directory, one
    more each time a name was never used again)."""
    hooks = hooks_dir(tmp_path)
    run = Paused(hooks, "branch-copied", "branch", "dev", "b", "-q", env=inst.env)
    with run:
        run.reached()
        run.kill(signal.SIGKILL)
    store = ops_dir / ".pgmgr-snapshots" / "b"
    assert (store / ".tmp-branch").exists()
    sweep = Paused(hooks, "branch-drop-removing", "stop", "dev", "-q", env=inst.env)
    with sweep:
        sweep.reached()
        sweep.kill(signal.SIGKILL)
    assert [n for n in os.listdir(store) if n.startswith(".tmp-drop-")]
    inst.ok("start", "dev", "-q")
    assert not store.exists()


def test_the_empty_store_of_a_branch_killed_before_its_copy_is_swept_beside_it(
    inst: Inst, ops_dir: Path, tmp_path: Path
) -> None:
    """A branch killed before its copy began left its new store empty: only the next
    branch beside it removed it, so it stayed (one per name tried) through any number of
    other commands."""
    inst.ok("snapshot", "dev", "s1", "-q")
    run = Paused(hooks_dir(tmp_path), "branch-from-snapshot", "branch", "dev", "b", "--from", "s1",
                 "-q", env=inst.env)  # fmt: skip
    with run:
        run.reached()
        run.kill(signal.SIGKILL)
    store = ops_dir / ".pgmgr-snapshots" / "b"
    assert store.is_dir() and not [n for n in os.listdir(store) if not n.startswith(".tmp-")]
    inst.ok("start", "dev", "-q")
    assert not store.exists()


def test_a_record_write_killed_before_its_rename_leaves_no_file_for_good(
    inst: Inst, tmp_path: Path
) -> None:
    """A record is written to ``.NAME.json.<random>``, then renamed: killed in between (a
    few in each hundred kills of snapshot and restore), the temporary file stayed in the
    instances directory for good, one per such kill. The next save of a record removes
    those old enough to be no live write's (the test ages it: a live write takes ms)."""
    instances = Path(os.environ["PGMGR_STATE_DIR"]) / "instances"
    run = Paused(hooks_dir(tmp_path), "write-dev.json", "stop", "dev", "-q", env=inst.env)
    with run:
        run.reached()
        run.kill(signal.SIGKILL)
    left = [n for n in os.listdir(instances) if n.startswith(".dev.json.")]
    assert left
    old = time.time() - 3600
    for name in left:
        os.utime(instances / name, (old, old))
    inst.ok("start", "dev", "-q")
    assert not [n for n in os.listdir(instances) if n.startswith(".dev.json.")]
