"""One exception tree for pgmgr.

Every expected failure is a :class:`PgmgrError`. Each subclass keeps the facts it was raised
with and builds its message from them; ``exit_code`` follows ``pg_ctl status`` (0 ok,
3 not running, 4 no such instance or data directory, 1 anything else, 2 usage).
The CLI turns these into ``Error: <message>`` lines in exactly one place (``pgmgr.cli``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from pgmgr.core.lazyre import LazyRegex

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_NO_INSTANCE = 4


class PgmgrError(Exception):
    """Base of every error pgmgr raises on purpose."""

    exit_code: int = EXIT_ERROR

    def __init__(self, message: str = "", *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        # Rebuilt from its fields, whatever the subclass's __init__ takes: errors cross the
        # privilege boundary (pgmgr.core.userfs.as_user) pickled.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[PgmgrError], args: tuple[object, ...], state: dict[str, object]) -> object:
    obj = cls.__new__(cls)
    Exception.__init__(obj, *args)
    obj.__dict__.update(state)
    return obj


class DatabaseException(PgmgrError):
    """Database errors (the seed's ``DatabaseException``): init, version, configuration."""

    def __init__(self, exception: object = "", *args: object, hint: str | None = None) -> None:
        text = str(exception)
        if args:
            text = " ".join([text, *(str(a) for a in args)])
        super().__init__(text, hint=hint)
        self.exception = exception


class WorkerError(PgmgrError):
    """The server process misbehaved (the seed's ``WorkerError``): not ready, gone, unreachable."""


class UsageError(PgmgrError):
    """The caller asked for something that cannot make sense (exit code 2)."""

    exit_code = EXIT_USAGE


class CommandFailed(DatabaseException):
    """An external program (initdb, psql, ...) failed; keeps its argv, exit code and stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        prog = Path(self.argv[0]).name if self.argv else "command"
        last = _last_line(stderr)
        text = f"{prog} failed with exit code {returncode}" + (f": {last}" if last else "")
        super().__init__(text)


class VersionNotFound(DatabaseException):
    """The requested PostgreSQL version is not installed."""

    def __init__(self, requested: str, installed: Sequence[str], origin: str = "") -> None:
        self.requested = requested
        self.installed = list(installed)
        have = ", ".join(self.installed) if self.installed else "none"
        where = f" (from {origin})" if origin else ""
        super().__init__(
            f"PostgreSQL {requested}{where} is not installed; installed: {have}",
            hint="run 'pgmgr versions' to see what is installed",
        )


class NoInstallation(DatabaseException):
    """No PostgreSQL server binaries were found anywhere."""

    def __init__(self, searched: Sequence[str]) -> None:
        self.searched = list(searched)
        super().__init__(
            "no PostgreSQL installation found (looked in: " + ", ".join(self.searched) + ")",
            hint="install one: 'apt-get install postgresql' (Debian/Ubuntu) "
            "or \"pip install 'pgmgr[embedded]'\"",
        )


class InstanceNotFound(PgmgrError):
    """No instance of that name, or no data directory at that path."""

    exit_code = EXIT_NO_INSTANCE


class NotRunning(WorkerError):
    """The instance is not running where the operation needs it to be."""

    exit_code = EXIT_NOT_RUNNING


class PortInUse(DatabaseException):
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        super().__init__(
            f"port {port} on {host} is already in use",
            hint="choose another with --port, or let pgmgr pick one with --port auto",
        )


class PortPrivileged(DatabaseException):
    """A port below ``limit`` (1024, or the ``net.ipv4.ip_unprivileged_port_start`` sysctl)
    that the OS user postgres runs as may not bind: postgres said only "FATAL: could not
    create any TCP/IP sockets"."""

    def __init__(self, host: str, port: int, user: str, limit: int) -> None:
        self.host = host
        self.port = port
        super().__init__(
            f"cannot listen on port {port} ({host}): ports below {limit} need privileges "
            f"the server user '{user}' does not have",
            hint=f"use --port auto, or a port from {limit} up",
        )


class Busy(PgmgrError):
    """Another pgmgr process holds this instance's lock."""


#: Trailing lines that explain an error rather than state it (``initdb: hint: Try ...``).
_AFTERWORD_RE = LazyRegex(r"^(?:\S+: )?(?:hint|detail|HINT|DETAIL):", re.IGNORECASE)


#: Lines a failing initdb prints after the cause, while it cleans up.
_CLEANUP_RE = LazyRegex(
    r"^(?:\S+: )?(?:removing (?:contents of )?data directory|child process exited"
    r"|data directory .* not removed)"
)
#: A server log line with a severity (``2024-... UTC [123] FATAL:  could not write ...``).
_SEVERE_RE = LazyRegex(r"\b(?:FATAL|PANIC|ERROR):\s+")


def _last_line(text: str) -> str:
    """The line that states the error: PostgreSQL programs end with hint/detail lines, and
    initdb with its clean-up; a server's ``FATAL:`` line (the cause) wins over both, and
    over a ``PANIC:`` that follows from it (initdb on a full disk: "FATAL: could not
    extend file ...: No space left on device", then "PANIC: cannot abort transaction 1").
    An indented line continues the one above it (libpq's "\tIs the server running
    locally..."): it was taken for the error, and the export of a server stopped meanwhile
    said only "pg_dump failed with exit code 1: before or while processing the request."."""
    raw = [line for line in text.strip().splitlines() if line.strip()]
    lines = [line.strip() for i, line in enumerate(raw) if i == 0 or not line[:1].isspace()]
    stated = [ln for ln in lines if not _AFTERWORD_RE.match(ln) and not _CLEANUP_RE.match(ln)]
    severe = [line[m.start() :] for line in stated if (m := _SEVERE_RE.search(line))]
    if severe:
        return ([s for s in severe if not s.startswith("PANIC")] or severe)[-1]
    return (stated or lines)[-1] if lines else ""


#: The attribute :func:`doing` sets on an :class:`OSError`: what the failing call was doing.
_OPERATION = "pgmgr_operation"


@contextlib.contextmanager
def doing(operation: str, path: str | os.PathLike[str] | None = None) -> Iterator[None]:
    """Name what the file-system calls inside do, for an :class:`OSError` that reaches the
    user: ``with doing("create the directory"): os.mkdir(path)`` makes its failure read
    "cannot create the directory PATH: File exists" (see :func:`describe_os_error`).

    ``path`` names what the operation is on, in place of the file names of the error:
    for calls that name none (``os.write(fd)``, ``os.fsync``: "No space left on device",
    of what?), or only relative to a directory fd (``os.mkdir(name, dir_fd=fd)``), or
    name internal ones (a rename to a work name).

    The innermost name counts. The name is an attribute of the exception, so it survives
    :func:`pgmgr.core.userfs.as_user` (pickled with it) and needs no source file.
    """
    try:
        yield
    except OSError as e:
        if _OPERATION not in e.__dict__:
            e.__dict__[_OPERATION] = operation
            if path is not None:
                e.filename, e.filename2 = os.fspath(path), None
        raise


def describe_os_error(e: OSError) -> str:
    """One line for an :class:`OSError` that reached the user: the operation when the call
    was named with :func:`doing` ("cannot create the directory X: Not a directory"), else
    the error and its file ("Not a directory: X"). "Not a directory" (and a symlink loop)
    is told by the component at fault when there is one ("X: A/f is a regular file, not a
    directory")."""
    what = e.strerror or str(e)
    if not e.filename:
        return what
    why = None
    if e.errno in (errno.ENOTDIR, errno.ELOOP) and isinstance(e.filename, str):
        from pgmgr.core import dirpath

        why = dirpath.blocker(e.filename, parents_only=e.errno == errno.ENOTDIR)
    name = str(e.filename) + (f" -> {e.filename2}" if e.filename2 else "")
    op = e.__dict__.get(_OPERATION)
    if op:
        return f"cannot {op} {name}: {why or what}"
    return f"{name}: {why}" if why else f"{what}: {name}"
