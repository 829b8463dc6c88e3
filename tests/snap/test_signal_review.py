"""Review of the signals past the point of no return (sigguard.commit, cancellable,
settle) and of userfs.as_user's signal handling: what a library caller, a child and a
server get from them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgmgr.core import sigguard
from tests.snap.conftest import Inst

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def _handlers() -> dict[int, object]:
    return {s: signal.getsignal(s) for s in sigguard.SIGNALS}


def _kill_self(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.01)  # the handler runs (main thread, between two bytecodes)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_library_signal_after_commit_is_not_lost(sig: int) -> None:
    """In-process (the pytest plugin, a library caller) the committed work completes, and
    a Ctrl-C or SIGTERM that arrived meanwhile is then raised (restore documents
    KeyboardInterrupt "after it: the restore is complete"): it was dropped, so the
    caller's Ctrl-C did nothing. The handlers from before are back either way."""
    before = _handlers()
    done = False
    with pytest.raises(KeyboardInterrupt), sigguard.interruptible():
        with sigguard.shielded():
            sigguard.commit()
        _kill_self(sig)  # only recorded: the work goes on
        done = True
    assert done
    assert _handlers() == before


def test_library_error_after_commit_keeps_its_exception() -> None:
    """A failure after commit is not replaced by a signal recorded before it."""
    before = _handlers()
    with pytest.raises(ValueError), sigguard.interruptible():
        with sigguard.shielded():
            sigguard.commit()
        _kill_self(signal.SIGTERM)
        raise ValueError("boom")
    assert _handlers() == before


def test_signal_before_cancellable_cancels_it() -> None:
    """A Ctrl-C recorded after commit (during the restart that follows an upgrade's
    swap) cancels the optional work that comes next (vacuumdb, up to an hour) instead
    of being ignored until the user presses it again; the optional work having taken
    it, the caller is not interrupted again."""
    before = _handlers()
    ran = False
    with sigguard.interruptible():
        with sigguard.shielded():
            sigguard.commit()
        _kill_self(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt), sigguard.cancellable():
            ran = True
            time.sleep(0.5)
    assert not ran
    assert _handlers() == before
