"""Stop an instance for a copy and start it again, whatever happens meanwhile.

Used by snapshots, restores, branches and upgrades: the server runs again after the block
if it ran before it, even when the block fails or a signal interrupts it; an interrupted
stop is finished before the start, and the start itself cannot be cancelled by a signal.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pgmgr.core import snapstore
from pgmgr.core.instance import Server


@dataclass
class Pause:
    """The downtime of :func:`paused`: None when the server was not running."""

    was_running: bool
    stopped_at: float | None = None
    downtime: float | None = None


@contextlib.contextmanager
def paused(srv: Server, *, stop: bool = True) -> Iterator[Pause]:
    """Stop ``srv`` (fast) for the block if it runs and ``stop``, and start it again
    afterwards whatever happens: an interrupted stop is finished first, so the start
    never meets a server that is still shutting down. ``pause.stopped_at`` may be set by
    the block instead, to stop later (``stop=False``: call :func:`stop_now`)."""
    pause = Pause(srv.running() is not None)
    interrupted = False
    try:
        if pause.was_running and stop:
            stop_now(srv, pause)
        yield pause
    finally:
        if pause.stopped_at is not None:
            # A signal now would cancel the start and leave the server stopped: hold it.
            with snapstore.shielded() as got:
                cancelled = start_again(srv)
            pause.downtime = time.monotonic() - pause.stopped_at
            interrupted = bool(got) or cancelled
    if interrupted:
        raise KeyboardInterrupt


def resume(srv: Server, pause: Pause) -> None:
    """Start ``srv`` again now (instead of at the end of :func:`paused`)."""
    if pause.stopped_at is not None:
        start_again(srv)  # the caller holds signals (snapstore.shielded)
        pause.downtime = time.monotonic() - pause.stopped_at
        pause.stopped_at = None


def start_again(srv: Server, tries: int = 3) -> bool:
    """Finish any stop, then start ``srv``; True if a Ctrl-C cancelled a start meanwhile.

    :meth:`Server.start` guards its spawn with a SIGINT handler of its own, which cancels
    the start even inside :func:`snapstore.shielded`: so the start is tried again.
    """
    cancelled = False
    for _ in range(tries):
        try:
            srv.stop("fast")
            srv.start()
            return cancelled
        except KeyboardInterrupt:
            cancelled = True
    srv.stop("fast")
    srv.start()
    return True


def stop_now(srv: Server, pause: Pause) -> None:
    if pause.was_running:
        pause.stopped_at = time.monotonic()
        srv.stop("fast")
