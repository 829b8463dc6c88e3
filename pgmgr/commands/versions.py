"""``pgmgr versions``: the PostgreSQL installations pgmgr can use, and the lasting default."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer

from pgmgr import ui

if TYPE_CHECKING:
    from pgmgr.core.versions import Installation, Selection

REASONS = {
    "flag": "--version",
    "POSTGRES_VERSION": "POSTGRES_VERSION",
    "default": "--set-default",
    "highest-root": "highest under the root",
    "highest": "highest found",
}
COLUMNS = [
    ui.Col("major"),
    ui.Col("version", key=True),
    ui.Col("bin dir", path=True),
    ui.Col("source", key=True),
    ui.Col("default"),
]


def why(selection: Selection, requested: str | None) -> str:
    """In plain words, which rule chose the default."""
    from pgmgr.core import userconfig, versions

    chosen = selection.installation.version
    root = os.environ.get(versions.ENV_ROOT) or versions.DEFAULT_ROOT
    if selection.reason == "flag":
        return f"Default: {chosen}, as asked with --version {requested}."
    if selection.reason == "POSTGRES_VERSION":
        env = os.environ.get(versions.ENV_VERSION, "").strip()
        stored = userconfig.default_version()
        over = f" (it comes before your default, {stored})" if stored else ""
        return f"Default: {chosen}, from POSTGRES_VERSION={env}{over}."
    if selection.reason == "default":
        stored = userconfig.default_version()
        return f"Default: {chosen}, set with 'pgmgr versions --set-default {stored}'."
    if selection.reason == "highest-root":
        return f"Default: {chosen}, the highest version under {root}."
    return f"Default: {chosen}, the highest version found (none under {root})."


def change_default(set_default: str | None, unset: bool, installs: list[Installation]) -> None:
    """Store or remove the lasting default, after checking that it is installed."""
    from pgmgr.core import userconfig
    from pgmgr.core import versions as core
    from pgmgr.core.errors import UsageError, VersionNotFound

    if set_default is not None and unset:
        raise UsageError("use either --set-default or --unset-default, not both")
    if set_default is not None:
        wanted = core.check_version_string(set_default, "--set-default")
        found = next((i for i in installs if core.matches(i, wanted)), None)
        if found is None:
            raise VersionNotFound(wanted, [i.version for i in installs], "--set-default")
        path = userconfig.set_default_version(wanted)
        ui.message(f"Default version set to {wanted} ({found.version} now, in {found.bindir})")
        ui.message(f"Kept in {path}")
    elif unset:
        had = userconfig.unset_default_version()
        ui.message("Default version removed" if had else "No default version was set")
    env = os.environ.get(core.ENV_VERSION, "").strip()
    if env:
        ui.message(f"Note: POSTGRES_VERSION={env} is set, and comes before the default.")


def versions(
    pg_version: Annotated[
        str | None,
        typer.Option(
            "-v",
            "--version",
            help="Show which install this version picks (15, 15.4), for this listing only.",
        ),
    ] = None,
    set_default: Annotated[
        str | None,
        typer.Option(
            "--set-default",
            metavar="VERSION",
            help="Make this version the lasting default (15 means any 15.x).",
            show_default=False,
        ),
    ] = None,
    unset_default: Annotated[
        bool, typer.Option("--unset-default", help="Remove the lasting default.")
    ] = False,
    json: Annotated[bool, typer.Option("--json", help="Print a JSON document.")] = False,
) -> None:
    """List installed PostgreSQL versions and which one is the default.

    The default: -v, else POSTGRES_VERSION, else the one set with --set-default, else the
    highest under /usr/lib/postgresql, else the highest found.

    Example: pgmgr versions --json
    """
    from pgmgr.core import versions as core

    installs = core.discover()
    if set_default is not None or unset_default:
        change_default(set_default, unset_default, installs)
    selection = core.select(pg_version, installs=installs)
    default = selection.installation
    records = []
    for inst in installs:
        rec: dict[str, object] = inst.to_dict()
        rec["default"] = inst == default
        rec["reason"] = REASONS[selection.reason] if inst == default else None
        records.append(rec)
    text = why(selection, pg_version)
    if json:
        ui.emit_json({"default": default.version, "why": text, "versions": records})
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
    ui.table(COLUMNS, rows)
    ui.message(text)
