"""An instance's state as ``pgmgr status`` reports it: the :class:`Status` model, its
computation from the process truth, why a data directory is missing or a
``postmaster.pid`` stale, and the state of (and the error for acting on) an unfinished
``pgmgr import``/``replica``/``branch``."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from pgmgr.core import dirlock, identity, process, server
from pgmgr.core.errors import (
    EXIT_NO_INSTANCE,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    DatabaseException,
    InstanceNotFound,
    PgmgrError,
    WorkerError,
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from typing import Any

    from pgmgr.core.instance import Server
    from pgmgr.core.intent import Intent
    from pgmgr.core.registry import Instance


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


#: The state of an instance whose build still runs, by command.
BUILDING = {"import": "importing", "replica": "cloning", "branch": "branching"}


def unfinished(inst: Instance, what: str) -> DatabaseException:
    """The error for acting on an instance whose ``pgmgr import``/``replica``/``branch``
    did not finish."""
    hint = (
        f"run the same 'pgmgr {inst.pending}' again to redo it, or remove it with "
        f"'pgmgr destroy {inst.name}'"
    )
    if inst.pending == "branch":  # not redone in place: see pgmgr.core.branchplace
        hint = (
            f"it completes once its data directory {inst.datadir} is back; if something "
            f"else stands there, forget it ('pgmgr forget {inst.name}') and branch again"
        )
    return DatabaseException(
        f"'{inst.name}' is an unfinished 'pgmgr {inst.pending}' (interrupted, or still "
        f"running) of {inst.pending_from}; it was not {what}",
        hint=hint,
    )


@dataclass
class Status:
    """What ``pgmgr status`` reports for one instance; ``state`` decides the exit code."""

    name: str
    # running | starting | stopping | stopped | crashed | missing | moved | replaced, and
    # importing | cloning | incomplete for an unfinished pgmgr import / replica
    state: str
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
    #: more fields: ``stopped_by`` (always), the role's (see pgmgr.statusview)
    extra: dict[str, Any] = field(default_factory=lambda: {"stopped_by": None})

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


def _switched_in(srv: Server) -> Intent | None:
    """The record's intent (a switch under way: :mod:`pgmgr.core.intent`) if the directory
    at the path is the one it puts there: a restore or upgrade that still runs (a killed
    one's intent was settled when the record was read) swapped it in and has not saved the
    record yet. ``status`` called it "replaced" (exit 4) for that moment."""
    if srv.inst.intent is None:
        return None
    from pgmgr.core import intent

    try:
        it = intent.Intent.from_dict(srv.inst.intent)
    except ValueError:
        return None
    return it if identity.compare(it.new, srv.datadir)[0] is None else None


def status(srv: Server, check: bool = False) -> Status:
    """What ``pgmgr status`` reports for ``srv``: process truth (``postmaster.pid`` and the
    process table) first, the record second; ``check`` also connects (``SELECT 1``)."""
    inst = srv.inst
    st = Status(
        name=inst.name,
        state="stopped",
        datadir=inst.datadir,
        version=inst.version,
        host=inst.host,
        port=inst.port,
        socket_dir=inst.socket_dir,
        log_file=str(srv.log_file),
    )
    changed, why = identity.compare(srv.pinned(), srv.datadir)
    switched = _switched_in(srv) if changed == identity.REPLACED else None
    if switched is not None:
        changed = None  # a restore or upgrade at work: swapped, its record not yet saved
        st.version = str(switched.record.get("version") or st.version)
    elif changed == identity.REPLACED and srv.follow_switch(save=False):
        changed = None  # restored or upgraded under another registration (not saved: no lock)
        st.version = _version_now(srv)
    if changed in (identity.MOVED, identity.REPLACED):
        st.state, st.detail = changed, f"data directory {why}"
        return _moved_away(srv, st)
    if not server.is_datadir(srv.datadir):
        st.state = "missing"
        st.detail = f"data directory {why_missing(srv.datadir)}"
        return _moved_away(srv, st)
    pf = process.PidFile.read(srv.datadir)
    if pf is not None and process.serves(pf.pid, srv.datadir, pf.start_time):
        # connections are refused until it says ready (or standby): another process's
        # start may have spawned it a moment ago, or it recovers from a crash
        st.state = pf.phase if pf.phase in ("starting", "stopping") else "running"
        st.pid, st.port = pf.pid, pf.port or inst.port
        st.started_at = float(pf.start_time) if pf.start_time else inst.started_at
        if pf.socket_dir:
            st.socket_dir = pf.socket_dir
        srv._adopt(pf)  # the URL from where it really listens, not from the record
        st.url = srv.url()
        if check and st.state == "running":  # (libpq's "starting up" said nothing more)
            try:
                st.latency_ms = round(srv.health() * 1000, 2)
            except WorkerError as e:  # running, but not answering: say so, keep the state
                st.detail = f"unreachable: {e}"
    elif pf is not None:
        st.state = "crashed"
        st.detail = crashed_detail(pf)
    if st.state in ("stopped", "crashed"):
        _stopped_by(st, srv)
    return st


def _moved_away(srv: Server, st: Status) -> Status:
    """A ``missing`` (or ``moved``, ``replaced``) instance whose server still runs from its
    data directory moved elsewhere: its pid, and where it runs (``running_from``), so that
    it is not a server nothing shows (see :mod:`pgmgr.core.movedserver`)."""
    from pgmgr.core import movedserver

    moved = movedserver.find(srv)
    if moved is not None:
        st.pid = moved.pid
        st.detail = f"{st.detail}; {movedserver.sentence(srv, moved)}"
        st.extra["running_from"] = moved.where
    return st


def unfinished_state(srv: Server, st: Status) -> None:
    """A build still running (``importing``, ``cloning``: its command holds the lock) or
    interrupted (``incomplete``): never ``running``, even when its server runs."""
    pending = srv.inst.pending or ""
    if dirlock.is_locked(srv.datadir):
        st.state = BUILDING.get(pending, "building")
        st.detail = f"'pgmgr {pending}' is still making it"
    else:
        st.state = "incomplete"
        st.detail = f"'pgmgr {pending}' did not finish" + (
            f" (server still running, pid {st.pid})" if st.pid else ""
        )
    st.url = None


def _stopped_by(st: Status, srv: Server) -> None:
    """``stopped_by``: the pgmgr command that stopped the server and has not started it
    again, still at work or gone (see :mod:`pgmgr.core.stopmark`); it explains a stop."""
    from pgmgr.core import stopmark

    mark = stopmark.read(srv.inst)
    if mark is not None:
        st.extra["stopped_by"] = mark.to_dict()
        st.detail = st.detail or mark.sentence(srv.inst.name)


def _version_now(srv: Server) -> str:
    """The version of the binaries for the data directory as it is now (another major
    after an upgrade under another registration), or its major if none is installed."""
    try:
        return srv.installation().version
    except PgmgrError:
        try:
            return server.datadir_major(srv.datadir) or srv.inst.version
        except PgmgrError:  # a PG_VERSION naming nothing: status still shows the rest
            return srv.inst.version


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


def why_missing(datadir: Path) -> str:
    """Why ``datadir`` is not a usable data directory, as a sentence's end."""
    try:
        if not datadir.exists():
            return "does not exist"
        if not datadir.is_dir():
            return "is not a directory"
        os.listdir(datadir)
    except PermissionError:
        return "cannot be read (permission denied)"
    return "is not a PostgreSQL data directory (no PG_VERSION)"
