"""``pgmgr status``: one instance (exit code as pg_ctl status) or all of them."""

from __future__ import annotations

from typing import Annotated

import typer

from pgmgr import statusview
from pgmgr.commands import _common as c


def status(
    name: c.Name = None,
    datadir: c.DataDir = None,
    json: c.Json = False,
    check: Annotated[
        bool, typer.Option("--check", help="Also connect, and report the latency.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("-q", "--quiet", help="Print nothing but errors: the exit code says.")
    ] = False,
) -> None:
    """Show whether instances are running.

    Exit code for one instance: 0 running, 3 not running, 4 no such instance or data dir.
    With -q only the exit code (and errors): pgmgr status dev -q || pgmgr start dev

    Example: pgmgr status --json
    """
    # The plain forms usually never get here: pgmgr.entry serves them without Typer,
    # through the same function.
    code = statusview.show(name, datadir, json, check, quiet)
    if code:
        raise typer.Exit(code)
