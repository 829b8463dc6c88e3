"""``pgmgr logs``: show (and follow) an instance's server log."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from pgmgr import ui
from pgmgr.commands import _common as c


def logs(
    name: c.Name = None,
    datadir: c.DataDir = None,
    lines: Annotated[
        int, typer.Option("-n", "--lines", help="How many last lines to show.", min=0)
    ] = 20,
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep printing new lines until Ctrl-C.")
    ] = False,
) -> None:
    """Print the end of the server log.

    Example: pgmgr logs dev -n 50 -f
    """
    from pgmgr.core import ops

    srv = c.resolve(name, datadir)
    # Anyone who can connect puts text in the log (a role name in a FATAL line): on a
    # terminal its control characters are shown, not obeyed. To a pipe or file it stays
    # byte for byte what the server wrote (for grep, or a saved copy).
    show = ui.visible if _isatty() else str
    last, offset = ops.tail(srv.log_file, lines)
    for line in last:
        ui.emit(show(line))
    if not follow:
        return
    # Ctrl-C ends it as it ends every command: "Interrupted", exit 130 (as tail -f's 130).
    # It ends when its reader has gone (| head): at once if a line cannot be written,
    # and while the log is quiet, as tail -f does, when the pipe has no reader left.
    for chunk in ops.follow(srv.log_file, offset, done=ui.stdout_gone):
        if not ui.write("stdout", show(chunk)):
            return


def _isatty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False
