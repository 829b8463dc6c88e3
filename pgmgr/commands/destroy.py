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

NOTHING_TO_DESTROY = "nothing to destroy there; 'pgmgr status' lists the instances pgmgr knows"


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
    from pgmgr.core.instance import DataDirNotFound

    try:
        srv = c.resolve(name, None)
    except DataDirNotFound as e:  # not "create it with pgmgr init": nothing to destroy
        raise DataDirNotFound(e.datadir, e.why, hint=NOTHING_TO_DESTROY) from None
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
        try:
            answer = typer.confirm(prompt, default=False, err=True)
        except (typer.Abort, KeyboardInterrupt):
            sys.stderr.write("\n")  # end the prompt's line before "Interrupted"
            raise KeyboardInterrupt from None
        if not answer:
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
