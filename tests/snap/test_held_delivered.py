"""A signal held by sigguard.shielded (a clean-up that must not be cut short, a record
written before the work runs) is delivered when the block ends, unless the work was
committed: it was dropped, so a Ctrl-C during a failed branch's clean-up, or during the
record an upgrade writes before pg_upgrade runs, did nothing at all (exit 1 with the
failure alone, or the work went on). Real signals to this process (pytest leaves SIGINT
to Python's handler, xdist workers ignore it: each test sets what it needs)."""

from __future__ import annotations

import _signal
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pgmgr.core import listen, sigguard
from tests.pause import Paused
from tests.snap.conftest import Inst, leftovers
from tests.snap.test_signal_review import caller_handler
from tests.snap.test_switch_killed import hooks_dir


def _kill_self(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.01)


def test_held_in_a_clean_up_then_delivered_with_its_cause() -> None:
    cleaned = False
    with (
        caller_handler(signal.SIGINT, signal.default_int_handler),
        pytest.raises(KeyboardInterrupt) as info,
    ):
        try:
            raise ValueError("the work failed")
        except ValueError:
            with sigguard.shielded():
                _kill_self(signal.SIGINT)  # only recorded: the clean-up goes on
                cleaned = True
    assert cleaned
    assert isinstance(sigguard.cause(info.value), ValueError)


def test_held_in_a_failed_block_then_delivered_with_its_cause() -> None:
    with (
        caller_handler(signal.SIGINT, signal.default_int_handler),
        pytest.raises(KeyboardInterrupt) as info,
        sigguard.shielded(),
    ):
        _kill_self(signal.SIGINT)
        raise ValueError("failed inside")
    assert isinstance(sigguard.cause(info.value), ValueError)


def test_held_then_delivered_when_the_block_ends() -> None:
    after = False
    with (
        caller_handler(signal.SIGINT, signal.default_int_handler),
        pytest.raises(KeyboardInterrupt) as info,
    ):
        with sigguard.shielded():
            _kill_self(signal.SIGINT)
        after = True
    assert not after and sigguard.cause(info.value) is None


def test_not_delivered_after_commit_or_when_the_caller_decides() -> None:
    with caller_handler(signal.SIGINT, signal.default_int_handler):
        with sigguard.shielded(deliver=False) as got:
            _kill_self(signal.SIGINT)
        assert got == [signal.SIGINT]
        with pytest.raises(KeyboardInterrupt), sigguard.interruptible():
            with sigguard.shielded():
                _kill_self(signal.SIGINT)
                sigguard.commit()
            done = True  # committed: held for after the work
        assert done


def test_a_ctrl_c_while_a_failed_branch_is_undone_is_not_dropped(
    inst: Inst, tmp_path: Path
) -> None:
    """The branch is placed, its start then fails (its port taken meanwhile); a Ctrl-C
    held while it is undone: the error, then 'Interrupted', exit 130 (it was exit 1, as
    if nobody had pressed it). Nothing of the branch is left; the source runs."""
    port = listen.free_port("127.0.0.1")  # of this xdist worker's slice (tests/conftest.py)
    run = Paused(hooks_dir(tmp_path), "branch-placed", "branch", "dev", "k", "-p", str(port),
                 env=inst.env)  # fmt: skip
    taken = socket.socket()
    try:
        run.reached()
        taken.bind(("127.0.0.1", port))
        taken.listen()
        run.proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        done = run.go()
    finally:
        taken.close()
    lines = done.stderr.splitlines()
    assert done.returncode == 130 and lines[-1] == "Interrupted", str(done)
    assert any(ln.startswith("Error:") for ln in lines), str(done)
    assert inst.pgmgr("status", "k").returncode != 0
    assert not (inst.datadir.parent / "k").exists()
    assert leftovers(inst.datadir.parent / ".pgmgr-snapshots" / "k") == []
    assert inst.state() == "running"


def test_a_ctrl_c_while_the_handlers_are_put_back_leaves_none_behind() -> None:
    """A Ctrl-C that arrives while a shield puts the handlers back (between two
    ``signal.signal`` calls: the second runs the pending handler, which raises) left the
    rest of them on the ended block's recorder: a SIGTERM was then only recorded into a
    list nobody reads, for the rest of a library caller's process. The signal is sent
    for real, from a profile hook right after the first call returns."""
    armed = [1]

    def profile(frame: object, event: str, arg: object) -> None:
        if event == "c_return" and arg is _signal.signal and armed:  # signal.signal's C call
            armed.clear()
            os.kill(os.getpid(), signal.SIGINT)

    with (
        caller_handler(signal.SIGINT, signal.default_int_handler),
        caller_handler(signal.SIGTERM, signal.SIG_DFL),
        caller_handler(signal.SIGHUP, signal.SIG_DFL),
    ):
        with pytest.raises(KeyboardInterrupt):
            with sigguard.shielded():
                sys.setprofile(profile)
            sys.setprofile(None)  # not reached: raised at the end of the block
        sys.setprofile(None)
        assert not armed, "the hook never fired"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL


def _recorder() -> tuple[list[int], Any]:
    seen: list[int] = []

    def handler(signum: int, frame: object) -> None:
        seen.append(signum)

    return seen, handler


def test_a_caller_handler_gets_a_signal_held_past_a_failure_after_commit() -> None:
    """A SIGTERM held by committed work that then fails reaches the caller's own handler
    with the failure: it was dropped ("the failure says what happened"), so a worker
    process whose handler asks it to shut down never heard of its SIGTERM and ran on."""
    seen, handler = _recorder()
    with caller_handler(signal.SIGTERM, handler):
        with pytest.raises(ValueError), sigguard.interruptible():
            with sigguard.shielded():
                sigguard.commit()
            _kill_self(signal.SIGTERM)  # only recorded
            assert seen == []
            raise ValueError("the restart failed")
        assert seen == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is handler


def test_two_held_signals_both_reach_their_handlers() -> None:
    """A Ctrl-C and a SIGTERM held by the same shield: the KeyboardInterrupt of the first
    stopped the second from being delivered, so the caller's SIGTERM handler never ran."""
    seen, handler = _recorder()
    with (
        caller_handler(signal.SIGINT, signal.default_int_handler),
        caller_handler(signal.SIGTERM, handler),
    ):
        with pytest.raises(KeyboardInterrupt), sigguard.shielded():
            _kill_self(signal.SIGINT)
            _kill_self(signal.SIGTERM)
        assert seen == [signal.SIGTERM]


def test_a_caller_handler_gets_a_signal_held_while_an_interrupt_is_undone() -> None:
    """A SIGTERM held during the clean-up of a Ctrl-C reaches the caller's handler; the
    KeyboardInterrupt goes on (it was dropped: "an interrupt already")."""
    seen, handler = _recorder()
    with (
        caller_handler(signal.SIGINT, signal.default_int_handler),
        caller_handler(signal.SIGTERM, handler),
    ):
        with pytest.raises(KeyboardInterrupt) as info:
            try:
                _kill_self(signal.SIGINT)
            except KeyboardInterrupt as e:
                with sigguard.undoing(e):
                    _kill_self(signal.SIGTERM)
                    _kill_self(signal.SIGINT)  # a second Ctrl-C: the first says it all
                raise
        assert seen == [signal.SIGTERM]
        assert info.value.__cause__ is None and info.value.__context__ is None
