"""The library API: ``Manager``, after the seed's ``servermgr.postgres.Manager``.

    from pgmgr import Manager

    with Manager("127.0.0.1", 5433, "/srv/pg/data", initialize=True) as pg:
        psycopg.connect(pg.dsn)

Differences from the seed, all additive: an existing data directory's ``PG_VERSION`` pins the
major version; ``stop`` takes a mode; the object is a context manager; ``dsn``, ``url`` and
``status()`` exist; the server can be found and stopped from another process.

The context manager stops only a server this object started: entering a ``with`` block on a
server that is already running uses it and leaves it running. (``stop()`` called explicitly
stops the server whoever started it, as the seed's does.)

Every data directory a Manager opens is registered (``register=False`` opts out) so that
``pgmgr status`` and the other commands see it. Such a record is marked as made by the
library, and is forgotten by the next ``pgmgr status`` once its data directory is gone (a
test's temporary directory, say): it cannot clutter the list forever. Instances made with
the CLI stay listed as ``missing`` instead.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from pgmgr.core import dirlock, managerargs, registry, server, stopmark, stopwait
from pgmgr.core.errors import (
    DatabaseException,
    PgmgrError,
    VersionNotFound,
    WorkerError,
    describe_os_error,
)
from pgmgr.core.instance import Server, StartResult, Status
from pgmgr.core.locked import SWITCHED, locked
from pgmgr.core.server import InitOptions

#: Keyword options accepted by :class:`Manager` besides the seed's parameters.
OPTIONS = {
    "settings": "dict of server settings, passed as -c name=value",
    "user": "OS user that runs postgres when the caller is root (default: data dir owner, "
    "else 'postgres')",
    "socket_dir": "directory for the unix socket (default: a private 0700 dir)",
    "log_file": "server log (default: <state dir>/logs/<name>.log)",
    "superuser": "database superuser created by initdb (default 'postgres')",
    "auth": "'scram-sha-256' (default: TCP needs the generated password) or 'trust'",
    "password": "superuser password (default: generated, kept in the record, mode 0600)",
    "name": "instance name in pgmgr's registry (default: the data dir's basename)",
    "register": "keep a record so the CLI sees this instance (default True)",
    "encoding": "initdb encoding (default UTF8)",
    "locale": "initdb locale (default C)",
    "initdb_args": "extra initdb arguments (list of strings)",
    "stop_mode": "default shutdown mode: smart, fast (default) or immediate",
}


class Manager:
    """Postgres manager object.

    :param host: the interface to listen on: loopback only (default 127.0.0.1; also ::1,
        localhost, a comma-separated list of those, or '' for the socket only).
    :param port: the port to listen on (an int, or a string of digits).
    :param db_dir: the database data directory.
    :param initialize: initialize the data directory iff it does not exist yet (an empty
        directory counts as not existing).
    :param pg_version: PostgreSQL version ('15', '15.4'); else ``POSTGRES_VERSION``, else the
        default set with ``pgmgr versions --set-default``, else the highest under
        /usr/lib/postgresql, else the highest found. An existing data
        directory's major version wins, and asking for another one is an error.
    :param kwargs: see :data:`OPTIONS`.
    :raises DatabaseException: initialization failed (initdb's stderr is kept), a version
        mismatch, or a bad argument or option value (of the wrong type too: see
        :mod:`pgmgr.core.managerargs`; ``None`` for an option means its default).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5432,
        db_dir: str | os.PathLike[str] = "",
        initialize: bool = False,
        pg_version: str = "",
        **kwargs: Any,
    ) -> None:
        unknown = set(kwargs) - set(OPTIONS)
        if unknown:
            raise TypeError(
                f"Manager() got unknown option(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(OPTIONS)}"
            )
        self.host = managerargs.host(host)
        self.port = managerargs.port(port)
        self.db_dir = managerargs.path(db_dir, "db_dir")
        self.pg_version = managerargs.version(pg_version)
        self.kwargs = kwargs = managerargs.options(kwargs)
        self._started: int | None = None  # the pid of the server this object started
        self._owner = os.getpid()  # the process that started it (see __exit__)
        self._depth = 0  # open ``with`` blocks on this object: only the outermost stops
        self._stopping: int | None = None  # the pid a stop(wait=False) left shutting down
        self.stop_mode: str = kwargs.get("stop_mode", "fast")
        if self.stop_mode not in server.STOP_SIGNALS:
            raise DatabaseException(f"invalid stop_mode {self.stop_mode!r}")
        with _seed_errors():
            self._open(initialize)

    def _open(self, initialize: bool) -> None:
        kwargs = self.kwargs
        self.settings = server.check_settings(kwargs.get("settings") or {})
        if kwargs.get("socket_dir"):
            server.check_socket_dir_text(kwargs["socket_dir"])
        self._server = Server.for_datadir(
            self.db_dir,
            name=kwargs.get("name"),
            version=self.pg_version,
            register=bool(kwargs.get("register", True)),
        )
        inst = self._server.inst
        if inst.name not in registry.names():  # a new record: see registry.prune_vanished
            inst.origin = "library"
        if kwargs.get("log_file"):
            inst.log_file = kwargs["log_file"]  # absolute: see managerargs
        # For a data directory made elsewhere only the caller knows these; initdb sets them
        # itself below otherwise.
        if kwargs.get("superuser"):
            inst.superuser = kwargs["superuser"]
        if kwargs.get("password") is not None:
            inst.password = kwargs["password"]
        pf = self._server.running()
        if pf is not None:
            self._server._adopt(pf)  # where it really listens
        else:
            # url, dsn and health() before start() name this object's address, never the
            # record's or the default 5432 (another server there would get the password).
            inst.host, inst.port = self.host, self.port
        if initialize and not server.is_datadir(self.db_dir):
            opts = InitOptions(
                superuser=kwargs.get("superuser", "postgres"),
                auth=kwargs.get("auth", "scram-sha-256"),
                encoding=kwargs.get("encoding", "UTF8"),
                locale=kwargs.get("locale", "C"),
                extra=tuple(kwargs.get("initdb_args") or ()),
            )
            if opts.auth not in server.AUTH_METHODS:
                raise DatabaseException(
                    f"invalid auth {opts.auth!r}: use {', '.join(server.AUTH_METHODS)}"
                )
            self._check_port()
            with dirlock.lock(self.db_dir):
                self._server.initialize(
                    opts, user=kwargs.get("user"), password=kwargs.get("password")
                )

    def _check_port(self) -> None:
        """Before a data directory is initialized for it: a port its server could never
        listen on (a low one, :func:`listen.check_port`) is refused, as ``start --init``
        refuses it (it was initialized and registered, and every start failed). A busy
        one is not: it may be free by :meth:`start`.

        :raises PortPrivileged: see :func:`listen.check_port`.
        """
        from pgmgr.core import listen

        try:
            su = self._server.user(self.kwargs.get("user"))
            postgres = self._server.installation().bindir / "postgres"
        except PgmgrError:  # said by the init
            return
        listen.check_port(self.host, self.port, su, postgres, taken_ok=True)

    # ---------------------------------------------------------------- seed API

    @property
    def process(self) -> Any:
        """The ``subprocess.Popen`` of the server this object started, else None."""
        return self._server.child

    def start(self, wait: bool = True, timeout: float = 10.0) -> StartResult:
        """Launch the postgres process (a no-op when it is already running).

        :param wait: call :meth:`ready_wait` after starting the subprocess.
        :param timeout: the ``ready_wait`` timeout.
        :raises OSError: postgres cannot be launched.
        :raises WorkerError: it exited during start-up or was not ready in time.
        """
        timeout = managerargs.timeout(timeout)
        self._await_own_stop(timeout)
        # the record as a switch (upgrade, restore) we waited behind left it, with this
        # object's own settings kept
        with _seed_errors(launch=True), locked(self._server, only=SWITCHED):
            result = self._server.start(
                host=self.host,
                port=self.port,
                settings=self.settings,
                socket_dir=self.kwargs.get("socket_dir"),
                user=self.kwargs.get("user"),
                version=self.pg_version,
                timeout=timeout,
                wait=wait,
            )
        if not result.already_running:
            self._started, self._owner = result.pid, os.getpid()
        elif result.pid != self._started:  # running, but not the one this object started
            self._started = None
        return result

    def _await_own_stop(self, timeout: float) -> None:
        """A ``stop(wait=False)`` of this object left its server shutting down: wait (up to
        ``timeout``) for it to exit, so that this start starts a new one. The start took
        the server still shutting down for a running one (``already_running``, gone a
        moment later), or waited for it to be ready and raised "exited during start-up"."""
        pid, self._stopping = self._stopping, None
        if pid is None:
            return
        import subprocess

        from pgmgr.core import process

        child = self._server.child
        if child is not None and child.pid == pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout)
        else:
            with _seed_errors():
                process.wait_gone(pid, self.db_dir, timeout)

    def ready_wait(self, timeout: float = 10.0, verbose: bool = False) -> None:
        """Wait until the server is responding; kill it if it is not ready in time.

        :raises WorkerError: no subprocess, or not ready within ``timeout``.
        """
        timeout = managerargs.timeout(timeout)
        child = self._server.child
        # One this object stopped is no start-up to wait for: the server running there now
        # (another's start), else none (it said "exited during start-up" for both).
        stopped = child is not None and self._started is None and child.poll() is not None
        try:
            if stopped:
                self._server.child = None
            with _seed_errors():
                pf = self._server.ready_wait(timeout)
        finally:
            if stopped and self._server.child is None:
                self._server.child = child
        if verbose:
            print(f"postgres (pid {pf.pid}) ready on port {pf.port}")

    def health(self) -> None:
        """:raises WorkerError: we cannot connect to the database."""
        with _seed_errors():
            self._server.health()

    def stop(self, wait: bool = True, mode: str | None = None, timeout: float = 60.0) -> bool:
        """Terminate the server (fast shutdown unless ``mode`` says otherwise).

        :param wait: wait for the server to exit.
        :returns: False if it was not running.
        :raises WorkerError: it did not exit within ``timeout``.
        """
        mode = mode or self.stop_mode
        timeout = managerargs.timeout(timeout)
        if not isinstance(mode, str) or mode not in server.STOP_SIGNALS:
            raise DatabaseException(f"invalid stop mode {mode!r}: use smart, fast or immediate")
        _check_visible(self.db_dir)
        # a weaker stop in progress (another process's) is escalated: see stopwait
        with _seed_errors(), stopwait.locked(self._server, mode, timeout, only=SWITCHED) as took:
            pf, child = self._server.running(), self._server.child
            pid = pf.pid if pf is not None else getattr(child, "pid", None)
            stopped = self._server.stop(mode, timeout, wait)
            self._stopping = None if wait or not stopped else pid
            self._started = None  # what runs there next is not this object's
            # stopped on purpose now, as by 'pgmgr stop': see pgmgr.core.stopmark
            stopmark.clear_saved(self._server)
            return stopped or took is not None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the server process to exit."""
        timeout = managerargs.timeout(timeout, none_ok=True)
        _check_visible(self.db_dir)
        with _seed_errors():
            return self._server.wait(timeout)

    # ---------------------------------------------------------------- beyond the seed

    def status(self, check: bool = False) -> Status:
        with _seed_errors():
            return self._server.status(check)

    @property
    def name(self) -> str:
        return self._server.inst.name

    @property
    def password(self) -> str | None:
        return self._server.inst.password

    @property
    def socket_dir(self) -> str | None:
        return self._server.inst.socket_dir

    @property
    def dsn(self) -> str:
        """libpq key=value string over TCP (with the password)."""
        return self._server.dsn(tcp=bool(self.host))

    @property
    def url(self) -> str:
        """``postgresql://`` URI over TCP (with the password)."""
        return self._server.url(tcp=bool(self.host))

    @property
    def started(self) -> bool:
        """This object started the server (not merely found it running), in this process
        (not in the one a child was forked from), and has not stopped it since."""
        return self._started is not None and self._owner == os.getpid()

    def __enter__(self) -> Manager:
        self.start()
        self._depth += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server if this object started it; one that was already running when
        the block began (started by someone else) is left running, as pytest-postgresql's
        ``noproc`` fixtures leave theirs. In a process forked inside the block, leaving it
        (a ``sys.exit()`` in the child) leaves the server to the process that started it,
        as testing.postgresql does: it stopped the parent's server under it. The stop goes
        past another pgmgr holding the instance's lock (see :meth:`_stop_own_child`).
        A block nested in another on the same object leaves the server to the outer one:
        its exit stopped the server while the outer block still used it."""
        self._depth = max(self._depth - 1, 0)
        if self._depth or not self.started:
            return
        try:
            self.stop()
        except WorkerError:
            self.stop(mode="immediate")
        except PgmgrError:
            if not self._stop_own_child():
                raise
        self._started = None

    def _stop_own_child(self) -> bool:
        """The stop could not even begin (another pgmgr held the instance's lock for its
        whole wait, Busy): the server this object spawned goes all the same, by its own
        signals (fast, then immediate and SIGKILL after 30 s). It was left running, and
        the block raised. False when it is not this object's child (nothing done).
        """
        from pgmgr.core import startchild

        child = self._server.child
        if child is None or child.pid != self._started or child.poll() is not None:
            return False
        startchild.cancel_start(self._server)
        return True

    def __repr__(self) -> str:
        return f"Manager({self.host!r}, {self.port!r}, {str(self.db_dir)!r})"


def _check_visible(datadir: Path) -> None:
    """Whether a server runs in ``datadir`` is known only from its ``postmaster.pid``: one
    this user may not read (another user's data directory) made ``stop()`` return False,
    "not running", and ``wait()`` return at once, while the server ran on.

    :raises DataDirNotFound: ``postmaster.pid`` cannot be read (permission denied).
    """
    from pgmgr.core.state import DataDirNotFound

    try:
        os.close(os.open(datadir / "postmaster.pid", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    except PermissionError:
        raise DataDirNotFound(
            datadir,
            "cannot be read (permission denied): whether a server runs there is unknown",
            hint="run this as the user who runs the server (or as root)",
        ) from None
    except OSError:  # none (not running), or no such directory: nothing runs there
        pass


@contextlib.contextmanager
def _seed_errors(launch: bool = False) -> Iterator[None]:
    """The seed's exception contract: what pgmgr raises about a data directory or an option
    (a usage error, a busy lock, no such data directory) reaches the caller as a
    :class:`DatabaseException`; :class:`WorkerError` passes as it is. So does ``OSError``
    in ``start()`` (``launch``: the seed's "postgres fails to launch"), of the same class
    and errno but saying what failed in pgmgr's words; elsewhere one (a
    state directory that is a file, say: it was a raw NotADirectoryError from the
    constructor and from ``stop()``) is a :class:`DatabaseException` saying what failed."""
    try:
        yield
    except VersionNotFound as e:  # the version is this API's pg_version, not the CLI's flag
        e.message = e.message.replace("(from --version)", "(from pg_version)")
        e.args = (e.message,)
        raise
    except (DatabaseException, WorkerError):
        raise
    except PgmgrError as e:
        raise DatabaseException(e.message, hint=e.hint) from e
    except OSError as e:
        if launch:  # OSError(errno, ...) is the errno's subclass (NotADirectoryError...)
            raise OSError(e.errno, describe_os_error(e)) from e
        raise DatabaseException(describe_os_error(e)) from e
