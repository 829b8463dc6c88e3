"""``pgmgr start``: start an instance (initializing it first with --init)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pgmgr import actions
from pgmgr.commands import _common as c


def start(
    name: c.Name = None,
    datadir: c.DataDir = None,
    init: Annotated[
        bool, typer.Option("-i", "--init", help="Initialize the data directory if needed.")
    ] = False,
    host: Annotated[
        str | None,
        typer.Option(
            "-H",
            "--host",
            help="Loopback address(es) to listen on (default 127.0.0.1; '': socket only).",
            show_default=False,
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
    setting: c.Setting = None,
    timeout: c.Timeout = 30.0,
    user: c.User = None,
    log_file: c.LogFile = None,
    socket_dir: Annotated[
        Path | None,
        typer.Option(
            "--socket-dir",
            help="Directory for the unix socket.",
            show_default=False,
            click_type=c.PATH,
        ),
    ] = None,
    name_opt: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Name for a new instance (with --init).",
            show_default=False,
            callback=c.given_name,
        ),
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
    code = actions.start(
        name,
        datadir,
        init=init,
        host=host,
        port=port,
        version=version,
        setting=setting,
        timeout=timeout,
        user=user,
        log_file=log_file,
        socket_dir=socket_dir,
        name_opt=name_opt,
        foreground=foreground,
        no_template=no_template,
        json=json,
        quiet=quiet,
    )
    if code:
        raise typer.Exit(code)
