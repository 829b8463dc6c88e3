"""``pgmgr restart``: stop and start again with the recorded settings."""

from __future__ import annotations

import time

from pgmgr import ui
from pgmgr.commands import _common as c
from pgmgr.commands.stop import Mode


def restart(
    name: c.Name = None,
    datadir: c.DataDir = None,
    mode: Mode = "fast",
    timeout: c.Timeout = 60.0,
    json: c.Json = False,
    quiet: c.Quiet = False,
) -> None:
    """Restart an instance on its recorded host, port and settings (starts a stopped one).

    Example: pgmgr restart dev -m smart
    """
    c.quiet(quiet, json)
    from pgmgr.actions import note_closed_standby, stop_how
    from pgmgr.core import ops, stopwait
    from pgmgr.core.errors import UsageError
    from pgmgr.core.server import STOP_SIGNALS

    if mode not in STOP_SIGNALS:
        raise UsageError(f"invalid --mode {mode!r}: use smart, fast or immediate")
    srv = c.resolve(name, datadir)
    t0 = time.monotonic()
    with (
        ui.spinner(f"Restarting '{srv.inst.name}' ({mode}) …"),
        # a weaker stop's wait (a smart one's, for its clients) is ended, as by 'pgmgr stop'
        stopwait.locked(srv, mode, timeout, command="restart") as took_over,
    ):
        result = ops.restart(srv, mode, timeout)
    elapsed = time.monotonic() - t0
    was_running = result.was_running or took_over is not None
    st = srv.status()
    if json:
        ui.emit_json(
            {
                **c.status_record(st, srv),
                "was_running": was_running,
                "elapsed_ms": round(elapsed * 1000, 1),
                "took_over": {"mode": took_over.mode, "pid": took_over.pid} if took_over else None,
            }
        )
    else:
        how = "Restarted" if was_running else "Was not running; started"
        ui.message(
            f"{how} '{srv.inst.name}' (pid {result.start.pid}) in {ui.ms(elapsed)}"
            f"{stop_how(result.stop_ended_by, took_over)}: {st.url}"
        )
        note_closed_standby(srv)
