"""A signal the process ignores (SIGHUP under ``nohup``, SIGINT in a job a script runs in
the background) is not an interrupt inside sigguard.shielded or a start's spawn either:
they recorded it all the same, and a caller that reads what was recorded (the restart at
the end of a snapshot, restore, branch or upgrade: pgmgr.core.pause; the start's spawn)
took it as a Ctrl-C, so a ``nohup pgmgr snapshot`` whose terminal closed while the server
started again said "Interrupted" and threw the copy away."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from pgmgr.core import sigguard
from tests.pause import Paused
from tests.snap.conftest import Inst, leftovers
from tests.snap.test_signal_review import caller_handler
from tests.snap.test_switch_killed import hooks_dir


def _kill_self(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.01)


def test_an_ignored_signal_is_not_recorded() -> None:
    with caller_handler(signal.SIGHUP, signal.SIG_IGN):
        with sigguard.shielded(deliver=False) as got:
            _kill_self(signal.SIGHUP)
        assert got == []
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


def test_nohup_snapshot_survives_the_hang_up(inst: Inst, tmp_path: Path) -> None:
    """The hang-up comes while the server is started again after the copy (the pause
    'spawned', inside pause.spawn_again): the snapshot is taken, the server runs."""
    run = Paused(hooks_dir(tmp_path), "spawned", "snapshot", "dev", "s1", env=inst.env,
                 ignore=(signal.SIGHUP,))  # fmt: skip
    with run:
        run.reached()
        run.proc.send_signal(signal.SIGHUP)
        time.sleep(0.2)
        done = run.go()
    assert done.returncode == 0, str(done)
    assert [s["snapshot"] for s in inst.snaps()] == ["s1"]
    assert inst.state() == "running"
    assert leftovers(inst.store) == []


def test_background_start_ignores_sigint(inst: Inst, tmp_path: Path) -> None:
    """``pgmgr start &`` in a script starts with SIGINT ignored: a SIGINT to its process
    group while postgres is spawned (the pause 'start-spawning', where spawn_child holds
    Ctrl-C) leaves it started; its own SIGINT recorder cancelled the start (exit 130)."""
    inst.ok("stop", "dev", "-q")
    run = Paused(hooks_dir(tmp_path), "start-spawning", "start", "dev", env=inst.env,
                 ignore=(signal.SIGINT,))  # fmt: skip
    with run:
        run.reached()
        run.proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        done = run.go()
    assert done.returncode == 0 and "Started 'dev'" in done.stderr, str(done)
    assert inst.state() == "running"
