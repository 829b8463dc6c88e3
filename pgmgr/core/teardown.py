"""Removing an instance: ``pgmgr destroy`` (its data directory, record and leftovers) and
``pgmgr forget`` (the record only), and clearing an unfinished build so it can be redone.

Each function takes a :class:`~pgmgr.core.instance.Server`; the data directory itself is
removed by :mod:`pgmgr.core.removal`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pgmgr.core import paths, process, registry, removal, testhook
from pgmgr.core.errors import DatabaseException, PgmgrError, WorkerError
from pgmgr.core.instance import Server, unfinished
from pgmgr.core.ops import POLL, passfile_path


@dataclass
class DestroyResult:
    """What ``pgmgr destroy`` removed."""

    name: str
    datadir: str
    was_running: bool
    removed_datadir: bool
    removed_record: bool
    #: the parts of the data directory kept elsewhere (tablespaces, pg_wal): left there
    left_outside: list[removal.Outside] = field(default_factory=list)


def check_destroyable(srv: Server) -> None:
    """Whether ``srv``'s data directory may be removed: it is a registered instance whose
    pinned identity still matches, or (an unregistered directory, an older record) a complete
    data directory holding nothing but PostgreSQL's own entries.

    :raises IdentityChanged: a registered instance's directory was moved or replaced.
    :raises DatabaseException: not provably an instance (the foreign entries are listed).
    """
    datadir = srv.datadir
    if datadir == Path(datadir.anchor) or datadir == Path.home():
        raise DatabaseException(f"refusing to remove {datadir}")
    registered = srv.register and not srv.new
    pinned = srv.pinned() if registered else None
    if registered:
        srv.check_identity("destroy")
        _check_not_moved_away(srv, "destroy", "; nothing was removed")
        _check_sole_record(srv)
    if not os.path.lexists(datadir):
        return
    # The directory is renamed there first: checked before the server is stopped (it was
    # stopped, then "Permission denied: data -> .data.pgmgr-trash-PID", nothing removed).
    paths.check_writable(datadir.parent, f"destroy '{srv.inst.name}'")
    if pinned is None:
        removal.check_complete(datadir, partial=bool(registered and srv.inst.pending))


def destroy(
    srv: Server, timeout: float = 30.0, before_forget: Callable[[], object] | None = None
) -> DestroyResult:
    """Stop the server (fast, then immediate: its data is going anyway), remove the data
    directory (renamed to a trash name first, then deleted: see :mod:`pgmgr.core.removal`;
    its tablespaces and a ``pg_wal`` kept elsewhere stay, listed in the result), what an
    interrupted destroy left, its log, socket dir and pgpass file, and the record.
    ``before_forget`` runs just before the record goes (``destroy --with-snapshots``
    deletes the snapshots there): killed before it is done, the record is still there and
    the same command finishes the work; after, nothing of it is left to do.

    :raises DatabaseException: not provably an instance (see :func:`check_destroyable`), or
        a postgres process still uses it after the stop (see :func:`check_unused`).
    :raises WorkerError: it could not be stopped.
    """
    check_destroyable(srv)
    was_running = False
    if srv.running() is not None:
        try:
            was_running = srv.stop("fast", timeout)
        except WorkerError:
            was_running = srv.stop("immediate", timeout)
    datadir = srv.datadir
    testhook.pause("destroy-stopped")
    if os.path.lexists(datadir):
        check_unused(datadir)
    pinned = srv.pinned()
    left = removal.outside(datadir)  # never removed: said instead
    existed = removal.remove_datadir(datadir, (pinned.dev, pinned.ino) if pinned else None)
    _sweep_trash(srv)
    _remove_leftovers(srv)
    if before_forget is not None:
        before_forget()
    testhook.pause("destroy-record")
    removed_record = srv.register and registry.remove(srv.inst.name)
    return DestroyResult(
        srv.inst.name, srv.inst.datadir, was_running, existed, removed_record, left
    )


def _check_sole_record(srv: Server) -> None:
    """:raises DatabaseException: another record of this registry names the same data
    directory (pgmgr never makes two, but a record copied by hand does): destroying one
    would remove the other's data, and which one the user means is not known."""
    mine = registry.canonical(srv.inst.datadir)
    for other in registry.load_all()[0]:
        if other.name != srv.inst.name and registry.canonical(other.datadir) == mine:
            raise DatabaseException(
                f"refusing to destroy '{srv.inst.name}': its data directory {srv.datadir} "
                f"is also the instance '{other.name}'; nothing was removed",
                hint="drop the record you do not want with 'pgmgr forget NAME' (it keeps "
                "the data directory), then destroy the other if you mean to",
            )


def redo_unfinished(datadir: Path, command: str, source: str) -> str | None:
    """Remove the unfinished build of ``datadir`` by the same ``command`` from the same
    ``source`` (its process is dead: the caller holds the directory's lock), so it can be
    made again. A finished instance there is left for the caller to refuse.

    :raises DatabaseException: an unfinished build by another command or from another
        source is there.

    :returns: its name (the retry keeps it), or None if there was none.
    """
    inst = registry.find_by_datadir(datadir)
    if inst is None or not inst.pending:
        return None
    if inst.pending != command or inst.pending_from != source:
        raise unfinished(inst, "replaced")
    srv = Server(inst)
    if inst.primary:
        from pgmgr.core import replica

        replica.release_to_destroy(srv)
    destroy(srv)
    return inst.name


def _remove_leftovers(srv: Server) -> None:
    """The instance's log (when it is in pgmgr's own log directory), pgpass file and private
    socket directory: destroy and forget leave none of them behind."""
    from pgmgr.core import logfile

    if srv.log_file.parent == paths.state_dir() / "logs":
        for log in logfile.all_files(srv.log_file):
            with contextlib.suppress(OSError):
                log.unlink()
    with contextlib.suppress(OSError):
        passfile_path(srv.inst.name).unlink()
    su = srv.user() if srv.inst.server_user else None
    owner = su.uid if su is not None else os.geteuid()
    removal.remove_socket_dir(srv.inst.socket_dir, srv.datadir, srv.inst.port, owner)


def _check_not_moved_away(srv: Server, action: str, outcome: str = "") -> None:
    """Forgetting or destroying an instance whose server still runs from its data directory
    moved elsewhere would leave that server running with no record naming it.

    :raises DatabaseException: it does.
    """
    from pgmgr.core import movedserver

    moved = movedserver.find(srv)
    if moved is not None:
        raise DatabaseException(
            f"refusing to {action} '{srv.inst.name}': {movedserver.sentence(srv, moved)}" + outcome,
            hint=movedserver.hint(srv, moved),
        )


def check_unused(datadir: Path, grace: float = 1.0) -> None:
    """Defence in depth before deleting a data directory: no postgres process may still
    work in it, even one pgmgr did not recognise as its server (waits up to ``grace``
    seconds for processes that are exiting).

    :raises DatabaseException: some still do.
    """
    deadline = time.monotonic() + grace
    while users := process.processes_in(datadir):
        if time.monotonic() >= deadline:
            pids = ", ".join(str(p) for p in users)
            raise DatabaseException(
                f"refusing to remove {datadir}: postgres processes still use it (pid {pids}); "
                "nothing was removed",
                hint="pgmgr did not recognise them as this instance's server: stop that "
                "server (SIGINT to its postmaster is a fast shutdown), then try again",
            )
        time.sleep(POLL)


def forget(srv: Server) -> bool:
    """Remove the record only; the data directory stays.

    :raises DatabaseException: the instance is running (forgetting it would orphan it).
    """
    pf = srv.running()
    if pf is not None:
        raise DatabaseException(
            f"'{srv.inst.name}' is running (pid {pf.pid}); refusing to forget it",
            hint=f"stop it first with 'pgmgr stop {srv.inst.name}'",
        )
    _check_not_moved_away(srv, "forget")
    _sweep_trash(srv)
    _remove_leftovers(srv)
    return registry.remove(srv.inst.name)


def forget_unreadable(err: registry.CorruptRecord) -> Path:
    """Remove an unreadable record file (and its pgpass file), as its error's hint says.

    Nothing in it can be trusted, so nothing else is touched: not the data directory it may
    name, and no server (whether one still runs there cannot be known from it).

    :returns: the path of the removed record.
    :raises PgmgrError: it is a directory (see :class:`registry.CorruptRecord`).
    """
    name = err.path.stem
    try:
        err.path.unlink()
    except FileNotFoundError:
        pass
    except IsADirectoryError:  # not pgmgr's, and maybe not empty: never removed
        raise PgmgrError(
            f"instance record {err.path} is a directory, not a record pgmgr wrote; "
            "nothing was removed",
            hint=f"see what it holds and remove it yourself (rm -r {err.path})",
        ) from None
    with contextlib.suppress(OSError):
        passfile_path(name).unlink()
    return err.path


def _sweep_trash(srv: Server) -> None:
    """:func:`removal.sweep_trash` of what a destroy of ``srv`` itself left."""
    pinned = srv.pinned()
    try:
        user = srv.user()
    except DatabaseException:
        user = None
    expect = (pinned.dev, pinned.ino) if pinned else None
    removal.sweep_trash(srv.datadir, expect, user.uid if user else None)
