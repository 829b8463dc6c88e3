"""Options and helpers shared by the command modules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pgmgr import ui
from pgmgr.statusview import status_record as status_record
from pgmgr.statusview import uptime_text as uptime_text

if TYPE_CHECKING:
    from pgmgr.core.instance import Server


def complete_names(incomplete: str) -> list[str]:
    """Instance names for shell completion (read from the registry, nothing else)."""
    from pgmgr.core import registry

    return [n for n in registry.names() if n.startswith(incomplete)]


Name = Annotated[
    str | None,
    typer.Argument(
        help="Instance name (or a data directory path).",
        autocompletion=complete_names,
        show_default=False,
    ),
]
DataDir = Annotated[
    Path | None,
    typer.Option("-d", "--datadir", help="Data directory.", show_default=False),
]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing but errors.")]
Version = Annotated[
    str | None,
    typer.Option("-v", "--version", help="PostgreSQL version (15, 15.4).", show_default=False),
]
Timeout = Annotated[float, typer.Option("--timeout", help="Seconds to wait.", min=0.0, max=86400.0)]
NoTemplate = Annotated[
    bool,
    typer.Option(
        "--no-template",
        help="Run initdb, not a copy of the cached template data directory.",
        envvar="PGMGR_NO_TEMPLATE",
    ),
]
User = Annotated[
    str | None,
    typer.Option(
        "--user",
        help="OS user to run postgres as, when pgmgr runs as root "
        "(default: the data dir's owner, else 'postgres').",
        show_default=False,
    ),
]


def quiet(flag: bool, json: bool = False) -> None:
    """--quiet silences messages; --json keeps stdout for the document alone."""
    ui.settings.quiet = flag


def resolve(name: str | None, datadir: Path | None, *, allow_unregistered: bool = True) -> Server:
    """The instance named on the command line: a NAME, ``-d DIR``, ``$PGDATA``, or the only
    instance there is.

    :raises UsageError: both or neither given and nothing to default to.
    :raises InstanceNotFound: no such instance or data directory.
    """
    from pgmgr.core import registry
    from pgmgr.core.errors import UsageError
    from pgmgr.core.instance import Server

    if name and datadir:
        raise UsageError("give an instance NAME or -d DIR, not both")
    if datadir is not None:
        return Server.load(str(datadir) if "/" in str(datadir) else f"./{datadir}")
    if name:
        return Server.load(name)
    pgdata = os.environ.get("PGDATA")
    if pgdata:
        return Server.load(pgdata if "/" in pgdata else f"./{pgdata}")
    known = registry.names()
    if len(known) == 1:
        return Server.load(known[0])
    if not known:
        raise UsageError(
            "no instance given and none registered", hint="try 'pgmgr start -d ./data --init'"
        )
    raise UsageError("no instance given: name one of " + ", ".join(known), hint="or use -d DIR")


def version_label(version: str) -> str:
    return f"PostgreSQL {version}"
