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
    from pgmgr.core import ops
    from pgmgr.core.locked import locked

    srv = c.resolve(name, datadir)
    t0 = time.monotonic()
    with locked(srv), ui.spinner(f"Restarting '{srv.inst.name}' ({mode}) …"):
        result = ops.restart(srv, mode, timeout)
    elapsed = time.monotonic() - t0
    st = srv.status()
    if json:
        ui.emit_json(
            {
                **c.status_record(st, srv),
                "was_running": result.was_running,
                "elapsed_ms": round(elapsed * 1000, 1),
            }
        )
    else:
        how = "Restarted" if result.was_running else "Was not running; started"
        ui.message(
            f"{how} '{srv.inst.name}' (pid {result.start.pid}) in {ui.ms(elapsed)}: {st.url}"
        )
