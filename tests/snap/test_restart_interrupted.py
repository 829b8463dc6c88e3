"""``pgmgr restart`` interrupted once the server is stopped (Ctrl-C; SIGTERM or SIGHUP:
a CI timeout, a closed terminal): it left the server stopped (SIGTERM killed it outright),
and status said the restart 'ended without starting it again (killed?)'. Now the server is
started again first, as snapshots, restores, branches and upgrades do (see
pgmgr.core.pause), and the stop mark is gone. At the test hook where the server is stopped
(pgmgr.core.testhook)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.pause import Paused
from tests.snap.conftest import Inst
from tests.snap.test_switch_killed import hooks_dir


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_restart_interrupted_with_the_server_stopped_starts_it_again(
    sig: int, inst: Inst, tmp_path: Path
) -> None:
    before = inst.pid()
    run = Paused(hooks_dir(tmp_path), "restart-stopped", "restart", "dev", env=inst.env)
    run.reached()
    assert inst.state() == "stopped"
    assert run.kill(sig) == 130
    assert inst.state() == "running" and inst.pid() != before
    assert inst.record()["stopped_by"] is None
    assert inst.sql("SELECT count(*) FROM t") == "1000"


@pytest.mark.parametrize(
    ("step", "sig"),
    [("start-spawned", signal.SIGINT), ("start-spawned", signal.SIGTERM),
     ("restart-marked", signal.SIGTERM)],
)  # fmt: skip
def test_a_restart_interrupted_while_it_starts_or_marks_leaves_it_running_unmarked(
    step: str, sig: int, inst: Inst, tmp_path: Path
) -> None:
    """Interrupted once the new postmaster is spawned, not yet ready: the start's own
    clean-up stopped it, and the restart left it stopped ('Interrupted', exit 130, and a
    stop mark saying the restart was killed). The start is its own point of no return
    now, as the stop's is. Interrupted right after its stop mark was saved (SIGTERM, not
    yet taken as a Ctrl-C there): killed outright, it left the running server marked, and
    a later crash or stop read as 'stopped by pgmgr restart ... (killed?)'."""
    before = inst.pid()
    hooks = hooks_dir(tmp_path)
    run = Paused(hooks, step, "restart", "dev", env=inst.env)
    run.reached()
    (hooks / step).unlink()  # the start again goes through
    assert run.kill(sig) == 130
    assert inst.state() == "running" and inst.pid() != before
    assert inst.record()["stopped_by"] is None
    assert inst.sql("SELECT count(*) FROM t") == "1000"
