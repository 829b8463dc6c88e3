"""``pgmgr run``: run a command against a temporary instance, then remove it."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Annotated

import typer

from pgmgr import ui
from pgmgr.commands import _common as c

if TYPE_CHECKING:
    from pgmgr.core.temporary import TemporaryInstance


def run(
    command: Annotated[
        list[str], typer.Argument(help="The command and its arguments, after '--'.")
    ],
    version: c.Version = None,
    setting: c.Setting = None,
    timeout: c.Timeout = 30.0,
    quiet: c.Quiet = False,
) -> None:
    """Run CMD with DATABASE_URL and PG* set for a temporary instance, then remove it.

    The instance (fsync off, never registered) is removed when CMD exits, fails, or on
    Ctrl-C/SIGTERM; pgmgr exits with CMD's exit code.

    Example: pgmgr run -v 15 -- pytest -x
    """
    c.quiet(quiet)
    from pgmgr.core import server, temporary

    settings = dict(server.parse_setting(s) for s in setting or [])

    def ready(tmp: TemporaryInstance) -> None:
        inst = tmp.server.inst
        ui.message(f"Temporary PostgreSQL {inst.version} ready: {tmp.url.split('@')[-1]}")

    signals: list[int] = []
    code = temporary.run_command(
        command,
        version=version,
        settings=settings,
        timeout=timeout,
        on_ready=ready,
        signals=signals,
    )
    if signal.SIGINT in signals:
        raise KeyboardInterrupt  # "Interrupted", exit 130, as every command says on Ctrl-C
    raise typer.Exit(code)
