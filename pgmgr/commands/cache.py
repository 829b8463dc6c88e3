"""``pgmgr cache list | clear``: the template data directories kept to make ``init`` fast."""

from __future__ import annotations

import typer

from pgmgr import ui
from pgmgr.commands import _common as c

app = typer.Typer(
    name="cache",
    help="Show or clear the cached template data directories (they make 'init' fast).",
    no_args_is_help=True,
)

COLUMNS = ["key", "version", "superuser", "encoding", "locale", "initdb args", "size", "stale"]
COLUMNS += ["spare"]


@app.command("list")
def list_(json: c.Json = False) -> None:
    """List the cached templates (one per PostgreSQL binaries and initdb options).

    'spare' is 'ready' when a synced copy waits to be renamed into the next new data
    directory (made in the background after an init copied the template).

    Example: pgmgr cache list --json
    """
    from pgmgr.core import template, tplcache

    found = tplcache.list_templates()
    if json:
        ui.emit_json(found)
        return
    if not found:
        ui.message(f"No templates in {template.templates_dir()}")
        return
    rows = [
        [
            t["key"],
            str(t.get("version", "?")),
            str(t.get("superuser", "?")),
            str(t.get("encoding", "?")),
            str(t.get("locale", "?")),
            " ".join(t.get("initdb_args") or []) or "-",
            f"{t['bytes'] / 1e6:.1f} MB",
            "yes" if t["stale"] else "no",
            "ready" if t.get("spare") else "-",
        ]
        for t in found
    ]
    ui.table(COLUMNS, rows)


@app.command("clear")
def clear(json: c.Json = False, quiet: c.Quiet = False) -> None:
    """Remove every cached template and its spare; the next init builds a new one with initdb.

    Waits for inits copying a template and for spares being made. Instances are never touched.

    Example: pgmgr cache clear
    """
    c.quiet(quiet, json)
    from pgmgr.core import template, tplcache

    removed = tplcache.clear()
    if json:
        ui.emit_json({"removed": removed, "dir": str(template.templates_dir())})
    else:
        ui.message(f"Removed {len(removed)} template(s) from {template.templates_dir()}")
