"""``pgmgr import DIR -d NEWDIR``: a new instance from a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pgmgr import ui
from pgmgr.commands import _common as c


def import_(
    bundle: Annotated[
        Path,
        typer.Argument(
            help="A bundle made by 'pgmgr export'.", show_default=False, click_type=c.PATH
        ),
    ],
    datadir: c.NewDataDir,  # required: no default
    version: c.Version = None,
    name: c.NewName = None,
    port: c.NewPort = None,
    auth: Annotated[
        str | None,
        typer.Option(
            "--auth",
            help="TCP authentication: scram-sha-256, md5, password or trust (default: the "
            "bundle's, but scram-sha-256 for its trust).",
            show_default=False,
        ),
    ] = None,
    json: c.Json = False,
    quiet: c.Quiet = False,
) -> None:
    """Create and start an instance from a bundle, on the bundle's major version or a
    newer one (-v 18). Nothing is created if the bundle is incomplete or damaged, or the
    target binaries lack an extension it uses. Its name is --name, else the data
    directory's name.

    Example: pgmgr import ./web-bundle -d ./web18 -v 18
    """
    c.quiet(quiet, json)
    from pgmgr.core import importer

    assert datadir is not None  # Typer refuses a missing -d

    with ui.spinner(f"Importing {bundle} …"):
        res = importer.import_bundle(
            bundle, datadir, version=version, name=name, port=port, auth=auth
        )
    srv = res.server
    if json:
        ui.emit_json(
            {
                **c.status_record(srv.status(), srv),
                "source_version": res.source_version,
                "databases": res.databases,
                "elapsed_ms": round(res.elapsed * 1000, 1),
                "dropped_settings": res.dropped_settings,
                "dropped_auth": res.dropped_auth,
            }
        )
        return
    ui.message(
        f"Imported {len(res.databases)} database(s) from PostgreSQL {res.source_version} into "
        f"'{srv.inst.name}' (PostgreSQL {srv.inst.version}) in {ui.ms(res.elapsed)}: "
        f"{srv.url()}"
    )
    if res.dropped_settings:
        ui.message(
            f"Note: not applied, from the bundle's settings: {', '.join(res.dropped_settings)} "
            "(pgmgr's own, naming files or commands of the machine it was made on, archiving "
            "with such a command, or giving up crash safety); set one with "
            f"'pgmgr config {srv.inst.name} set NAME=VALUE' if it holds here"
        )
    if res.dropped_auth:
        ui.message(
            f"Note: not applied, from the bundle: auth {res.dropped_auth} (TCP logins without "
            f"a password); '{srv.inst.name}' uses {srv.inst.auth} with its own password. To "
            f"let TCP in without one, import with '--auth {res.dropped_auth}'"
        )
