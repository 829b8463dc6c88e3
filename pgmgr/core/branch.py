"""Branches: a new, independent instance from another one's current state or snapshot.

The copy is made with the copy engine into the new data directory's snapshot store (on the
same filesystem as its final place, private to the server user), then registered and
renamed into place with ``RENAME_NOREPLACE`` in steps that signals cannot split and the
next command completes or undoes after a kill (:mod:`pgmgr.core.branchplace`). The branch
has its own name, data directory, port, socket directory and password: a fresh generated
password, set through the private socket at its first start (as for template copies,
:attr:`~pgmgr.core.registry.Instance.password_pending`).

Branching from the current state of a running source stops it for the copy and starts it
again (the downtime is reported): its start-up overlaps the branch's rename, registration
and start, and the command waits for both. A snapshot is copied without touching the
source.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgmgr.core import (
    branchplace,
    cleanup,
    copy,
    delta,
    dirlock,
    dirpath,
    identity,
    listen,
    paths,
    pgcontrol,
    privileges,
    registry,
    restorable,
    roles,
    server,
    sigguard,
    snapcatalog,
    snapshot,
    snapstore,
    testhook,
)
from pgmgr.core.errors import DatabaseException, PgmgrError, UsageError
from pgmgr.core.instance import Server, new_password
from pgmgr.core.pause import Pause, done_then, paused, spawn_again, stop_now
from pgmgr.core.registry import Instance


@dataclass
class BranchResult:
    """What ``pgmgr branch`` made."""

    name: str
    source: str
    datadir: str
    snapshot: str | None
    started: bool
    port: int | None
    url: str | None
    size: int
    method: str
    elapsed: float
    source_downtime: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "datadir": self.datadir,
            "from_snapshot": self.snapshot,
            "started": self.started,
            "port": self.port,
            "url": self.url,
            "size": self.size,
            "method": self.method,
            "elapsed_ms": round(self.elapsed * 1000, 1),
            "source_downtime_ms": (
                None if self.source_downtime is None else round(self.source_downtime * 1000, 1)
            ),
        }


def target_dir(src: Server, new: str, datadir: Path | None) -> Path:
    """The new data directory: ``datadir``, else ``NEW`` beside the source's.

    :raises DatabaseException: it exists, or its parent does not.
    """
    target = Path(os.path.abspath(datadir)) if datadir else src.datadir.parent / new
    identity.check_links(target)  # no other user's symlink on the way, as for init
    if os.path.lexists(target):
        raise DatabaseException(
            f"{target} already exists; a branch gets a new data directory",
            hint="choose another with -d DIR",
        )
    dirpath.check(target, "create", parents_only=True)
    if not target.parent.is_dir():
        raise DatabaseException(f"cannot create {target}: {target.parent} does not exist")
    dirpath.check_datadir_place(target, "create")
    su = src.user()
    if su is not None:  # as root: the copy is made as the server user, beside the target
        privileges.check_reachable(target, su, "new data directory")
    # Before the copy, not when it is renamed into place (after a stop of the source).
    paths.check_writable(target.parent, f"create {target}", "or choose another with -d DIR")
    return target


def new_record(
    src: Server,
    new: str,
    target: Path,
    port: int | str | None,
    major: dict[str, Any] | None = None,
) -> Instance:
    """The branch's record: the source's version, user, settings and authentication; a
    new name, data directory, port and password; the source's loopback addresses only
    (:func:`listen.loopback_of`); no socket dir or log of its own yet.
    ``major``: the version, binaries and settings of a snapshot of another major (see
    :func:`snapcatalog.record_of`) instead of the source's."""
    s = src.inst
    password = new_password() if s.auth != "trust" else None
    host = listen.loopback_of(s.host or "")
    if port == "auto" or port is None:
        port = server.free_port(host)
        while port == s.port:  # free while the source restarts, but its own (see _start)
            port = server.free_port(host)
    inst = Instance(
        name=new,
        datadir=os.path.realpath(target),
        major=s.major,
        version=s.version,
        bindir=s.bindir,
        host=host,
        port=int(port),
        server_user=s.server_user,
        superuser=s.superuser,
        password=password,
        auth=s.auth,
        settings=dict(s.settings),
        password_pending=password is not None,
    )
    for key, value in (major or {}).items():
        setattr(inst, key, value)
    return inst


def _snapshot_source(
    src: Server, snap: str, store: snapstore.Store
) -> tuple[Path, int, dict[str, Any] | None]:
    """The copy inside snapshot ``snap`` of ``src``, its size, and what the branch's
    record takes from it when it is of another major (a pre-upgrade snapshot).

    :raises SnapshotNotFound: no such snapshot. :raises DatabaseException: not ``src``'s.
    """
    meta = snapcatalog.load(store, snap, src.inst.name)
    if meta.datadir != src.inst.datadir:
        raise DatabaseException(f"snapshot {snap!r} is of another instance ({meta.instance})")
    origin = store.entry(snap) / snapstore.DATA
    why, standby = store.as_user(_inspect, store.entry(snap), meta)
    if why:  # as restore refuses it: the branch would not start
        raise DatabaseException(f"snapshot {snap!r} is damaged: {why}; nothing was changed")
    if standby:
        raise _standby(f"snapshot {snap!r} of '{src.inst.name}' is of a standby")
    major = snapcatalog.record_of(meta) if meta.major != src.inst.major else None
    return origin, meta.size, major


def _inspect(snapdir: Path, meta: snapstore.Meta) -> tuple[str | None, bool]:
    """Why the snapshot's copy is damaged (see :func:`restorable.check_data`), and whether
    it is a standby's. As the server user."""
    data = snapdir / snapstore.DATA
    return restorable.check_data(snapdir, meta), os.path.lexists(data / "standby.signal")


def _standby(what: str) -> DatabaseException:
    """A branch of a standby would be one too: replicating from its primary, on its
    replication slot (the source's replication stops), with no password set (read-only)."""
    return DatabaseException(
        f"cannot branch: {what} (a branch would replicate from its primary, on its "
        "replication slot); nothing was changed",
        hint="branch its primary, or make it a primary first with 'pgmgr promote NAME'",
    )


def branch(
    src: Server,
    new: str,
    *,
    snap: str | None = None,
    datadir: Path | None = None,
    port: int | str | None = None,
    start: bool = False,
    progress: Callable[[str], None] | None = None,
) -> BranchResult:
    """Make ``new`` from ``src`` (see the module doc); the caller holds ``src``'s lock.
    ``progress`` is told each slow step as it begins ("copying 1.2 GB").

    :raises UsageError: a bad or taken name.
    :raises SnapshotNotFound: ``snap`` is not one of ``src``'s snapshots.
    :raises DatabaseException: the target exists, not enough space, an unsafe store.
    :raises KeyboardInterrupt: interrupted (also SIGTERM/SIGHUP): no branch is left, the
        source runs again if it was stopped for the copy. In-process, a signal once the
        branch is in place (and started) reaches the caller's handler (a Ctrl-C: this)
        when the call is complete: it is made.
    """
    registry.check_name(new)
    if isinstance(port, int) and port == src.inst.port:
        # Refused before any copy: the branch could take it while the source starts again.
        raise UsageError(
            f"port {port} is the port of '{src.inst.name}', the source",
            hint="choose another with --port, or let pgmgr pick one with --port auto",
        )
    if snap is None:  # a snapshot is branched without its instance's data directory
        snapshot.require_datadir(src)
        if roles.is_standby(src):
            raise _standby(f"'{src.inst.name}' is a standby")
    t0 = time.monotonic()
    _check_free(src, new, datadir)
    target = target_dir(src, new, datadir)
    start = start or src.running() is not None
    if isinstance(port, int):  # refused before the source is stopped
        postgres = src.installation().bindir / "postgres"
        host = listen.loopback_of(src.inst.host or "")
        # not started now: only a port it could never listen on (a low one) is refused
        listen.check_port(host, port, src.user(), postgres, taken_ok=not start)
    # The target's lock: a second branch into it (from another source) waits, then finds
    # it taken, instead of sweeping this one's copy or renaming its half-made one in.
    with sigguard.interruptible(), dirlock.lock(target):
        _check_free(src, new, datadir)
        say = progress or (lambda _step: None)
        return _branch(src, new, target, snap=snap, port=port, start=start, t0=t0, say=say)


def _check_free(src: Server, new: str, datadir: Path | None) -> None:
    """:raises UsageError: ``new`` is a registered name. :raises DatabaseException: its
    target directory exists (see :func:`target_dir`)."""
    if new in registry.names():
        with contextlib.suppress(PgmgrError):
            registry.load(new)  # settles a branch into it that was killed half-way
    if new in registry.names():
        raise UsageError(f"an instance named {new!r} already exists", hint="choose another name")
    target_dir(src, new, datadir)


def _branch(
    src: Server, new: str, target: Path, *, snap: str | None, port: int | str | None,
    start: bool, t0: float, say: Callable[[str], None],
) -> BranchResult:  # fmt: skip
    with snapstore.opened(target, src.user(), exclusive=True) as tstore:
        try:
            snapstore.check_same_fs(tstore, f"branch '{src.inst.name}' into {target}")
            beside = tstore.as_user(_sweep, tstore.path)
            if beside:  # the record of one killed half-way settles it first (branchplace)
                registry.load_all()
            for name in beside:
                _sweep_abandoned(tstore, name)
            # A source stopped for the copy starts again while the branch is put in place
            # and started (both start-ups overlap); the end of the block waits for it.
            said = f"branch '{new}' of '{src.inst.name}' was made"
            with done_then(said, src.inst.name) as made, paused(src, "branch", stop=False) as pause:
                with copy.disk_full(f"branch of '{src.inst.name}'", tstore.path):
                    stats, major = _copy_branch(src, snap, tstore, pause, say)
                testhook.pause("branch-to-place")
                inst = new_record(src, new, target, port, major)
                srv = Server(inst)
                if start:
                    say(f"starting '{new}'")
                auto = port in (None, "auto")
                branchplace.place(srv, tstore, pause, src.inst.name, start=start, auto=auto)
                made.append(True)
        except BaseException:
            # Between the copy and its placement (a signal, a port or record error) the
            # staged copy is still there, and no record pins it (place() removes both
            # whatever fails in it): it goes too, not only at the next branch's sweep.
            cleanup.quietly(lambda: _drop_staged(tstore, new, target))
            snapstore.drop_if_empty(tstore)  # no branch: no store of it either
            raise
    return BranchResult(
        new, src.inst.name, inst.datadir, snap, start, srv.inst.port,
        srv.url() if start else None, stats.bytes, stats.method,
        time.monotonic() - t0, pause.downtime,
    )  # fmt: skip


def _drop_staged(tstore: snapstore.Store, new: str, target: Path) -> None:
    """Remove the branch's staged copy unless a record of ``new`` at ``target`` is still
    pending on it (settled by the next load of that record: see :mod:`branchplace`)."""
    staged = tstore.entry(branchplace.STAGED)
    if not os.path.lexists(staged):
        return
    if new in registry.names():
        with contextlib.suppress(PgmgrError):
            rec = registry.load(new, settle=False)
            if rec.pending == branchplace.PENDING and rec.datadir == os.path.realpath(target):
                return
    tstore.as_user(snapstore.remove_tree, staged)


def _sweep(store: Path) -> list[str]:
    """Sweep ``store`` (the new branch's); the names beside it whose store holds a branch's
    staged copy, or is empty with no data directory of that name (the store of a branch
    killed before its copy was placed): killed with -9, or a branch under way. As the
    server user."""
    snapstore.sweep(store)
    top = store.parent
    try:
        names = [n for n in os.listdir(top) if n != store.name and not n.startswith(".")]
    except OSError:
        return []
    staged = snapstore.TMP + "branch"
    return [
        n for n in names
        if os.path.lexists(top / n / staged) or (_empty(top / n) and not _placed(top, n))
    ]  # fmt: skip


def _empty(path: Path) -> bool:
    try:
        return not os.listdir(path)
    except OSError:
        return False


def _placed(top: Path, name: str) -> bool:
    """Whether a data directory ``name`` stands beside the stores' directory ``top``."""
    return os.path.lexists(top.parent / name)


def _sweep_abandoned(tstore: snapstore.Store, name: str) -> None:
    """Remove the staged copy of a branch into ``name`` if none runs: its lock is free, and
    so is its store (a branch by the pgmgr of another user, whose locks are its own)."""
    with (
        dirlock.try_lock(tstore.path.parent.parent / name) as free,
        snapstore.held_if_free(tstore.top_fd, name) as idle,
    ):
        if free and idle:
            staged = tstore.path.parent / name / (snapstore.TMP + "branch")
            tstore.as_user(snapstore.remove_tree, staged)
            if not _placed(tstore.path.parent, name):  # nothing's store now: it goes
                snapstore.drop_if_empty(tstore, name)


def _copy_branch(
    src: Server, snap: str | None, tstore: snapstore.Store, pause: Pause,
    say: Callable[[str], None],
) -> tuple[copy.CopyStats, dict[str, Any] | None]:  # fmt: skip
    """Copy into ``<tstore>/.tmp-branch`` (the lock makes the name ours); a running source
    is stopped for the copy and started again (not waited for) right after it. With what
    the record takes from a snapshot of another major (see :func:`_snapshot_source`)."""
    staging = tstore.entry(snapstore.TMP + "branch")
    major = None
    try:
        if snap is None:
            snapstore.check_supported(tstore, src.datadir, f"branch '{src.inst.name}'")
            size = tstore.as_user(copy.tree_allocated, src.datadir)  # holes kept
            snapstore.check_space(tstore, size, f"branch of '{src.inst.name}'", src.datadir)
            say(f"copying up to {snapstore.human(size)}")  # less the WAL a copy leaves out
            stop_now(src, pause)
            stats = tstore.as_user(_copy_stopped, src.datadir, staging)
            testhook.pause("branch-copied")
            spawn_again(src, pause)
        else:
            gone = snapcatalog.missing(src.inst.name, snap)
            # Shared: a delete, restore or sweep by the pgmgr of another registration of
            # the source's directory (whose instance lock is not ours) waits for the copy.
            with snapstore.opened(
                src.datadir, src.user(), create=False, missing=gone, shared=True
            ) as sstore:
                origin, size, major = _snapshot_source(src, snap, sstore)
                size = snapstore.allocated_if_short(tstore, size, origin)  # holes kept
                snapstore.check_space(tstore, size, f"branch of '{src.inst.name}'", origin)
                say(f"copying {snapstore.human(size)}")
                testhook.pause("branch-from-snapshot")
                stats = tstore.as_user(_copy_own, origin, staging)
        tstore.as_user(copy.sync_fs, tstore.path)
    except BaseException:  # what cannot be removed is swept by the next command
        cleanup.quietly(lambda: tstore.as_user(snapstore.remove_tree, staging))
        raise
    return stats, major


def _copy_stopped(datadir: Path, staging: Path) -> copy.CopyStats:
    """:func:`_copy_own` of the stopped source ``datadir``, refused if a server ran on it
    meanwhile (by hand, or the pgmgr of another registration, whose lock is its own): the
    files of a running server, copied one by one, are no image of it. As the server user."""
    control = delta.control(datadir)
    testhook.pause("branch-copying")
    stats = _copy_own(datadir, staging)
    snapshot.not_run_since(datadir, control, "branch")
    return stats


def _copy_own(origin: Path, staging: Path) -> copy.CopyStats:
    """:func:`snapshot.copy_into`; the copy then gets a database system identifier of its
    own (:func:`pgcontrol.new_identity`): the branch's history diverges from its source's,
    so neither PostgreSQL (a standby, a WAL archive) nor a snapshot may take one for the
    other. So does the copy of an online snapshot or of a crashed source: the WAL it
    recovers from is in its pg_wal, rewritten too. As the server user; the caller syncs."""
    stats = snapshot.copy_into(origin, staging)
    with contextlib.suppress(ValueError):  # a damaged pg_control: start says so
        pgcontrol.new_identity(staging, sync=False, clean=False)
    return stats
