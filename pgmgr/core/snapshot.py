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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgmgr.core import (
    copy,
    delta,
    intent,
    pgcontrol,
    server,
    sigguard,
    snapstore,
    testhook,
    versions,
)
from pgmgr.core.errors import DatabaseException
from pgmgr.core.instance import DataDirNotFound, Server, _why_missing
from pgmgr.core.pause import paused, resume
from pgmgr.core.snapcatalog import load, missing, pick_name
from pgmgr.core.snapstore import Meta, Store


@dataclass
class SnapshotResult:
    """What ``pgmgr snapshot`` took."""

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
    """What ``pgmgr restore`` did."""

    instance: str
    snapshot: str
    version: str
    was_running: bool
    elapsed: float
    downtime: float | None
    saved: str | None = None
    rolled_back_from: str | None = None
    warnings: list[str] = field(default_factory=list)
    #: bytes copied from the snapshot, and files kept (unchanged since it was taken)
    copied: int = 0
    kept: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "snapshot": self.snapshot,
            "version": self.version,
            "was_running": self.was_running,
            "saved_current_as": self.saved,
            "rolled_back_from": self.rolled_back_from,
            "copied_bytes": self.copied,
            "unchanged_files": self.kept,
            "elapsed_ms": round(self.elapsed * 1000, 1),
            "downtime_ms": None if self.downtime is None else round(self.downtime * 1000, 1),
        }


def require_datadir(srv: Server) -> None:
    """:raises DataDirNotFound: the instance has no data directory (exit code 4)."""
    if not server.is_datadir(srv.datadir):
        raise DataDirNotFound(srv.datadir, _why_missing(srv.datadir))


# --------------------------------------------------------------------------- as the user


def copy_into(src: Path, dst: Path) -> copy.CopyStats:
    """``dst`` (new) := a copy of the stopped data directory ``src``, without what a copy
    never needs: ``postmaster.pid`` and recycled WAL segments (up to ``max_wal_size``, as
    much again as the data of a freshly loaded instance). As the server user.

    :raises DatabaseException: ``src`` has tablespaces or an outside ``pg_wal`` (checked
        again here, stopped: one made since the caller's check would be shared).
    """
    why = snapstore.unsupported(src)
    if why:
        raise DatabaseException(f"cannot copy {src}: {why}; nothing was changed")
    skip = pgcontrol.unneeded_wal(src)
    if not skip:
        return copy.copy_tree(src, dst, exclude=("postmaster.pid",), flush=True)
    stats = copy.copy_tree(src, dst, exclude=("postmaster.pid", "pg_wal"), flush=True)
    wal = copy.copy_tree(src / "pg_wal", dst / "pg_wal", exclude=skip, flush=True)
    stats.files += wal.files
    stats.dirs += wal.dirs
    stats.bytes += wal.bytes
    for method, n in wal.by_method.items():
        stats.by_method[method] = stats.by_method.get(method, 0) + n
    return stats


def _prepare(store: Path, datadir: Path) -> tuple[str | None, set[str], int]:
    """As the server user, in one process: sweep what a killed run left in the store; why
    ``datadir`` cannot be snapshotted (or None); the names taken; its size."""
    snapstore.sweep(store)
    taken = {n for n, _, _ in snapstore.list_metas(store)}
    return snapstore.unsupported(datadir), taken, copy.tree_size(datadir)


def _copy_identified(src: Path, staging: Path) -> tuple[copy.CopyStats, str]:
    """:func:`snap_copy`, with the index of ``src`` for restores by difference (taken
    first: a file written during the copy will not match it), and the copy's system
    identifier. As the server user, the server stopped."""
    index = delta.take(src)
    stats = snap_copy(src, staging)
    delta.save(staging, index)
    delta.settle(index)
    return stats, pgcontrol.system_identifier(staging / snapstore.DATA)


def snap_copy(src: Path, staging: Path) -> copy.CopyStats:
    """``staging/data`` := a copy of ``src``. As the server user."""
    os.mkdir(staging, 0o700)
    return copy_into(src, staging / snapstore.DATA)


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
    if pgcontrol.system_identifier(data) != meta.system_identifier:
        return "its data directory has another system identifier than recorded"
    return None


def _identify(datadir: Path, snapdir: Path, meta: Meta) -> tuple[str, str | None]:
    """The instance's system identifier, and :func:`_check_data` of the snapshot: one
    process as the server user."""
    return pgcontrol.system_identifier(datadir), _check_data(snapdir, meta)


# --------------------------------------------------------------------------- create


def meta_for(srv: Server, name: str, sysid: str, kind: str, stats: copy.CopyStats) -> Meta:
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
    with sigguard.interruptible(), snapstore.opened(srv.datadir, su) as store:
        why, taken, size = store.as_user(_prepare, store.path, srv.datadir)
        if why:
            raise DatabaseException(
                f"cannot snapshot '{srv.inst.name}': {why}; nothing was changed"
            )
        name = pick_name(store, name, srv.inst.name, taken)
        snapstore.check_space(store, size, f"snapshot {name!r}")
        staging = store.entry(snapstore.tmp_name("snap"))
        online = online and srv.running() is not None  # stopped: a copy is consistent
        kind = "online" if online else kind
        try:
            with paused(srv, stop=not online) as pause:
                if online:
                    from pgmgr.core import basebackup

                    stats = basebackup.take(srv, staging, su)
                    sysid = store.as_user(pgcontrol.system_identifier, staging / snapstore.DATA)
                else:
                    try:
                        with copy.disk_full(f"snapshot {name!r}", store.path):
                            stats, sysid = store.as_user(_copy_identified, srv.datadir, staging)
                    except BaseException:
                        # Before the server starts again: a disk the copy filled would
                        # refuse its start ("could not write lock file": left stopped).
                        store.as_user(snapstore.remove_tree, staging)
                        raise
            meta = meta_for(srv, name, sysid, kind, stats)
            with sigguard.shielded():  # named: complete, whatever arrives now
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
    current, why = store.as_user(_identify, srv.datadir, store.entry(name), meta)
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
    if why:
        raise DatabaseException(f"snapshot {name!r} is damaged: {why}; nothing was changed")
    return rollback


def _rollback_record(meta: Meta) -> dict[str, Any]:
    """What the record becomes with the snapshot's major (a pre-upgrade one): its
    binaries while they are installed, else those of the same major found now."""
    if (Path(meta.bindir) / "postgres").is_file():
        major, version, bindir = meta.major, meta.version, meta.bindir
    else:
        install = versions.select(meta.major).installation
        major, version, bindir = install.major, install.version, str(install.bindir)
    return {"major": major, "version": version, "bindir": bindir, "settings": meta.settings}


def _stage(src: Path, staging: Path, store: Path) -> copy.CopyStats:
    """``staging`` := a durable copy of the snapshot's ``src``. As the server user."""
    stats = copy_into(src, staging)
    copy.sync_fs(store)
    return stats


def _stage_delta(
    src: Path, datadir: Path, staging: Path, store: Path, index: delta.Index
) -> copy.CopyStats:
    """``staging`` := the snapshot's ``src``, with the files of the stopped ``datadir``
    that ``index`` says are unchanged linked instead of copied; durable. As the user."""
    lfd = os.open(datadir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        stats = copy.copy_tree(
            src, staging, exclude=("postmaster.pid",), flush=True,
            link_dest=lfd, unchanged=index.unchanged,
        )  # fmt: skip
    finally:
        os.close(lfd)
    copy.sync_fs(store)
    return stats


def _reindex(old: Path | None, datadir: Path, snapdir: Path) -> None:
    """After the swap, before the server starts: drop the replaced directory's names of
    shared files (``old``: None when it is kept), index the restored ``datadir`` for the
    next restore of ``snapdir``, and wait for the file clock (:func:`delta.settle`). An
    index that cannot be written is dropped: the next restore copies everything."""
    try:
        if old is not None:
            delta.unlink_shared(old)
        index = delta.take(datadir)
        delta.save(snapdir, index)
        delta.settle(index)
    except OSError:
        with contextlib.suppress(OSError):
            delta.drop(snapdir)


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
    gone = missing(srv.inst.name, name)
    with (
        sigguard.interruptible(),
        snapstore.opened(srv.datadir, srv.user(), create=False, missing=gone) as store,
    ):
        store.as_user(snapstore.sweep, store.path)
        meta = load(store, name, srv.inst.name)
        rollback = check_restorable(srv, store, meta)
        keep = None if save_current is None else _saved_meta(srv, store, meta, save_current)
        snapstore.check_space(store, meta.size, f"restoring {name!r}")
        snapdir = store.entry(name)
        # By difference (module doc of pgmgr.core.delta), unless the replaced state is kept
        # (it would share files with the restored one) or the snapshot is of another major.
        index = None if keep or rollback else store.as_user(delta.load, snapdir)
        staging = store.entry(snapstore.tmp_name("restore"))
        try:
            if index is None:  # a full copy, made while the server still runs
                with copy.disk_full(f"restoring {name!r}", store.path):
                    stats = store.as_user(_stage, snapdir / snapstore.DATA, staging, store.path)
            # The state being replaced is thrown away (unless kept): no shutdown checkpoint.
            # Should the swap fail, it starts again with crash recovery, losing nothing.
            mode = "immediate" if keep is None else "fast"
            with paused(srv, mode=mode) as pause:
                if index is not None:
                    stats = _stage_stopped(srv, store, snapdir, staging, index, name)
                    testhook.pause("restore-staged")
                it = intent.Intent(
                    "restore", store.as_user(intent.identify, staging),
                    _rollback_record(meta) if rollback else {}, intent.held_name("restore"),
                )  # fmt: skip
                if keep is not None:  # the replaced state becomes this snapshot
                    it.keep, it.source, it.meta = keep.name, it.old, keep.to_dict()
                with sigguard.shielded():
                    _switch(srv, store, it, staging, snapdir)
                    resume(srv, pause)  # the restore completes, then says so
        finally:
            store.as_user(snapstore.remove_tree, staging)  # if the swap did not happen
    return RestoreResult(
        srv.inst.name, name, srv.inst.version, pause.was_running, time.monotonic() - t0,
        pause.downtime, keep.name if keep else None, old_version if rollback else None,
        copied=stats.bytes - stats.linked_bytes, kept=stats.linked,
    )  # fmt: skip


def _stage_stopped(
    srv: Server, store: Store, snapdir: Path, staging: Path, index: delta.Index, name: str
) -> copy.CopyStats:
    """:func:`_stage_delta` once the server is stopped; a partial copy is removed before
    the server starts again (a disk the copy filled would refuse its start)."""
    try:
        with copy.disk_full(f"restoring {name!r}", store.path):
            return store.as_user(
                _stage_delta, snapdir / snapstore.DATA, srv.datadir, staging, store.path, index
            )
    except BaseException:
        store.as_user(snapstore.remove_tree, staging)
        raise


def _switch(srv: Server, store: Store, it: intent.Intent, staging: Path, snapdir: Path) -> None:
    """Swap the staged copy in, and the record with it, whatever kills this meanwhile (see
    :mod:`pgmgr.core.intent`); then index the restored directory for the next restore by
    difference, before the server starts. Signals held by the caller."""
    intent.begin(srv, it)
    try:
        store.as_user(os.rename, staging, store.entry(it.old))
        snapstore.swap_in(store, it.old)
    except BaseException:
        intent.discard(srv, store)
        raise
    testhook.pause("restore-swapped")
    gone = intent.complete(srv, store)
    store.as_user(_reindex, store.entry(gone[0]) if gone else None, srv.datadir, snapdir)
    intent.drop(store, gone)


def _saved_meta(srv: Server, store: Store, meta: Meta, save_as: str) -> Meta:
    """The metadata of the snapshot ``--save-current`` makes of the replaced state."""
    saved = pick_name(store, save_as or None, srv.inst.name)
    sysid = store.as_user(pgcontrol.system_identifier, srv.datadir)
    keep = meta_for(srv, saved, sysid, "saved", copy.CopyStats())
    keep.size = meta.size
    return keep
