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
                srv.stop("fast")
                srv.start()
            pause.downtime = time.monotonic() - pause.stopped_at
            interrupted = bool(got)
    if interrupted:
        raise KeyboardInterrupt


def resume(srv: Server, pause: Pause) -> None:
    """Start ``srv`` again now (instead of at the end of :func:`paused`)."""
    if pause.stopped_at is not None:
        srv.start()  # the caller holds signals (snapstore.shielded)
        pause.downtime = time.monotonic() - pause.stopped_at
        pause.stopped_at = None


def stop_now(srv: Server, pause: Pause) -> None:
    if pause.was_running:
        pause.stopped_at = time.monotonic()
        srv.stop("fast")
