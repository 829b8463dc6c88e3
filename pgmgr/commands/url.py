"""``pgmgr url``: a postgresql:// URI for an instance."""

from __future__ import annotations

from typing import Annotated

import typer

from pgmgr import ui
from pgmgr.commands import _common as c


def url(
    name: c.Name = None,
    datadir: c.DataDir = None,
    tcp: Annotated[bool, typer.Option("--tcp", help="Over TCP, with the password.")] = False,
    socket: Annotated[
        bool, typer.Option("--socket", help="Over the unix socket (default).")
    ] = False,
) -> None:
    """Print a postgresql:// URI that psql and psycopg accept as is.

    Example: psql "$(pgmgr url dev --tcp)"
    """
    from pgmgr.core import ops
    from pgmgr.core.errors import UsageError

    if tcp and socket:
        raise UsageError("give --tcp or --socket, not both")
    srv = c.resolve(name, datadir)
    ui.emit(ops.url(srv, tcp=tcp))
