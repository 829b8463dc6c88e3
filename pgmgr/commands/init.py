"""``pgmgr init``: initialize a data directory and register it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from pgmgr import ui
from pgmgr.commands import _common as c

Auth = Annotated[
    str,
    typer.Option(
        "--auth",
        help="TCP authentication: scram-sha-256, md5 or password (a generated password), or trust.",
        show_default=True,
    ),
]


def init(
    datadir: Annotated[
        Path, typer.Option("-d", "--datadir", help="Data directory to create.", click_type=c.PATH)
    ],
    initdb_args: Annotated[
        list[str] | None,
        typer.Argument(help="Extra initdb arguments, after '--'.", show_default=False),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name", help="Instance name (default: the dir's name).", callback=c.given_name
        ),
    ] = None,
    version: c.Version = None,
    superuser: Annotated[str, typer.Option("--superuser", help="Database superuser.")] = "postgres",
    auth: Auth = "scram-sha-256",
    encoding: Annotated[str, typer.Option("--encoding", help="Database encoding.")] = "UTF8",
    locale: Annotated[str, typer.Option("--locale", help="Locale (C is fastest).")] = "C",
    user: c.User = None,
    log_file: c.LogFile = None,
    no_template: c.NoTemplate = False,
    json: c.Json = False,
    quiet: c.Quiet = False,
) -> None:
    """Initialize a data directory and register it as an instance.

    An existing data directory is registered, not re-initialized; a non-empty directory that
    is not a data directory is refused.

    Example: pgmgr init -d ./data --name dev -- --data-checksums
    """
    c.quiet(quiet, json)
    from pgmgr.core.errors import UsageError
    from pgmgr.core.instance import Server
    from pgmgr.core.locked import locked
    from pgmgr.core.server import AUTH_METHODS, InitOptions

    extra = list(initdb_args or [])
    if extra and not extra[0].startswith("-"):
        raise UsageError(f"unexpected argument {extra[0]!r}: initdb options go after '--'")
    if auth not in AUTH_METHODS:
        raise UsageError(f"invalid --auth {auth!r}: use {', '.join(AUTH_METHODS)}")
    t0 = time.monotonic()
    srv = Server.for_datadir(datadir, name=name, version=version)
    if log_file is not None:
        from pgmgr.core import logfile

        srv.inst.log_file = str(logfile.check_path(log_file))
    opts = InitOptions(
        superuser=superuser, auth=auth, encoding=encoding, locale=locale, extra=tuple(extra)
    )
    known = not srv.new  # registered before: init only says so
    with locked(srv):
        label = c.version_label(srv.inst.version)
        with ui.spinner(f"Initializing {label} in {srv.datadir} …"):
            created = srv.initialize(opts, user=user, template=not no_template)
    known = known or srv.adopted  # found registered under another spelling of its path
    elapsed = time.monotonic() - t0
    if json:
        rec = srv.inst.to_dict()
        for secret in ("password", "repl_password"):  # the record keeps them, mode 0600
            rec.pop(secret, None)
        ui.emit_json({"initialized": created, "elapsed_ms": round(elapsed * 1000, 1), **rec})
    elif created:
        ui.message(f"Initialized '{srv.inst.name}' ({label}) in {ui.ms(elapsed)}: {srv.datadir}")
    elif known:
        ui.message(f"{srv.datadir} is already registered as '{srv.inst.name}'; nothing changed")
        if name and name != srv.inst.name:
            ui.warning(
                f"not applied: --name {name} ({srv.datadir} stays '{srv.inst.name}')",
                "--name only names a new instance; one data directory has one record",
            )
    else:
        ui.message(f"'{srv.inst.name}' is already a data directory ({srv.datadir}); registered")
    for note in srv.notes:
        ui.message(note)
