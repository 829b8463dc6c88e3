"""``pgmgr snapshot`` and ``pgmgr snapshots``: take, delete and list snapshots."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from pgmgr import ui
from pgmgr.commands import _common as c

RequiredName = Annotated[
    str,
    typer.Argument(
        help="Instance name (or a data directory path).",
        autocompletion=c.complete_names,
        show_default=False,
    ),
]
Snap = Annotated[
    str | None,
    typer.Argument(help="Snapshot name (default: a UTC timestamp).", show_default=False),
]


def snapshot(
    name: RequiredName,
    snap: Snap = None,
    online: Annotated[
        bool,
        typer.Option("--online", help="No downtime: pg_basebackup of the running server."),
    ] = False,
    delete: Annotated[bool, typer.Option("--delete", help="Delete snapshot SNAP.")] = False,
    json: c.Json = False,
    quiet: c.Quiet = False,
) -> None:
    """Take a snapshot of an instance (a running one is stopped for the copy and started
    again, unless --online), or delete one with --delete.

    Example: pgmgr snapshot dev before-migration
    """
    from pgmgr import snapactions

    code = snapactions.snapshot(name, snap, online=online, delete=delete, json=json, quiet=quiet)
    if code:
        raise typer.Exit(code)


def snapshots(
    name: c.Name = None,
    json: c.Json = False,
) -> None:
    """List the snapshots of one instance, or of every instance.

    A store (or an instance record) that cannot be read is an error line, and the exit
    code is 1; the others are listed all the same (with --json, the list of those).

    Example: pgmgr snapshots dev --json
    """
    rows, failed = listed(name)
    if json:
        ui.emit_json(rows)
    elif rows:
        _table(rows)
    elif not failed:  # not "No snapshots" when some could not be read
        ui.message("No snapshots; take one with 'pgmgr snapshot NAME'")
    if failed:
        raise typer.Exit(1)


def listed(name: str | None) -> tuple[list[dict[str, Any]], bool]:
    """The snapshots of instance ``name`` (else of every instance) as rows, and whether a
    store or a record could not be read (each said in an ``Error:`` line)."""
    from pgmgr.core import registry
    from pgmgr.core import snapcatalog as catalog
    from pgmgr.core.errors import DatabaseException, describe_os_error
    from pgmgr.core.instance import Server

    if name:
        servers, failed = [c.resolve(name, None)], False
    else:
        instances, broken = registry.load_all()
        for err in broken:  # its snapshots are not listed: said, as status does
            ui.error(str(err), err.hint)
        servers, failed = [Server(inst) for inst in instances], bool(broken)
    rows: list[dict[str, Any]] = []
    for srv in servers:
        who = "" if name else f"'{srv.inst.name}': "
        try:
            rows += [info.to_dict() for info in catalog.list_snapshots(srv)]
        except DatabaseException as e:  # one unsafe store does not hide the others
            ui.error(who + str(e), e.hint)
            failed = True
        except OSError as e:  # nor a missing one (its volume not mounted, moved away)
            ui.error(who + describe_os_error(e))
            failed = True
    return rows, failed


def _table(rows: list[dict[str, Any]]) -> None:
    ui.table(
        # Names are what restore and branch take: kept whole where they fit. The kind (free
        # text when not restorable) moves below when the table is wider than the terminal.
        [
            ui.Col("instance", key=True),
            ui.Col("snapshot", key=True),
            "created",
            "size",
            "version",
            ui.Col("kind", below=True),
        ],
        [
            [
                r["instance"],
                r["snapshot"],
                _when(r["created"]),
                ui.size(r["size"]) if r["size"] is not None else "-",
                r["version"] or "-",
                r["kind"] if not r["problem"] else f"not restorable: {r['problem']}",
            ]
            for r in rows
        ],
    )


def _when(created: float | None) -> str:
    if created is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
