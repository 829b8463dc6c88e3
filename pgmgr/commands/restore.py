"""``pgmgr restore``: put an instance back to one of its snapshots."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from pgmgr import ui
from pgmgr.commands import _common as c
from pgmgr.commands.snapshot import RequiredName


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
    c.quiet(quiet, json)
    from pgmgr.core import sigguard
    from pgmgr.core import snapshot as snaps
    from pgmgr.core.errors import UsageError
    from pgmgr.core.locked import locked
    from pgmgr.core.snapstore import human

    srv = c.resolve(name, None)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(
                f"refusing to restore '{srv.inst.name}' without --yes (no terminal to ask on)"
            )
        lost = "kept as a new snapshot" if save_current else "lost"
        prompt = (
            f"Replace the data of '{srv.inst.name}' by snapshot {snap!r}? (current state: {lost})"
        )
        if not typer.confirm(prompt, default=False, err=True):
            ui.message("Nothing changed")
            raise typer.Exit(1)
    with (
        sigguard.interruptible(),
        locked(srv),
        ui.spinner(f"Restoring {snap!r} into '{srv.inst.name}' …"),
    ):
        result = snaps.restore(srv, snap, save_current="" if save_current else None)
    if json:
        ui.emit_json(result.to_dict())
        return
    parts = [f"copied {human(result.copied)}"]
    if result.kept:
        parts[0] += f", {result.kept} files unchanged"
    if result.downtime is not None:
        parts.append(f"downtime {ui.ms(result.downtime)}")
    if result.saved:
        parts.append(f"previous state saved as {result.saved!r}")
    if result.rolled_back_from:
        parts.append(f"rolled back from PostgreSQL {result.rolled_back_from}")
    extra = f" ({', '.join(parts)})"
    state = "running" if result.was_running else "stopped"
    ui.message(
        f"Restored '{result.instance}' to {result.snapshot!r} in {ui.ms(result.elapsed)}{extra}; "
        f"PostgreSQL {result.version}, {state}"
    )
