"""``pgmgr reload``: make the server re-read its configuration files."""

from __future__ import annotations

from pgmgr import ui
from pgmgr.commands import _common as c

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pgmgr.core import ops


def reload(
    name: c.Name = None,
    datadir: c.DataDir = None,
    timeout: c.Timeout = 10.0,
    json: c.Json = False,
    quiet: c.Quiet = False,
) -> None:
    """Send SIGHUP to the server and wait until it confirms (pg_conf_load_time advances).

    Exit code 3 when it is not running.

    Example: pgmgr reload dev
    """
    c.quiet(quiet, json)
    from pgmgr.core import ops
    from pgmgr.core.readyfirst import ready_unlocked

    srv = c.resolve(name, datadir)
    # a server another process starts is waited for (libpq said "starting up")
    ready_unlocked(srv, "reload", f"reload '{srv.inst.name}'", closed_ok=True)
    result = ops.reload(srv, timeout)
    if json:
        ui.emit_json(
            {
                "name": srv.inst.name,
                "pid": result.pid,
                "conf_load_time_before": result.before,
                "conf_load_time": result.after,
                "confirmed": result.confirmed,
                "elapsed_ms": round(result.elapsed * 1000, 1),
                "restart_needed": [r.name for r in result.restart_needed],
                "overridden": [r.name for r in result.overridden],
            }
        )
    elif result.confirmed:
        ui.message(f"Reloaded '{srv.inst.name}' (pid {result.pid}) in {ui.ms(result.elapsed)}")
        _notes(srv.inst.name, result)
    else:
        ui.message(
            f"Sent SIGHUP to '{srv.inst.name}' (pid {result.pid}); not confirmed: a standby "
            f"with hot_standby = off accepts no connections (see 'pgmgr logs {srv.inst.name}')"
        )


def _notes(name: str, result: ops.ReloadResult) -> None:
    """The changed values of the files that this reload did not apply, and why."""
    for r in result.restart_needed:
        # postgres -C knows an extension's setting only as a placeholder: any value passes
        unchecked = (
            f"; its extension checks the value only then (see 'pgmgr logs {name}')"
            if "." in r.name
            else ""
        )
        ui.message(
            f"Note: {ui.visible_line(r.where)}: {r.name} = {ui.visible(repr(r.setting))} needs "
            f"a restart to apply ('pgmgr restart {name}'){unchecked}; it keeps its current value"
        )
    for r in result.overridden:
        ui.message(
            f"Note: {ui.visible_line(r.where)}: {r.name} = {ui.visible(repr(r.setting))} never "
            f"applies: pgmgr sets {r.name.lower()} on the server's command line (--port, "
            "--host, --socket-dir of 'pgmgr start')"
        )
