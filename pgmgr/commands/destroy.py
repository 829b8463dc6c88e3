"""``pgmgr destroy``: stop an instance and remove its data directory and record."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from pgmgr import ui
from pgmgr.commands import _common as c

RequiredName = Annotated[
    str,
    typer.Argument(
        help="Instance name (or a data directory path).",
        autocompletion=c.complete_names,
        show_default=False,
    ),
]


def destroy(
    name: RequiredName,
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation.")] = False,
    json: c.Json = False,
    quiet: c.Quiet = False,
) -> None:
    """Stop an instance, delete its data directory, and forget it. Cannot be undone.

    Asks first unless --yes; without a terminal, --yes is required.

    Example: pgmgr destroy scratch --yes
    """
    c.quiet(quiet, json)
    from pgmgr.core import ops, registry, replica, roles
    from pgmgr.core.errors import UsageError

    srv = c.resolve(name, None)
    ops.check_destroyable(srv)
    standbys = roles.standbys_of(srv)
    if standbys:
        ui.message(
            f"'{srv.inst.name}' is the primary of {', '.join(standbys)}: their replication "
            "slots go with it, and the standbys are left as they are (they keep their data "
            "and receive no more changes; 'pgmgr promote NAME' makes one a primary)"
        )
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(
                f"refusing to destroy '{srv.inst.name}' without --yes (no terminal to ask on)"
            )
        prompt = f"Delete '{srv.inst.name}' and all its data in {srv.datadir}?"
        if not typer.confirm(prompt, default=False, err=True):
            ui.message("Nothing removed")
            raise typer.Exit(1)
    with registry.lock(srv.datadir), ui.spinner(f"Destroying '{srv.inst.name}' …"):
        result = ops.destroy(srv)
    dropped, note = replica.release(srv) if srv.inst.primary else ([], None)
    if json:
        ui.emit_json(
            {
                "name": result.name,
                "datadir": result.datadir,
                "was_running": result.was_running,
                "removed_datadir": result.removed_datadir,
                "removed_record": result.removed_record,
            }
        )
    else:
        gone = "" if result.removed_datadir else " (its data directory was already gone)"
        ui.message(f"Destroyed '{result.name}'{gone}: {result.datadir}")
        if dropped:
            ui.message(f"Dropped on its primary: {', '.join(dropped)}")
    if note:
        ui.message("Note: " + note)
