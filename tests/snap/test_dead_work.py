"""What a killed run left in a snapshot store (``pgmgr.core.storesweep``): the next command
that takes the instance's lock, or lists its snapshots, removes it; never while a run is
at work in the store."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.pause import Paused
from tests.snap.conftest import Inst, leftovers
from tests.snap.test_delta import hooks_dir


def _killed_restore(inst: Inst, tmp_path: Path) -> None:
    """A restore killed with -9 once its staged copy is made (the server still runs)."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.sql("DELETE FROM t WHERE x > 500")
    run = Paused(hooks_dir(tmp_path), "restore-linked", "restore", "dev", "s1", "--yes",
                 env=inst.env)  # fmt: skip
    run.reached()
    run.kill(signal.SIGKILL)
    assert [n for n in os.listdir(inst.store) if n.startswith(".tmp-restore-")]


def test_a_killed_restore_copy_goes_with_the_next_stop(inst: Inst, tmp_path: Path) -> None:
    """The staged copy of a restore killed with -9 held its disk space until the next
    snapshot, restore or upgrade of the instance (start, stop and the rest left it)."""
    _killed_restore(inst, tmp_path)
    inst.ok("status", "dev")  # stays fast: no sweep there
    inst.ok("stop", "dev", "-q")
    assert leftovers(inst.store) == []
    assert sorted(os.listdir(inst.store)) == ["s1"]
    inst.ok("start", "dev", "-q")
    assert inst.sql("SELECT count(*) FROM t") == "500"


def test_a_killed_restore_copy_goes_with_the_listing(inst: Inst, tmp_path: Path) -> None:
    """``pgmgr snapshots`` (which looks at the store) sweeps it too."""
    _killed_restore(inst, tmp_path)
    assert [s["snapshot"] for s in inst.snaps()] == ["s1"]
    assert leftovers(inst.store) == []


def test_a_live_restore_copy_is_kept(inst: Inst, tmp_path: Path) -> None:
    """A restore at work holds its store: a listing meanwhile leaves its staged copy, and
    the restore completes."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.sql("DELETE FROM t WHERE x > 500")
    with Paused(hooks_dir(tmp_path), "restore-linked", "restore", "dev", "s1", "--yes",
                env=inst.env) as run:  # fmt: skip
        run.reached()
        staged = [n for n in os.listdir(inst.store) if n.startswith(".tmp-restore-")]
        assert len(staged) == 1
        assert [s["snapshot"] for s in inst.snaps()] == ["s1"]
        assert os.path.isdir(inst.store / staged[0] / "base")
        done = run.go()
    assert done.returncode == 0, done.stderr
    assert inst.sql("SELECT count(*) FROM t") == "1000"
    assert leftovers(inst.store) == []


def test_the_names_are_the_stores() -> None:
    """storesweep spells the store's names itself (importing them costs start and stop)."""
    from pgmgr.core import dirpath, snapdoom, snapstore, storesweep, sweep

    assert (storesweep.STORE, storesweep.TMP) == (dirpath.STORE, snapstore.TMP)
    assert storesweep.PID_PREFIXES == sweep.PID_PREFIXES
    assert snapdoom.doomed_name().startswith(storesweep.DOOMED)


def test_a_killed_branch_copy_goes_with_the_next_start_beside(
    inst: Inst, ops_dir: Path, tmp_path: Path
) -> None:
    """A branch killed with -9 once its copy is made, before it registered anything: the
    copy (``.pgmgr-snapshots/k/.tmp-branch``, as big as the source) stayed until some
    branch into that same directory; starting the source again left it."""
    run = Paused(hooks_dir(tmp_path), "branch-copied", "branch", "dev", "k", env=inst.env)
    run.reached()
    run.kill(signal.SIGKILL)
    store = ops_dir / ".pgmgr-snapshots" / "k"
    assert os.listdir(store) == [".tmp-branch"]
    inst.ok("start", "dev", "-q")  # the branch had stopped it for the copy
    assert leftovers(store) == []
    try:
        inst.ok("branch", "dev", "k", "-q")  # made again
        assert inst.sql("SELECT count(*) FROM t", "k") == "1000"
    finally:
        inst.pgmgr("stop", "k", "-q")


def test_a_live_branch_copy_is_kept(inst: Inst, ops_dir: Path, tmp_path: Path) -> None:
    """A branch at work beside another instance: that instance's stop and start leave its
    copy, and the branch completes."""
    inst.ok("branch", "dev", "b", "-q")
    try:
        with Paused(hooks_dir(tmp_path), "branch-copied", "branch", "dev", "k",
                    env=inst.env) as run:  # fmt: skip
            run.reached()
            inst.ok("stop", "b", "-q")
            inst.ok("start", "b", "-q")
            assert os.listdir(ops_dir / ".pgmgr-snapshots" / "k") == [".tmp-branch"]
            done = run.go()
        assert done.returncode == 0, done.stderr
        assert inst.sql("SELECT count(*) FROM t", "k") == "1000"
    finally:
        inst.pgmgr("stop", "b", "-q")
        inst.pgmgr("stop", "k", "-q")
