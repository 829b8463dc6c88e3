"""``pgmgr restore``: put an instance back to one of its snapshots."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from pgmgr import ui
from pgmgr.commands import _common as c
from pgmgr.commands.snapshot import RequiredName

if TYPE_CHECKING:
    from pgmgr.core.instance import Server


def restore(
    name: RequiredName,
    snap: Annotated[str, typer.Argument(help="Snapshot name.", show_default=False)],
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation.")] = False,
    save_current: Annotated[
        bool,
        typer.Option("--save-current", help="Snapshot the current state first (a timestamp)."),
    ] = False,
    json: c.Json = False,
    quiet: c.Quiet = False,
) -> None:
    """Put an instance back to a snapshot; the current state is lost (unless
    --save-current). A running instance runs again afterwards.

    Asks first unless --yes; without a terminal, --yes is required.

    Example: pgmgr restore dev before-migration --yes
    """
    from pgmgr import snapactions

    def confirm(srv: Server) -> None:
        from pgmgr.core.errors import UsageError

        if not c.on_terminal():
            raise UsageError(
                f"refusing to restore '{srv.inst.name}' without --yes (no terminal to ask on)"
            )
        snapactions.check_listed(srv, snap)
        lost = "kept as a new snapshot" if save_current else "lost"
        prompt = (
            f"Replace the data of '{srv.inst.name}' by snapshot {snap!r}? (current state: {lost})"
        )
        if not c.confirm(prompt):
            ui.message("Nothing changed")
            raise typer.Exit(1)

    code = snapactions.restore(
        name,
        snap,
        save_current=save_current,
        json=json,
        quiet=quiet,
        confirm=None if yes else confirm,
    )
    if code:
        raise typer.Exit(code)
