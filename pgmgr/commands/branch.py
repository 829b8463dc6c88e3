"""``pgmgr branch``: a new, independent instance from another one's state or snapshot."""

from __future__ import annotations

from typing import Annotated

import typer

from pgmgr.commands import _common as c
from pgmgr.commands.snapshot import RequiredName


def branch(
    name: RequiredName,
    new: Annotated[str, typer.Argument(help="Name of the new instance.", show_default=False)],
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Branch from this snapshot (default: the current state).",
            show_default=False,
        ),
    ] = None,
    datadir: c.NewDataDir = None,
    port: c.NewPort = None,
    start: Annotated[
        bool, typer.Option("--start", help="Start it even if NAME is not running.")
    ] = False,
    json: c.Json = False,
    quiet: c.Quiet = False,
) -> None:
    """Make a new, independent instance from NAME's current state (a running NAME is
    stopped for the copy) or from one of its snapshots: own name, data directory, port,
    socket and password. Started when NAME runs, or with --start. Its data directory
    is -d DIR, else NEW beside NAME's.

    Example: pgmgr branch dev feature-x --from before-migration
    """
    from pgmgr import snapactions

    code = snapactions.branch(
        name, new, from_=from_, datadir=datadir, port=port, start=start, json=json, quiet=quiet
    )
    if code:
        raise typer.Exit(code)
