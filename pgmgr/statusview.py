"""The status model and its two renderers, without Typer.

``pgmgr status`` (through Typer) and the fast path in :mod:`pgmgr.entry` (``pgmgr status
[--json]`` without Typer, which costs ~30-50 ms to import) both build their output here, so
the two cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path

from pgmgr import ui

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from typing import Any

    from pgmgr.core.instance import Server, Status
    from pgmgr.core.registry import CorruptRecord
    from pgmgr.tablefit import Col


def columns(roles: bool) -> list[Col | str]:
    """The table's columns (made when a table is drawn: ``--json`` never loads the table
    code); ``role`` after ``state`` when some instance is a standby."""
    from pgmgr.tablefit import Col

    cols: list[Col | str] = [
        Col("name", key=True),
        Col("version"),
        Col("state"),
        Col("pid"),
        Col("host:port"),
        Col("socket dir", path=True),
        Col("data dir", path=True),
        Col("uptime"),
    ]
    return [*cols[:3], "role", *cols[3:]] if roles else cols


EMPTY = "No instances; create one with 'pgmgr start -d ./data --init'"


def status_record(st: Status, srv: Server) -> dict[str, Any]:
    """The JSON/table model of one instance's status (README documents these fields)."""
    rec = st.to_dict()
    rec["tcp_url"] = srv.url(tcp=True) if st.state == "running" and srv.inst.host else None
    rec["server_user"] = srv.inst.server_user
    rec["superuser"] = srv.inst.superuser
    if st.state != "missing":
        from pgmgr.core.roles import role_fields

        rec.update(role_fields(srv, st.state == "running"))
    else:
        rec.update(
            role=None, primary=None, replay_lag_bytes=None, replay_lag_ms=None, streaming=None
        )
    return rec


def broken_record(err: CorruptRecord) -> dict[str, Any]:
    """An unreadable record, as a row: its name (the file's) and why; nothing from inside."""
    keys = ("pid", "version", "host", "port", "socket_dir", "datadir", "started_at", "uptime")
    return {
        "name": err.path.stem,
        "state": "broken",
        **dict.fromkeys(keys),
        "log_file": None,
        "url": None,
        "detail": err.why,
        "latency_ms": None,
        "tcp_url": None,
        "server_user": None,
        "superuser": None,
        "stopped_by": None,
    }


def uptime_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def record_of(srv: Server, check: bool = False) -> tuple[dict[str, Any], int]:
    """One instance's record and its exit code (0 running, 3 not running, 4 missing)."""
    st = srv.status(check=check and srv.running() is not None)
    return status_record(st, srv), st.exit_code


def show_all(json: bool, check: bool = False) -> int:
    """Render every registered instance (unreadable records as errors); exit code 0."""
    from pgmgr.core import registry
    from pgmgr.core.instance import Server

    instances, broken = registry.load_all()
    instances = registry.prune_vanished(instances)
    records = [record_of(Server(inst), check)[0] for inst in instances]
    for err in broken:
        ui.error(str(err), err.hint)
    records += [broken_record(err) for err in broken]
    records.sort(key=lambda r: str(r["name"]))
    if json:
        ui.emit_json(records)
    elif records:
        table(records)
    else:
        ui.message(EMPTY)
    return 0


def role_text(r: dict[str, Any]) -> str:
    """``primary``, or ``standby of SRC`` with its replay lag when known."""
    if r.get("role") != "standby":
        return r.get("role") or "-"
    text = "standby" + (f" of {r['primary']}" if r.get("primary") else "")
    if r.get("accepts_connections") is False:
        text += " (hot_standby off)"  # so nothing can connect to it
    elif r.get("streaming") is False:
        text += " (not streaming)"
    elif r.get("replay_lag_bytes") is not None:
        text += f" (lag {r['replay_lag_bytes']} B, {r['replay_lag_ms']:g} ms)"
    return text


def table(records: list[dict[str, Any]]) -> None:
    """The status table; a ``role`` column appears when some instance is a standby."""
    roles = any(r.get("role") == "standby" for r in records)
    rows = []
    for r in records:
        state = r["state"]
        if r.get("latency_ms") is not None:
            state += f" ({r['latency_ms']:.1f} ms)"
        hostport = f"{r['host'] or '-'}:{r['port']}" if r["port"] else "-"
        rows.append(
            [
                r["name"],
                r["version"] or "-",
                state,
                str(r["pid"] or "-"),
                hostport,
                r["socket_dir"] or "-",
                r["datadir"] or "-",
                uptime_text(r["uptime"]),
            ]
        )
        if roles:
            rows[-1].insert(3, role_text(r))
    ui.table(columns(roles), rows)
    for r in records:
        notice(r)


def notice(r: dict[str, Any]) -> None:
    """Say below the table why an instance is stopped when a pgmgr command stopped it
    and did not start it again (see pgmgr.core.stopmark), and where the server of a
    ``missing`` one still runs (see pgmgr.core.movedserver)."""
    if r.get("running_from"):
        ui.message(f"Note: '{r['name']}': {r['detail']}")
    mark = r.get("stopped_by")
    if mark and r.get("detail"):
        again = "" if mark["active"] else f"; start it with 'pgmgr start {r['name']}'"
        ui.message(f"Note: {r['detail']}{again}")


def show(
    name: str | None = None,
    datadir: Path | None = None,
    json: bool = False,
    check: bool = False,
    quiet: bool = False,
) -> int:
    """``pgmgr status``: one instance (exit code as ``pg_ctl status``) or all of them.
    ``quiet``: print nothing but errors; the exit code says it all."""
    if not (name or datadir):
        if quiet:
            return 0
        return show_all(json, check)
    from pgmgr.actions import resolve

    rec, code = record_of(resolve(name, datadir), check)
    if quiet:
        return code
    if json:
        ui.emit_json(rec)
    else:
        table([rec])
    return code
