"""Options and helpers shared by the command modules."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.models import TyperPath

from pgmgr import ui
from pgmgr.actions import resolve, version_label
from pgmgr.statusview import status_record, uptime_text


def complete_names(incomplete: str) -> list[str]:
    """Instance names for shell completion (read from the registry, nothing else)."""
    from pgmgr.core import registry

    try:
        return [n for n in registry.names() if n.startswith(incomplete)]
    except OSError:  # a completion offers nothing rather than fail
        return []


class _GivenPath(TyperPath):
    """A path option's type that refuses an empty value: ``Path("")`` is ``.``, so
    ``-d "$DIR"`` with DIR unset named the current directory (``init`` made a data
    directory there, ``destroy --yes`` removed the instance the shell stood in)."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value == "":
            self.fail("an empty path (an unset variable?)", param, ctx)
        return super().convert(value, param, ctx)


#: ``click_type=`` of every path option and argument
PATH = _GivenPath()


def given_name(value: str | None) -> str | None:
    """The ``callback=`` of every ``--name`` option: an empty value meant the default name
    (``--name "$NEW"`` with NEW unset made an instance named after its directory)."""
    if value == "":
        raise typer.BadParameter("an empty name (an unset variable?)")
    return value


Name = Annotated[
    str | None,
    typer.Argument(
        help="Instance name (or a data directory path).",
        autocompletion=complete_names,
        show_default=False,
    ),
]
DataDir = Annotated[
    Path | None,
    typer.Option("-d", "--datadir", help="Data directory.", show_default=False, click_type=PATH),
]
NewDataDir = Annotated[
    Path | None,
    typer.Option(
        "-d",
        "--datadir",
        help="Data directory of the new instance.",
        show_default=False,
        click_type=PATH,
    ),
]
NewName = Annotated[
    str | None,
    typer.Option(
        "--name", help="Name of the new instance.", show_default=False, callback=given_name
    ),
]
NewPort = Annotated[
    str | None,
    typer.Option(
        "-p",
        "--port",
        help="Port of the new instance, or 'auto' (the default).",
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing but errors.")]
Version = Annotated[
    str | None,
    typer.Option("-v", "--version", help="PostgreSQL version (15, 15.4).", show_default=False),
]
#: The longest --timeout: a day.
MAX_TIMEOUT = 86400.0


def given_timeout(value: float) -> float:
    """The ``callback=`` of every ``--timeout``: more than 0, at most a day. A range alone
    let 0 and nan through (``nan < 0`` is false): 'replica --timeout 0' cloned the whole
    primary, then failed its start at once; 'reload --timeout 0' signalled the server,
    then said it did not confirm."""
    if not 0 < value <= MAX_TIMEOUT:  # (nan too)
        raise typer.BadParameter(
            f"{value:g} is not a number of seconds above 0 and up to {MAX_TIMEOUT:g}"
        )
    return value


Timeout = Annotated[
    float,
    typer.Option(
        "--timeout", help="Seconds to wait (above 0, up to a day).", callback=given_timeout
    ),
]
NoTemplate = Annotated[
    bool,
    typer.Option(
        "--no-template",
        # Not envvar=: Typer would parse PGMGR_NO_TEMPLATE its own way; the core reads it.
        help="Run initdb, not a copy of the cached template data directory "
        "(also: PGMGR_NO_TEMPLATE=1).",
    ),
]
Setting = Annotated[
    list[str] | None,
    typer.Option(
        "-c", "--setting", help="Server setting name=value (repeatable).", show_default=False
    ),
]
LogFile = Annotated[
    Path | None,
    typer.Option(
        "--log-file",
        help="Server log file, kept for later starts (default: <state dir>/logs/NAME.log).",
        show_default=False,
        click_type=PATH,
    ),
]
User = Annotated[
    str | None,
    typer.Option(
        "--user",
        help="OS user to run postgres as, when pgmgr runs as root "
        "(default: the data dir's owner, else 'postgres').",
        show_default=False,
    ),
]


def quiet(flag: bool, json: bool = False) -> None:
    """--quiet silences messages; --json keeps stdout for the document alone."""
    ui.settings.quiet = flag


def on_terminal() -> bool:
    """Whether there is a terminal to ask on: stdin open (``<&-`` leaves it None, and
    ``sys.stdin.isatty()`` ended in a traceback) and a tty."""
    import sys

    return sys.stdin is not None and sys.stdin.isatty()


def confirm(prompt: str) -> bool:
    """Ask ``prompt [y/N]`` on the terminal (stderr) until the answer is yes or no (empty:
    no). End of input (Ctrl-D) is no, as an empty answer is; Ctrl-C ends the prompt's line
    before "Interrupted" is said, as for any interrupt. (typer.confirm made both an
    Abort: Ctrl-D said "Interrupted", exit 130, for a refusal.)"""
    import sys

    while True:
        try:
            # Inside the try: a Ctrl-C typed as soon as the question shows (before input()
            # is reached) ends its line too.
            ui.write("stderr", f"{prompt} [y/N]: ")
            _until_typed(sys.stdin.fileno())
            answer = input().strip().lower()
        except EOFError:
            ui.write("stderr", "\n")
            return False
        except KeyboardInterrupt:
            ui.write("stderr", "\n")
            raise
        if answer in ("y", "yes"):
            return True
        if answer in ("", "n", "no"):
            return False
        ui.write("stderr", "Error: answer y or n\n")


def _until_typed(fd: int) -> None:
    """Return once the terminal ``fd`` has a line (or end of input) to read, waiting in
    short selects: between them a signal is acted on. A Ctrl-C that came in the instant
    before input() blocked in read() (a quick typist's, right after the question) was
    otherwise only acted on after Enter: the prompt hung on its "^C"."""
    import select

    while not select.select([fd], [], [], 0.1)[0]:
        pass


__all__ = ["resolve", "status_record", "uptime_text", "version_label"]
