"""What ``pgmgr start`` and ``pgmgr stop`` do, without Typer.

The Typer commands (:mod:`pgmgr.commands.start`, :mod:`pgmgr.commands.stop`) parse the
command line and call these; so does the fast path in :mod:`pgmgr.entry` for the plain forms
(``pgmgr start -d DIR``, ``pgmgr stop NAME``), which skips importing Typer (~40 ms). Each
function returns the exit code and raises :class:`~pgmgr.core.errors.PgmgrError` on failure.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from pgmgr import ui
from pgmgr.statusview import status_record

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from typing import Any

    from pgmgr.core.instance import Server
    from pgmgr.core.logfile import Tail
    from pgmgr.core.stopwait import Note


def resolve(name: str | None, datadir: Path | None) -> Server:
    """The instance named on the command line: a NAME, ``-d DIR``, ``$PGDATA``, or the only
    instance there is.

    :raises UsageError: both or neither given and nothing to default to.
    :raises InstanceNotFound: no such instance or data directory.
    """
    from pgmgr.core import registry
    from pgmgr.core.errors import UsageError
    from pgmgr.core.instance import Server

    if name == "":  # not "no name": an unset variable must not mean the only instance
        raise UsageError("an empty instance name (an unset variable?)")
    if name and datadir:
        raise UsageError("give an instance NAME or -d DIR, not both")
    if datadir is not None:
        return Server.load(str(datadir) if "/" in str(datadir) else f"./{datadir}")
    if name:
        return Server.load(name)
    pgdata = os.environ.get("PGDATA")
    if pgdata:
        return Server.load(pgdata if "/" in pgdata else f"./{pgdata}")
    known = registry.names()
    if len(known) == 1:
        return Server.load(known[0])
    if not known:
        raise UsageError(
            "no instance given and none registered", hint="try 'pgmgr start -d ./data --init'"
        )
    raise UsageError("no instance given: name one of " + ", ".join(known), hint="or use -d DIR")


def version_label(version: str) -> str:
    return f"PostgreSQL {version}"


def start(
    name: str | None = None,
    datadir: Path | None = None,
    *,
    init: bool = False,
    host: str | None = None,
    port: str | None = None,
    version: str | None = None,
    setting: list[str] | None = None,
    timeout: float = 30.0,
    user: str | None = None,
    log_file: Path | None = None,
    socket_dir: Path | None = None,
    name_opt: str | None = None,
    foreground: bool = False,
    no_template: bool = False,
    json: bool = False,
    quiet: bool = False,
) -> int:
    """``pgmgr start``: see its ``--help``."""
    ui.settings.quiet = quiet
    from pgmgr.core import listen, server
    from pgmgr.core.errors import UsageError
    from pgmgr.core.instance import Server

    settings = dict(server.parse_setting(s) for s in setting or [])
    if log_file is not None:
        from pgmgr.core import logfile

        log_file = logfile.check_path(log_file)
    if socket_dir is not None:
        server.check_socket_dir_text(socket_dir)  # before anything is made
    if host is not None:
        from pgmgr.core import loopback

        why = loopback.message(host)
        if why:  # before anything is made; postgres_argv would refuse it anyway
            raise UsageError(why)
    listen.check_port_option(port)
    # Catch Ctrl-C / SIGTERM before the server exists: one arriving while it starts must
    # still stop it cleanly, not leave it running behind a dead pgmgr.
    stop_requested = _catch_stop_signals() if foreground else None
    if init:
        if name and datadir is None and "/" in name:
            datadir, name = Path(name), None
        if datadir is None:
            raise UsageError("--init needs the data directory: -d DIR")
        if name:
            raise UsageError("give -d DIR, not a NAME, with --init (use --name to name it)")
        srv = Server.for_datadir(datadir, name=name_opt, version=version)
    elif name_opt:
        raise UsageError("--name names a new instance: use it with --init")
    else:
        srv = resolve(name, datadir)
    attendant: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if foreground:  # one attendant per data directory, for its whole life
        from pgmgr.core import attend

        attendant = attend.attending(srv)
    with attendant:
        return _start(
            srv, init=init, host=host, port=port, version=version, settings=settings,
            timeout=timeout, user=user, log_file=log_file, socket_dir=socket_dir,
            name_opt=name_opt, no_template=no_template, json=json,
            stop_requested=stop_requested,
        )  # fmt: skip


def _start(
    srv: Server, *, init: bool, host: str | None, port: str | None, version: str | None,
    settings: dict[str, str], timeout: float, user: str | None, log_file: Path | None,
    socket_dir: Path | None, name_opt: str | None, no_template: bool, json: bool,
    stop_requested: list[int] | None,
) -> int:  # fmt: skip
    """:func:`start` once its options are checked and its instance resolved."""
    from pgmgr.core import initstart, sigguard, storesweep
    from pgmgr.core.locked import locked

    # SIGTERM and SIGHUP (a CI timeout, a closed terminal) cancel a start as Ctrl-C does:
    # they ended pgmgr at once, and a server it had spawned ran on, unrecorded. (In the
    # foreground they ask for a stop instead: see _catch_stop_signals.)
    signals = sigguard.interruptible() if stop_requested is None else contextlib.nullcontext()
    with signals, locked(srv), initstart.undo_on_failure(srv, enabled=init):
        storesweep.temp_dirs(srv)  # as root: what killed runs left for its server user
        if log_file is not None and srv.running() is None:  # a running one keeps its log
            srv.inst.log_file = str(log_file)
        if init:
            initstart.precheck(srv, host=host, port=port, settings=settings, user=user)
            _initialize(srv, user, template=not no_template)
        t0 = time.monotonic()  # the start alone: the init reported its own time
        label = version_label(srv.inst.version)
        shown_port = "a free port" if port == "auto" else (port or srv.inst.port or 5432)
        where = f"{host if host is not None else srv.inst.host}:{shown_port}"
        with ui.spinner(f"Starting {label} on {where} …"):
            result = srv.start(
                host=host,
                port=port,
                settings=settings,
                socket_dir=str(socket_dir) if socket_dir else None,
                user=user,
                version=version,
                timeout=timeout,
            )
    elapsed = time.monotonic() - t0
    st = srv.status()
    for note in srv.notes:
        ui.message(note)
    ignored = not_applied(srv, host, port, settings, socket_dir, name_opt, log_file)
    if not result.already_running:  # all applied, but a --name an existing instance refused
        ignored = [(o, v) for o, v in ignored if o == "--name"]
    if json:
        ui.emit_json(
            {
                **status_record(st, srv),
                "already_running": result.already_running,
                "not_applied": [{"option": o, "value": v} for o, v in ignored],
                "elapsed_ms": round(elapsed * 1000, 1),
            }
        )
    elif result.already_running:
        ui.message(f"'{srv.inst.name}' is already running (pid {result.pid}): {st.url}")
    else:
        label = version_label(srv.inst.version)  # the binaries the start chose (PG_VERSION)
        ui.message(
            f"Started '{srv.inst.name}' ({label}, pid {result.pid}) in {ui.ms(elapsed)}: {st.url}"
        )
    if not json and st.state == "running":
        note_closed_standby(srv)
    if ignored:
        _warn_not_applied(srv.inst.name, ignored)
    if stop_requested is not None:  # --foreground
        from pgmgr.core import logfile

        # The server's log from this start on (or from now, for one already running).
        since = srv.log_offset if not result.already_running else None
        tail = logfile.Tail(srv.log_file, since if since is not None else _size(srv.log_file))
        return _attend(srv, stop_requested, tail)
    return 0


def note_closed_standby(srv: Server) -> None:
    """After a start: say so if the server is a standby that accepts no connections (its
    URL, just printed, would fail)."""
    from pgmgr.core import roles

    if roles.is_standby(srv) and roles.refuses_connections(srv.datadir):
        ui.message(
            f"Note: '{srv.inst.name}' is a standby with hot_standby = off: it accepts no "
            f"connections (pgmgr config {srv.inst.name} unset hot_standby --restart)"
        )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def not_applied(
    srv: Server,
    host: str | None,
    port: str | None,
    settings: dict[str, str],
    socket_dir: Path | None,
    name_opt: str | None,
    log_file: Path | None = None,
) -> list[tuple[str, str]]:
    """The options of a ``start`` that found the server running which it could not apply:
    ``(option, value)`` pairs, each differing from what the running server has. ``-p auto``
    asks for any free port, which the running one has."""
    inst = srv.inst
    out: list[tuple[str, str]] = []
    if port not in (None, "auto") and str(inst.port) != str(int(port)):
        out.append(("--port", str(port)))
    if host is not None and host != inst.host:
        out.append(("--host", host))
    if socket_dir is not None and os.path.abspath(socket_dir) != inst.socket_dir:
        out.append(("--socket-dir", str(socket_dir)))
    for key, value in settings.items():
        if inst.settings.get(key) != value:
            out.append(("-c", f"{key}={value}"))
    if log_file is not None and str(log_file) != str(srv.log_file):
        out.append(("--log-file", str(log_file)))
    if name_opt and name_opt != inst.name:
        out.append(("--name", name_opt))
    return out


def _warn_not_applied(name: str, ignored: list[tuple[str, str]]) -> None:
    """Say which options a start of a running server left unapplied, and how to apply them
    (a warning, not an error: the server the user wanted is running; exit code 0)."""
    import shlex

    words = [f"{o} {shlex.quote(v)}" for o, v in ignored]
    hints = []
    again = " ".join(w for (o, _), w in zip(ignored, words, strict=True) if o != "--name")
    if again:
        hints.append(
            f"to apply them, stop it and start it with them: 'pgmgr stop {name} && "
            f"pgmgr start {name} {again}' (-c settings are then kept for later starts)"
        )
    if any(o == "--name" for o, _ in ignored):
        hints.append(f"--name only names a new instance; this one stays '{name}'")
    ui.warning(f"'{name}' was already running; not applied: {', '.join(words)}", "; ".join(hints))


def _initialize(srv: Server, user: str | None, *, template: bool = True) -> None:
    from pgmgr.core import server

    if server.is_datadir(srv.datadir):
        srv.save()
        return
    with ui.spinner(f"Initializing {version_label(srv.inst.version)} in {srv.datadir} …"):
        t0 = time.monotonic()
        srv.initialize(server.InitOptions(), user=user, template=template)
    ui.message(f"Initialized {srv.datadir} in {ui.ms(time.monotonic() - t0)}")


def _catch_stop_signals() -> list[int]:
    """From now on SIGINT, SIGTERM, SIGHUP (the terminal closed) and SIGQUIT only append to
    the returned list: each stops the server cleanly, none leaves it running. One the
    process ignores stays ignored: under ``nohup`` a closed terminal stopped the server
    (and SIGINT in a job a script runs in the background)."""
    import signal

    caught: list[int] = []

    def _stop(signum: int, frame: object) -> None:
        caught.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _stop)
    return caught


def _attend(srv: Server, stop_requested: list[int], tail: Tail) -> int:
    """Stay attached until the server exits, copying its log to stderr as postgres itself
    would print it (``-q`` silences it); SIGINT/SIGTERM/SIGHUP/SIGQUIT stop it cleanly
    (fast mode).

    Under systemd (``Type=notify``) it says READY=1 here (the server accepts connections)
    and STOPPING=1 when it goes down. A pgmgr command that stops the server for its work
    (a snapshot...) is waited for, and so is one at work when a stop is asked for: see
    :mod:`pgmgr.core.attend`.
    """
    from pgmgr.core import attend
    from pgmgr.core.errors import InstanceNotFound, WorkerError
    from pgmgr.core.locked import locked
    from pgmgr.core.sdnotify import notify

    def pump() -> None:
        text = tail.read()
        if text and not ui.settings.quiet:
            ui.write("stderr", text)

    notify("READY=1")
    ui.message("Running in the foreground; press Ctrl-C to stop")
    while not stop_requested:
        pump()
        # Another pgmgr command may have stopped it for its work: see pgmgr.core.attend.
        gone = attend.server_gone(srv, stop_requested) if srv.running() is None else None
        if gone is not None:
            pump()
            notify("STOPPING=1")
            (ui.message if gone.code == 0 else ui.error)(gone.message)
            return gone.code
        time.sleep(0.1)
    pump()
    notify("STOPPING=1")
    ui.message(f"Stopping '{srv.inst.name}' …")
    try:
        with locked(srv, 60.0):  # the record as a restore or upgrade meanwhile left it
            srv.stop("fast", timeout=60)
    except WorkerError as e:
        pump()
        ui.error(str(e), e.hint)
        return 1
    except InstanceNotFound:  # destroyed (or forgotten) meanwhile: nothing left to stop
        pump()
        ui.message(attend.removed(srv).message)
        return 0
    pump()
    ui.message(f"Stopped '{srv.inst.name}'")
    return 0


def stop(
    name: str | None = None,
    datadir: Path | None = None,
    *,
    all_: bool = False,
    mode: str = "fast",
    timeout: float = 60.0,
    json: bool = False,
    quiet: bool = False,
) -> int:
    """``pgmgr stop``: see its ``--help``."""
    ui.settings.quiet = quiet
    from pgmgr.core import registry
    from pgmgr.core.errors import PgmgrError, UsageError
    from pgmgr.core.instance import Server
    from pgmgr.core.server import STOP_SIGNALS

    if mode not in STOP_SIGNALS:
        raise UsageError(f"invalid --mode {mode!r}: use smart, fast or immediate")
    if all_ and (name or datadir):
        raise UsageError("--all stops every instance: leave out NAME and -d")
    if all_:
        instances, broken = registry.load_all()
        servers = [Server(inst) for inst in instances]
        for err in broken:
            ui.message(f"'{err.path.stem}': skipped, {err} ('pgmgr forget {err.path.stem}')")
    else:
        servers = [resolve(name, datadir)]
    results: list[dict[str, Any]] = []
    failed = 0
    for srv in servers:
        try:
            results.append(_stop_one(srv, mode, timeout, all_))
        except PgmgrError as e:
            if not all_:
                raise
            # One that cannot be stopped (its data directory replaced, say): the others
            # still are (the first error ended the command: the rest kept running).
            failed += 1
            ui.warning(f"'{srv.inst.name}' was not stopped: {e}", e.hint)
            results.append({"name": srv.inst.name, "datadir": srv.inst.datadir,
                            "error": str(e)})  # fmt: skip
    if json:
        ui.emit_json(results if all_ else results[0])
    return 1 if failed else 0


def stop_how(ended_by: Note | None, took_over: Note | None) -> str:
    """How a stop ended, when another stop took part (see pgmgr.core.stopwait): the
    stronger one that ended it, or the weaker one it ended."""
    if ended_by is not None:
        by = ended_by
        again = ", which starts it again" if by.by_command == "restart" else ""
        return f" (ended by {by.ender()}, pgmgr pid {by.by}, run meanwhile{again})"
    if took_over is not None and took_over.mode == "start":
        return f" ({took_over.holder()} waited for it to be ready: this stop ended that wait)"
    if took_over is not None:
        return f" (it was being stopped by {took_over.holder()}: this stop ended it)"
    return ""


def _stop_one(srv: Server, mode: str, timeout: float, all_: bool) -> dict[str, Any]:
    """Stop ``srv`` for :func:`stop` and say so; what ``--json`` reports of it."""
    from pgmgr.core import stopmark, stopwait
    from pgmgr.core.instance import DataDirNotFound, _why_missing

    t0 = time.monotonic()
    with (
        ui.spinner(f"Stopping '{srv.inst.name}' ({mode}) …"),
        stopwait.locked(srv, mode, timeout) as took_over,  # a weaker stop's wait: ended
    ):
        pf = srv.running()
        stopped = srv.stop(mode, timeout)
        if stopmark.clear(srv.inst):  # stopped on purpose now: see pgmgr.core.stopmark
            srv._save_after_stop()
    elapsed = time.monotonic() - t0
    if took_over is not None and not stopped:  # the stop in progress saw it go
        stopped = True
        pf = pf or srv.running()
    missing = not stopped and srv.status().state == "missing"
    result = {
        "name": srv.inst.name,
        "datadir": srv.inst.datadir,
        # What happened: it ran and this command stopped it, or it was not running
        # (the state is what it is now: stopped, or missing with its data dir).
        "was_running": stopped,
        "state": "missing" if missing else "stopped",
        "pid": pf.pid if pf else took_over.postmaster if took_over else None,
        "elapsed_ms": round(elapsed * 1000, 1),
        "record_error": srv.record_error,
        # a stronger stop that ended this one's wait, or the weaker one this one ended
        "ended_by": srv.ended_by.to_dict() if srv.ended_by else None,
        "took_over": {"mode": took_over.mode, "pid": took_over.pid} if took_over else None,
    }
    if srv.record_error:
        ui.message(f"Warning: could not update the record of '{srv.inst.name}': "
                   f"{srv.record_error}")  # fmt: skip
    if missing and not all_:
        raise DataDirNotFound(srv.datadir, _why_missing(srv.datadir))  # exit 4
    if stopped:
        ui.message(
            f"Stopped '{srv.inst.name}' in {ui.ms(elapsed)}" + stop_how(srv.ended_by, took_over)
        )
    elif missing:
        ui.message(f"'{srv.inst.name}': data directory {_why_missing(srv.datadir)}")
    else:
        ui.message(f"'{srv.inst.name}' is not running")
    return result
