"""``pgmgr stop``: stop one instance, or all of them."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from pgmgr import ui
from pgmgr.commands import _common as c

Mode = Annotated[
    str,
    typer.Option(
        "-m", "--mode", help="smart (wait for clients), fast (disconnect them), or immediate."
    ),
]


def stop(
    name: c.Name = None,
    datadir: c.DataDir = None,
    all_: Annotated[bool, typer.Option("--all", help="Stop every known instance.")] = False,
    mode: Mode = "fast",
    timeout: c.Timeout = 60.0,
    json: c.Json = False,
    quiet: c.Quiet = False,
) -> None:
    """Stop a PostgreSQL instance (a stopped one is left alone).

    Example: pgmgr stop -d ./data -m smart --timeout 30
    """
    c.quiet(quiet, json)
    from pgmgr.core import registry
    from pgmgr.core.errors import UsageError
    from pgmgr.core.instance import DataDirNotFound, Server, _why_missing
    from pgmgr.core.server import STOP_SIGNALS

    if mode not in STOP_SIGNALS:
        raise UsageError(f"invalid --mode {mode!r}: use smart, fast or immediate")
    if all_ and (name or datadir):
        raise UsageError("--all stops every instance: leave out NAME and -d")
    if all_:
        servers = [Server(inst) for inst in registry.load_all()[0]]
    else:
        servers = [c.resolve(name, datadir)]
    results: list[dict[str, Any]] = []
    for srv in servers:
        t0 = time.monotonic()
        with registry.lock(srv.datadir):
            pf = srv.running()
            with ui.spinner(f"Stopping '{srv.inst.name}' ({mode}) …"):
                stopped = srv.stop(mode, timeout)
        elapsed = time.monotonic() - t0
        results.append(
            {
                "name": srv.inst.name,
                "datadir": srv.inst.datadir,
                "stopped": stopped,
                "pid": pf.pid if pf else None,
                "elapsed_ms": round(elapsed * 1000, 1),
            }
        )
        missing = not stopped and srv.status().state == "missing"
        if missing and not all_:
            raise DataDirNotFound(srv.datadir, _why_missing(srv.datadir))  # exit 4
        if stopped:
            ui.message(f"Stopped '{srv.inst.name}' in {ui.ms(elapsed)}")
        elif missing:
            ui.message(f"'{srv.inst.name}': data directory {_why_missing(srv.datadir)}")
        else:
            ui.message(f"'{srv.inst.name}' is not running")
    if json:
        ui.emit_json(results if all_ else results[0])
