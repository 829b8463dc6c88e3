"""The postgres child of a start, and what surrounds it: a stale ``postmaster.pid``
refused or cleared before the spawn (:func:`check_unused`, :func:`clear_stale_pidfile`),
the spawn with Ctrl-C held until the child is known (:func:`spawn_child`), the wait for
readiness (:func:`ready_wait`, then the password a template copy still needs), and the
cancel of a failed start: its server stopped, the socket directory it made removed
(:func:`cancel_start`, :func:`drop_sockdir`). :mod:`pgmgr.core.startup` orchestrates a
start with these; 'pgmgr status' never loads either.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from pgmgr.core import launch, listen, process, server, sigguard, testhook, userfs
from pgmgr.core.errors import WorkerError
from pgmgr.core.launch import ServerExited

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from typing import Any

    from pgmgr.core import privileges, versions
    from pgmgr.core.instance import Server


def check_unused(datadir: Path, then: str, wait: float = 0.0) -> None:
    """Refuse ``datadir`` while postgres processes no postmaster pgmgr can see stands
    behind work in it: orphaned backends of a killed postmaster, or a postmaster whose
    ``postmaster.pid`` was removed or damaged (it runs, but looks stopped). ``wait``: for
    up to that many seconds for them to exit first (a postmaster stopped by hand removes
    its postmaster.pid a moment before it exits; orphans exit once they notice).

    :raises WorkerError: some do (``then``: what to do once they are gone).
    """
    deadline = time.monotonic() + wait
    while (users := process.processes_in(datadir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if users:
        raise WorkerError(
            f"postgres processes still use {datadir} (pids "
            + ", ".join(map(str, users))
            + ") but no postmaster serves it",
            hint=f"wait for them to exit, or stop them, then {then}",
        )


def clear_stale_pidfile(srv: Server) -> None:
    """Remove a ``postmaster.pid`` no live postmaster of this data dir stands behind.

    Never while any process still has the data directory as its working directory
    (orphaned backends of a killed postmaster): postgres would refuse anyway, and
    the file is the only thing that keeps a second postmaster out.
    """
    pidfile = srv.datadir / process.PIDFILE
    if not pidfile.exists():
        return
    check_unused(srv.datadir, "start again")
    pf = process.PidFile.read(srv.datadir)
    if pf is not None and process.stale_pidfile_reason(pf) is None:
        raise WorkerError(
            f"{pidfile} names pid {pf.pid}, which is not a postgres of this data "
            "directory but was running before the file was written: another postmaster "
            "(in a container, or on another host) may be using it",
            hint=f"if you are sure none is, remove {pidfile} and start again",
        )
    testhook.pause("stale-pidfile")
    # As the server user: as root, the data directory's parent may be that user's, who
    # could swap the directory for a symlink to another cluster's meanwhile (root removed
    # that cluster's live postmaster.pid, letting a second postmaster in).
    userfs.as_user(srv.user(), listen.unlink_missing_ok, str(pidfile))


def ready_wait(srv: Server, timeout: float = 10.0) -> process.PidFile:
    """Wait until the server accepts connections; on timeout kill it.

    :raises WorkerError: no process, it exited, or it was not ready in time.
    """
    if srv.child is None:
        pf = srv.running()
        if pf is None:
            raise WorkerError("no server process to wait for")
        pid = pf.pid
    else:
        pid = srv.child.pid
    try:
        pf = launch.wait_ready(
            pid,
            srv.datadir,
            timeout,
            child=srv.child,
            log_file=srv.log_file,
            log_offset=srv._log_offset,
        )
    except ServerExited:
        srv._reap()
        raise
    except WorkerError as e:
        from pgmgr.core import fifowait

        stuck = fifowait.find(pid)  # the cause, said before the process is gone
        if stuck is not None:
            e.message += f": {fifowait.describe(stuck)}"
        process.signal_pid(pid, server.STOP_SIGNALS["immediate"])
        if srv.child is None:
            process.wait_gone(pid, srv.datadir, 5.0)
        elif not _child_exits(srv.child, 0.0 if stuck else 5.0):
            # Our own child, never ready, ignoring SIGQUIT (blocked opening a FIFO its
            # user planted as the socket lock or a configuration file, say): it must not
            # outlive the failure. Waited for as our child, not through postmaster.pid,
            # which one blocked that early has not written: the fast stop of the
            # clean-up then waited 30 s more, and the immediate one 5 s.
            process.signal_pid(srv.child.pid, signal.SIGKILL)
            _child_exits(srv.child, 5.0)
        srv._reap()
        raise

    if srv.inst.password_pending:  # a template copy started with wait=False
        apply_pending_password(srv, srv.installation(), None)
    return pf


def _child_exits(child: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether our child ``child`` exits (reaped) within ``timeout`` seconds."""
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def apply_pending_password(
    srv: Server, install: versions.Installation, su: privileges.ServerUser | None
) -> None:
    """:func:`pgmgr.core.initdir.apply_pending_password` when a password is pending:
    initdir brings the template and copy modules, which a start needs only then."""
    if srv.inst.password_pending and srv.inst.password:
        from pgmgr.core import initdir

        initdir.apply_pending_password(srv, install, su)


def spawn_child(
    srv: Server, argv: list[str], su: privileges.ServerUser | None
) -> subprocess.Popen[bytes]:
    """Spawn postgres with Ctrl-C held until the child is known: a Ctrl-C inside
    ``Popen`` (after the exec, before it returns) would otherwise orphan the server.
    SIGTERM and SIGHUP are held too, then given to the handlers in place once the child
    is known (a start takes them as Ctrl-C: :func:`sigguard.interruptible`; raised inside
    ``Popen``, they orphaned the server as well)."""
    got: list[int] = []
    other: list[int] = []  # SIGTERM, SIGHUP
    main = threading.current_thread() is threading.main_thread()
    old: dict[int, Any] = {}
    if main:
        # One the process ignores (SIGINT in a job a script runs in the background, SIGHUP
        # under nohup) stays ignored: recorded, an ignored SIGINT cancelled the start.
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            old[signal.SIGINT] = signal.signal(signal.SIGINT, lambda s, f: got.append(s))
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                old[sig] = signal.signal(sig, lambda s, f: other.append(s))
    try:
        srv.child = launch.spawn(argv, srv.log_file, su, die_with_parent=srv.die_with_parent)
        testhook.pause("start-spawning")  # tests: Ctrl-C while it is held
        if got:
            # Held from here to the end of the stop (no gap where one raises and the
            # caller's clean-up starts afresh): a second Ctrl-C, during the spawn or the
            # stop, makes the stop immediate, as one after the spawn does (a third was
            # needed: the first two both counted as the first).
            with sigguard.shielded(deliver=False) as again:
                again.extend(got[1:] + other)
                cancel_start(srv, again)
            raise KeyboardInterrupt
    except BaseException as e:
        _deliver(old, [] if isinstance(e, KeyboardInterrupt) else other, e)
        raise
    _deliver(old, other)  # the child is known: the caller's clean-up stops it
    return srv.child


def _deliver(old: dict[int, Any], held: list[int], failure: BaseException | None = None) -> None:
    """Put back the handlers ``old``, then raise the signals ``held`` to them (a
    KeyboardInterrupt they raise has ``failure`` as its cause, see sigguard.redeliver)."""
    for num, handler in old.items():
        signal.signal(num, handler)
    try:
        for num in dict.fromkeys(held):
            signal.raise_signal(num)
    except KeyboardInterrupt as e:
        raise e from failure


def drop_sockdir(srv: Server, sockdir: Path, made: bool, recorded: str | None) -> None:
    """After a failed start, remove the private socket dir this attempt made (each
    failed start would otherwise leave one in the temp dir) and keep the record's."""
    srv.inst.socket_dir = recorded
    if made:
        _remove_sockdir(sockdir)


def _remove_sockdir(sockdir: Path) -> None:
    """Remove a socket dir a failed start made, through fds: it is the server user's, in
    the temp dir, and as root a path through it could be a link that user put there (to
    another cluster's socket directory, whose sockets and locks root would delete)."""
    from pgmgr.core import userfs

    try:
        parent = userfs.open_dir(sockdir.parent)
    except (OSError, userfs.UnsafePath):
        return
    try:
        fd = os.open(sockdir.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    except OSError:  # gone, or no longer a directory (a link): nothing of ours there
        os.close(parent)
        return
    try:
        for name in os.listdir(fd):
            if name.startswith(".s.PGSQL."):
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(sockdir.name, dir_fd=parent)
    os.close(parent)


def cancel_start(srv: Server, again: list[int] | None = None) -> None:
    """Ctrl-C while waiting for readiness, or a failure to record the server, cancels
    the start: the server this call spawned is stopped (fast; safe at any point of
    start-up) instead of being left running unrecorded in its own session.

    ``again``: the signals the caller holds meanwhile (see :func:`sigguard.shielded`).
    One (a second Ctrl-C), or 30 s without the server gone, makes the stop immediate
    (then SIGKILL): a server that does not heed a fast stop for minutes (a start-up
    that fsyncs a large data directory after a crash) kept pgmgr deaf to Ctrl-C for
    30 s, and was then left running all the same."""
    child = srv.child
    if child is None or child.poll() is not None:
        return  # none spawned, or exited and reaped: its pid may be another's by now
    child.send_signal(server.STOP_SIGNALS["fast"])
    testhook.pause("start-cancelled")
    # Our own child: wait for it, not for postmaster.pid (not written yet this early).
    deadline = time.monotonic() + 30
    while not again and time.monotonic() < deadline:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=0.1)
            return
    _stop_now(srv, child)


def _stop_now(srv: Server, child: subprocess.Popen[bytes]) -> None:
    """Stop the spawned server at once: immediate (SIGQUIT: it stops its children), then
    SIGKILL after 5 s, and wait (bounded) for the children of a killed postmaster to go;
    SIGCONT with each, so a stopped one acts on it too (as :func:`tools._stop_group`)."""
    for sig, wait in ((server.STOP_SIGNALS["immediate"], 5.0), (signal.SIGKILL, 5.0)):
        child.send_signal(sig)  # a no-op once it is reaped
        child.send_signal(signal.SIGCONT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=wait)
            break
    deadline = time.monotonic() + 5.0
    while process.processes_in(srv.datadir) and time.monotonic() < deadline:
        time.sleep(0.05)
