"""Stopping a server (:meth:`Server.stop <pgmgr.core.instance.Server.stop>`), waiting for
it to exit and reaping the postgres child this process started.

The signals and the wait are :func:`pgmgr.core.server.stop`'s; this module decides what the
record says once it stopped. Loaded by the commands that stop, never by ``pgmgr status``.
"""

from __future__ import annotations

import contextlib

from pgmgr.core import process, server
from pgmgr.core.errors import UsageError, WorkerError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    import subprocess

    from pgmgr.core.instance import Server


def stop(
    srv: Server, mode: str = "fast", timeout: float | None = 60.0, wait: bool = True,
    *, record: bool = True,
) -> bool:  # fmt: skip
    """Stop the server if it runs. ``record``: save the record once it stopped (not
    for a pause whose start saves it next: the pid it forgets is never trusted).

    :returns: False if it was not running.
    :raises UsageError: ``mode`` is not smart, fast or immediate.
    :raises WorkerError: it did not stop within ``timeout`` (says what holds it).
    :raises IdentityChanged: the data directory was moved or replaced.
    """
    if mode not in server.STOP_SIGNALS:  # before anything: a stopped server too
        raise UsageError(f"invalid stop mode {mode!r}: use smart, fast or immediate")
    srv.check_identity("stop")
    srv.record_error = None
    srv.ended_by = None
    pf = srv.running()
    child = srv.child
    if pf is None and child is not None and child.poll() is None:
        # Ours, spawned (start(wait=False)) and not reaped, so the pid is still its own,
        # but postmaster.pid is not written yet: it is starting, not "not running".
        return _stop_child(srv, child, mode, timeout, wait, record)
    if pf is None:
        reap(srv)
        if srv.inst.pid is not None:
            srv.inst.pid = None
            save_after_stop(srv)
        return False
    if mode != "immediate":
        _check_started_here(srv, pf.pid, mode)
    if not wait:
        from pgmgr.core import launch

        launch.send_stop(pf.pid, mode)
        return True
    if not _stop_waiting(srv, pf.pid, mode, timeout):
        sessions = process.client_sessions(pf.pid)
        held = f"; {len(sessions)} client session(s) still connected" if sessions else ""
        raise WorkerError(
            f"server (pid {pf.pid}) did not stop within {timeout:g} s in {mode} mode{held}",
            hint="use '-m fast' to disconnect clients, or a longer --timeout",
        )
    reap(srv)
    srv.inst.pid = None
    if record:
        save_after_stop(srv)
    return True


class StartedElsewhere(WorkerError):
    """A smart or fast stop refused: the server's shutdown checkpoint would write its
    pg_control under the path it was started with, which its data directory left (a
    WorkerError: destroy, which stops fast then immediate, goes on with an immediate stop,
    which writes none)."""


def _check_started_here(srv: Server, pid: int, mode: str) -> None:
    """:raises StartedElsewhere: the postmaster was started at another path (see
    :func:`pgmgr.core.movedserver.started_as`)."""
    from pgmgr.core import movedserver

    old = movedserver.started_as(pid, srv.datadir)
    if old is None:
        return
    import shlex

    raise StartedElsewhere(
        f"refusing a {mode} stop of '{srv.inst.name}': its server (pid {pid}) was started "
        f"as {old}, and its data directory was moved to {srv.datadir} since; its shutdown "
        f"checkpoint would write global/pg_control under {old} (a PANIC if nothing is "
        "there, another cluster's pg_control overwritten if one is)",
        hint=f"if nothing stands at {shlex.quote(old)}, move the directory back there and "
        "stop it; else stop it with '-m immediate' (no checkpoint: crash recovery at its "
        "next start)",
    )


def _stop_waiting(srv: Server, pid: int, mode: str, timeout: float | None) -> bool:
    """:func:`pgmgr.core.server.stop`, and a note for a stronger stop meanwhile once it
    takes longer than a blink (see :mod:`pgmgr.core.stopwait`): False when ``timeout``
    passed."""
    import time

    from pgmgr.core import launch, stopwait

    if not launch.send_stop(pid, mode):
        return True
    t0 = time.monotonic()
    quiet = stopwait.QUIET if timeout is None else min(timeout, stopwait.QUIET)
    if process.wait_gone(pid, srv.datadir, quiet):
        return True
    left = None if timeout is None else max(0.0, timeout - (time.monotonic() - t0))
    with stopwait.announced(srv, pid, mode):
        return process.wait_gone(pid, srv.datadir, left)


def _stop_child(
    srv: Server, child: subprocess.Popen[bytes], mode: str, timeout: float | None,
    wait: bool, record: bool,
) -> bool:  # fmt: skip
    """Stop the postgres this process spawned before it wrote postmaster.pid (it blocks
    signals while it starts, then acts on the one it got)."""
    import subprocess

    from pgmgr.core import launch

    launch.send_stop(child.pid, mode)
    if not wait:
        return True
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        raise WorkerError(
            f"server (pid {child.pid}) did not stop within {timeout:g} s in {mode} mode",
            hint="use '-m immediate', or a longer --timeout",
        ) from None
    srv.inst.pid = None
    if record:
        save_after_stop(srv)
    return True


def save_after_stop(srv: Server) -> None:
    """The server did stop: a record that cannot be updated (a full or read-only state
    filesystem) does not make that a failure. The stale pid in it is never trusted
    (process truth), so :attr:`Server.record_error` only says why it was not updated."""
    try:
        srv.save()
    except OSError as e:
        srv.record_error = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")


def wait(srv: Server, timeout: float | None = None) -> int | None:
    """Wait for the server to exit; its exit code when this process started it."""
    if srv.child is not None:
        import subprocess  # only here: a server this process started

        try:
            return srv.child.wait(timeout)
        except subprocess.TimeoutExpired:
            raise WorkerError(f"server did not exit within {timeout:g} s") from None
    pf = srv.running()
    if pf is not None and not process.wait_gone(pf.pid, srv.datadir, timeout):
        raise WorkerError(f"server did not exit within {timeout:g} s")
    return None


def reap(srv: Server) -> None:
    """Collect the exit status of the postgres child this process started, if any."""
    if srv.child is not None:
        import subprocess

        with contextlib.suppress(subprocess.TimeoutExpired):
            srv.child.wait(timeout=5)
