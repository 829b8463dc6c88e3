"""``pgmgr stop``: stop one instance, or all of them."""

from __future__ import annotations

from typing import Annotated

import typer

from pgmgr import actions
from pgmgr.commands import _common as c

Mode = Annotated[
    str,
    typer.Option(
        "-m", "--mode", help="smart (wait for clients), fast (disconnect them), or immediate."
    ),
]


def stop(
    name: c.Name = None,
    datadir: c.DataDir = None,
    all_: Annotated[bool, typer.Option("--all", help="Stop every known instance.")] = False,
    mode: Mode = "fast",
    timeout: c.Timeout = 60.0,
    json: c.Json = False,
    quiet: c.Quiet = False,
) -> None:
    """Stop a PostgreSQL instance (a stopped one is left alone).

    Example: pgmgr stop -d ./data -m smart --timeout 30
    """
    code = actions.stop(
        name, datadir, all_=all_, mode=mode, timeout=timeout, json=json, quiet=quiet
    )
    if code:
        raise typer.Exit(code)
