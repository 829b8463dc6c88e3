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

import pytest

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


def test_a_library_callers_sigterm_handler_stays_in_charge(
    inst: Inst, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process, a caller that handles SIGTERM itself (sigguard.interruptible leaves it
    in charge): one that comes while the server is started again after the copy (the step
    'spawned') goes to its handler, and the snapshot completes. pause took what it held
    for a Ctrl-C: KeyboardInterrupt, the snapshot thrown away, the handler never called."""
    from pgmgr.actions import resolve
    from pgmgr.core import snapshot, testhook

    real = testhook.pause

    def pause(step: str) -> None:
        if step == "spawned":
            _kill_self(signal.SIGTERM)
        real(step)

    monkeypatch.setattr(testhook, "pause", pause)
    got: list[int] = []
    with caller_handler(signal.SIGTERM, lambda signum, frame: got.append(signum)):
        handler = signal.getsignal(signal.SIGTERM)
        try:
            result = snapshot.create(resolve("dev", None), "s1")
        except KeyboardInterrupt:
            pytest.fail("a SIGTERM the caller handles interrupted the snapshot")
        assert signal.getsignal(signal.SIGTERM) is handler
    assert result.snapshot == "s1" and got == [signal.SIGTERM]
    assert [s["snapshot"] for s in inst.snaps()] == ["s1"]
    assert inst.state() == "running"
    assert leftovers(inst.store) == []


def test_a_library_callers_sigterm_handler_stays_in_charge_in_the_probe(
    inst: Inst, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same while an upgrade spawns the server it asks the cluster's options of (a
    stopped instance, upgradeprobe._asked): the caller's handler gets the SIGTERM, and
    the upgrade (--check) goes on; it raised KeyboardInterrupt."""
    from pgmgr.actions import resolve
    from pgmgr.core import launch, upgrade

    inst.ok("stop", "dev", "-q")
    real = launch.spawn

    spawned: list[object] = []

    def spawn(*args: object, **kwargs: object) -> object:
        child = real(*args, **kwargs)  # type: ignore[arg-type]
        if not spawned:  # the probe's (then the pg_hba.conf check's)
            _kill_self(signal.SIGTERM)
        spawned.append(child)
        return child

    monkeypatch.setattr(launch, "spawn", spawn)
    got: list[int] = []
    with caller_handler(signal.SIGTERM, lambda signum, frame: got.append(signum)):
        try:
            result = upgrade.upgrade(resolve("dev", None), "18", check=True)
        except KeyboardInterrupt:
            pytest.fail("a SIGTERM the caller handles interrupted the upgrade")
    assert result.check_only and got == [signal.SIGTERM]
    assert inst.record()["major"] == "15" and inst.state() == "stopped"
    assert leftovers(inst.store) == []
