"""SIGKILL of pgmgr at the worst moment, where earlier tests did not look: nothing it
started outlives it at work in the store, and what it left is removed later."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.pause import Paused
from tests.snap.conftest import Inst
from tests.snap.test_delta import hooks_dir


def test_a_killed_destroy_with_snapshots_leaves_nothing_for_good(
    inst: Inst, ops_dir: Path, tmp_path: Path
) -> None:
    """destroy --with-snapshots renames the store out of sight, then deletes it: killed
    (or interrupted) in between, the instance was gone and its snapshots stayed in
    .pgmgr-snapshots/.tmp-delete-* for ever, unlisted. The next command that writes a
    store beside it removes them."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.ok("branch", "dev", "b", "-q")  # another instance beside it
    try:
        doomed = Paused(hooks_dir(tmp_path), "destroy-snapshots-renamed", "destroy", "dev",
                        "--yes", "--with-snapshots", env=inst.env)  # fmt: skip
        doomed.reached()
        doomed.kill(signal.SIGKILL)
        top = ops_dir / ".pgmgr-snapshots"
        assert [n for n in os.listdir(top) if n.startswith(".tmp-delete-")]
        inst.ok("snapshot", "b", "s2", "-q")
        assert sorted(os.listdir(top)) == ["b"]
    finally:
        inst.ok("stop", "b", "-q")
