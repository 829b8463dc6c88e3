"""The ``pgmgr`` console script: error mapping, and a Typer-free fast path.

Importing Typer and the command modules costs ~40 ms, more than ``pg_lsclusters`` takes in
all and as much as postgres needs to start. So the plain, common forms are parsed here and
served by the same functions the Typer commands call (:mod:`pgmgr.actions`,
:mod:`pgmgr.statusview`):

    pgmgr status   [NAME | -d DIR] [--json] [--check] [-q]
    pgmgr start    [NAME | -d DIR] [-p PORT] [--json] [-q]
    pgmgr stop     [NAME | -d DIR | --all] [-m MODE] [--json] [-q]
    pgmgr snapshot NAME [SNAP] [--online] [--delete] [--json] [-q]
    pgmgr restore  NAME SNAP --yes [--save-current] [--json] [-q]
    pgmgr branch   NAME NEW [--from SNAP] [-d DIR] [-p PORT] [--start] [--json] [-q]

Anything else (another option, ``--help``, ``--opt=value``, a value that looks like an option)
goes to :mod:`pgmgr.cli`, so Typer still owns every usage error and all help text.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from typing import Any

#: verb -> {option spelling: (keyword, takes a value)}
FAST_OPTIONS: dict[str, dict[str, tuple[str, bool]]] = {
    "status": {"-d": ("datadir", True), "--datadir": ("datadir", True),
               "--json": ("json", False), "--check": ("check", False),
               "-q": ("quiet", False), "--quiet": ("quiet", False)},
    "start": {"-d": ("datadir", True), "--datadir": ("datadir", True),
              "-p": ("port", True), "--port": ("port", True),
              "--json": ("json", False), "-q": ("quiet", False), "--quiet": ("quiet", False)},
    "stop": {"-d": ("datadir", True), "--datadir": ("datadir", True),
             "-m": ("mode", True), "--mode": ("mode", True), "--all": ("all_", False),
             "--json": ("json", False), "-q": ("quiet", False), "--quiet": ("quiet", False)},
    "snapshot": {"--online": ("online", False), "--delete": ("delete", False),
                 "--json": ("json", False), "-q": ("quiet", False), "--quiet": ("quiet", False)},
    "restore": {"-y": ("yes", False), "--yes": ("yes", False),
                "--save-current": ("save_current", False),
                "--json": ("json", False), "-q": ("quiet", False), "--quiet": ("quiet", False)},
    "branch": {"--from": ("from_", True), "-d": ("datadir", True), "--datadir": ("datadir", True),
               "-p": ("port", True), "--port": ("port", True), "--start": ("start", False),
               "--json": ("json", False), "-q": ("quiet", False), "--quiet": ("quiet", False)},
}  # fmt: skip

#: verb -> (its positional arguments, how many are required, options it needs). Without
#: them Typer answers: the usage error, or (restore without --yes) the question.
FAST_ARGUMENTS: dict[str, tuple[tuple[str, ...], int, tuple[str, ...]]] = {
    "status": (("name",), 0, ()),
    "start": (("name",), 0, ()),
    "stop": (("name",), 0, ()),
    "snapshot": (("name", "snap"), 1, ()),
    "restore": (("name", "snap"), 2, ("yes",)),
    "branch": (("name", "new"), 2, ()),
}


def fast_args(args: Sequence[str]) -> tuple[str, dict[str, Any]] | None:
    """``(verb, keyword arguments)`` for a plain form of a verb of FAST_OPTIONS, else None."""
    if not args or args[0] not in FAST_OPTIONS:
        return None
    options = FAST_OPTIONS[args[0]]
    positional, required, needed = FAST_ARGUMENTS[args[0]]
    kwargs: dict[str, Any] = {}
    given: list[str] = []
    rest = list(args[1:])
    while rest:
        token = rest.pop(0)
        if token.startswith("-"):
            if token not in options:
                return None
            key, takes_value = options[token]
            if key in kwargs:
                return None
            if takes_value:
                if not rest or not rest[0] or rest[0].startswith("-"):
                    return None
                value = rest.pop(0)
                if key == "datadir" and _unreadable(value):
                    return None
                kwargs[key] = Path(value) if key == "datadir" else value
            else:
                kwargs[key] = True
        elif token and len(given) < len(positional):
            given.append(token)
        else:
            return None
    if len(given) < required or any(key not in kwargs for key in needed):
        return None
    kwargs.update(zip(positional, given, strict=False))
    return args[0], kwargs


def _unreadable(path: str) -> bool:
    """A path that exists but cannot be read: Typer refuses it as an option's value
    ("Invalid value for '-d' / '--datadir': Path ... is not readable.", exit 2)."""
    try:
        os.stat(path)
    except (OSError, ValueError):
        return False
    return not os.access(path, os.R_OK)


class _DeferredInspect(types.ModuleType):
    """Stands in for :mod:`inspect` until something uses it: then imports it and hands over."""

    def __getattr__(self, name: str) -> Any:
        import importlib

        if sys.modules.get("inspect") is self:
            del sys.modules["inspect"]
        return getattr(importlib.import_module("inspect"), name)


def defer_inspect() -> None:
    """Put a stand-in for :mod:`inspect` in ``sys.modules`` that imports it on first use.

    :mod:`dataclasses` imports inspect (with ast, dis, tokenize: ~5 ms, a fifth of a
    ``pgmgr status``) for one use, the signature it writes as the docstring of a class that
    has none: pgmgr's dataclasses all have one. (importlib's LazyLoader does not help: on
    3.11 the import statement itself reads ``__spec__`` and so loads the module.) A child
    of :func:`pgmgr.core.userfs.as_user` may not reach the standard library to import it
    late: as_user imports it before it forks.
    """
    if "inspect" not in sys.modules:
        sys.modules["inspect"] = _DeferredInspect("inspect")


def serve_fast(verb: str, kwargs: dict[str, Any]) -> int:
    defer_inspect()
    if verb == "status":
        from pgmgr import statusview

        return guarded(lambda: statusview.show(**kwargs))
    if verb in ("snapshot", "restore", "branch"):
        from pgmgr import snapactions

        kwargs.pop("yes", None)  # restore: confirmed on the command line
        action: Callable[..., int] = getattr(snapactions, verb)
    else:
        from pgmgr import actions

        action = actions.start if verb == "start" else actions.stop
    return guarded(lambda: action(**kwargs))


def guarded(call: Callable[[], int | None]) -> int:
    """Run ``call``; map what it raises to an exit code, printing one ``Error:`` line.

    The one place (with :func:`pgmgr.cli.run_guarded`, which adds Typer's own exceptions)
    where errors become exit codes.
    """
    from pgmgr import ui
    from pgmgr.core.errors import PgmgrError

    ui.lost.clear()
    try:
        rv = call()
    except PgmgrError as e:
        ui.error(str(e), e.hint)
        return e.exit_code
    except KeyboardInterrupt as e:
        cause = e.__cause__  # the failure it came during the clean-up of: both are said
        if isinstance(cause, PgmgrError):  # (see sigguard.redeliver)
            ui.error(str(cause), cause.hint)
        elif isinstance(cause, OSError) and not isinstance(cause, BrokenPipeError):
            from pgmgr.core.errors import describe_os_error

            ui.error(describe_os_error(cause))
        _hush()
        ui.write("stderr", "Interrupted\n")
        if "pgmgr.core.testhook" in sys.modules:
            sys.modules["pgmgr.core.testhook"].pause("interrupted-said")
        return 130
    except BrokenPipeError:  # from a write that bypassed ui.write (a library's)
        ui.lost.setdefault("stdout", BrokenPipeError())
        return 1
    except OSError as e:
        from pgmgr.core.errors import describe_os_error

        ui.error(describe_os_error(e))
        return 1
    code = rv if isinstance(rv, int) else 0
    return _output_lost(code)


def _output_lost(code: int) -> int:
    """``code``, or 1 if it was 0 but some of the command's output (stdout) could not be
    written: the command did its work, but its caller did not get the answer. A reader
    that went away (EPIPE: ``| head``) is not an error to say, as for any tool."""
    from pgmgr import ui

    lost = ui.lost.get("stdout")
    if lost is None:
        return code
    if not isinstance(lost, BrokenPipeError):
        why = lost.strerror if isinstance(lost, OSError) and lost.strerror else str(lost)
        ui.error(f"cannot write the output: {why}")
    return code or 1


def reserve_std_fds() -> None:
    """Hold a standard descriptor (0, 1, 2) that was closed when pgmgr started (``>&-``,
    ``2>&-``, ``<&-``) with /dev/null opened the other way round: reading fd 0, or writing
    fd 1 or 2, still fails with EBADF, as on the closed descriptor, but the number is
    taken. Else the next file or socket opened takes it: psql, run by 'pgmgr psql ... >&-',
    printed its result into its own connection to the server (which ended it: "invalid
    frontend message type"), and exited 0 with the output lost; and pgmgr's locks sat on
    the stdout or stderr of the programs it ran."""
    for fd, flags in ((0, os.O_WRONLY), (1, os.O_RDONLY), (2, os.O_RDONLY)):
        try:
            os.fstat(fd)
        except OSError:
            held = os.open(os.devnull, flags)  # the lowest free number: fd itself
            if held != fd:
                os.dup2(held, fd)
                os.close(held)
            os.set_inheritable(fd, True)


def _discard_lost_output() -> None:
    """The process ends next: a stream that failed (EPIPE, ENOSPC) may still hold
    buffered text, and the interpreter's last flush would report it ("Exception ignored
    ... BrokenPipeError"). Point its descriptor at /dev/null so that flush succeeds."""
    ui = sys.modules.get("pgmgr.ui")
    for name in getattr(ui, "lost", {}):
        stream = getattr(sys, name)
        try:
            fd = stream.fileno()
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)
        except (AttributeError, OSError, ValueError):
            pass


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


#: Set by :func:`main` as the console script: this process ends with the command (read by
#: :mod:`pgmgr.core.sigguard`, so that a completed operation's signals stay held until then).
COMMAND_PROCESS = False


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: ``pgmgr`` and ``python -m pgmgr`` call it without
    ``argv`` (it reads ``sys.argv``), and the process ends with the command.

    Called with ``argv`` (in-process: a library caller, a test), the process goes on
    after it: the caller's SIGINT, SIGTERM and SIGHUP handlers are as they were when it
    returns (or raises ``SystemExit``), and a signal held during a completed operation
    reaches them (see :mod:`pgmgr.core.sigguard`).
    """
    if argv is not None:
        _in_process(argv)
        return
    global COMMAND_PROCESS
    COMMAND_PROCESS = True
    from pgmgr.core import ownconn

    ownconn.detach_process()  # one thread yet; psql and run pass the user's on
    reserve_std_fds()
    try:
        _main(argv)
    finally:
        # Said and done: a signal now must not kill the process after what it said.
        if "pgmgr.core.sigguard" in sys.modules:
            sys.modules["pgmgr.core.sigguard"].settle()
        _discard_lost_output()
        _exit_without_collections()


def _exit_without_collections() -> None:
    """The process ends next: keep the interpreter's shutdown from walking every object.

    Its finalization runs full garbage collections over all that is left (~15,000 objects
    after a snapshot: 10-20 ms of each command, more than its own work in a 'pgmgr
    status'); frozen, those objects are skipped. Everything is still freed and closed as
    the modules are torn down, by reference counts; only garbage in reference cycles is
    left to the operating system, as it is at any exit. Not for a library caller, whose
    process goes on.
    """
    import gc

    gc.freeze()


def _in_process(argv: Sequence[str]) -> None:
    import signal

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = {s: signal.getsignal(s) for s in signals}
    try:
        _main(argv)
    finally:
        for s, handler in saved.items():
            if handler is not None:  # None: not set from Python, nothing to put back
                signal.signal(s, handler)


def _main(argv: Sequence[str] | None) -> None:
    try:
        args = list(sys.argv[1:] if argv is None else argv)
        fast = fast_args(args)
        if fast is not None:
            sys.exit(serve_fast(*fast))
        _plain_help_unless_terminal()
        from pgmgr.cli import main as typer_main

        typer_main(argv)
    except KeyboardInterrupt:  # while Python imports Typer, before any command runs
        _hush()
        from pgmgr import ui

        ui.write("stderr", "Interrupted\n")
        sys.exit(130)


def _hush() -> None:
    """Interrupted, about to say so: a second signal from here on must not kill the
    process after "Interrupted" (exit -2 instead of 130). Only for the console script,
    which exits next; a library caller keeps its handlers.

    Also, for everyone: a KeyboardInterrupt that left a string ``exec`` (the one
    :mod:`dataclasses` makes each method with, in a module imported late) sets a CPython
    flag that makes ``python -m pgmgr`` kill itself with SIGINT at exit, whatever exit
    code it asked for (-2 instead of 130). Every string ``exec`` clears it first.
    """
    exec("pass", {})  # noqa: S102 - a constant: clears CPython's "unhandled" flag
    if not COMMAND_PROCESS:
        return
    from pgmgr.core import sigguard

    sigguard.settle()
