"""Snapshots of an instance: take, list, restore, delete.

A snapshot is a copy of the stopped data directory (or a ``pg_basebackup`` of the running
one with ``online``), kept in the instance's store (see :mod:`pgmgr.core.snapstore`) and made
with the one copy engine (:mod:`pgmgr.core.copy`). A running instance is stopped for the
copy and started again (the downtime is reported). Restore copies the snapshot beside the
data directory first (while the server still runs), then stops it, swaps the two directories
with one atomic rename, starts it again, and only then removes the old state.

Every function expects the caller to hold the instance's lock (``registry.lock``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgmgr.core import copy, server, snapstore, versions
from pgmgr.core.errors import DatabaseException
from pgmgr.core.instance import DataDirNotFound, Server, _why_missing
from pgmgr.core.privileges import ServerUser
from pgmgr.core.snapstore import Meta, SnapshotNotFound, Store


@dataclass
class SnapshotResult:
    instance: str
    snapshot: str
    path: str
    size: int
    files: int
    method: str
    kind: str
    was_running: bool
    elapsed: float
    downtime: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "snapshot": self.snapshot,
            "path": self.path,
            "size": self.size,
            "files": self.files,
            "method": self.method,
            "kind": self.kind,
            "was_running": self.was_running,
            "elapsed_ms": round(self.elapsed * 1000, 1),
            "downtime_ms": None if self.downtime is None else round(self.downtime * 1000, 1),
        }


@dataclass
class RestoreResult:
    instance: str
    snapshot: str
    version: str
    was_running: bool
    elapsed: float
    downtime: float | None
    saved: str | None = None
    rolled_back_from: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "snapshot": self.snapshot,
            "version": self.version,
            "was_running": self.was_running,
            "saved_current_as": self.saved,
            "rolled_back_from": self.rolled_back_from,
            "elapsed_ms": round(self.elapsed * 1000, 1),
            "downtime_ms": None if self.downtime is None else round(self.downtime * 1000, 1),
        }


def require_datadir(srv: Server) -> None:
    """:raises DataDirNotFound: the instance has no data directory (exit code 4)."""
    if not server.is_datadir(srv.datadir):
        raise DataDirNotFound(srv.datadir, _why_missing(srv.datadir))


# --------------------------------------------------------------------------- as the user


def _copy_into(src: Path, dst: Path) -> copy.CopyStats:
    """``dst`` (new) := a copy of the stopped data directory ``src``. As the server user."""
    return copy.copy_tree(src, dst, exclude=("postmaster.pid",))  # never a live server's


def _snap_copy(src: Path, staging: Path) -> copy.CopyStats:
    """``staging/data`` := a copy of ``src``. As the server user."""
    os.mkdir(staging, 0o700)
    return _copy_into(src, staging / snapstore.DATA)


def _finish(staging: Path, final: Path, meta: Meta) -> None:
    """Write the metadata, flush, and give the snapshot its name. Runs as the server user."""
    snapstore.write_meta(staging, meta)
    copy.sync_fs(staging)
    if final.exists():
        raise DatabaseException(f"snapshot {final.name!r} appeared meanwhile")
    os.rename(staging, final)
    copy.fsync_dir(final.parent)


def _check_data(snapdir: Path, meta: Meta) -> str | None:
    """Why the copy in ``snapdir`` does not match its metadata, or None."""
    data = snapdir / snapstore.DATA
    major = server.datadir_major(data)
    if major != meta.major:
        return f"its data directory is PostgreSQL {major or 'unknown'}, not {meta.major}"
    if snapstore.system_identifier(data) != meta.system_identifier:
        return "its data directory has another system identifier than recorded"
    return None


# --------------------------------------------------------------------------- create


def _meta(srv: Server, name: str, sysid: str, kind: str, stats: copy.CopyStats) -> Meta:
    inst = srv.inst
    return Meta(
        name=name,
        instance=inst.name,
        datadir=inst.datadir,
        system_identifier=sysid,
        major=inst.major,
        version=inst.version,
        bindir=inst.bindir,
        created=time.time(),
        size=stats.bytes,
        files=stats.files,
        method=stats.method,
        kind=kind,
        settings=dict(inst.settings),
    )


def taken_names(store: Store) -> set[str]:
    return {n for n, _, _ in store.as_user(snapstore.list_metas, store.path)}


def pick_name(store: Store, name: str | None, instance: str) -> str:
    """``name`` (validated, free) or a fresh timestamp.

    :raises DatabaseException: a snapshot of that name exists.
    """
    taken = taken_names(store)
    if name is None:
        return snapstore.default_name(taken)
    snapstore.check_snap_name(name)
    if name in taken:
        raise DatabaseException(
            f"'{instance}' already has a snapshot named {name!r}",
            hint="choose another name, or delete it with 'pgmgr snapshot NAME SNAP --delete'",
        )
    return name


@dataclass
class Pause:
    """The downtime of :func:`paused`: None when the server was not running."""

    was_running: bool
    stopped_at: float | None = None
    downtime: float | None = None


@contextlib.contextmanager
def paused(srv: Server, *, stop: bool = True) -> Iterator[Pause]:
    """Stop ``srv`` (fast) for the block if it runs and ``stop``, and start it again
    afterwards whatever happens: an interrupted stop is finished first, so the start
    never meets a server that is still shutting down. ``pause.stopped_at`` may be set by
    the block instead, to stop later (``stop=False``: call :func:`stop_now`)."""
    pause = Pause(srv.running() is not None)
    interrupted = False
    try:
        if pause.was_running and stop:
            stop_now(srv, pause)
        yield pause
    finally:
        if pause.stopped_at is not None:
            # A signal now would cancel the start and leave the server stopped: hold it.
            with snapstore.shielded() as got:
                srv.stop("fast")
                srv.start()
            pause.downtime = time.monotonic() - pause.stopped_at
            interrupted = bool(got)
    if interrupted:
        raise KeyboardInterrupt


def resume(srv: Server, pause: Pause) -> None:
    """Start ``srv`` again now (instead of at the end of :func:`paused`)."""
    if pause.stopped_at is not None:
        srv.start()  # the caller holds signals (snapstore.shielded)
        pause.downtime = time.monotonic() - pause.stopped_at
        pause.stopped_at = None


def stop_now(srv: Server, pause: Pause) -> None:
    if pause.was_running:
        pause.stopped_at = time.monotonic()
        srv.stop("fast")


def create(
    srv: Server, name: str | None = None, *, online: bool = False, kind: str = "snapshot"
) -> SnapshotResult:
    """Take a snapshot of ``srv`` (see the module doc).

    :raises DataDirNotFound: no data directory.
    :raises DatabaseException: a bad or taken name, not enough space, an unsafe store.
    :raises KeyboardInterrupt: interrupted (also SIGTERM/SIGHUP); nothing is left behind
        and a server that was stopped for the copy is started again.
    """
    require_datadir(srv)
    t0 = time.monotonic()
    su = srv.user()
    with snapstore.interruptible(), snapstore.opened(srv.datadir, su) as store:
        store.as_user(snapstore.sweep, store.path)
        name = pick_name(store, name, srv.inst.name)
        size = store.as_user(copy.tree_size, srv.datadir)
        snapstore.check_space(store, size, f"snapshot {name!r}")
        staging = store.entry(snapstore.tmp_name("snap"))
        online = online and srv.running() is not None  # stopped: a copy is consistent
        kind = "online" if online else kind
        try:
            with paused(srv, stop=not online) as pause:
                if online:
                    from pgmgr.core import basebackup

                    stats = basebackup.take(srv, staging, su)
                else:
                    stats = store.as_user(_snap_copy, srv.datadir, staging)
            sysid = store.as_user(snapstore.system_identifier, staging / snapstore.DATA)
            meta = _meta(srv, name, sysid, kind, stats)
            store.as_user(_finish, staging, store.entry(name), meta)
        except BaseException:
            store.as_user(snapstore.remove_tree, staging)
            raise
    elapsed = time.monotonic() - t0
    path = str(store.entry(name))
    return SnapshotResult(
        srv.inst.name, name, path, stats.bytes, stats.files, stats.method, kind,
        pause.was_running, elapsed, pause.downtime,
    )  # fmt: skip


# --------------------------------------------------------------------------- list


@dataclass
class SnapshotInfo:
    instance: str
    snapshot: str
    created: float | None
    size: int | None
    version: str | None
    kind: str | None
    path: str
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "snapshot": self.snapshot,
            "created": self.created,
            "size": self.size,
            "version": self.version,
            "kind": self.kind,
            "path": self.path,
            "problem": self.problem,
        }


def list_snapshots(srv: Server) -> list[SnapshotInfo]:
    """The snapshots in ``srv``'s store, oldest first (unreadable ones say why)."""
    try:
        with snapstore.opened(srv.datadir, srv.user(), create=False) as store:
            entries = store.as_user(snapstore.list_metas, store.path)
    except SnapshotNotFound:
        return []
    out = []
    for name, meta, why in entries:
        path = str(snapstore.store_path(srv.datadir) / name)
        if meta is None:
            out.append(SnapshotInfo(srv.inst.name, name, None, None, None, None, path, why))
            continue
        problem = None if meta.datadir == srv.inst.datadir else f"taken of {meta.datadir}"
        out.append(
            SnapshotInfo(
                srv.inst.name, name, meta.created, meta.size, meta.version, meta.kind, path, problem
            )
        )
    out.sort(key=lambda s: (s.created or 0, s.snapshot))
    return out


def missing(instance: str, name: str) -> str:
    return f"'{instance}' has no snapshot named {name!r} (it has: none)"


def load(store: Store, name: str, instance: str) -> Meta:
    """The metadata of snapshot ``name``.

    :raises SnapshotNotFound: no such snapshot (exit code 4), listing the ones there are.
    :raises DatabaseException: its metadata is unreadable.
    """
    snapstore.check_snap_name(name)
    entries = {n: (m, w) for n, m, w in store.as_user(snapstore.list_metas, store.path)}
    if name not in entries:
        have = ", ".join(sorted(entries)) or "none"
        raise SnapshotNotFound(
            f"'{instance}' has no snapshot named {name!r} (it has: {have})",
            hint="'pgmgr snapshots' lists them",
        )
    meta, why = entries[name]
    if meta is None:
        raise DatabaseException(f"snapshot {name!r} is unreadable: {why}")
    return meta


# --------------------------------------------------------------------------- restore


def check_restorable(srv: Server, store: Store, meta: Meta) -> bool:
    """Whether restoring ``meta`` is a rollback of an upgrade (True) or a plain restore.

    :raises DatabaseException: the snapshot is of another instance or another major, or
        does not hold what its metadata says.
    """
    name = meta.name
    if meta.datadir != srv.inst.datadir:
        raise DatabaseException(
            f"snapshot {name!r} is of another instance ({meta.instance}, {meta.datadir}); "
            "nothing was changed"
        )
    current = store.as_user(snapstore.system_identifier, srv.datadir)
    rollback = meta.upgraded_to is not None and meta.upgraded_to == current
    on_disk = server.datadir_major(srv.datadir)
    if meta.major != on_disk and not rollback:
        raise DatabaseException(
            f"snapshot {name!r} is PostgreSQL {meta.major} but '{srv.inst.name}' is "
            f"PostgreSQL {on_disk}; nothing was changed",
            hint="only the snapshot kept by 'pgmgr upgrade' can roll an upgrade back",
        )
    if meta.system_identifier != current and not rollback:
        raise DatabaseException(
            f"snapshot {name!r} is of another cluster than '{srv.inst.name}' (system "
            f"identifier {meta.system_identifier}, the instance has {current}); "
            "nothing was changed"
        )
    why = store.as_user(_check_data, store.entry(name), meta)
    if why:
        raise DatabaseException(f"snapshot {name!r} is damaged: {why}; nothing was changed")
    return rollback


def _rollback_record(srv: Server, meta: Meta) -> None:
    """Point the record at the snapshot's major (after the swap of a pre-upgrade one)."""
    if (Path(meta.bindir) / "postgres").is_file():
        srv.inst.major, srv.inst.version, srv.inst.bindir = meta.major, meta.version, meta.bindir
    else:
        install = versions.select(meta.major).installation
        srv.inst.major, srv.inst.version = install.major, install.version
        srv.inst.bindir = str(install.bindir)
    srv.inst.settings = dict(meta.settings)
    srv.save()


def _stage_save(staging: Path, holder: Path, meta: Meta) -> None:
    """Turn the swapped-out state in ``staging`` into snapshot ``holder``. As the user."""
    os.mkdir(holder.with_name(holder.name + ".part"), 0o700)
    os.rename(staging, holder.with_name(holder.name + ".part") / snapstore.DATA)
    snapstore.write_meta(holder.with_name(holder.name + ".part"), meta)
    os.rename(holder.with_name(holder.name + ".part"), holder)


def restore(srv: Server, name: str, *, save_current: str | None = None) -> RestoreResult:
    """Put ``srv`` back to snapshot ``name`` (see the module doc). ``save_current``: keep
    the state being replaced as a snapshot of that name (``""`` for a timestamp).

    :raises SnapshotNotFound: no such snapshot.
    :raises DatabaseException: see :func:`check_restorable`; not enough space.
    :raises KeyboardInterrupt: interrupted before the swap: nothing changed (a server
        that was stopped runs again); after it: the restore is complete.
    """
    require_datadir(srv)
    t0 = time.monotonic()
    old_version = srv.inst.version
    with (
        snapstore.interruptible(),
        snapstore.opened(srv.datadir, srv.user(), create=False) as store,
    ):
        store.as_user(snapstore.sweep, store.path)
        meta = load(store, name, srv.inst.name)
        rollback = check_restorable(srv, store, meta)
        keep = None if save_current is None else _saved_meta(srv, store, meta, save_current)
        snapstore.check_space(store, meta.size, f"restoring {name!r}")
        staging = store.entry(snapstore.tmp_name("restore"))
        swapped = False
        try:
            store.as_user(_copy_into, store.entry(name) / snapstore.DATA, staging)
            store.as_user(copy.sync_fs, store.path)
            with paused(srv) as pause, snapstore.shielded():
                snapstore.swap_in(store, staging.name)
                swapped = True
                if rollback:
                    _rollback_record(srv, meta)
                if keep is not None:
                    store.as_user(_stage_save, staging, store.entry(keep.name), keep)
                resume(srv, pause)  # still shielded: the restore completes, then says so
        finally:
            if not swapped or keep is None:
                store.as_user(snapstore.remove_tree, staging)
    return RestoreResult(
        srv.inst.name, name, srv.inst.version, pause.was_running, time.monotonic() - t0,
        pause.downtime, keep.name if keep else None, old_version if rollback else None,
    )  # fmt: skip


def _saved_meta(srv: Server, store: Store, meta: Meta, save_as: str) -> Meta:
    """The metadata of the snapshot ``--save-current`` makes of the replaced state."""
    saved = pick_name(store, save_as or None, srv.inst.name)
    sysid = store.as_user(snapstore.system_identifier, srv.datadir)
    keep = _meta(srv, saved, sysid, "saved", copy.CopyStats())
    keep.size = meta.size
    return keep


# --------------------------------------------------------------------------- delete


def _delete(store: Path, name: str) -> None:
    """Rename out of sight first (atomic), then remove. As the user."""
    doomed = store / snapstore.tmp_name("delete")
    os.rename(store / name, doomed)
    snapstore.remove_tree(doomed)


def delete(srv: Server, name: str) -> Meta:
    """Delete snapshot ``name`` of ``srv``.

    :raises SnapshotNotFound: no such snapshot.
    """
    snapstore.check_snap_name(name)
    gone = missing(srv.inst.name, name)
    with snapstore.opened(srv.datadir, srv.user(), create=False, missing=gone) as store:
        store.as_user(snapstore.sweep, store.path)
        try:
            meta = load(store, name, srv.inst.name)
        except DatabaseException as e:
            if isinstance(e, SnapshotNotFound):
                raise
            meta = None  # unreadable metadata: still deletable
        store.as_user(_delete, store.path, name)
    return meta or Meta(name, srv.inst.name, srv.inst.datadir, "", "", "", "", 0.0)


def delete_all(datadir: Path, user: ServerUser | None) -> int:
    """Remove every snapshot of ``datadir`` (``destroy --with-snapshots``); how many."""
    try:
        with snapstore.opened(datadir, user, create=False) as store:
            count = len(store.as_user(snapstore.list_metas, store.path))
            store.as_user(_delete, store.path.parent, store.path.name)
    except SnapshotNotFound:
        return 0
    return count


@dataclass
class Kept:
    """What ``destroy`` does with an instance's snapshots: looked at before, removed after
    (the data directory's owner, who owns them, is known only while it exists)."""

    datadir: Path
    user: ServerUser | None
    count: int
    path: str

    @classmethod
    def of(cls, srv: Server) -> Kept:
        try:
            found = len(list_snapshots(srv))
        except DatabaseException:
            found = 0  # an unsafe store is never touched; destroy goes on without it
        return cls(srv.datadir, srv.user(), found, str(snapstore.store_path(srv.datadir)))

    def remove(self) -> int:
        return delete_all(self.datadir, self.user) if self.count else 0
