"""``pgmgr status``: one instance (exit code as pg_ctl status) or all of them."""

from __future__ import annotations

from typing import Annotated

import typer

from pgmgr import statusview, ui
from pgmgr.commands import _common as c

COLUMNS = statusview.COLUMNS


def status(
    name: c.Name = None,
    datadir: c.DataDir = None,
    json: c.Json = False,
    check: Annotated[
        bool, typer.Option("--check", help="Also connect, and report the latency.")
    ] = False,
) -> None:
    """Show whether instances are running.

    Exit code for one instance: 0 running, 3 not running, 4 no such instance or data dir.

    Example: pgmgr status --json
    """
    # 'pgmgr status [--json]' usually never gets here: pgmgr.entry serves it without Typer,
    # from the same functions.
    if name or datadir:
        rec, code = statusview.record_of(c.resolve(name, datadir), check)
        if json:
            ui.emit_json(rec)
        else:
            statusview.table([rec])
        raise typer.Exit(code)
    statusview.show_all(json, check)
