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
