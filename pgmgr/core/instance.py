"""One PostgreSQL instance: initialize, start, wait, stop, inspect.

:class:`Server` holds an :class:`~pgmgr.core.registry.Instance` record and does the work;
the CLI (``pgmgr.commands``) and the library (:class:`pgmgr.Manager`) are both thin layers
over it. The live truth is always ``postmaster.pid`` plus the process table, so a server
started by one process is found and stopped by another.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote

from pgmgr.core import (
    identity,
    logfile,
    paths,
    privileges,
    process,
    registry,
    server,
    versions,
)
from pgmgr.core.errors import (
    EXIT_NO_INSTANCE,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    DatabaseException,
    InstanceNotFound,
    NotRunning,
    PortInUse,
    UsageError,
    WorkerError,
)
from pgmgr.core.registry import Instance
from pgmgr.core.server import InitOptions, ServerExited

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    import subprocess
    from typing import Any

AUTO_PORT_TRIES = 5


class DataDirNotFound(InstanceNotFound, DatabaseException):
    """No data directory at that path: exit code 4 for the CLI, and a
    :class:`DatabaseException` for the seed API's ``except DatabaseException``. The default
    hint offers ``pgmgr init`` only where init could make one (a missing or empty
    directory); ``hint`` replaces it."""

    def __init__(self, datadir: Path, why: str = "does not exist", hint: str | None = None) -> None:
        self.datadir = datadir
        self.why = why
        if hint is None:
            hint = (
                f"create it with 'pgmgr init -d {datadir}' (or start it with --init)"
                if _could_init(datadir)
                else "'pgmgr status' lists the instances pgmgr knows"
            )
        super().__init__(f"data directory {datadir} {why}", hint=hint)


def _could_init(datadir: Path) -> bool:
    """``pgmgr init -d datadir`` could make a data directory there: absent, or empty."""
    try:
        return not datadir.exists() or (datadir.is_dir() and not any(datadir.iterdir()))
    except OSError:
        return False


class ServerStopping(NotRunning):
    """A start found the server shutting down (exit code 3: it will not be running)."""

    def __init__(self, name: str, pid: int) -> None:
        self.name = name
        self.pid = pid
        super().__init__(
            f"'{name}' (pid {pid}) is shutting down: a stop is waiting for its clients "
            "to disconnect, or finishing a checkpoint",
            hint=f"wait until 'pgmgr status {name}' says stopped and start it again, or "
            f"end the client sessions now with 'pgmgr stop {name} -m fast'",
        )


@dataclass
class Status:
    """What ``pgmgr status`` reports for one instance; ``state`` decides the exit code."""

    name: str
    state: str  # running | starting | stopping | stopped | crashed | missing | moved | replaced
    datadir: str
    version: str
    host: str
    port: int | None
    socket_dir: str | None
    pid: int | None = None
    started_at: float | None = None
    log_file: str | None = None
    url: str | None = None
    detail: str | None = None
    latency_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.state in ("running", "starting", "stopping"):
            return EXIT_OK
        if self.state in ("missing", "moved", "replaced"):
            return EXIT_NO_INSTANCE
        return EXIT_NOT_RUNNING

    @property
    def uptime(self) -> float | None:
        if self.started_at is None or self.state != "running":
            return None
        return max(0.0, time.time() - self.started_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "pid": self.pid,
            "version": self.version,
            "host": self.host,
            "port": self.port,
            "socket_dir": self.socket_dir,
            "datadir": self.datadir,
            "started_at": self.started_at,
            "uptime": None if self.uptime is None else round(self.uptime, 3),
            "log_file": self.log_file,
            "url": self.url,
            "detail": self.detail,
            "latency_ms": self.latency_ms,
            **self.extra,
        }


@dataclass
class StartResult:
    """What :meth:`Server.start` did: the record, whether it was running, how long it took."""

    instance: Instance
    already_running: bool
    pid: int
    elapsed: float


def new_password() -> str:
    import secrets

    return secrets.token_urlsafe(18)


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
        #: things the user should know that are not errors (the CLI prints them)
        self.notes: list[str] = []
        self.child: subprocess.Popen[bytes] | None = None
        #: A temporary server: postgres is stopped when this process dies (even SIGKILL).
        self.die_with_parent = False
        self._log_offset = 0
        #: Why the last stop could not update the record (it still stopped), else None.
        self.record_error: str | None = None

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
        """The registered instance of ``datadir``, or a new record (not yet saved).

        A data directory's ``PG_VERSION`` pins the major version.

        :raises DatabaseException: the version asked for is not the data directory's.
        """
        datadir = check_path_text(Path(os.path.abspath(datadir)), "data directory")
        identity.check_links(datadir)
        inst = registry.find_by_datadir(datadir) if register else None
        if inst is not None:
            srv = cls(inst, register=register)
            if version:
                srv.installation(version)  # refuses a different major
            return srv
        install = pick_installation(datadir, version)
        real = os.path.realpath(datadir)
        if name:
            registry.check_name(name)
            if register and name in registry.names():
                other = registry.load(name)
                if other.datadir != real:
                    raise UsageError(
                        f"instance name {name!r} is already used for {other.datadir}",
                        hint="choose another --name",
                    )
            base = None
        else:
            base = Path(real).name
            name = registry.unique_name(base) if register else base
        inst = Instance(
            name=name,
            datadir=real,
            major=install.major,
            version=install.version,
            bindir=str(install.bindir),
        )
        return cls(inst, register=register, new=True, name_base=base)

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
                    raise DataDirNotFound(datadir, _why_missing(datadir))
                return cls.for_datadir(datadir)
            return cls(inst)
        return cls(registry.load(name_or_dir))

    # ------------------------------------------------------------------ facts

    @property
    def datadir(self) -> Path:
        return self.inst.path

    def installation(self, requested: str | None = None) -> versions.Installation:
        """The binaries for this instance: the recorded ones while they still exist and
        match, else a fresh selection of the same major.

        :raises DatabaseException: ``requested`` names another major than the data dir's.
        """
        on_disk = server.datadir_major(self.datadir)
        major = on_disk or self.inst.major
        if requested:
            requested = check_major(self.datadir, major, requested)
        recorded = Path(self.inst.bindir) / "postgres"
        if not requested and recorded.is_file() and self.inst.major == major:
            return versions.Installation(
                self.inst.major, self.inst.version, Path(self.inst.bindir), "record"
            )
        install = versions.select(requested or major).installation
        self.inst.major, self.inst.version, self.inst.bindir = (
            install.major,
            install.version,
            str(install.bindir),
        )
        return install

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
        """Record the identity of the data directory now at the path (after init, at
        registration, or to fill in an older record). False if it cannot be proved: not
        reachable without untrusted symlinks, or not a complete data directory."""
        try:
            now = identity.probe(self.datadir)
        except (OSError, DatabaseException):
            return False
        if now.system_id is None:
            return False
        self.inst.dev, self.inst.ino, self.inst.system_id = now.dev, now.ino, now.system_id
        return True

    def check_identity(self, action: str) -> None:
        """Before acting on the instance: the directory at the recorded path must still be
        the recorded one. An older record without an identity gets it now, if the directory
        can be proved; a missing directory is left to the caller.

        :raises IdentityChanged: it was moved (the path crosses a symlink another user
            controls) or replaced (exit code 4).
        """
        pinned = self.pinned()
        state, why = identity.compare(pinned, self.datadir)
        if state in (identity.MOVED, identity.REPLACED):
            raise identity.IdentityChanged(self.inst.name, self.inst.datadir, state, why, action)
        if pinned is None and state is None and self.pin() and not self.new:
            self.save()

    def save(self) -> None:
        if not self.register:
            return
        if self.new and self.pinned() is None:
            self.pin()
        if self.new:
            self.inst = registry.create(self.inst, name_base=self.name_base)
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
    ) -> bool:
        """Initialize the data directory if it is absent or empty; register it either way.

        With ``template`` (the default) it is a copy of a cached initdb result when one can
        serve ``opts`` (see :mod:`pgmgr.core.template`); the password is then set on the
        first start.

        :returns: True if it was initialized, False if it already was a data directory.
        :raises DatabaseException: a non-empty directory that is not a data directory.
        """
        datadir = self.datadir
        if datadir.exists() and not datadir.is_dir():
            raise DatabaseException(f"{datadir} exists and is not a directory")
        if server.is_datadir(datadir):
            if self.new and opts.auth != "trust" and self.inst.password is None:
                self._reset_password(password or new_password())
            self.save()
            return False
        install = self.installation()
        su = self.user(user)
        if su is not None:
            privileges.check_reachable(datadir, su, "data directory")
            privileges.check_reachable(install.bindir / "postgres", su, "PostgreSQL binaries")
            self.inst.server_user = su.name
        if opts.auth != "trust" and password is None:
            password = new_password()
        copied = self._build(install, opts, su, password, template)
        self.inst.superuser = opts.superuser
        self.inst.auth = opts.auth
        self.inst.password = password if opts.auth != "trust" else None
        self.inst.password_pending = copied and self.inst.password is not None
        if not self.pin():  # a new directory: whatever the record said before
            raise DatabaseException(
                f"{datadir} changed while it was being initialized (it is no longer the "
                "directory pgmgr built, or crosses another user's symlink); nothing was "
                "registered",
                hint=f"check {datadir} and its parent directories",
            )
        self.save()
        return True

    def _build(
        self,
        install: versions.Installation,
        opts: InitOptions,
        su: privileges.ServerUser | None,
        password: str | None,
        template: bool,
    ) -> bool:
        """Build the cluster in a private work directory and move it into place (see
        :mod:`pgmgr.core.staging`): an interrupted init never leaves a data directory.

        :returns: whether it is a template copy (its password is still to be set).
        """
        from pgmgr.core import staging
        from pgmgr.core import template as tpl

        stage = staging.Stage(self.datadir, su)
        with staging.signals_interrupt():
            stage.open()
            try:
                fin = stage.finish(sync=not opts.no_sync)
                how = tpl.init_from_template(install, fin, opts, user=su) if template else None
                if how is None:  # synced once, by the commit's syncfs
                    lean = replace(opts, no_sync=True)
                    server.initdb(install, stage.data, lean, password=password, user=su)
                    stage.commit(sync=not opts.no_sync)
            except BaseException:
                stage.abort()
                raise
        copied = how is not None
        return copied

    def _reset_password(self, password: str) -> None:
        """Registering a data directory pgmgr knows no password of (made elsewhere, or
        forgotten): a new one is set through the local socket at its next start."""
        self.inst.password = password
        self.inst.password_pending = self.inst.password_reset = True
        self.notes.append(
            f"no password is known for {self.datadir}: a new one was generated for "
            f"'{self.inst.name}' and is set for {self.inst.superuser!r} at its next start "
            "(through the local socket); 'pgmgr url --tcp' shows it"
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
        t0 = time.monotonic()
        datadir = self.datadir
        if socket_dir:
            server.check_socket_dir_text(socket_dir)
        if not server.is_datadir(datadir):
            raise DataDirNotFound(datadir, _why_missing(datadir))
        self.check_identity("start")
        install = self.installation(version)
        pf = self.running()
        if pf is not None:
            pf = self._settle(pf, timeout if wait else 0.0)
            self._record_running(pf)
            # A first start that could not set the template copy's password: try again.
            self._apply_pending_password(install, None)
            return StartResult(self.inst, True, pf.pid, time.monotonic() - t0)
        self._clear_stale_pidfile()
        su = self.user(user)
        if su is not None:
            privileges.check_reachable(datadir, su, "data directory")
            privileges.check_reachable(install.bindir / "postgres", su, "PostgreSQL binaries")
        merged = dict(self.inst.settings)
        merged.update(server.check_settings(settings or {}))
        from pgmgr.core import pgconf  # here: 'pgmgr status' never needs it (~2.5 ms)

        conf = pgconf.write(datadir, merged, su)  # kept settings: reloadable, see pgconf
        host = self.inst.host if host is None else host
        auto = port == "auto"
        for attempt in range(AUTO_PORT_TRIES if auto else 1):
            chosen = self._choose_port(host, port)
            recorded_sockdir = self.inst.socket_dir
            sockdir = server.socket_dir(recorded_sockdir, socket_dir, chosen, su, datadir)
            made_sockdir = (
                not socket_dir and str(sockdir) != recorded_sockdir and sockdir != datadir
            )
            server.clear_stale_socket_lock(sockdir, chosen, datadir)
            if self.new:
                self.save()  # claim the name first: the log file is named after it
            argv = server.postgres_argv(
                install,
                datadir,
                host=host,
                port=chosen,
                socket_dir=sockdir,
                settings={},
                config_file=conf,
            )
            logfile.rotate_as(self.log_file, su)  # bounded: see pgmgr.core.logfile
            self._log_offset = server.open_log_offset(self.log_file)
            child = self._spawn(argv, su)
            self.inst.host, self.inst.port, self.inst.socket_dir = host, chosen, str(sockdir)
            if not wait:
                self._commit_start(su, merged, None)
                return StartResult(self.inst, False, child.pid, time.monotonic() - t0)
            try:
                pf = self.ready_wait(timeout)
            except KeyboardInterrupt:
                self._cancel_start()
                self._drop_sockdir(sockdir, made_sockdir, recorded_sockdir)
                raise
            except ServerExited as e:
                self._drop_sockdir(sockdir, made_sockdir, recorded_sockdir)
                if auto and "already in use" in e.message and attempt + 1 < AUTO_PORT_TRIES:
                    continue  # another server took the port between our check and bind
                if "already in use" in e.message:
                    raise PortInUse(host, chosen) from None
                raise
            except WorkerError:  # not ready in time: ready_wait killed it
                self._drop_sockdir(sockdir, made_sockdir, recorded_sockdir)
                raise
            try:
                self._commit_start(su, merged, pf)
                self._apply_pending_password(install, su)
            except BaseException:
                # A server pgmgr cannot record (state dir unwritable, disk full) or cannot
                # secure (no password) must not be left running behind the error.
                self._cancel_start()
                raise
            return StartResult(self.inst, False, pf.pid, time.monotonic() - t0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _settle(self, pf: process.PidFile, timeout: float) -> process.PidFile:
        """A start of a server that already runs: one shutting down is not running for
        long (exit 3, says what to do); one still starting (crash recovery) is waited for,
        up to ``timeout``, and never killed: this call did not start it.

        :raises ServerStopping: it is shutting down.
        :raises WorkerError: it exited, or was still starting after ``timeout``.
        """
        if pf.status == "stopping":
            raise ServerStopping(self.inst.name, pf.pid)
        if pf.status != "starting" or timeout <= 0:
            return pf
        try:
            offset = server.open_log_offset(self.log_file)
            return server.wait_ready(
                pf.pid, self.datadir, timeout, log_file=self.log_file, log_offset=offset
            )
        except ServerExited:
            raise
        except WorkerError:
            raise WorkerError(
                f"'{self.inst.name}' (pid {pf.pid}) is still starting after {timeout:g} s "
                "(crash recovery, or a standby catching up); it was left running",
                hint=f"see 'pgmgr logs {self.inst.name}', and start again with a longer "
                "--timeout to wait for it",
            ) from None

    def _choose_port(self, host: str, port: int | str | None) -> int:
        if port == "auto":
            return server.free_port(host or "127.0.0.1")
        if port is None:
            if self.inst.port is not None:
                server.check_port(host, self.inst.port)
                return self.inst.port
            port = 5432
        try:
            number = int(port)
        except (TypeError, ValueError):
            raise UsageError(
                f"invalid port {port!r}: a number from 1 to 65535, or 'auto'"
            ) from None
        server.check_port(host, number)
        return number

    def _commit_start(
        self,
        su: privileges.ServerUser | None,
        settings: dict[str, str],
        pf: process.PidFile | None,
    ) -> None:
        self.inst.server_user = su.name if su is not None else None
        self.inst.settings = settings
        self.inst.log_file = str(self.log_file)
        assert self.child is not None
        self.inst.pid = pf.pid if pf else self.child.pid
        self.inst.started_at = float(pf.start_time) if pf and pf.start_time else time.time()
        self.save()

    def _record_running(self, pf: process.PidFile) -> None:
        """Adopt what a running server really uses (its postmaster.pid) into the record: a
        start whose pgmgr was killed before it could save leaves the record behind."""
        before = (self.inst.pid, self.inst.port, self.inst.socket_dir)
        self._adopt(pf)
        if (self.inst.pid, self.inst.port, self.inst.socket_dir) != before:
            self.save()

    def _adopt(self, pf: process.PidFile) -> None:
        self.inst.pid = pf.pid
        if pf.start_time:
            self.inst.started_at = float(pf.start_time)
        if pf.port:
            self.inst.port = pf.port
        if pf.socket_dir:
            self.inst.socket_dir = pf.socket_dir

    def _clear_stale_pidfile(self) -> None:
        """Remove a ``postmaster.pid`` no live postmaster of this data dir stands behind.

        Never while any process still has the data directory as its working directory
        (orphaned backends of a killed postmaster): postgres would refuse anyway, and
        the file is the only thing that keeps a second postmaster out.
        """
        pidfile = self.datadir / process.PIDFILE
        if not pidfile.exists():
            return
        users = process.processes_in(self.datadir)
        if users:
            raise WorkerError(
                f"postgres processes still use {self.datadir} (pids "
                + ", ".join(map(str, users))
                + ") but no postmaster serves it",
                hint="wait for them to exit, or stop them, then start again",
            )
        pf = process.PidFile.read(self.datadir)
        if pf is not None and process.stale_pidfile_reason(pf) is None:
            raise WorkerError(
                f"{pidfile} names pid {pf.pid}, which is not a postgres of this data "
                "directory but was running before the file was written: another postmaster "
                "(in a container, or on another host) may be using it",
                hint=f"if you are sure none is, remove {pidfile} and start again",
            )
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()

    def ready_wait(self, timeout: float = 10.0) -> process.PidFile:
        """Wait until the server accepts connections; on timeout kill it.

        :raises WorkerError: no process, it exited, or it was not ready in time.
        """
        if self.child is None:
            pf = self.running()
            if pf is None:
                raise WorkerError("no server process to wait for")
            pid = pf.pid
        else:
            pid = self.child.pid
        try:
            pf = server.wait_ready(
                pid,
                self.datadir,
                timeout,
                child=self.child,
                log_file=self.log_file,
                log_offset=self._log_offset,
            )
        except ServerExited:
            self._reap()
            raise
        except WorkerError:
            process.signal_pid(pid, server.STOP_SIGNALS["immediate"])
            if not process.wait_gone(pid, self.datadir, 5.0) and self.child is not None:
                # Our own child, never ready, ignoring SIGQUIT (blocked opening a FIFO its
                # user planted as the socket lock, say): it must not outlive the failure.
                process.signal_pid(self.child.pid, signal.SIGKILL)
            self._reap()
            raise
        if self.inst.password_pending:  # a template copy started with wait=False
            self._apply_pending_password(self.installation(), None)
        return pf

    def _spawn(self, argv: list[str], su: privileges.ServerUser | None) -> subprocess.Popen[bytes]:
        """Spawn postgres with Ctrl-C held until the child is known: a Ctrl-C inside
        ``Popen`` (after the exec, before it returns) would otherwise orphan the server."""
        import threading

        got: list[int] = []
        main = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGINT, lambda s, f: got.append(s)) if main else None
        try:
            self.child = server.spawn(argv, self.log_file, su, die_with_parent=self.die_with_parent)
        finally:
            if main:
                signal.signal(signal.SIGINT, old)
        if got:
            self._cancel_start()
            raise KeyboardInterrupt
        return self.child

    def _drop_sockdir(self, sockdir: Path, made: bool, recorded: str | None) -> None:
        """After a failed start, remove the private socket dir this attempt made (each
        failed start would otherwise leave one in the temp dir) and keep the record's."""
        self.inst.socket_dir = recorded
        if made:
            for leftover in sockdir.glob(".s.PGSQL.*"):
                with contextlib.suppress(OSError):
                    leftover.unlink()
            with contextlib.suppress(OSError):
                sockdir.rmdir()

    def _cancel_start(self) -> None:
        """Ctrl-C while waiting for readiness, or a failure to record the server, cancels
        the start: the server this call spawned is stopped (fast; safe at any point of
        start-up) instead of being left running unrecorded in its own session."""
        if self.child is None:
            return
        import subprocess

        process.signal_pid(self.child.pid, server.STOP_SIGNALS["fast"])
        # Our own child: wait for it, not for postmaster.pid (not written yet this early).
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.child.wait(timeout=30)

    def _apply_pending_password(
        self, install: versions.Installation, su: privileges.ServerUser | None
    ) -> None:
        """Set the superuser's password over the private socket on the first start of an
        instance copied from a template (the copy shares the template's catalog)."""
        if not self.inst.password_pending or not self.inst.password:
            return
        role, pw = quote_ident(self.inst.superuser), quote_literal(self.inst.password)
        sql = f"ALTER ROLE {role} PASSWORD {pw}"
        argv = [
            str(install.bin("psql")),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.inst.socket_dir),
            "-p",
            str(self.inst.port),
            "-U",
            self.inst.superuser,
            "-d",
            "postgres",
        ]
        import subprocess

        proc = subprocess.run(
            argv,
            input=sql,
            capture_output=True,
            text=True,
            timeout=30,
            env=server._child_env(None),
            check=False,
        )
        if proc.returncode != 0 and not self.inst.password_reset:
            raise DatabaseException(f"could not set the password: {proc.stderr.strip()}")
        if proc.returncode != 0:  # a re-registered data dir stays as it was: say so
            self.inst.password = None
            self.notes.append(
                f"could not set a new password for '{self.inst.name}' "
                f"({' '.join(proc.stderr.split())}); TCP logins need the one it had"
            )
        elif self.inst.password_reset:
            self.notes.append(f"set the new password of {self.inst.superuser!r}")
        self.inst.password_pending = self.inst.password_reset = False
        self.save()

    # ------------------------------------------------------------------ stop

    def stop(self, mode: str = "fast", timeout: float | None = 60.0, wait: bool = True) -> bool:
        """Stop the server if it runs.

        :returns: False if it was not running.
        :raises WorkerError: it did not stop within ``timeout`` (says what holds it).
        :raises IdentityChanged: the data directory was moved or replaced.
        """
        self.check_identity("stop")
        self.record_error = None
        pf = self.running()
        if pf is None:
            self._reap()
            if self.inst.pid is not None:
                self.inst.pid = None
                self._save_after_stop()
            return False
        if not wait:
            process.signal_pid(pf.pid, server.STOP_SIGNALS[mode])
            return True
        if not server.stop(pf.pid, self.datadir, mode, timeout):
            sessions = process.client_sessions(pf.pid)
            held = f"; {len(sessions)} client session(s) still connected" if sessions else ""
            raise WorkerError(
                f"server (pid {pf.pid}) did not stop within {timeout:g} s in {mode} mode{held}",
                hint="use '-m fast' to disconnect clients, or a longer --timeout",
            )
        self._reap()
        self.inst.pid = None
        self._save_after_stop()
        return True

    def _save_after_stop(self) -> None:
        """The server did stop: a record that cannot be updated (a full or read-only state
        filesystem) does not make that a failure. The stale pid in it is never trusted
        (process truth), so :attr:`record_error` only says why it was not updated."""
        try:
            self.save()
        except OSError as e:
            self.record_error = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the server to exit; its exit code when this process started it."""
        if self.child is not None:
            import subprocess

            try:
                return self.child.wait(timeout)
            except subprocess.TimeoutExpired:
                raise WorkerError(f"server did not exit within {timeout:g} s") from None
        pf = self.running()
        if pf is not None and not process.wait_gone(pf.pid, self.datadir, timeout):
            raise WorkerError(f"server did not exit within {timeout:g} s")
        return None

    def _reap(self) -> None:
        if self.child is not None:
            import subprocess

            with contextlib.suppress(subprocess.TimeoutExpired):
                self.child.wait(timeout=5)

    # ------------------------------------------------------------------ status

    def status(self, check: bool = False) -> Status:
        inst = self.inst
        st = Status(
            name=inst.name,
            state="stopped",
            datadir=inst.datadir,
            version=inst.version,
            host=inst.host,
            port=inst.port,
            socket_dir=inst.socket_dir,
            log_file=str(self.log_file),
        )
        changed, why = identity.compare(self.pinned(), self.datadir)
        if changed in (identity.MOVED, identity.REPLACED):
            st.state, st.detail = changed, f"data directory {why}"
            return st
        if not server.is_datadir(self.datadir):
            st.state = "missing"
            st.detail = f"data directory {_why_missing(self.datadir)}"
            return st
        pf = process.PidFile.read(self.datadir)
        if pf is not None and process.serves(pf.pid, self.datadir, pf.start_time):
            st.state = {"ready": "running", "standby": "running"}.get(pf.status or "", "running")
            if pf.status in ("starting", "stopping"):
                st.state = pf.status
            st.pid, st.port = pf.pid, pf.port or inst.port
            st.started_at = float(pf.start_time) if pf.start_time else inst.started_at
            if pf.socket_dir:
                st.socket_dir = pf.socket_dir
            self._adopt(pf)  # the URL from where it really listens, not from the record
            st.url = self.url()
            if check:
                try:
                    st.latency_ms = round(self.health() * 1000, 2)
                except WorkerError as e:  # running, but not answering: say so, keep the state
                    st.detail = f"unreachable: {e}"
        elif pf is not None:
            st.state = "crashed"
            st.detail = crashed_detail(pf)
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
        return " ".join(f"{k}={_dsn_quote(v)}" for k, v in self.conninfo(tcp).items())

    def health(self, timeout: int = 2) -> float:
        """Connect and run ``SELECT 1``; the round trip in seconds.

        :raises WorkerError: the connection or the query failed.
        """
        import psycopg  # only here: it costs ~120 ms to import

        t0 = time.monotonic()
        try:
            with psycopg.connect(self.dsn(), connect_timeout=timeout) as conn:
                conn.execute("SELECT 1").fetchone()
        except psycopg.Error as e:
            raise WorkerError(f"cannot connect to {self.inst.name}: {str(e).strip()}") from None
        return time.monotonic() - t0


def pick_installation(datadir: Path, version: str | None) -> versions.Installation:
    """The seed's version rules, with an existing data dir's PG_VERSION pinning the major."""
    on_disk = server.datadir_major(datadir) if datadir.is_dir() else None
    if on_disk and version:
        version = check_major(datadir, on_disk, version)
    return versions.select(version or on_disk).installation


def check_major(datadir: Path, major: str, requested: str) -> str:
    """``requested`` (validated) if it names the data directory's ``major`` version.

    :raises UsageError: not a version. :raises DatabaseException: another major.
    """
    requested = versions.check_version_string(requested)
    if versions.major_of(requested) != major and requested != major:
        raise DatabaseException(
            f"data directory {datadir} is PostgreSQL {major}; "
            f"it cannot be run with version {requested}",
            hint=f"leave out --version, or use -v {major}",
        )
    return requested


def crashed_detail(pf: process.PidFile) -> str:
    """Why a ``postmaster.pid`` that no live postmaster of this data dir stands behind is
    there: the server died without removing it (crashed or killed), or the pid now names
    another process."""
    reason = process.stale_pidfile_reason(pf)
    if reason == f"pid {pf.pid} is gone":
        return (
            f"stale postmaster.pid: the server (pid {pf.pid}) is gone without shutting down "
            "(crashed or killed)"
        )
    if reason is not None:
        return f"stale postmaster.pid: {reason}"
    return f"stale postmaster.pid (pid {pf.pid} is another process)"


def check_path_text(path: Path, what: str) -> Path:
    """``path`` if pgmgr can record and hand it to PostgreSQL: valid UTF-8 (records are
    JSON), no line break (postmaster.pid is line-based), no NUL.

    :raises UsageError: it cannot.
    """
    text = str(path)
    try:
        text.encode()
    except UnicodeEncodeError:
        shown = text.encode(errors="surrogateescape").decode(errors="backslashreplace")
        raise UsageError(
            f"invalid {what} {shown!r}: the path is not valid UTF-8",
            hint="rename it, or use a path whose name is valid UTF-8",
        ) from None
    if "\n" in text or "\r" in text or "\0" in text:
        raise UsageError(f"invalid {what} {text!r}: it holds a line break")
    return path


def _why_missing(datadir: Path) -> str:
    try:
        if not datadir.exists():
            return "does not exist"
        if not datadir.is_dir():
            return "is not a directory"
        os.listdir(datadir)
    except PermissionError:
        return "cannot be read (permission denied)"
    return "is not a PostgreSQL data directory (no PG_VERSION)"


def _dsn_quote(value: str) -> str:
    if value and all(c.isalnum() or c in "/._-" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
