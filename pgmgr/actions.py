"""What ``pgmgr start`` and ``pgmgr stop`` do, without Typer.

The Typer commands (:mod:`pgmgr.commands.start`, :mod:`pgmgr.commands.stop`) parse the
command line and call these; so does the fast path in :mod:`pgmgr.entry` for the plain forms
(``pgmgr start -d DIR``, ``pgmgr stop NAME``), which skips importing Typer (~40 ms). Each
function returns the exit code and raises :class:`~pgmgr.core.errors.PgmgrError` on failure.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgmgr import ui
from pgmgr.statusview import status_record

if TYPE_CHECKING:
    from pgmgr.core.instance import Server


def resolve(name: str | None, datadir: Path | None) -> Server:
    """The instance named on the command line: a NAME, ``-d DIR``, ``$PGDATA``, or the only
    instance there is.

    :raises UsageError: both or neither given and nothing to default to.
    :raises InstanceNotFound: no such instance or data directory.
    """
    from pgmgr.core import registry
    from pgmgr.core.errors import UsageError
    from pgmgr.core.instance import Server

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
    socket_dir: Path | None = None,
    name_opt: str | None = None,
    foreground: bool = False,
    no_template: bool = False,
    json: bool = False,
    quiet: bool = False,
) -> int:
    """``pgmgr start``: see its ``--help``."""
    ui.settings.quiet = quiet
    from pgmgr.core import registry, server
    from pgmgr.core.errors import UsageError
    from pgmgr.core.instance import Server

    settings = dict(server.parse_setting(s) for s in setting or [])
    if socket_dir is not None:
        server.check_socket_dir_text(socket_dir)  # before anything is made
    if port is not None and port != "auto":
        try:
            number = int(port)
        except ValueError:
            raise UsageError(
                f"invalid --port {port!r}: a number from 1 to 65535, or 'auto'"
            ) from None
        if not 1 <= number <= 65535:
            raise UsageError(f"invalid --port {port!r}: a number from 1 to 65535, or 'auto'")
    # Catch Ctrl-C / SIGTERM before the server exists: one arriving while it starts must
    # still stop it cleanly, not leave it running behind a dead pgmgr.
    stop_requested = _catch_stop_signals() if foreground else None
    t0 = time.monotonic()
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
    from pgmgr.core import initstart

    with registry.lock(srv.datadir), initstart.undo_on_failure(srv, enabled=init):
        if init:
            initstart.precheck(srv, host=host, port=port, settings=settings, user=user)
            _initialize(srv, user, template=not no_template)
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
    if json:
        ui.emit_json(
            {
                **status_record(st, srv),
                "already_running": result.already_running,
                "elapsed_ms": round(elapsed * 1000, 1),
            }
        )
    elif result.already_running:
        ui.message(f"'{srv.inst.name}' is already running (pid {result.pid}): {st.url}")
    else:
        ui.message(
            f"Started '{srv.inst.name}' ({label}, pid {result.pid}) in {ui.ms(elapsed)}: {st.url}"
        )
    if foreground:
        assert stop_requested is not None
        return _attend(srv, stop_requested)
    return 0


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
    the returned list: each stops the server cleanly, none leaves it running."""
    import signal

    caught: list[int] = []

    def _stop(signum: int, frame: object) -> None:
        caught.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, _stop)
    return caught


def _attend(srv: Server, stop_requested: list[int]) -> int:
    """Stay attached until the server exits; SIGINT/SIGTERM/SIGHUP/SIGQUIT stop it cleanly
    (fast mode)."""
    from pgmgr.core.errors import WorkerError

    ui.message("Running in the foreground; press Ctrl-C to stop")
    while not stop_requested:
        if srv.running() is None:
            ui.error(f"'{srv.inst.name}' exited on its own; see 'pgmgr logs {srv.inst.name}'")
            return 1
        time.sleep(0.2)
    ui.message(f"Stopping '{srv.inst.name}' …")
    try:
        srv.stop("fast", timeout=60)
    except WorkerError as e:
        ui.error(str(e), e.hint)
        return 1
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
    from pgmgr.core.errors import UsageError
    from pgmgr.core.instance import DataDirNotFound, Server, _why_missing
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
    for srv in servers:
        t0 = time.monotonic()
        with registry.lock(srv.datadir):
            pf = srv.running()
            with ui.spinner(f"Stopping '{srv.inst.name}' ({mode}) …"):
                stopped = srv.stop(mode, timeout)
        elapsed = time.monotonic() - t0
        results.append(
            {
                "name": srv.inst.name,
                "datadir": srv.inst.datadir,
                "stopped": stopped,
                "pid": pf.pid if pf else None,
                "elapsed_ms": round(elapsed * 1000, 1),
                "record_error": srv.record_error,
            }
        )
        if srv.record_error:
            ui.message(f"Warning: could not update the record of '{srv.inst.name}': "
                       f"{srv.record_error}")  # fmt: skip
        missing = not stopped and srv.status().state == "missing"
        if missing and not all_:
            raise DataDirNotFound(srv.datadir, _why_missing(srv.datadir))  # exit 4
        if stopped:
            ui.message(f"Stopped '{srv.inst.name}' in {ui.ms(elapsed)}")
        elif missing:
            ui.message(f"'{srv.inst.name}': data directory {_why_missing(srv.datadir)}")
        else:
            ui.message(f"'{srv.inst.name}' is not running")
    if json:
        ui.emit_json(results if all_ else results[0])
    return 0
