"""``pgmgr start``: start an instance (initializing it first with --init)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pgmgr import ui
from pgmgr.commands import _common as c

if TYPE_CHECKING:
    from pgmgr.core.instance import Server


def start(
    name: c.Name = None,
    datadir: c.DataDir = None,
    init: Annotated[
        bool, typer.Option("-i", "--init", help="Initialize the data directory if needed.")
    ] = False,
    host: Annotated[
        str | None,
        typer.Option(
            "-H", "--host", help="Address to listen on (default 127.0.0.1).", show_default=False
        ),
    ] = None,
    port: Annotated[
        str | None,
        typer.Option(
            "-p",
            "--port",
            help="Port number, or 'auto' for a free one (default: the last one, else 5432).",
            show_default=False,
        ),
    ] = None,
    version: c.Version = None,
    setting: Annotated[
        list[str] | None,
        typer.Option(
            "-c", "--setting", help="Server setting name=value (repeatable).", show_default=False
        ),
    ] = None,
    timeout: c.Timeout = 30.0,
    user: c.User = None,
    socket_dir: Annotated[
        Path | None,
        typer.Option("--socket-dir", help="Directory for the unix socket.", show_default=False),
    ] = None,
    name_opt: Annotated[
        str | None,
        typer.Option("--name", help="Name for a new instance (with --init).", show_default=False),
    ] = None,
    foreground: Annotated[
        bool, typer.Option("--foreground", help="Stay attached; Ctrl-C stops the server.")
    ] = False,
    no_template: c.NoTemplate = False,
    json: c.Json = False,
    quiet: c.Quiet = False,
) -> None:
    """Start a PostgreSQL instance and wait until it accepts connections.

    Example: pgmgr start -d ./data --init --port auto
    """
    c.quiet(quiet, json)
    from pgmgr.core import registry, server
    from pgmgr.core.errors import UsageError
    from pgmgr.core.instance import Server

    settings = dict(server.parse_setting(s) for s in setting or [])
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
        srv = c.resolve(name, datadir)
    with registry.lock(srv.datadir):
        if init:
            _initialize(srv, user, template=not no_template)
        label = c.version_label(srv.inst.version)
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
    if json:
        ui.emit_json(
            {
                **c.status_record(st, srv),
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
        raise typer.Exit(_attend(srv, stop_requested))


def _initialize(srv: Server, user: str | None, *, template: bool = True) -> None:
    from pgmgr.core import server

    if server.is_datadir(srv.datadir):
        srv.save()
        return
    with ui.spinner(f"Initializing {c.version_label(srv.inst.version)} in {srv.datadir} …"):
        t0 = time.monotonic()
        srv.initialize(server.InitOptions(), user=user, template=template)
    ui.message(f"Initialized {srv.datadir} in {ui.ms(time.monotonic() - t0)}")


def _catch_stop_signals() -> list[int]:
    """From now on SIGINT/SIGTERM only append to the returned list."""
    import signal

    caught: list[int] = []

    def _stop(signum: int, frame: object) -> None:
        caught.append(signum)

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    return caught


def _attend(srv: Server, stop_requested: list[int]) -> int:
    """Stay attached until the server exits; SIGINT/SIGTERM stop it cleanly (fast mode)."""
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
