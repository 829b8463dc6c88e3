"""``pgmgr psql``: the instance's own psql, connected to it."""

from __future__ import annotations

from typing import Annotated

import typer

from pgmgr.commands import _common as c


def psql(
    name: c.Name = None,
    args: Annotated[
        list[str] | None,
        typer.Argument(help="psql arguments, after '--'.", show_default=False),
    ] = None,
    datadir: c.DataDir = None,
) -> None:
    """Run the matching version's psql against the instance (its exit code passes through).

    Example: pgmgr psql dev -- -c 'select version()'
    """
    from pgmgr.core import ops

    extra = list(args or [])
    if extra[:1] == ["--"]:  # 'pgmgr psql NAME -- ARGS': the parser keeps this '--'
        extra.pop(0)
    if name is not None and name.startswith("-"):  # 'pgmgr psql -- -c ...': no NAME given
        extra.insert(0, name)
        name = None
    srv = c.resolve(name, datadir)
    ops.exec_psql(srv, extra)
