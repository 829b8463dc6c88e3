"""Signals during work that must finish or be undone (snapshots, restores, branches,
upgrades): :func:`interruptible` makes SIGTERM and SIGHUP act like Ctrl-C, so clean-up in
``finally`` blocks runs for them too; :func:`shielded` holds all three past a point of no
return."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM and SIGHUP act like Ctrl-C for the duration, so the clean-up in ``finally``
    blocks runs for a CI timeout or a closed terminal too (only in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, _raise) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def shielded() -> Iterator[list[int]]:
    """Past the point of no return (a swap, the record and the restart that go with it):
    SIGINT/SIGTERM/SIGHUP are only recorded in the yielded list, so the operation
    completes and says so; the caller decides what a recorded signal still means."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in sigs}
    try:
        yield got
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
