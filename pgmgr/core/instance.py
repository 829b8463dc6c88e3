"""One PostgreSQL instance: initialize, start, wait, stop, inspect.

:class:`Server` holds an :class:`~pgmgr.core.registry.Instance` record and does the work;
the CLI (``pgmgr.commands``) and the library (:class:`pgmgr.Manager`) are both thin layers
over it. The live truth is always ``postmaster.pid`` plus the process table, so a server
started by one process is found and stopped by another.

The work of most methods lives in modules loaded when it is needed, never by 'pgmgr
status': the start machinery in :mod:`pgmgr.core.startup` and :mod:`pgmgr.core.startchild`,
stopping in :mod:`pgmgr.core.shutdown`, finding or making a data directory's record and its
binaries in :mod:`pgmgr.core.enroll`, the identity check before acting in
:mod:`pgmgr.core.pinning`. The status model and its computation are in
:mod:`pgmgr.core.state`, SQL and conninfo quoting in :mod:`pgmgr.core.pgtext`; the names
callers used from here are still reachable here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pgmgr.core import (
    identity,
    ownconn,
    paths,
    privileges,
    process,
    registry,
    server,
    state,
    versions,
)
from pgmgr.core.errors import (
    WorkerError,
)
from pgmgr.core.paths import check_path_text as check_path_text
from pgmgr.core.registry import Instance
from pgmgr.core.server import InitOptions
from pgmgr.core.state import BUILDING as BUILDING
from pgmgr.core.state import DataDirNotFound as DataDirNotFound
from pgmgr.core.state import Status as Status
from pgmgr.core.state import crashed_detail as crashed_detail
from pgmgr.core.state import unfinished as unfinished

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    import subprocess
    from typing import Any

    from pgmgr.core.pgtext import new_password as new_password
    from pgmgr.core.pgtext import quote_ident as quote_ident
    from pgmgr.core.pgtext import quote_literal as quote_literal
    from pgmgr.core.startup import AUTO_PORT_TRIES as AUTO_PORT_TRIES
    from pgmgr.core.startup import ServerStopping as ServerStopping
    from pgmgr.core.stopwait import Note

#: moved to :func:`pgmgr.core.state.why_missing`
_why_missing = state.why_missing


@dataclass
class StartResult:
    """What :meth:`Server.start` did: the record, whether it was running, how long it took."""

    instance: Instance
    already_running: bool
    pid: int
    elapsed: float


def default_log_file(name: str) -> Path:
    return paths.state_dir() / "logs" / f"{name}.log"


class Server:
    """An instance and the operations on it. Not thread-safe; one per data directory."""

    def __init__(
        self,
        inst: Instance,
        *,
        register: bool = True,
        new: bool = False,
        name_base: str | None = None,
    ) -> None:
        self.inst = inst
        self.register = register
        #: not registered yet: the first save creates the record (see registry.create), with
        #: a free name derived from ``name_base`` when the name was generated
        self.new = new
        self.name_base = name_base
        #: the first save found the data directory registered already (by another spelling
        #: of its path, or by another process meanwhile) and took that record instead
        self.adopted = False
        #: things the user should know that are not errors (the CLI prints them)
        self.notes: list[str] = []
        self.child: subprocess.Popen[bytes] | None = None
        #: A temporary server: postgres is stopped when this process dies (even SIGKILL).
        self.die_with_parent = False
        self._log_offset = 0
        #: Why the last stop could not update the record (it still stopped), else None.
        self.record_error: str | None = None
        #: The stronger stop that ended the last stop's wait (see pgmgr.core.stopwait).
        self.ended_by: Note | None = None
        #: The command that builds this instance (import, replica) may start it while the
        #: record still carries its ``pending`` mark; nothing else may.
        self.building = False
        #: This process put the data directory in place (:func:`pgmgr.core.initdir.build`):
        #: a clean-up interrupted before it was told so knows the directory is its own.
        self.built = False
        #: The stop mark this process saved for the command at work (see
        #: :mod:`pgmgr.core.stopmark`) until the server is seen ready again: a start
        #: that spawns without waiting clears the record's at the spawn already.
        self.marked: dict[str, Any] | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def for_datadir(
        cls,
        datadir: Path,
        *,
        name: str | None = None,
        version: str | None = None,
        register: bool = True,
    ) -> Server:
        """The registered instance of ``datadir``, or a new record (not yet saved): see
        :func:`pgmgr.core.enroll.for_datadir`.

        :raises DatabaseException: the version asked for is not the data directory's.
        """
        from pgmgr.core import enroll

        return enroll.for_datadir(cls, datadir, name=name, version=version, register=register)

    @classmethod
    def load(cls, name_or_dir: str) -> Server:
        """By instance name, or by data directory path (anything with a '/', or '.')."""
        if (
            "/" in name_or_dir
            or name_or_dir in (".", "..")
            or not registry.NAME_RE.match(name_or_dir)
        ):
            datadir = Path(os.path.abspath(name_or_dir))
            identity.check_links(datadir)
            inst = registry.find_by_datadir(datadir)
            if inst is None:
                if not server.is_datadir(datadir):
                    raise DataDirNotFound(datadir, state.why_missing(datadir))
                return cls.for_datadir(datadir)
            return cls(inst)
        return cls(registry.load(name_or_dir))

    # ------------------------------------------------------------------ facts

    @property
    def datadir(self) -> Path:
        return self.inst.path

    def installation(self, requested: str | None = None) -> versions.Installation:
        """The binaries for this instance (see :func:`pgmgr.core.enroll.installation`).

        :raises DatabaseException: ``requested`` names another major than the data dir's.
        """
        from pgmgr.core import enroll

        return enroll.installation(self, requested)

    def user(self, requested: str | None = None) -> privileges.ServerUser | None:
        return privileges.server_user(self.datadir, requested or self.inst.server_user or None)

    @property
    def log_offset(self) -> int:
        """Where in :attr:`log_file` the last :meth:`start` of this object began writing."""
        return self._log_offset

    @property
    def log_file(self) -> Path:
        return Path(self.inst.log_file or default_log_file(self.inst.name))

    # ------------------------------------------------------------------ identity

    def pinned(self) -> identity.Identity | None:
        """The data directory's identity as recorded, or None (an older record)."""
        if self.inst.dev is None or self.inst.ino is None:
            return None
        return identity.Identity(self.inst.dev, self.inst.ino, self.inst.system_id)

    def pin(self) -> bool:
        """Record the identity of the data directory now at the path; False if it cannot
        be proved (see :func:`pgmgr.core.pinning.pin`)."""
        from pgmgr.core import pinning

        return pinning.pin(self)

    def check_identity(self, action: str) -> None:
        """Before acting on the instance: the directory at the recorded path must still be
        the recorded one (see :func:`pgmgr.core.pinning.check_identity`).

        :raises IdentityChanged: it was moved or replaced (exit code 4).
        """
        from pgmgr.core import pinning

        pinning.check_identity(self, action)

    def follow_switch(self, save: bool = True) -> bool:
        """Whether the directory at the path is this instance as restored or upgraded by
        pgmgr under another registration of it (see :func:`pgmgr.core.rebind.follow_switch`)."""
        from pgmgr.core import rebind

        return rebind.follow_switch(self, save)

    def save(self) -> None:
        if not self.register:
            return
        if self.new and self.pinned() is None:
            self.pin()
        if self.new:
            saved = registry.create(self.inst, name_base=self.name_base)
            self.adopted = saved is not self.inst
            self.inst = saved
            self.new = False
        else:
            registry.save(self.inst)

    # ------------------------------------------------------------------ init

    def initialize(
        self,
        opts: InitOptions,
        *,
        user: str | None = None,
        password: str | None = None,
        template: bool = True,
        new: bool = False,
    ) -> bool:
        """Initialize the data directory if it is absent or empty; register it either way
        (with ``new``, refuse a data directory found there: see :func:`initdir.initialize`).

        With ``template`` (the default) it is a copy of a cached initdb result when one can
        serve ``opts`` (see :mod:`pgmgr.core.template`); the password is then set on the
        first start.

        :returns: True if it was initialized, False if it already was a data directory.
        :raises DatabaseException: a non-empty directory that is not a data directory.
        """
        from pgmgr.core import initdir

        return initdir.initialize(
            self, opts, user=user, password=password, template=template, new=new
        )

    # ------------------------------------------------------------------ start

    def running(self) -> process.PidFile | None:
        return process.running_postmaster(self.datadir)

    def start(
        self,
        *,
        host: str | None = None,
        port: int | str | None = None,
        settings: Mapping[str, str] | None = None,
        socket_dir: str | None = None,
        user: str | None = None,
        version: str | None = None,
        timeout: float = 10.0,
        wait: bool = True,
    ) -> StartResult:
        """Start the server unless it is running already.

        ``port`` is a number, ``"auto"`` (a free port), or None (the last one, else 5432).

        :raises DataDirNotFound: no data directory.
        :raises PortInUse: the port is taken (a clear hint suggests ``--port auto``).
        :raises WorkerError: postgres exited during start-up, or was not ready in time.
        :raises OSError: postgres could not be executed.
        """
        if self.inst.pending and not self.building:
            raise unfinished(self.inst, "started")
        from pgmgr.core import startup

        return startup.start(
            self,
            host=host,
            port=port,
            settings=settings,
            socket_dir=socket_dir,
            user=user,
            version=version,
            timeout=timeout,
            wait=wait,
        )

    def _adopt(self, pf: process.PidFile) -> None:
        self.inst.pid = pf.pid
        if pf.start_time:
            self.inst.started_at = float(pf.start_time)
        if pf.port:
            self.inst.port = pf.port
        if pf.socket_dir:
            self.inst.socket_dir = pf.socket_dir

    def ready_wait(self, timeout: float = 10.0) -> process.PidFile:
        """Wait until the server accepts connections; on timeout kill it.

        :raises WorkerError: no process, it exited, or it was not ready in time.
        """
        from pgmgr.core import startchild

        return startchild.ready_wait(self, timeout)

    # ------------------------------------------------------------------ stop

    def stop(
        self, mode: str = "fast", timeout: float | None = 60.0, wait: bool = True,
        *, record: bool = True,
    ) -> bool:  # fmt: skip
        """Stop the server if it runs (see :func:`pgmgr.core.shutdown.stop`).

        :returns: False if it was not running.
        :raises WorkerError: it did not stop within ``timeout`` (says what holds it).
        :raises IdentityChanged: the data directory was moved or replaced.
        """
        from pgmgr.core import shutdown

        return shutdown.stop(self, mode, timeout, wait, record=record)

    def _save_after_stop(self) -> None:
        from pgmgr.core import shutdown

        shutdown.save_after_stop(self)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the server to exit; its exit code when this process started it."""
        from pgmgr.core import shutdown

        return shutdown.wait(self, timeout)

    def _reap(self) -> None:
        from pgmgr.core import shutdown

        shutdown.reap(self)

    # ------------------------------------------------------------------ status

    def status(self, check: bool = False) -> Status:
        st = state.status(self, check)
        if self.inst.pending and st.state not in ("moved", "replaced"):
            state.unfinished_state(self, st)
        return st

    # ------------------------------------------------------------------ connections

    def conninfo(self, tcp: bool | None = None) -> dict[str, str]:
        """Connection parameters; over the socket unless ``tcp`` (or no socket is known)."""
        inst = self.inst
        use_tcp = tcp if tcp is not None else not inst.socket_dir
        params = {"user": inst.superuser, "dbname": "postgres", "port": str(inst.port or 5432)}
        if use_tcp:
            params["host"] = (
                (inst.host.split(",")[0].strip() or "127.0.0.1") if inst.host else "127.0.0.1"
            )
            if inst.password:
                params["password"] = inst.password
        else:
            params["host"] = str(inst.socket_dir)
        return params

    def url(self, tcp: bool | None = None) -> str:
        """A ``postgresql://`` URI that psql and psycopg accept."""
        p = self.conninfo(tcp)
        user = quote(p["user"], safe="")
        if p["host"].startswith("/"):
            return (
                f"postgresql://{user}@/{quote(p['dbname'], safe='')}"
                f"?host={quote(p['host'], safe='')}&port={p['port']}"
            )
        auth = user + (":" + quote(p["password"], safe="") if "password" in p else "")
        host = f"[{p['host']}]" if ":" in p["host"] else p["host"]
        return f"postgresql://{auth}@{host}:{p['port']}/{quote(p['dbname'], safe='')}"

    def dsn(self, tcp: bool | None = None) -> str:
        from pgmgr.core.pgtext import dsn_quote

        return " ".join(f"{k}={dsn_quote(v)}" for k, v in self.conninfo(tcp).items())

    def health(self, timeout: int = 2) -> float:
        """Connect and run ``SELECT 1``; the round trip in seconds.

        :raises WorkerError: the connection or the query failed.
        """
        import psycopg  # only here: it costs ~120 ms to import

        t0 = time.monotonic()
        try:
            with psycopg.connect(ownconn.dsn(self), connect_timeout=timeout) as conn:
                conn.execute("SELECT 1").fetchone()
        except psycopg.Error as e:
            from pgmgr.core.readyfirst import cannot_connect

            raise WorkerError(cannot_connect(self, e)) from None
        return time.monotonic() - t0


_MOVED = {
    "pgtext": {"new_password", "quote_ident", "quote_literal"},
    "startup": {"AUTO_PORT_TRIES", "ServerStopping"},
}


def __getattr__(name: str) -> object:
    """Names that moved to :mod:`pgmgr.core.pgtext` and :mod:`pgmgr.core.startup`, for
    callers that still use them from here; imported on first use."""
    import importlib

    for module, names in _MOVED.items():
        if name in names:
            return getattr(importlib.import_module(f"pgmgr.core.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
