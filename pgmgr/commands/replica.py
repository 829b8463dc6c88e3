"""``pgmgr replica SRC``: a streaming standby of a running instance."""

from __future__ import annotations

from typing import Annotated

import typer

from pgmgr import ui
from pgmgr.commands import _common as c

Source = Annotated[
    str,
    typer.Argument(
        help="The primary: an instance name.", autocompletion=c.complete_names, show_default=False
    ),
]


def replica(
    src: Source,
    name: c.NewName = None,
    datadir: c.NewDataDir = None,
    port: c.NewPort = None,
    version: c.Version = None,
    timeout: c.Timeout = 120.0,
    json: c.Json = False,
    quiet: c.Quiet = False,
) -> None:
    """Create and start a streaming standby of SRC (pg_basebackup -R, a replication slot, a
    replication role allowed over loopback only). Its name is --name, else SRC-replica;
    its data directory -d DIR, else one of that name next to SRC's.

    Example: pgmgr replica web --name web-2 -p auto
    """
    c.quiet(quiet, json)
    from pgmgr.core import replica as core

    src_srv = c.resolve(src, None)
    with ui.spinner(f"Cloning '{src_srv.inst.name}' …"):
        rep = core.create(
            src_srv, name=name, datadir=datadir, port=port, version=version, timeout=timeout
        )
    rec = c.status_record(rep.status(), rep)
    if json:
        ui.emit_json(rec)
    else:
        ui.message(
            f"Started '{rep.inst.name}', a standby of '{src_srv.inst.name}' "
            f"(slot {rep.inst.slot}): {rec['url']}"
        )
