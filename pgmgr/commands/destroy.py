"""``pgmgr destroy``: stop an instance and remove its data directory and record."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from pgmgr import ui
from pgmgr.commands import _common as c

if TYPE_CHECKING:
    from pgmgr.core.instance import Server

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
    with_snapshots: Annotated[
        bool,
        typer.Option("--with-snapshots", help="Also delete its snapshots (kept otherwise)."),
    ] = False,
    json: c.Json = False,
    quiet: c.Quiet = False,
) -> None:
    """Stop an instance, delete its data directory, and forget it. Cannot be undone.

    Asks first unless --yes; without a terminal, --yes is required. Its snapshots are
    kept (and said where) unless --with-snapshots.

    Example: pgmgr destroy scratch --yes
    """
    c.quiet(quiet, json)
    from pgmgr import destroyaction

    def confirm(srv: Server, snapshots: int) -> None:
        from pgmgr.core.errors import UsageError

        if not c.on_terminal():
            raise UsageError(
                f"refusing to destroy '{srv.inst.name}' without --yes (no terminal to ask on)"
            )
        prompt = f"Delete '{srv.inst.name}' and all its data in {srv.datadir}?"
        if snapshots:
            what = "and" if with_snapshots else "keeping"
            prompt = prompt[:-1] + f", {what} its {snapshots} snapshot(s)?"
        if not c.confirm(prompt):
            ui.message("Nothing removed")
            raise typer.Exit(1)

    destroyaction.destroy(
        name, with_snapshots=with_snapshots, json=json, confirm=None if yes else confirm
    )
