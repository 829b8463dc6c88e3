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

from pgmgr.core import sigguard, stopmark, testhook
from pgmgr.core.instance import Server

#: How long a server started again after a command's work may take to accept connections:
#: 'pgmgr start''s default (the library's is 10 s). Not ready by then, it is killed and
#: started afresh (await_spawned), which a loaded machine must not cause.
READY_TIMEOUT = 30.0


@dataclass
class Pause:
    """The downtime of :func:`paused`: None when the server was not running."""

    was_running: bool
    stopped_at: float | None = None
    downtime: float | None = None
    #: started again by :func:`spawn_again`, not yet known to accept connections
    spawned: bool = False
    #: set by the block once its work is complete: a signal during the final wait for the
    #: server is then only recorded (the work is not undone, so it must not look failed)
    done: bool = False
    #: the command that pauses the server, for the record's mark (see pgmgr.core.stopmark)
    command: str = ""
    #: what ended the block, if it failed (said with a failed start: see _said_both)
    failed: BaseException | None = None


@contextlib.contextmanager
def paused(srv: Server, command: str, *, stop: bool = True, mode: str = "fast") -> Iterator[Pause]:
    """Stop ``srv`` (``mode``: fast, or immediate when its state is thrown away anyway and a
    shutdown checkpoint would be wasted) for the block if it runs and ``stop``, and start it again
    afterwards whatever happens: an interrupted stop is finished first, so the start
    never meets a server that is still shutting down. ``pause.stopped_at`` may be set by
    the block instead, to stop later (``stop=False``: call :func:`stop_now`). ``command``
    (snapshot, restore...) marks the record while the server is stopped (see
    :mod:`pgmgr.core.stopmark`); the start clears it, and an end by an error or an interrupt
    with the server still stopped (its start failed) leaves it with the reason.

    :raises DatabaseException: it runs, and could not be started again (its PG_VERSION
        names no major, or no installation of it is found): nothing was done."""
    pause = Pause(srv.running() is not None, command=command)
    if not pause.was_running:
        yield from _paused(srv, pause, stop, mode)
        return
    # what starting it again needs (a PG_VERSION naming a major, its binaries): refused
    # while it still runs, not found missing once it is stopped
    srv.installation()
    with _said_both(srv, pause), stopmark.held(srv), stopmark.ended_on_failure(srv):
        yield from _paused(srv, pause, stop, mode)


def _paused(srv: Server, pause: Pause, stop: bool, mode: str) -> Iterator[Pause]:
    interrupted = False
    held: list[int] = []
    try:
        if stop:
            stop_now(srv, pause, mode)
        yield pause
    except BaseException as e:
        pause.failed = e
        raise
    finally:
        if pause.stopped_at is not None:
            # A signal now would cancel the start and leave the server stopped: hold it.
            try:
                with sigguard.shielded(deliver=False) as got:
                    cancelled = await_spawned(srv) if pause.spawned else start_again(srv)
            except BaseException as e:  # the start failed: a signal meanwhile still counts,
                if not pause.done:  # unless the work is complete (then the failure is news)
                    sigguard.redeliver(got, e)
                raise
            pause.downtime = time.monotonic() - pause.stopped_at
            interrupted = cancelled
            held = got
    if not pause.done:  # to the handlers in place, as spawn_again does
        sigguard.redeliver(held, None)
        if interrupted:
            raise KeyboardInterrupt


@contextlib.contextmanager
def _said_both(srv: Server, pause: Pause) -> Iterator[None]:
    """Around the record's mark (which keeps the start's own reason): the block failed,
    then the start failed too: its error says both (it said only why the server did not
    start, e.g. a full disk, not that the work had failed first, nor why)."""
    try:
        yield
    except BaseException as e:
        if pause.failed is not None and e is not pause.failed:
            _both(pause.failed, e, srv.inst.name)
        raise


def _both(failed: BaseException, start: BaseException, name: str) -> None:
    from pgmgr.core.errors import PgmgrError, describe_os_error

    if not isinstance(start, PgmgrError):
        return
    if isinstance(failed, PgmgrError):
        first = failed.message
    elif isinstance(failed, OSError):  # said as the CLI says one (see pgmgr.entry)
        first = describe_os_error(failed)
    else:
        return
    start.message = f"{first}, but '{name}' did not start again: {start.message}"
    start.hint = start.hint or f"fix the problem, then run 'pgmgr start {name}'"


@contextlib.contextmanager
def done_then(what: str, name: str) -> Iterator[list[bool]]:
    """Around :func:`paused`, for work that completes before the server is ready (see
    :func:`spawn_again`): the block appends True once its work is complete; a start that
    fails after that says the work is done, so that the error does not read as if nothing
    happened ("postgres exited during start-up" after a snapshot was named)."""
    from pgmgr.core.errors import PgmgrError

    done: list[bool] = []
    try:
        yield done
    except PgmgrError as e:
        if done:
            e.message = f"{what}, but '{name}' did not start again: {e.message}"
            e.hint = e.hint or f"fix the problem, then run 'pgmgr start {name}'"
        raise


def not_started(srv: Server, what: str, *, ran: bool = False) -> None:
    """:raises DatabaseException: a server runs on the data directory that ``what`` (the
    restore, the upgrade) is about to swap out, or ``ran`` (the caller saw its
    ``pg_control`` change): started meanwhile by hand, or by the pgmgr of another
    registration of the directory, whose instance lock is not this one's. It would go on
    in the replaced directory (a snapshot, or one sharing files with the new one), and
    what it wrote since the copy was made would be missing from the new one."""
    if ran or srv.running() is not None:
        from pgmgr.core.errors import DatabaseException

        raise DatabaseException(
            f"'{srv.inst.name}' was started during the {what}; nothing was changed",
            hint=f"stop what starts it (pg_ctl, a script) and run the {what} again",
        )


def resume(srv: Server, pause: Pause) -> None:
    """Start ``srv`` again now (instead of at the end of :func:`paused`), or wait for the
    start :func:`spawn_again` began. The caller holds signals (sigguard.shielded)."""
    if pause.stopped_at is not None:
        if pause.spawned:
            await_spawned(srv)
        else:
            start_again(srv)
        pause.spawned = False
        pause.downtime = time.monotonic() - pause.stopped_at
        pause.stopped_at = None


def spawn_again(srv: Server, pause: Pause) -> None:
    """Start ``srv`` again now without waiting until it accepts connections, so that the
    rest of the block overlaps its start-up; the end of :func:`paused` (or :func:`resume`)
    waits for it, and starts it afresh if this start failed. A signal meanwhile interrupts
    the block after the spawn, unless its work is ``done``."""
    if pause.stopped_at is None or pause.spawned:
        return
    # What it held goes to the handlers in place when it ends (none once the work is done:
    # committed): a Ctrl-C, or a SIGTERM sigguard.interruptible took over, interrupts; a
    # caller's own handler gets its signal (any raised KeyboardInterrupt here: a library
    # caller that handles SIGTERM itself had its snapshot thrown away).
    with sigguard.shielded():
        srv.stop("fast")  # finish an interrupted stop: a no-op otherwise
        srv.start(wait=False)
        pause.spawned = True
        testhook.pause("spawned")


def await_spawned(srv: Server) -> bool:
    """Wait until the server :func:`spawn_again` started accepts connections and record
    it; if it exited or was not ready in time (then killed), start it afresh (a real
    problem is raised there). True if a Ctrl-C cancelled a start meanwhile."""
    from pgmgr.core.errors import WorkerError

    testhook.pause("awaiting-spawned")
    try:
        srv.ready_wait(READY_TIMEOUT)
    except WorkerError:
        return start_again(srv)
    srv.start(timeout=READY_TIMEOUT)  # running and ready: adopts what it uses into the record
    return False


def start_again(srv: Server, tries: int = 3) -> bool:
    """Finish any stop, then start ``srv``; True if a Ctrl-C cancelled a start meanwhile.

    :meth:`Server.start` guards its spawn with a SIGINT handler of its own, which cancels
    the start even inside :func:`sigguard.shielded`: so the start is tried again.
    """
    cancelled = False
    for _ in range(tries):
        try:
            srv.stop("fast")
            srv.start(timeout=READY_TIMEOUT)
            return cancelled
        except KeyboardInterrupt:
            cancelled = True
    srv.stop("fast")
    srv.start(timeout=READY_TIMEOUT)
    return True


def stop_now(srv: Server, pause: Pause, mode: str = "fast") -> None:
    """Stop ``srv`` for the block of :func:`paused`.

    :raises PgmgrError: its record cannot be written now (see :func:`paths.check_writable`):
        the start afterwards records the server, and stops it again if it cannot, so a
        read-only or full state filesystem would leave it stopped. It is not stopped.
    :raises OSError: the record's mark (see :mod:`pgmgr.core.stopmark`) could not be
        saved. It is not stopped.
    :raises WorkerError: it looked stopped, but postgres processes still work in its data
        directory (see :func:`startchild.check_unused`): a copy of it, or one swapped in,
        would be made under a running server.
    """
    if not pause.was_running:
        from pgmgr.core import startchild

        startchild.check_unused(srv.datadir, f"run 'pgmgr {pause.command}' again", wait=2.0)
        return
    if srv.register:
        from pgmgr.core import paths, registry, stopmark

        action = f"stop '{srv.inst.name}' and start it again"
        paths.check_writable(registry.instances_dir(), action, paths.STATE_ELSEWHERE)
        stopmark.mark(srv, pause.command)  # a kill -9 from here on leaves it stopped
    pause.stopped_at = time.monotonic()
    # Not saved once stopped: the start that ends the pause saves the record (and a
    # kill -9 before it leaves the mark, which says why the server is stopped).
    srv.stop(mode, record=False)
