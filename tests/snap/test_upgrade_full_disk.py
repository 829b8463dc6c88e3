"""An upgrade whose switch fills the disk (a file the owner grew during the downtime,
copied again: pgmgr.core.upgradekept) fails with nothing changed, and the old server
starts again: the new cluster and the check's kept copies are removed before it starts,
not after. Real servers (15 to the wheel's 18) on a small tmpfs (root: a mount; skipped
otherwise); the test pauses the upgrade after pg_upgrade ran (pgmgr.core.testhook)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pgmgr.core import upgradekept
from tests.snap.conftest import running15, small_tmpfs
from tests.snap.test_upgrade_files import _put
from tests.snap.test_upgrade_kept import _held_upgrade


def test_a_switch_that_fills_the_disk_leaves_the_old_server_running(scratch: Path) -> None:
    """Before the fix the work was removed only after the old server's start, which
    failed on the full disk ("could not write lock file postmaster.pid: No space left
    on device"): 'nothing was changed', and the server stayed down. Fails before it."""
    with small_tmpfs(scratch, "300m") as fs, running15(fs, "ef") as it:
        _put(it, "notes.txt", "old\n")
        it.sql("CREATE TABLE t AS SELECT 1 AS x")
        time.sleep(upgradekept.RACY_NS / 1e9 + 0.2)
        hooks = scratch / "hooks"
        hooks.mkdir()
        hooks.chmod(0o777)
        proc = _held_upgrade(it, hooks)
        try:
            (it.datadir / "notes.txt").write_text("x" * (8 << 20))  # copied again
            st = os.statvfs(fs)
            with open(fs / "filler", "wb") as f:  # less left than it takes
                f.write(b"\0" * (st.f_bavail * st.f_frsize - (1 << 20)))
        finally:
            (hooks / "upgrade-ran.go").touch()
            _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err
        assert "No space left on device" in err and "nothing was changed" in err, err
        assert "did not start again" not in err, err
        assert it.state() == "running"
        assert it.record()["major"] == "15"
        assert it.sql("SELECT x FROM t") == "1"
        assert (it.datadir / "notes.txt").read_text() == "x" * (8 << 20)
        assert not list(it.store.glob(".tmp-*"))
