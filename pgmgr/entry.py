"""The ``pgmgr`` console script: a Typer-free fast path for ``pgmgr status [--json]``.

Importing Typer (and the command modules) costs ~30-50 ms on the reference machine, more than
``pg_lsclusters`` takes in all. ``pgmgr status`` and ``pgmgr status --json`` with no other
argument are served here from :mod:`pgmgr.statusview`, the same functions the Typer command
uses; anything else (``--help``, a name, ``--check``, other commands) goes to
:mod:`pgmgr.cli`. When stdout is not a terminal, Typer is told not to use Rich for help.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

FAST = (["status"], ["status", "--json"])


def fast_status(json: bool) -> int:
    """``pgmgr status [--json]``, errors mapped as :func:`pgmgr.cli.run_guarded` does."""
    from pgmgr import statusview, ui
    from pgmgr.core.errors import PgmgrError

    try:
        return statusview.show_all(json)
    except PgmgrError as e:
        ui.error(str(e), e.hint)
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted\n")
        return 130
    except BrokenPipeError:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - silence the interpreter's flush
        return 1
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        ui.error(f"{e.strerror or e}{where}")
        return 1


def _plain_help_unless_terminal() -> None:
    """Typer reads TYPER_USE_RICH once, at import: Rich help only on a terminal."""
    if "typer" in sys.modules or "TYPER_USE_RICH" in os.environ:
        return
    try:
        tty = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    except (AttributeError, ValueError):
        tty = False
    if not tty:
        os.environ["TYPER_USE_RICH"] = "0"
        try:
            import typer.core  # noqa: F401 - reads the variable now
        finally:
            del os.environ["TYPER_USE_RICH"]  # not for the servers and tools pgmgr runs


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args in FAST:
        sys.exit(fast_status(json=len(args) == 2))
    _plain_help_unless_terminal()
    from pgmgr.cli import main as typer_main

    typer_main(argv)
