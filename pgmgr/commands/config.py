"""``pgmgr config NAME [set key=value ... | unset key ...]``: the settings pgmgr keeps."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pgmgr import ui
from pgmgr.commands import _common as c

if TYPE_CHECKING:
    from pgmgr.core.pgconf import Report

ACTIONS = ("set", "unset")
COLUMNS = [
    ui.Col("setting", key=True),
    ui.Col("kept"),
    ui.Col("live"),
    ui.Col("note", below=True),
]


def split_args(args: list[str]) -> tuple[str | None, str | None, list[str]]:
    """``[NAME] [set|unset ITEM...]`` -> (name, action, items)."""
    rest = list(args)
    name = rest.pop(0) if rest and rest[0] not in ACTIONS else None
    action = rest.pop(0) if rest else None
    if action is not None and action not in ACTIONS:
        from pgmgr.core.errors import UsageError

        raise UsageError(f"unknown action {action!r}: use 'set key=value ...' or 'unset key ...'")
    return name, action, rest


def note(entry: dict[str, object], report: Report) -> str:
    restart = entry["pending_restart"] or entry["name"] in report.restart_needed
    if entry["value"] is None:
        if restart:
            return "removed; restart needed"
        return "removed" if entry["live"] is None else "removed; the server's own value now"
    if restart:
        return "restart needed"
    if entry["source"]:
        return f"overridden by {entry['source']}"
    return ""


def render(report: Report, action: str | None) -> None:
    doc = report.to_dict()
    rows = [
        [str(e["name"]), "-" if e["value"] is None else str(e["value"]), str(e["live"] or "-"),
         note(e, report)]
        for e in doc["settings"]
    ]  # fmt: skip
    if rows:
        ui.table(COLUMNS, rows)
    elif action is None:
        ui.message(f"No settings kept for '{report.name}'; add one with "
                   f"'pgmgr config {report.name} set work_mem=64MB'")  # fmt: skip
    closed = report.accepts_connections is False
    if closed and (rows or action is not None):
        ui.message(
            f"'{report.name}' is a standby with hot_standby = off: it accepts no connections, "
            "so its live values (and which settings need a restart) cannot be read"
        )
    if action is None:
        if not report.running and rows:
            ui.message(f"'{report.name}' is not running: live values show once it runs")
        return
    done = "Restarted" if report.restarted else "Reloaded" if report.reloaded else None
    if done == "Reloaded" and closed:
        done = "Sent SIGHUP (not confirmed)"
    what = f"{action} {', '.join(report.changed)} for '{report.name}'"
    if not report.running:
        ui.message(f"Kept: {what}; used from the next start")
    else:
        ui.message(f"{done}: {what}" if done else f"Kept: {what}")
    if report.restart_needed:
        ui.message(
            f"Restart needed for {', '.join(report.restart_needed)}: "
            f"'pgmgr restart {report.name}' (or 'pgmgr config ... --restart')"
        )


def config(
    args: Annotated[
        list[str] | None,
        typer.Argument(
            help="Instance name (optional), then set key=value ... or unset key ...",
            metavar="[NAME] [set|unset] [ITEM]...",
            show_default=False,
            autocompletion=c.complete_names,
        ),
    ] = None,
    datadir: c.DataDir = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Restart the server if a setting needs it.")
    ] = False,
    timeout: c.Timeout = 60.0,
    json: c.Json = False,
    quiet: c.Quiet = False,
) -> None:
    """Show, set or remove the server settings pgmgr keeps for an instance.

    They are the -c settings given to start, kept for every later start. 'set' and
    'unset' check them with the instance's own postgres, then reload a running server
    (or say a restart is needed; --restart does it).

    Example: pgmgr config dev set work_mem=64MB log_statement=all
    """
    c.quiet(quiet, json)
    from pgmgr.core import pgconf

    name, action, items = split_args(args or [])
    srv = c.resolve(name, Path(datadir) if datadir else None)
    if action is None:
        report = pgconf.show(srv)
    elif action == "set":
        report = pgconf.change(
            srv, pgconf.parse_assignments(items), restart=restart, timeout=timeout
        )
    else:
        report = pgconf.change(srv, {}, items, restart=restart, timeout=timeout)
    if json:
        ui.emit_json(report.to_dict())
    elif not quiet:  # "nothing but errors", as status -q: its table too
        render(report, action)
    if not report.running:  # why, when a killed command left it stopped
        from pgmgr.snapactions import note_left_stopped

        note_left_stopped(srv)
