"""``pgmgr cache list | clear``: the template data directories kept to make ``init`` fast."""

from __future__ import annotations

from typing import Any

import typer

from pgmgr import ui
from pgmgr.commands import _common as c

app = typer.Typer(
    name="cache",
    help="Show or clear the cached template data directories (they make 'init' fast).\n\n"
    "Example: pgmgr cache list",
    no_args_is_help=True,
)

COLUMNS = [
    ui.Col("key", key=True),  # pg<version>-<hash>: the version is in it
    ui.Col("initdb options", below=True),
    ui.Col("size"),
    ui.Col("state"),
]


def options_text(t: dict[str, Any]) -> str:
    """``-U postgres -E UTF8 --locale=C --data-checksums``: the options the template was
    made with, as initdb spells them."""
    parts = [
        f"-U {t.get('superuser', '?')}",
        f"-E {t.get('encoding', '?')}",
        f"--locale={t.get('locale', '?')}",
        *(t.get("initdb_args") or []),
    ]
    return " ".join(parts)


def state_text(t: dict[str, Any]) -> str:
    if t["stale"]:
        return "stale"
    return "spare ready" if t.get("spare") else "ok"


@app.command("list")
def list_(json: c.Json = False) -> None:
    """List the cached templates (one per PostgreSQL binaries and initdb options).

    State: 'ok'; 'spare ready' when a synced copy also waits to be renamed into the next new
    data directory (made in the background after an init copied the template); 'stale' when
    the binaries changed since it was made (it is rebuilt on the next init).

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
            options_text(t),
            f"{t['bytes'] / 1e6:.1f} MB",
            state_text(t),
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
