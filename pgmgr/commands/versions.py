"""``pgmgr versions``: the PostgreSQL installations pgmgr can use."""

from __future__ import annotations

from typing import Annotated

import typer

from pgmgr import ui

REASONS = {
    "flag": "--version",
    "POSTGRES_VERSION": "POSTGRES_VERSION",
    "highest-root": "highest under the root",
    "highest": "highest found",
}


def versions(
    pg_version: Annotated[
        str | None,
        typer.Option("-v", "--version", help="Mark this version as the default (15, 15.4)."),
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print a JSON document.")] = False,
) -> None:
    """List installed PostgreSQL versions and which one is the default.

    Example: pgmgr versions --json
    """
    from pgmgr.core import versions as core

    installs = core.discover()
    selection = core.select(pg_version, installs=installs)
    default = selection.installation
    records = []
    for inst in installs:
        rec: dict[str, object] = inst.to_dict()
        rec["default"] = inst == default
        rec["reason"] = REASONS[selection.reason] if inst == default else None
        records.append(rec)
    if json:
        ui.emit_json({"default": default.version, "versions": records})
        return
    rows = [
        [
            str(r["major"]),
            str(r["version"]),
            str(r["bindir"]),
            str(r["source"]),
            f"* ({r['reason']})" if r["default"] else "",
        ]
        for r in records
    ]
    ui.table(["major", "version", "bin dir", "source", "default"], rows)
