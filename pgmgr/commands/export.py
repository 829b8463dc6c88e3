"""``pgmgr export NAME DIR``: a portable bundle of an instance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pgmgr import ui
from pgmgr.commands import _common as c


def export(
    name: Annotated[
        str,
        typer.Argument(
            help="Instance name (or a data directory path).",
            autocompletion=c.complete_names,
            show_default=False,
        ),
    ],
    dest: Annotated[
        Path,
        typer.Argument(
            help="The bundle directory to create.", show_default=False, click_type=c.PATH
        ),
    ],
    with_passwords: Annotated[
        bool,
        typer.Option("--with-passwords", help="Keep the roles' password hashes in the bundle."),
    ] = False,
    json: c.Json = False,
    quiet: c.Quiet = False,
) -> None:
    """Write a bundle: globals (pg_dumpall --globals-only), each database (pg_dump
    directory format) and manifest.json. The instance must be running.

    Example: pgmgr export web ./web-bundle
    """
    c.quiet(quiet, json)
    from pgmgr.core import bundle

    srv = c.resolve(name, None)
    with ui.spinner(f"Exporting '{srv.inst.name}' …"):
        res = bundle.export(srv, dest, with_passwords=with_passwords)
    if json:
        ui.emit_json(
            {
                "path": str(res.path),
                "databases": res.databases,
                "bytes": res.bytes,
                "elapsed_ms": round(res.elapsed * 1000, 1),
            }
        )
        return
    ui.message(
        f"Exported '{srv.inst.name}' ({len(res.databases)} database(s), "
        f"{res.bytes / 1e6:.1f} MB) to {res.path} in {ui.ms(res.elapsed)}"
    )
