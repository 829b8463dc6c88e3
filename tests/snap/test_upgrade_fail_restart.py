"""An upgrade that fails once the server is stopped, whose server then does not start
again either (a full disk: the copy --method link makes for the snapshot fails, and so
does the start): the error said only why the start failed, not that the upgrade had
failed first, nor why. Real servers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.helpers import error_lines
from tests.snap.conftest import leftovers
from tests.snap.test_overlap_review import go
from tests.snap.test_signal_after_commit import paused_run as held
from tests.snap.test_upgrade import make


def test_a_failed_upgrade_whose_server_does_not_start_again_says_both(scratch: Path) -> None:
    """Here pg_hba.conf replaced by a directory once pg_upgrade ran: the upgrade refuses
    to carry it over (nothing was changed), and the old server cannot load it."""
    up = make(scratch)
    hba = up.datadir / "pg_hba.conf"
    saved, owner = hba.read_bytes(), hba.stat()
    try:
        hooks = scratch / "hooks"
        hooks.mkdir()
        hooks.chmod(0o777)
        step = "upgrade-ran"
        proc = held(up, hooks, step, "upgrade", "up", "-v", "18", "--yes")
        hba.unlink()
        hba.mkdir()
        os.chown(hba, owner.st_uid, owner.st_gid)
        code, said = go(proc, hooks, step)
        assert code == 1, said
        first = error_lines(said)[0]
        assert first.startswith(
            f"Error: cannot upgrade 'up': {hba} is not a regular file; nothing was changed, "
            "but 'up' did not start again: postgres exited during start-up: "
        ), said
        assert up.record()["major"] == "15" and up.state() == "stopped"
        # the record's mark keeps why the server did not start (what status says)
        assert up.record()["stopped_by"]["failed"].startswith("postgres exited during start-up")
        assert leftovers(up.store) == []
    finally:
        if hba.is_dir():
            shutil.rmtree(hba)
        hba.write_bytes(saved)
        os.chown(hba, owner.st_uid, owner.st_gid)
        up.pgmgr("stop", "up", "-m", "immediate", "-q")
    up.ok("start", "up", "-q")
    up.ok("stop", "up", "-q")
