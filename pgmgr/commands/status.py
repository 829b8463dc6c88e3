"""``pgmgr status``: one instance (exit code as pg_ctl status) or all of them."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from pgmgr import ui
from pgmgr.commands import _common as c

COLUMNS = ["name", "version", "state", "pid", "host:port", "socket dir", "data dir", "uptime"]


def status(
    name: c.Name = None,
    datadir: c.DataDir = None,
    json: c.Json = False,
    check: Annotated[
        bool, typer.Option("--check", help="Also connect, and report the latency.")
    ] = False,
) -> None:
    """Show whether instances are running.

    Exit code for one instance: 0 running, 3 not running, 4 no such instance or data dir.

    Example: pgmgr status --json
    """
    from pgmgr.core import registry
    from pgmgr.core.instance import Server

    if name or datadir:
        srv = c.resolve(name, datadir)
        st = srv.status(check=check and _is_up(srv))
        rec = c.status_record(st, srv)
        if json:
            ui.emit_json(rec)
        else:
            _table([rec])
        raise typer.Exit(st.exit_code)
    instances, broken = registry.load_all()
    records = []
    for inst in instances:
        srv = Server(inst)
        st = srv.status(check=check and _is_up(srv))
        records.append(c.status_record(st, srv))
    for err in broken:
        ui.error(str(err), err.hint)
    if json:
        ui.emit_json(records)
    elif records:
        _table(records)
    else:
        ui.message("No instances; create one with 'pgmgr start -d ./data --init'")


def _is_up(srv: Any) -> bool:
    return srv.running() is not None


def _table(records: list[dict[str, Any]]) -> None:
    rows = []
    for r in records:
        state = r["state"]
        if r.get("latency_ms") is not None:
            state += f" ({r['latency_ms']:.1f} ms)"
        hostport = f"{r['host'] or '-'}:{r['port']}" if r["port"] else "-"
        rows.append(
            [
                r["name"],
                r["version"],
                state,
                str(r["pid"] or "-"),
                hostport,
                r["socket_dir"] or "-",
                r["datadir"],
                c.uptime_text(r["uptime"]),
            ]
        )
    ui.table(COLUMNS, rows)
