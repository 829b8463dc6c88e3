"""Starting an instance's server: the checks, the spawn, the wait for readiness, the
port retries of ``--port auto``, and the record of what it runs with. The postgres child
itself (spawned with Ctrl-C held, waited for, cancelled on failure) is handled in
:mod:`pgmgr.core.startchild`. :meth:`pgmgr.core.instance.Server.start` calls in here;
'pgmgr status' never loads it.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pgmgr.core import (
    dirpath,
    launch,
    listen,
    logfile,
    loopback,
    pgconf,
    privileges,
    process,
    server,
    sigguard,
    startchild,
    state,
    stopwait,
    testhook,
    versions,
)
from pgmgr.core.errors import DatabaseException, NotRunning, PortInUse, UsageError, WorkerError
from pgmgr.core.instance import StartResult
from pgmgr.core.launch import ServerExited
from pgmgr.core.pgtext import clip_in

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pgmgr.core.instance import Server

AUTO_PORT_TRIES = 5


class ServerStopping(NotRunning):
    """A start found the server shutting down (exit code 3: it will not be running)."""

    def __init__(self, name: str, pid: int) -> None:
        self.name = name
        self.pid = pid
        super().__init__(
            f"'{name}' (pid {pid}) is shutting down: a stop is waiting for its clients "
            "to disconnect, or finishing a checkpoint",
            hint=f"wait until 'pgmgr status {name}' says stopped and start it again, or "
            f"end the client sessions now with 'pgmgr stop {name} -m fast'",
        )


class StoppedWhileStarting(NotRunning):
    """A stop run while a start waited for the server stopped it (exit code 3): a 'pgmgr
    stop' (``by``), or a shutdown request from elsewhere (None: see :func:`_asked_to_stop`)."""

    def __init__(self, name: str, by: stopwait.Note | None) -> None:
        self.name = name
        who = (
            f"{by.ender()} (pgmgr pid {by.by})"
            if by is not None
            else "a shutdown request from outside this pgmgr ('pg_ctl stop', a service "
            "manager, or the pgmgr of another registration of its data directory)"
        )
        super().__init__(
            f"'{name}' was stopped by {who} run while this start waited for it to be ready"
        )


def start(
    srv: Server,
    *,
    host: str | None = None,
    port: int | str | None = None,
    settings: Mapping[str, str] | None = None,
    socket_dir: str | None = None,
    user: str | None = None,
    version: str | None = None,
    timeout: float = 10.0,
    wait: bool = True,
) -> StartResult:
    """Start the server unless it is running already.

    ``port`` is a number, ``"auto"`` (a free port), or None (the last one, else 5432).

    :raises DataDirNotFound: no data directory.
    :raises PortInUse: the port is taken (a clear hint suggests ``--port auto``).
    :raises WorkerError: postgres exited during start-up, or was not ready in time.
    :raises OSError: postgres could not be executed.
    """
    t0 = time.monotonic()
    _check_startable(srv, socket_dir)
    install = srv.installation(version)
    done = _running_already(srv, install, timeout, wait, t0)
    if done is not None:
        return done
    plan = _make_plan(srv, install, host, settings, socket_dir, user)
    auto = port == "auto"
    for attempt in range(AUTO_PORT_TRIES if auto else 1):
        chosen = choose_port(srv, plan.host, port, plan)
        srv.child = None
        socks: list[_Socket] = []
        try:
            child = _spawn_on(srv, plan, chosen, socks)
            if not wait:
                commit_start(srv, plan.su, plan.settings, None)
                return StartResult(srv.inst, False, child.pid, time.monotonic() - t0)
            pf = _await_ready(srv, timeout, retry=auto and attempt + 1 < AUTO_PORT_TRIES)
            if pf is not None:
                commit_start(srv, plan.su, plan.settings, pf)
                startchild.apply_pending_password(srv, plan.install, plan.su)
        except BaseException as e:
            # One handler from the spawn to the record: see _undo.
            _undo(srv, e, plan, socks)
            raise
        if pf is None:  # another server took the port between our check and bind
            _drop_sockdirs(srv, socks)
            continue
        return StartResult(srv.inst, False, pf.pid, time.monotonic() - t0)
    raise AssertionError("unreachable")  # pragma: no cover


def _check_startable(srv: Server, socket_dir: str | None) -> None:
    """The checks before anything else of a start: the ``--socket-dir`` text, the data
    directory there and still the record's, and a new registration's place.

    :raises DataDirNotFound: no data directory.
    """
    datadir = srv.datadir
    if socket_dir:
        listen.check_socket_dir_text(socket_dir)
    if not server.is_datadir(datadir):
        raise state.DataDirNotFound(datadir, state.why_missing(datadir))
    srv.check_identity("start")
    if srv.new and srv.register:  # registered by this start (see initdir for init)
        dirpath.check_datadir_place(datadir, "register")


def _running_already(
    srv: Server, install: versions.Installation, timeout: float, wait: bool, t0: float
) -> StartResult | None:
    """The result of a start that finds its server running (or still starting, spawned
    by this object), once it is ready (``wait``) and recorded; None when none runs."""
    pf = srv.running()
    child = srv.child
    early = pf is None or (pf.pid == getattr(child, "pid", None) and pf.status is None)
    if child is not None and child.poll() is None and early:
        # This object spawned it (wait=False): without postmaster.pid yet it is starting
        # (another spawn would be a second postgres for the data dir), and one without its
        # status line yet is not ready: wait for it as its own start would have.
        if not wait:
            return StartResult(srv.inst, True, child.pid, time.monotonic() - t0)
        pf = startchild.ready_wait(srv, timeout)
    if pf is not None:
        pf = settle(srv, pf, timeout if wait else 0.0)
        record_running(srv, pf)
        # A first start that could not set the template copy's password: try again.
        startchild.apply_pending_password(srv, install, None)
        return StartResult(srv.inst, True, pf.pid, time.monotonic() - t0)
    return None


def _make_plan(
    srv: Server,
    install: versions.Installation,
    host: str | None,
    settings: Mapping[str, str] | None,
    socket_dir: str | None,
    user: str | None,
) -> _Plan:
    """Before the first spawn: a stale postmaster.pid cleared, the server user's access
    checked, the host checked, and the settings merged and written (kept settings:
    reloadable, see pgconf)."""
    datadir = srv.datadir
    startchild.clear_stale_pidfile(srv)
    su = srv.user(user)
    if su is not None:
        privileges.check_reachable(datadir, su, "data directory")
        privileges.check_reachable(install.bindir / "postgres", su, "PostgreSQL binaries")
    listen_on = srv.inst.host if host is None else host
    why = loopback.message(listen_on, "host")  # a record's too (by hand, an older pgmgr)
    if why:
        raise DatabaseException(why, hint=f"pgmgr start {srv.inst.name} --host 127.0.0.1")
    merged = dict(srv.inst.settings)
    merged.update(server.check_settings(settings or {}))
    conf = pgconf.write(datadir, merged, su)  # kept settings: reloadable, see pgconf
    return _Plan(install, su, merged, conf, listen_on, socket_dir)


def _undo(srv: Server, e: BaseException, plan: _Plan, socks: list[_Socket]) -> None:
    """Undo an attempt that failed with ``e`` (the caller re-raises it).

    One handler from the spawn to the record: a Ctrl-C anywhere in between (not only
    inside the wait), a server that exited or was not ready, a server pgmgr cannot record
    (state dir unwritable, disk full) or cannot secure (no password): none is left running
    behind the error, nor its socket dir. A second Ctrl-C meanwhile waits (bounded): it
    left both, and the caller's undo (start --init) then found a server and kept the data
    directory too. After a failure, a signal held meanwhile is delivered once done (exit
    130, not 1)."""
    merged = plan.settings
    if isinstance(e, ServerExited):  # its FATAL line quotes a bad -c value whole
        e.message = clip_in(e.message, [*merged, *merged.values()])
    with sigguard.undoing(e) as again:
        testhook.pause("start-undo")  # tests: a signal during the clean-up
        startchild.cancel_start(srv, again)
        _drop_sockdirs(srv, socks)
        if isinstance(e, StoppedWhileStarting):
            commit_stopped(srv, plan.su, merged)


def _drop_sockdirs(srv: Server, socks: list[_Socket]) -> None:
    """:func:`startchild.drop_sockdir` for each socket dir of a failed attempt."""
    for sock in socks:
        startchild.drop_sockdir(srv, sock.dir, sock.made, sock.recorded)


@dataclass(frozen=True)
class _Plan:
    """What every attempt of one start uses."""

    install: versions.Installation
    su: privileges.ServerUser | None
    settings: dict[str, str]
    conf: Path
    host: str
    socket_dir: str | None  # --socket-dir


@dataclass(frozen=True)
class _Socket:
    """One attempt's socket directory: ``made`` when this attempt chose a new one (a
    failure removes it), ``recorded`` the record's before."""

    dir: Path
    made: bool
    recorded: str | None


def _spawn_on(srv: Server, plan: _Plan, port: int, socks: list[_Socket]) -> subprocess.Popen[bytes]:
    """Spawn postgres on ``port`` (its socket directory chosen and appended to ``socks``
    at once, for the caller's clean-up, a stale lock cleared, the log rotated) and note
    where it listens in the record (not saved yet)."""
    datadir = srv.datadir
    recorded = srv.inst.socket_dir
    sockdir = listen.socket_dir(recorded, plan.socket_dir, port, plan.su, datadir)
    made = not plan.socket_dir and str(sockdir) != recorded and sockdir != datadir
    socks.append(_Socket(sockdir, made, recorded))
    listen.clear_stale_socket_lock(sockdir, port, datadir, plan.su)
    if srv.new:
        srv.save()  # claim the name first: the log file is named after it
    argv = server.postgres_argv(
        plan.install,
        datadir,
        host=plan.host,
        port=port,
        socket_dir=sockdir,
        settings={},
        config_file=plan.conf,
    )
    logfile.rotate_as(srv.log_file, plan.su)  # bounded: see pgmgr.core.logfile
    srv._log_offset = launch.open_log_offset(srv.log_file)
    child = startchild.spawn_child(srv, argv, plan.su)
    testhook.pause("start-spawned")  # spawned, not yet waited for (tests: a Ctrl-C now)
    srv.inst.host, srv.inst.port, srv.inst.socket_dir = plan.host, port, str(sockdir)
    return child


def _await_ready(srv: Server, timeout: float, *, retry: bool) -> process.PidFile | None:
    """Wait for the spawned server. None when it could not bind its port and ``retry``
    (``--port auto`` tries another).

    :raises PortInUse: it could not bind its port (and no retry).
    :raises WorkerError: it exited, or was not ready in time (then it was killed).
    """
    assert srv.child is not None
    try:
        with stopwait.starting(srv, srv.child.pid, timeout) as left:
            return startchild.ready_wait(srv, left)
    except ServerExited as e:
        if srv.ended_by is not None:  # a 'pgmgr stop' run meanwhile stopped it
            raise StoppedWhileStarting(srv.inst.name, srv.ended_by) from None
        if _asked_to_stop(srv.child):  # another stop: not a failed start either
            raise StoppedWhileStarting(srv.inst.name, None) from None
        if retry and "already in use" in e.message:
            return None
        if "already in use" in e.message:
            raise PortInUse(srv.inst.host, srv.inst.port or 0) from None
        raise


def _asked_to_stop(child: subprocess.Popen[bytes] | None) -> bool:
    """Whether the postgres this start spawned exited because a stop asked it to: exit
    code 0 (a smart, fast or immediate shutdown request, handled), or killed by one of
    those signals before it set its handlers. A start that fails exits 1 (FATAL), and a
    stop of pgmgr's own is in its note (:attr:`Server.ended_by`), but one of
    'pg_ctl stop', or of the pgmgr of another registration (whose lock and note are in
    its own state directory) is not: the start called that a failure, and a
    'start --init' undid its init."""
    code = child.poll() if child is not None else None
    stops = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
    return code is not None and (code == 0 or -code in stops)


def settle(
    srv: Server, pf: process.PidFile, timeout: float, *, waiter: str | None = None
) -> process.PidFile:
    """A start of a server that already runs: one shutting down is not running for
    long (exit 3, says what to do); one still starting (crash recovery) is waited for,
    up to ``timeout``, and never killed: this call did not start it. ``waiter``: the
    command that waits for it before its work, when it is not a start (see
    :func:`stopwait.starting`).

    :raises ServerStopping: it is shutting down.
    :raises WorkerError: it exited, or was still starting after ``timeout``.
    """
    if pf.phase == "stopping":
        raise ServerStopping(srv.inst.name, pf.pid)
    if pf.phase != "starting" or timeout <= 0:  # (no status line yet: just spawned)
        return pf
    try:
        offset = launch.open_log_offset(srv.log_file)
        with stopwait.starting(srv, pf.pid, timeout, waiter=waiter) as left:
            return launch.wait_ready(
                pf.pid, srv.datadir, left, log_file=srv.log_file, log_offset=offset
            )
    except ServerExited:
        if srv.ended_by is not None:  # a 'pgmgr stop' run meanwhile stopped it
            raise StoppedWhileStarting(srv.inst.name, srv.ended_by) from None
        raise
    except WorkerError:
        raise WorkerError(
            f"'{srv.inst.name}' (pid {pf.pid}) is still starting after {timeout:g} s "
            "(crash recovery, or a standby catching up); it was left running",
            hint=f"see 'pgmgr logs {srv.inst.name}', and start again with a longer "
            "--timeout to wait for it",
        ) from None


def choose_port(srv: Server, host: str, port: int | str | None, plan: _Plan) -> int:
    """The port to start on: a free one for ``auto``, else the one given or recorded
    (5432 when none), checked (:func:`listen.check_port`)."""
    if port == "auto":
        return listen.free_port(host or "127.0.0.1")
    if port is None:
        port = srv.inst.port if srv.inst.port is not None else 5432
    try:
        number = int(port)
    except (TypeError, ValueError):
        raise UsageError(f"invalid port {port!r}: a number from 1 to 65535, or 'auto'") from None
    listen.check_port(host, number, plan.su, plan.install.bindir / "postgres")
    return number


def commit_start(
    srv: Server,
    su: privileges.ServerUser | None,
    settings: dict[str, str],
    pf: process.PidFile | None,
) -> None:
    srv.inst.server_user = su.name if su is not None else None
    srv.inst.settings = settings
    srv.inst.log_file = str(srv.log_file)
    assert srv.child is not None
    srv.inst.pid = pf.pid if pf else srv.child.pid
    srv.inst.started_at = float(pf.start_time) if pf and pf.start_time else time.time()
    srv.inst.stopped_by = None  # started: whatever stopped it is over (pgmgr.core.stopmark)
    srv.save()
    if pf is not None:  # ready: a failure from now on is not its start's
        srv.marked = None


def commit_stopped(srv: Server, su: privileges.ServerUser | None, settings: dict[str, str]) -> None:
    """A start that a 'pgmgr stop' ended (:class:`StoppedWhileStarting`) did not fail: its
    server ran with what it was asked for and was stopped on purpose, as by a start then
    a stop. The record keeps the port (chosen, for ``--port auto``), host and settings
    (the record a 'start --init' saved before it spawned had no port: the next start took
    5432, without the ``-c`` settings), with no pid. A record that cannot be saved leaves
    the stop as it was (:func:`pgmgr.core.shutdown.save_after_stop`)."""
    srv.inst.server_user = su.name if su is not None else None
    srv.inst.settings = settings
    srv.inst.log_file = str(srv.log_file)
    srv.inst.pid = None
    with contextlib.suppress(OSError):
        srv.save()


def record_running(srv: Server, pf: process.PidFile) -> None:
    """Adopt what a running server really uses (its postmaster.pid) into the record: a
    start whose pgmgr was killed before it could save leaves the record behind."""
    before = (srv.inst.pid, srv.inst.port, srv.inst.socket_dir, srv.inst.stopped_by)
    srv._adopt(pf)
    srv.inst.stopped_by = None  # running: a mark of pgmgr.core.stopmark is over
    if (srv.inst.pid, srv.inst.port, srv.inst.socket_dir, srv.inst.stopped_by) != before:
        srv.save()
    srv.marked = None
