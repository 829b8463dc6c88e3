"""``pgmgr branch``: a new, independent instance from another one's state or snapshot."""

from __future__ import annotations

from typing import Annotated

import typer

from pgmgr import ui
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
    c.quiet(quiet, json)
    from pgmgr.core import branch as branches
    from pgmgr.core import sigguard
    from pgmgr.core.errors import UsageError
    from pgmgr.core.locked import locked

    if port is not None and port != "auto" and not (port.isdigit() and 0 < int(port) < 65536):
        raise UsageError(f"invalid --port {port!r}: a number from 1 to 65535, or 'auto'")
    srv = c.resolve(name, None)
    with (
        sigguard.interruptible(),
        locked(srv),
        ui.spinner(f"Branching '{srv.inst.name}' into '{new}':") as step,
    ):
        result = branches.branch(
            srv, new, snap=from_, datadir=datadir,
            port=int(port) if port and port != "auto" else port, start=start, progress=step,
        )  # fmt: skip
    if json:
        ui.emit_json(result.to_dict())
        return
    origin = f"snapshot {result.snapshot!r} of " if result.snapshot else ""
    down = ""
    if result.source_downtime is not None:
        down = f"; '{result.source}' was stopped for {ui.ms(result.source_downtime)}"
    ui.message(
        f"Branched '{result.name}' from {origin}'{result.source}' in {ui.ms(result.elapsed)} "
        f"({ui.size(result.size)}, {result.method}{down}): {result.datadir}"
    )
    if result.started:
        ui.message(f"Started '{result.name}': {result.url}")
    else:
        ui.message(f"Start it with 'pgmgr start {result.name}' (port {result.port})")
