"""SIGTERM and SIGHUP act like Ctrl-C while work that must finish or be undone runs
(sigguard.interruptible), with two limits that one of its two former versions had and
the other lacked (staging.signals_interrupt served init, import, replica and bundle;
sigguard.interruptible served start, snapshot, restore, branch and upgrade):

- a signal the caller ignores (SIGHUP under ``nohup``) or handles itself stays so: a
  ``nohup pgmgr start`` was cancelled by the hang-up it was started to survive;
- a second SIGTERM while the first one's clean-up runs is ignored, so it cannot cut the
  clean-up short (see also tests/ops/test_interrupted.py, an import undone).

The unit tests below send real signals to this process (pytest leaves SIGTERM and SIGHUP
at their defaults; each test sets what it needs and puts it back).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgmgr.core import sigguard
from tests.pause import Paused
from tests.reliability.conftest import InstFactory, pgmgr, wait_no_processes
from tests.snap.test_signal_review import caller_handler


def _kill_self(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.01)  # the handler runs (main thread, between two bytecodes)


@contextlib.contextmanager
def not_interrupted() -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        pytest.fail("interrupted")


def test_an_ignored_sighup_stays_ignored() -> None:
    with caller_handler(signal.SIGHUP, signal.SIG_IGN):
        with not_interrupted(), sigguard.interruptible():
            _kill_self(signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


def test_a_callers_handler_stays_in_charge() -> None:
    got: list[int] = []
    with caller_handler(signal.SIGTERM, lambda signum, frame: got.append(signum)):
        with not_interrupted(), sigguard.interruptible():
            _kill_self(signal.SIGTERM)
        assert got == [signal.SIGTERM]


def test_a_second_sigterm_does_not_cut_the_clean_up_short() -> None:
    cleaned = False
    with (
        caller_handler(signal.SIGTERM, signal.SIG_DFL),
        pytest.raises(KeyboardInterrupt),
        sigguard.interruptible(),
    ):
        try:
            _kill_self(signal.SIGTERM)
        finally:
            _kill_self(signal.SIGTERM)  # the user presses it again: ignored
            cleaned = True
    assert cleaned
    with (  # taken over again by a new block
        caller_handler(signal.SIGTERM, signal.SIG_DFL),
        pytest.raises(KeyboardInterrupt),
        sigguard.interruptible(),
    ):
        _kill_self(signal.SIGTERM)


def test_a_sighup_after_a_ctrl_c_does_not_cut_its_clean_up_short() -> None:
    """The first interrupt a Ctrl-C (Python's own handler, not interruptible's): a hang-up
    while its clean-up runs is ignored too; it raised a second KeyboardInterrupt there."""
    cleaned = False
    with (
        caller_handler(signal.SIGINT, signal.default_int_handler),
        caller_handler(signal.SIGHUP, signal.SIG_DFL),
        pytest.raises(KeyboardInterrupt),
        sigguard.interruptible(),
    ):
        try:
            _kill_self(signal.SIGINT)
        finally:
            _kill_self(signal.SIGHUP)  # the terminal is closed meanwhile: ignored
            cleaned = True
    assert cleaned


def test_a_sigterm_default_outside_is_put_back() -> None:
    with caller_handler(signal.SIGTERM, signal.SIG_DFL):
        with sigguard.interruptible():
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_nohup_start_survives_the_hang_up(cluster: InstFactory, work: Path, hooks: Path) -> None:
    """``nohup pgmgr start``: the hang-up while postgres starts does not cancel it."""
    inst = cluster("db")
    run = Paused(hooks, "start-spawned", "start", "db", "-p", "auto", ignore=(signal.SIGHUP,))
    run.reached()
    run.proc.send_signal(signal.SIGHUP)
    time.sleep(0.2)
    done = run.go()
    assert done.returncode == 0 and "Started 'db'" in done.stderr, str(done)
    assert inst.status().json()["state"] == "running"
    assert inst.stop().returncode == 0
    assert not wait_no_processes(work, timeout=30)


def test_start_init_undo_survives_a_second_sigterm(work: Path, hooks: Path) -> None:
    """``start --init`` interrupted once its directory is built, then SIGTERM again while
    the init is undone (the pause 'unmaking'; the undo holds signals itself, in
    sigguard.shielded): the undo completes, nothing is left, and the next ``start
    --init`` works."""
    datadir = work / "data"
    (hooks / "unmaking").touch()
    try:
        paused = Paused(
            hooks, "init-built", "start", "-d", str(datadir), "--init", "-v", "15", "-p", "auto"
        )
        paused.reached()
        assert (datadir / "PG_VERSION").is_file()
        paused.proc.send_signal(signal.SIGTERM)
        paused.reached_also("unmaking", timeout=30)
        paused.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        (hooks / "unmaking.go").touch()
        assert paused.kill(0) == 130  # signal 0: only waits for it
    finally:
        for name in ("unmaking", "unmaking.reached", "unmaking.go"):
            (hooks / name).unlink(missing_ok=True)
    assert not datadir.exists() or list(datadir.iterdir()) == [], list(datadir.iterdir())
    assert pgmgr("status", "--json").json() == []
    run = pgmgr("start", "-d", str(datadir), "--init", "-v", "15", "-p", "auto")
    assert run.returncode == 0, str(run)
    assert pgmgr("stop", "-d", str(datadir)).returncode == 0
