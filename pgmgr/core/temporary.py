"""Temporary instances: ``pgmgr run`` and the pytest plugin.

A temporary instance lives in one fresh directory (data dir, socket dir, log), is never
registered, runs with settings that trade durability for speed, and is removed, server and
files, when it closes, whatever happened before.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType

from pgmgr.core import dirlock, ownconn, ownerrm, privileges, server, sweep, testhook, userfs
from pgmgr.core.errors import PgmgrError
from pgmgr.core.instance import Server
from pgmgr.core.pgtext import dsn_quote, quote_ident
from pgmgr.core.server import InitOptions

#: Nothing on disk has to survive a temporary instance, so nothing waits for the disk.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
#: The longest base dir we accept: its ``sock/.s.PGSQL.65535`` must fit in 107 bytes.
MAX_BASE = server.SOCKET_PATH_MAX - len("/sock/.s.PGSQL.65535")
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Seconds :meth:`TemporaryInstance.execute` waits for the server to take its connection.
CONNECT_TIMEOUT = 10
#: Reapers told to exit, kept until they have (no "still running" warning at collection).
_finished_reapers: list[subprocess.Popen[bytes]] = []


class CommandNotRun(PgmgrError):
    """The command of ``pgmgr run`` could not be executed (exit 127, as in a shell)."""

    exit_code = 127

    def __init__(self, program: str, error: OSError) -> None:
        self.program = program
        why = "not found" if isinstance(error, FileNotFoundError) else error.strerror
        hint = None
        if isinstance(error, FileNotFoundError) and "/" not in program:
            hint = "it is not on PATH; give its path, or check the spelling"
        super().__init__(f"cannot run {program!r}: {why}", hint=hint)


def check_runnable(program: str) -> None:
    """Find ``program`` as ``execvp`` would (PATH, or a path with a '/'), before any server
    is made for it: a typo costs nothing.

    :raises CommandNotRun: not found, not a file, or not executable (exit code 127).
    """
    import errno

    found = program if "/" in program else shutil.which(program)
    if found is None:
        raise CommandNotRun(program, FileNotFoundError(errno.ENOENT, "not found", program))
    path = found
    if os.path.isdir(path):
        raise CommandNotRun(program, IsADirectoryError(errno.EISDIR, "is a directory", path))
    if not os.path.exists(path):
        raise CommandNotRun(program, FileNotFoundError(errno.ENOENT, "not found", path))
    if not os.access(path, os.X_OK):
        raise CommandNotRun(program, PermissionError(errno.EACCES, "not executable", path))


def _default_user() -> privileges.ServerUser | None:
    """As root, the server user of a directory in the temp dir (``postgres``), whose
    leftovers (:func:`sweep.dead_runs`) are swept with root's; None otherwise."""
    if not privileges.is_root():
        return None
    try:
        return privileges.server_user(Path(tempfile.gettempdir()), None)
    except PgmgrError:
        return None  # no such user: the start says so


def _base_dir(prefix: str, root: str | None = None) -> tuple[Path, int]:
    """A fresh directory the server user can traverse (0711) under ``root`` (default: the
    temp dir), held (:func:`sweep.make_dir`): it and the fd to release. /tmp when ``root``
    is too deep for a socket path, or (as root) unreachable for the server user or in a
    directory another user can write (who could swap it for a symlink before root writes
    its owner file in it and chmods it). It names its owner (this process), so that a
    later run can sweep it if this one is killed."""
    base, fd = sweep.make_dir(prefix, root)
    try:
        su = privileges.server_user(base, None) if privileges.is_root() else None
        if (
            len(str(base)) > MAX_BASE
            or not _socket_text_ok(base)
            or (su is not None and privileges.blocking_dir(base, su))
        ):
            os.rmdir(base)
            sweep.release(fd)
            fd = -1
            base, fd = sweep.make_dir(prefix, "/tmp")  # noqa: S108
        testhook.pause("run-base-made")
        # Through the held fd of the new directory, and only while its name still leads
        # there: as root, the temp dir (TMPDIR, the plugin's pgmgr_tmpdir) may be one
        # another user can write, who could have swapped it for a symlink meanwhile (root
        # then chmodded and wrote where it pointed).
        if not sweep.still_named(fd, base):
            raise sweep.replaced(base)
        token = sweep.owner_token(os.getpid()).encode()
        userfs.write_file_at(fd, sweep.OWNER_FILE, token, 0o644, sync=False)
        # 0711, not 0755: the server user only passes through it; another user who could
        # open it could hold its lock (see pgmgr.core.sweep), and so keep a killed run's
        # directory, its server's data in /dev/shm say, from ever being swept
        os.fchmod(fd, 0o711)
    except BaseException:
        if fd >= 0 and sweep.still_named(fd, base):
            with contextlib.suppress(OSError):
                os.rmdir(base)  # empty but for the owner file: else the next sweep's
        sweep.release(fd if fd >= 0 else None)
        raise
    return base, fd


def _socket_text_ok(base: Path) -> bool:
    """Whether ``base/sock`` can be PostgreSQL's socket directory: a temp dir (TMPDIR, the
    plugin's ``pgmgr_tmpdir``) whose path holds a double quote or a line break made every
    ``pgmgr run`` and plugin session fail ("invalid socket directory"); /tmp is used then,
    as for one too deep."""
    from pgmgr.core import listen
    from pgmgr.core.errors import UsageError

    try:
        listen.check_socket_dir_text(base / "sock")
    except UsageError:
        return False
    return True


class TemporaryInstance:
    """A throw-away server: ``with TemporaryInstance() as tmp: use(tmp.url)``.

    :param version: PostgreSQL version (default: pgmgr's usual selection).
    :param settings: server settings on top of :data:`FAST_SETTINGS`.
    :param root: where its directory is made (default: the temp dir).
    :param guard: start a :mod:`~pgmgr.core.reaper` that removes the server and its
        directory if this process dies without closing the instance.
    """

    def __init__(
        self,
        version: str | None = None,
        settings: Mapping[str, str] | None = None,
        prefix: str = "pgmgr-run-",
        root: str | None = None,
        guard: bool = False,
    ) -> None:
        self.version = version
        self.settings = {**FAST_SETTINGS, **server.check_settings(settings or {})}
        self.prefix = prefix
        self.root = root
        self.guard = guard
        self._reaper: subprocess.Popen[bytes] | None = None
        self._guard_fd: int | None = None
        self._held: int | None = None
        self.base: Path | None = None
        self.srv: Server | None = None

    def start(self, timeout: float = 30.0) -> TemporaryInstance:
        """Initialize (a copy of the cached template, else ``initdb``; not synced to disk)
        and start on a free port.

        On failure, including a signal, everything made so far is removed.
        """
        try:
            sweep.dead_runs(_default_user(), also=self.root)  # where ours would be
            dirlock.sweep()  # the lock files of killed runs' data directories
            # held: see pgmgr.core.sweep (live, whatever pid)
            self.base, self._held = _base_dir(self.prefix, self.root)
            if self.guard:
                from pgmgr.core import reaper

                self._reaper, self._guard_fd = reaper.spawn(self.base, self.base / "data")
            srv = Server.for_datadir(
                self.base / "data",
                name=self.base.name.replace("_", "-"),
                version=self.version,
                register=False,
            )
            self.srv = srv
            srv.die_with_parent = True  # even a SIGKILLed pgmgr leaves no server behind
            srv.inst.log_file = str(self.base / "server.log")
            srv.initialize(InitOptions(no_sync=True))
            su = srv.user()
            sock = self.base / "sock"
            sock.mkdir(mode=0o700)
            privileges.chown(sock, su)
            srv.start(
                host="127.0.0.1",
                port="auto",
                settings=self.settings,
                socket_dir=str(sock),
                timeout=timeout,
            )
        except BaseException:
            self.close()
            raise
        return self

    def restart(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop the server and start it again on the same port and socket."""
        srv = self.server
        srv.stop(mode, timeout=timeout)
        srv.start(
            port=srv.inst.port,
            settings=self.settings,
            socket_dir=srv.inst.socket_dir,
            timeout=timeout,
        )

    @property
    def server(self) -> Server:
        if self.srv is None:
            raise RuntimeError("the temporary instance is not started")
        return self.srv

    @property
    def url(self) -> str:
        """TCP URI with the password (what most drivers understand)."""
        return self.server.url(tcp=True)

    @property
    def dsn(self) -> str:
        return self.server.dsn(tcp=True)

    def environment(self, dbname: str | None = None) -> dict[str, str]:
        """``DATABASE_URL`` (TCP) and ``PG*`` (the private socket, trust auth)."""
        inst = self.server.inst
        url = self.url
        if dbname is not None:
            url = url.rsplit("/", 1)[0] + "/" + dbname
        return {
            "DATABASE_URL": url,
            "PGHOST": str(inst.socket_dir),
            "PGPORT": str(inst.port),
            "PGUSER": inst.superuser,
            "PGDATABASE": dbname or "postgres",
            "PGPASSWORD": inst.password or "",
            "PGDATA": inst.datadir,
        }

    def close(self) -> None:
        """Stop the server (immediate: nothing needs to be kept) and remove every file."""
        if self.srv is not None:
            with contextlib.suppress(Exception):
                self.srv.stop("immediate", timeout=30)
            child = self.srv.child
            if child is not None and child.poll() is None:
                # Interrupted before postmaster.pid said who it is: stop the child itself.
                child.send_signal(server.STOP_SIGNALS["immediate"])
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=30)
        if self.base is not None:
            # as root, the server user's data and socket dirs in it go as that user
            ownerrm.remove(self.base, ignore_errors=True)
        sweep.release(self._held)
        self.srv, self.base, self._held = None, None, None
        if self._guard_fd is not None:
            # The reaper reads EOF, finds nothing left and exits; not waited for (it may
            # still be starting): polled later, or reaped by init after this process.
            os.close(self._guard_fd)
            _finished_reapers[:] = [p for p in _finished_reapers if p.poll() is None]
            if self._reaper is not None:
                _finished_reapers.append(self._reaper)
            self._guard_fd, self._reaper = None, None

    def __enter__(self) -> TemporaryInstance:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- databases

    def database_dsn(self, dbname: str) -> str:
        """libpq key=value string (TCP, with the password) for database ``dbname``."""
        params = {**self.server.conninfo(tcp=True), "dbname": dbname}
        return " ".join(f"{k}={dsn_quote(v)}" for k, v in params.items())

    def create_database(self, name: str, template: str | None = None) -> None:
        """``CREATE DATABASE name [TEMPLATE template]``."""
        sql = f"CREATE DATABASE {quote_ident(name)}"
        self.execute(sql + (f" TEMPLATE {quote_ident(template)}" if template else ""))

    def drop_database(self, name: str) -> None:
        """Drop ``name``, disconnecting its sessions first (PostgreSQL 13+)."""
        self.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
        import psycopg  # only here: it costs ~120 ms to import

        params = ownconn.params({**self.server.conninfo(tcp=False), "dbname": dbname})
        # Bounded: a server a test froze (SIGSTOP) never answers, and the connection then
        # waited for psycopg's default (for ever before 3.2, 130 s since): the pytest
        # plugin's drop of a test's database, at its teardown, and the next one's create.
        params["connect_timeout"] = str(CONNECT_TIMEOUT)
        with psycopg.connect(**params, autocommit=True) as conn:  # type: ignore[arg-type]
            conn.execute(sql.encode())


# --------------------------------------------------------------------------- pgmgr run


def run_command(
    argv: Sequence[str],
    *,
    version: str | None = None,
    settings: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    on_ready: Callable[[TemporaryInstance], None] | None = None,
    signals: list[int] | None = None,
) -> int:
    """Run ``argv`` against a temporary instance and return its exit code.

    Signals (SIGINT, SIGTERM, SIGHUP) go to the command; the instance is removed once it has
    exited. A signal before the command starts ends the run once the set-up step under way
    has finished (it is never raised into the middle of it, where it could strand a
    half-made file); one during clean-up is ignored.
    A command killed by a signal gives ``128 + signal``; so does a run this process was
    interrupted in (130 for Ctrl-C), whatever the command returned.

    The signals this process received are appended to ``signals``, so that the caller can
    tell an interrupted run from a command's own exit code.

    :raises CommandNotRun: the command cannot be executed (exit code 127); checked before
        anything is made, so nothing is started for a command that does not exist.
    """
    if not argv:
        raise CommandNotRun("", FileNotFoundError(2, "no command"))
    check_runnable(argv[0])
    relay = _Relay()
    if signals is not None:
        relay.received = signals
    previous = {s: signal.signal(s, relay) for s in FORWARDED}
    tmp = TemporaryInstance(version, settings)
    try:
        try:
            tmp.start(timeout)
        except PgmgrError:
            if relay.received:  # failed after a signal came: that is the answer (initdb and
                # postgres run in sessions of their own: a Ctrl-C reaches pgmgr only,
                # which finishes the start, short, then stops it)
                return 128 + relay.received[0]
            raise
        if relay.received:
            return 128 + relay.received[0]
        if on_ready is not None:
            on_ready(tmp)
        child = relay.launch(argv, {**ownconn.user_environ(), **tmp.environment()})
        if child is None:
            return 128 + relay.received[0]
        code = child.wait()
    finally:
        for s in FORWARDED:
            signal.signal(s, signal.SIG_IGN)  # clean-up must finish
        try:
            if relay.child is not None and relay.child.poll() is None:
                relay.child.wait()
            tmp.close()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
    if relay.received:
        return 128 + relay.received[0]
    return 128 - code if code < 0 else code


class _Relay:
    """The signal handler of :func:`run_command`.

    Before the command exists, a signal is only recorded (the run ends at the next step).
    While it is being launched, signals are held: the new process must not be lost, or it
    would outlive the run. Once it exists they are forwarded to it.
    """

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.launching = False
        self.received: list[int] = []
        self.held: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.launching:
            self.held.append(signum)
        elif self.child is not None:
            self.forward(signum)

    def forward(self, signum: int) -> None:
        if self.child is not None and self.child.poll() is None and not _terminal_sent(signum):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child.pid, signum)

    def launch(self, argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes] | None:
        """The running command, or None when a signal came first.

        :raises CommandNotRun: the command cannot be executed.
        """
        self.launching = True
        try:
            if self.received:
                return None
            self.child = subprocess.Popen(list(argv), env=env)
        except OSError as e:
            raise CommandNotRun(argv[0], e) from None
        finally:
            self.launching = False
        for signum in self.held:
            self.forward(signum)
        return self.child


def _terminal_sent(signum: int) -> bool:
    """Whether a SIGINT most likely came from the terminal, which sent it to the command
    too (it is in our foreground process group); forwarding it would deliver it twice."""
    if signum != signal.SIGINT:
        return False
    try:
        return os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False
