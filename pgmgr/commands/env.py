"""``pgmgr env``: shell exports that point libpq tools at an instance."""

from __future__ import annotations

from typing import Annotated

import typer

from pgmgr import ui
from pgmgr.commands import _common as c

Tcp = Annotated[bool, typer.Option("--tcp", help="Connect over TCP (with a PGPASSFILE).")]


def env(
    name: c.Name = None,
    datadir: c.DataDir = None,
    shell: Annotated[
        str, typer.Option("--shell", help="Output syntax: sh, bash, zsh (all as sh) or fish.")
    ] = "sh",
    tcp: Tcp = False,
    json: c.Json = False,
) -> None:
    """Print PGHOST, PGPORT, PGUSER, PGDATABASE and PGDATA exports for eval.

    A PGSERVICE, PGHOSTADDR or PGPASSWORD in the environment is unset first (each would
    send clients elsewhere, or with another password). Over --tcp the password goes to a
    PGPASSFILE (mode 0600) in pgmgr's state directory.

    Example: eval "$(pgmgr env dev)" && psql -c 'select 1'
    """
    from pgmgr.core import ops, ownconn
    from pgmgr.core.errors import UsageError

    if shell not in ops.SHELLS:
        raise UsageError(f"invalid --shell {shell!r}: use {', '.join(ops.SHELLS)}")
    srv = c.resolve(name, datadir)
    variables = ops.environment(srv, tcp=tcp)
    if json:
        ui.emit_json(variables)
    else:
        # a PGSERVICE, PGHOSTADDR or PGPASSWORD of the shell would send its clients elsewhere
        ui.emit(ops.shell_exports(variables, shell, ownconn.stray_targets(variables)))
