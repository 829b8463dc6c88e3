"""SIGKILL of ``pgmgr branch`` once its copy is renamed into place, and just before: the
next command completes the branch (registered, startable, its data there) or undoes it
(no record, no copy left), never leaves a full copy nobody knows about. The kills are at
the test hooks of :mod:`pgmgr.core.testhook`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import error_lines, killed, pgmgr_argv
from tests.pause import Paused
from tests.snap.conftest import Inst, leftovers
from tests.snap.test_switch_killed import hooks_dir
from tests.snap.test_switch_waiters import waiting_for_lock


def killed_at(inst: Inst, tmp_path: Path, step: str) -> None:
    run = Paused(hooks_dir(tmp_path), step, "branch", "dev", "k", env=inst.env)
    run.reached()
    st = json.loads(inst.pgmgr("status", "k", "--json").stdout)  # the branch holds its lock
    assert st["state"] == "branching", st
    run.kill(signal.SIGKILL)


def branches_again(inst: Inst, ops_dir: Path) -> None:
    """With dev started, the same branch can be made again, and no staged copy is left."""
    inst.ok("start", "dev", "-q")
    try:
        inst.ok("branch", "dev", "k", "-q")
        assert inst.sql("SELECT count(*) FROM t", "k") == "1000"
        assert leftovers(ops_dir / ".pgmgr-snapshots" / "k") == []
    finally:
        inst.pgmgr("stop", "k", "-q")


def test_a_branch_killed_once_in_place_is_registered_by_the_next_command(
    inst: Inst, ops_dir: Path, tmp_path: Path
) -> None:
    """Killed between the rename into place and the registration, it left ops_dir/k, a
    full copy of the source that no command knew: 'pgmgr branch dev k' then refused (the
    directory exists) and nothing ever removed it."""
    killed_at(inst, tmp_path, "branch-placed")
    assert (ops_dir / "k").is_dir()
    st = json.loads(inst.pgmgr("status", "k", "--json").stdout)
    assert st["state"] == "stopped" and st["datadir"] == str(ops_dir / "k"), st
    try:
        inst.ok("start", "k", "-q")
        assert inst.sql("SELECT count(*) FROM t", "k") == "1000"
        inst.sql("INSERT INTO t VALUES (-1)", "k")
        inst.ok("start", "dev", "-q")  # started again before the branch was placed
        assert inst.sql("SELECT count(*) FROM t") == "1000"
        assert leftovers(ops_dir / ".pgmgr-snapshots" / "k") == []
    finally:
        inst.pgmgr("stop", "k", "-q")


def test_a_branch_killed_before_its_copy_is_in_place_is_undone(
    inst: Inst, ops_dir: Path, tmp_path: Path
) -> None:
    """Registered (marked pending, pinned to its copy) before the copy is renamed into
    place: killed there, the next command removes the record and the copy, and the same
    branch can be made again."""
    killed_at(inst, tmp_path, "branch-registered")
    assert not (ops_dir / "k").exists()
    names = [r["name"] for r in json.loads(inst.ok("status", "--json").stdout)]
    assert names == ["dev"]
    assert not os.path.lexists(ops_dir / ".pgmgr-snapshots" / "k")
    branches_again(inst, ops_dir)


def test_a_placed_branch_whose_disk_is_away_for_a_while_keeps_its_record(
    inst: Inst, ops_dir: Path, tmp_path: Path
) -> None:
    """Killed once in place, then its directory is missing for a while (an unmounted disk:
    the store beside it is gone too). The next load took that for a branch killed before
    its rename and removed the record: back, the copy stood there unknown again. Only the
    pinned copy still staged proves that; without it the record stays ('pgmgr branch' did
    not finish)."""
    disk = ops_dir / "disk"
    disk.mkdir()
    run = Paused(hooks_dir(tmp_path), "branch-placed", "branch", "dev", "k", "-d",
                 str(disk / "k"), env=inst.env)  # fmt: skip
    run.reached()
    run.kill(signal.SIGKILL)
    disk.rename(ops_dir / "away")
    disk.mkdir()  # the mount point, empty
    try:
        st = json.loads(inst.pgmgr("status", "k", "--json").stdout)
        assert st["state"] == "incomplete", st
    finally:
        disk.rmdir()
        (ops_dir / "away").rename(disk)
    st = json.loads(inst.pgmgr("status", "k", "--json").stdout)
    assert st["state"] == "stopped" and st["datadir"] == str(disk / "k"), st
    try:
        inst.ok("start", "k", "-q")
        assert inst.sql("SELECT count(*) FROM t", "k") == "1000"
    finally:
        inst.pgmgr("stop", "k", "-q")


def test_a_branch_killed_before_its_copy_is_in_place_then_blocked_says_how_to_go_on(
    inst: Inst, ops_dir: Path, tmp_path: Path
) -> None:
    """Killed before the rename, then a directory made at its path: the record stays
    (not this branch's directory). Its hint said to run the same branch again, which is
    refused (the name exists); forgetting it and branching again works, and the staged
    copy does not outlive that."""
    killed_at(inst, tmp_path, "branch-registered")
    (ops_dir / "k").mkdir()
    refused = inst.pgmgr("start", "k")
    assert refused.returncode == 1, refused
    assert "Hint: it completes once its data directory" in refused.stderr, refused.stderr
    assert "forget it ('pgmgr forget k') and branch again" in refused.stderr, refused.stderr
    inst.ok("forget", "k")
    (ops_dir / "k").rmdir()
    branches_again(inst, ops_dir)


def test_a_branch_killed_before_its_copy_is_in_place_then_another_branch_undoes_it(
    inst: Inst, ops_dir: Path, tmp_path: Path
) -> None:
    """Killed before the rename, then another branch beside it (same parent) sweeps the
    staged copies of branches that no longer run: it must undo the killed one's record
    too, not leave a record whose pinned copy it removed (then kept as 'incomplete')."""
    killed_at(inst, tmp_path, "branch-registered")
    inst.ok("start", "dev", "-q")
    try:
        inst.ok("branch", "dev", "m", "-q")
        names = [r["name"] for r in json.loads(inst.ok("status", "--json").stdout)]
        assert names == ["dev", "m"], names
        assert not os.path.lexists(ops_dir / ".pgmgr-snapshots" / "k")
    finally:
        inst.pgmgr("stop", "m", "-q")


@pytest.mark.parametrize("step", ["branch-placed", "branch-registered"])
def test_a_command_that_waited_for_a_branch_killed_meanwhile_settles_it(
    inst: Inst, ops_dir: Path, tmp_path: Path, step: str
) -> None:
    """'pgmgr start k' in a second terminal waits for the branch's lock; the branch is
    killed. The start then held the lock but read the record as the dead branch left it
    (no settling under a lock) and refused: "'k' is an unfinished 'pgmgr branch'
    (interrupted, or still running)", with a hint that its directory was away, though it
    stood there. Now the record is settled under the lock, as an intent is: once in
    place, the branch is complete and starts; killed before, it was undone, and the
    start says the instance was removed while it waited."""
    run = Paused(hooks_dir(tmp_path), step, "branch", "dev", "k", env=inst.env)
    run.reached()
    waiter = subprocess.Popen(
        pgmgr_argv("start", "k"), env={**os.environ, **inst.env}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        waiting_for_lock(waiter, ops_dir / "k")  # it resolved 'k' and waits for its lock
        run.kill(signal.SIGKILL)
        _, err = waiter.communicate(timeout=60)
        if step == "branch-placed":
            assert waiter.returncode == 0, err
            assert inst.sql("SELECT count(*) FROM t", "k") == "1000"
        else:
            assert waiter.returncode == 4, err
            assert error_lines(err)[0] == (
                "Error: instance 'k' was removed while this command waited for it"
            ), err
            assert not (ops_dir / "k").exists()
            branches_again(inst, ops_dir)
    finally:
        if waiter.poll() is None:
            killed(waiter)
        inst.pgmgr("stop", "k", "-q")
