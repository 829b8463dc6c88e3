"""Stores ``destroy --with-snapshots`` doomed (renamed to ``.tmp-delete-<pid>-<hex>`` in
``.pgmgr-snapshots``, then removed): what a killed one left is removed once no process
holds the store's lock, whatever became of its pid, by the next command beside it; a
deletion under way is left to finish."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from pgmgr.core import snapdoom
from tests.pause import Paused
from tests.snap.conftest import Inst
from tests.snap.test_delta import hooks_dir


def killed_destroy(inst: Inst, ops_dir: Path, tmp_path: Path) -> Path:
    """dev (with a snapshot) destroyed with its snapshots, killed once its store is
    renamed out of sight; b, a branch of it, beside. The doomed store."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.ok("branch", "dev", "b", "-q")
    run = Paused(hooks_dir(tmp_path), "destroy-snapshots-renamed", "destroy", "dev",
                 "--yes", "--with-snapshots", env=inst.env)  # fmt: skip
    run.reached()
    run.kill(signal.SIGKILL)
    top = ops_dir / ".pgmgr-snapshots"
    (doomed,) = [top / n for n in os.listdir(top) if n.startswith(".tmp-delete-")]
    return doomed


def test_its_pid_reused_since(inst: Inst, ops_dir: Path, tmp_path: Path) -> None:
    """The pid in its name is a live process's now (reused: this test's own pid stands
    for it, the doomed store renamed and its mark rewritten as that name, as a real reuse
    would leave it; a pid cannot be chosen): it stayed for as long as that process ran."""
    doomed = killed_destroy(inst, ops_dir, tmp_path)
    try:
        reused = doomed.with_name(f".tmp-delete-{os.getpid()}-{doomed.name[-8:]}")
        doomed.rename(reused)
        (reused / snapdoom.DOOMED_MARK).write_text(reused.name)
        inst.ok("snapshot", "b", "s2", "-q")  # sweeps the top directory
        assert not reused.exists()
    finally:
        inst.pgmgr("stop", "b", "-q")


def test_the_next_stop_beside_removes_it(inst: Inst, ops_dir: Path, tmp_path: Path) -> None:
    """Only a snapshot, branch or upgrade beside it removed it; a start or stop of an
    instance beside it (what one does next) left it."""
    doomed = killed_destroy(inst, ops_dir, tmp_path)
    try:
        inst.ok("stop", "b", "-q")
        assert not doomed.exists()
    finally:
        inst.pgmgr("stop", "b", "-q")


def test_a_deletion_under_way_is_left_to_finish(inst: Inst, ops_dir: Path, tmp_path: Path) -> None:
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.ok("branch", "dev", "b", "-q")
    top = ops_dir / ".pgmgr-snapshots"
    try:
        with Paused(hooks_dir(tmp_path), "destroy-snapshots-renamed", "destroy", "dev",
                    "--yes", "--with-snapshots", env=inst.env) as run:  # fmt: skip
            run.reached()
            (doomed,) = [top / n for n in os.listdir(top) if n.startswith(".tmp-delete-")]
            inst.ok("stop", "b", "-q")
            inst.ok("snapshot", "b", "s2", "-q")
            assert (doomed / "s1" / "snapshot.json").exists()
            done = run.go()
        assert done.returncode == 0, done.stderr
        assert sorted(os.listdir(top)) == ["b"]
    finally:
        inst.pgmgr("stop", "b", "-q")
