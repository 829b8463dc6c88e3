"""Snapshots of an instance: take them (restore is :mod:`pgmgr.core.restore`; listing and
deleting, :mod:`pgmgr.core.snapcatalog`).

A snapshot is a copy of the stopped data directory (or a ``pg_basebackup`` of the running
one with ``online``), kept in the instance's store (see :mod:`pgmgr.core.snapstore`) and made
with the one copy engine (:mod:`pgmgr.core.copy`), with an index of the data directory for
restores by difference (:mod:`pgmgr.core.delta`). A running instance is stopped for the
copy and started again (the downtime is reported).

Every function expects the caller to hold the instance's lock (``dirlock.lock``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from pathlib import Path

from pgmgr.core import (
    cleanup,
    copy,
    delta,
    dirpath,
    paths,
    pgcontrol,
    server,
    sigguard,
    snapstore,
    testhook,
)
from pgmgr.core.errors import DatabaseException, PgmgrError
from pgmgr.core.instance import DataDirNotFound, Server, _why_missing
from pgmgr.core.pause import Pause, done_then, paused, spawn_again
from pgmgr.core.snapcatalog import pick_name
from pgmgr.core.snapstore import Meta

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from typing import Any

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_HINT = "old snapshots are deleted with 'pgmgr snapshot NAME SNAP --delete'"


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
    #: bytes copied (the rest is shared with the snapshot ``shared_with``), files shared
    copied: int = 0
    shared: int = 0
    shared_with: str | None = None

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
            "copied_bytes": self.copied,
            "shared_files": self.shared,
            "shared_with": self.shared_with,
        }


def require_datadir(srv: Server, hint: str | None = None) -> None:
    """:raises DataDirNotFound: the instance has no data directory (exit code 4)."""
    if not server.is_datadir(srv.datadir):
        raise DataDirNotFound(srv.datadir, _why_missing(srv.datadir), hint)


# --------------------------------------------------------------------------- as the user


def copy_into(src: Path, dst: Path, base: delta.Base | None = None) -> copy.CopyStats:
    """``dst`` (new) := a copy of the stopped data directory ``src``, without what a copy
    never needs: ``postmaster.pid`` and recycled WAL segments (up to ``max_wal_size``, as
    much again as the data of a freshly loaded instance). With ``base``, the files it
    says are unchanged are linked from that earlier snapshot instead. As the server user.

    :raises DatabaseException: ``src`` has tablespaces or an outside ``pg_wal`` (checked
        again here, stopped: one made since the caller's check would be shared).
    """
    why = snapstore.unsupported(src)
    if why:
        raise DatabaseException(f"cannot copy {src}: {why}; nothing was changed")
    skip = pgcontrol.unneeded_wal(src)
    if not skip:
        stats = _tree(src, dst, ("postmaster.pid",), base, "")
        snapstore.unseal(dst)  # a copy of a snapshot (sealed) must start
        return stats
    stats = _tree(src, dst, ("postmaster.pid", "pg_wal"), base, "")
    snapstore.unseal(dst)
    wal = _tree(src / "pg_wal", dst / "pg_wal", skip, base, "pg_wal/")
    stats.files += wal.files
    stats.dirs += wal.dirs
    stats.bytes += wal.bytes
    stats.linked += wal.linked
    stats.linked_bytes += wal.linked_bytes
    for method, n in wal.by_method.items():
        stats.by_method[method] = stats.by_method.get(method, 0) + n
    return stats


def _tree(
    src: Path, dst: Path, exclude: Container[str], base: delta.Base | None, prefix: str
) -> copy.CopyStats:
    """:func:`copy.copy_tree` of ``src`` (``prefix`` under the data directory) to ``dst``,
    linking from ``base`` what it says is unchanged."""
    if base is None:
        return copy.copy_tree(src, dst, exclude=exclude, flush=True)
    try:
        lfd = os.open(base.data / prefix, _DIR_FLAGS)
    except OSError:  # deleted meanwhile: a plain copy
        return copy.copy_tree(src, dst, exclude=exclude, flush=True)
    try:
        return copy.copy_tree(
            src, dst, exclude=exclude, flush=True,
            link_dest=lfd, unchanged=base.unchanged(prefix),
        )  # fmt: skip
    finally:
        os.close(lfd)


#: How many of the newest snapshots a new one may share files with (see :class:`delta.Base`).
BASES = 8


def _prepare(
    store: Path, datadir: Path
) -> tuple[str | None, set[str], list[str], tuple[int, int], bool]:
    """As the server user, in one process: sweep what a killed run left in the store; why
    ``datadir`` cannot be snapshotted (or None); the names taken; the snapshot (of the
    newest ones) the new one may share files with; its size and what a copy of it
    allocates (:func:`copy.tree_sizes`: a sparse file's holes are kept); whether copies into the
    store are clones (then it shares blocks with every copy, and needs no index: see
    :func:`pgmgr.core.restorable._index`)."""
    snapstore.sweep(store)
    metas = snapstore.list_metas(store)
    taken = {n for n, _, _ in metas}
    clones = copy.clones_from(datadir, store)
    newest = sorted((m.created, n) for n, m, _ in metas if m is not None and m.kind != "online")
    earlier = [] if clones else [n for _, n in newest[-BASES:]]
    if len(earlier) > 1:
        # Chosen now, while the server may still run: once it is stopped, only that one's
        # index is loaded (each load costs ~5 us per file, 0.5 s for 100,000 files).
        base = _best(store, datadir, earlier)
        earlier = [base.data.parent.name] if base else earlier[-1:]
    return snapstore.unsupported(datadir), taken, earlier, copy.tree_sizes(datadir), clones


def _best(store: Path, datadir: Path, earlier: list[str]) -> delta.Base | None:
    """Of the ``earlier`` snapshots, the one sharing most with ``datadir`` now (the server
    may be running). As the server user."""
    try:
        return delta.base((store / n for n in earlier), delta.take(datadir), snapstore.DATA)
    except OSError:  # a file the server removed meanwhile
        return None


def _shared(store: Path, datadir: Path, earlier: list[str]) -> int:
    """What the files of ``datadir`` a snapshot would share with one of the ``earlier``
    ones now would allocate if copied (:func:`delta.allocated`: the room check asks for
    that, not bytes). As the server user."""
    base = _best(store, datadir, earlier)
    return delta.allocated(datadir, base.same) if base else 0


def _check_space(
    store: snapstore.Store, datadir: Path, earlier: list[str], size: int, what: str,
    online: bool,
) -> None:  # fmt: skip
    """:func:`snapstore.check_space` for a new snapshot of ``size`` bytes, less what it
    would share with an earlier one (only worked out when the disk is short); a copy by
    clones asks less (``online``: pg_basebackup writes every byte)."""
    if earlier and snapstore.free_bytes(store.fd) < size:
        size -= store.as_user(_shared, store.path, datadir, earlier)
    snapstore.check_space(store, size, what, None if online else datadir)


def _copy_identified(
    src: Path, staging: Path, earlier: list[str], indexed: bool = True
) -> tuple[copy.CopyStats, str, str | None]:
    """:func:`snap_copy`, sharing what it can with one of the ``earlier`` snapshots (their
    names; see :class:`delta.Base`), with the index of ``src`` for restores by difference
    (taken first: a file written during the copy will not match it) unless not
    ``indexed`` (copies by clones: restores copy all), and the copy's system identifier,
    and the name of the snapshot it shares files with. As the server user, the server
    stopped."""
    index = delta.take(src) if indexed else None
    control = index.files.get("global/pg_control") if index else delta.control(src)
    base = None
    if index is not None:
        base = delta.base((staging.parent / n for n in earlier), index, snapstore.DATA)
    testhook.pause("snapshot-indexed")
    stats = snap_copy(src, staging, base)
    not_run_since(src, control)
    if index is not None:
        index.own = delta.mine(staging / snapstore.DATA)
        if delta.settle(index, src):
            delta.save(staging, index)
    try:
        sysid = pgcontrol.system_identifier(staging / snapstore.DATA, verify=True)
    except ValueError as e:  # the instance's own: PostgreSQL would not start on it either
        raise DatabaseException(f"cannot snapshot {src}: {e}; nothing was changed") from None
    return stats, sysid, base.data.parent.name if base and stats.linked else None


def not_run_since(datadir: Path, control: delta.Stamp | None, what: str = "snapshot") -> None:
    """:raises DatabaseException: a server ran on the stopped ``datadir`` since the stamp
    ``control`` of its ``pg_control`` was taken (started by hand, bypassing the lock; any
    start or stop writes ``pg_control``): the copy ``what`` made mixes files from before
    its writes (linked from an earlier snapshot by the index) with files from after. As
    the server user."""
    if control != delta.control(datadir):
        raise DatabaseException(
            f"a server was started on {datadir} during the {what}; nothing was changed",
            hint=f"stop what starts it (pg_ctl, a script) and {what} again",
        )


def snap_copy(src: Path, staging: Path, base: delta.Base | None = None) -> copy.CopyStats:
    """``staging/data`` := a copy of ``src``. As the server user."""
    os.mkdir(staging, 0o700)
    return copy_into(src, staging / snapstore.DATA, base)


def _finish(staging: Path, final: Path, meta: Meta) -> None:
    """Write the metadata, seal the copy, flush, and give the snapshot its name. Runs as
    the server user."""
    snapstore.seal(staging / snapstore.DATA)
    snapstore.write_meta(staging, meta, fsync=False)  # the syncfs next flushes it
    copy.sync_fs(staging)
    testhook.pause("snapshot-naming")
    if final.exists():
        raise DatabaseException(f"snapshot {final.name!r} appeared meanwhile")
    os.rename(staging, final)
    copy.fsync_dir(final.parent)


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
    srv: Server, name: str | None = None, *, online: bool = False, kind: str = "snapshot",
    progress: Callable[[str], None] | None = None,
) -> SnapshotResult:  # fmt: skip
    """Take a snapshot of ``srv`` (see the module doc). ``progress`` is told each slow step
    as it begins ("copying 1.2 GB").

    :raises DataDirNotFound: no data directory.
    :raises DatabaseException: a bad or taken name, not enough space, an unsafe store.
    :raises KeyboardInterrupt: interrupted (also SIGTERM/SIGHUP); nothing is left behind
        and a server that was stopped for the copy is started again. In-process, a
        signal once the snapshot is named reaches the caller's handler (a Ctrl-C: this)
        when it is complete: it is taken.
    """
    require_datadir(srv)
    dirpath.check_not_mount(srv.datadir, f"snapshot '{srv.inst.name}'")
    t0 = time.monotonic()
    if online:  # pg_basebackup needs it ready: one another process starts is waited for
        from pgmgr.core.readyfirst import ready_first

        ready_first(srv, "snapshot", f"take an online snapshot of '{srv.inst.name}'")
    su = srv.user()
    with sigguard.interruptible(), snapstore.opened(srv.datadir, su, exclusive=True) as store:
        name, online, earlier, size, clones = _prepared(srv, store, name, online)
        kind = "online" if online else kind
        say = progress or (lambda _step: None)
        # The size counts WAL segments a copy leaves out: "up to".
        how = (
            "pg_basebackup"
            if online
            else ("copying what changed of" if earlier else "copying up to")
        )
        say(f"{how} {snapstore.human(size)}")
        staging = store.entry(snapstore.tmp_name("snap"))
        try:
            said = f"snapshot {name!r} of '{srv.inst.name}' was taken"
            with (
                done_then(said, srv.inst.name) as named,
                paused(srv, "snapshot", stop=not online) as pause,
            ):
                shared_with = None
                if online:
                    from pgmgr.core import basebackup

                    stats = basebackup.take(srv, staging, su)
                    sysid = store.as_user(pgcontrol.system_identifier, staging / snapstore.DATA)
                else:
                    stats, sysid, shared_with = _copy_stopped(
                        srv, store, staging, name, earlier, clones, pause, say
                    )
                meta = meta_for(srv, name, sysid, kind, stats)
                with sigguard.shielded():  # named: complete, whatever arrives now
                    store.as_user(_finish, staging, store.entry(name), meta)
                    sigguard.commit()  # taken: it says so, whatever arrives until it has
                    pause.done = True
                    named.append(True)
        except BaseException:  # what cannot be removed is swept by the next command
            cleanup.quietly(lambda: store.as_user(snapstore.remove_tree, staging))
            raise
    elapsed = time.monotonic() - t0
    path = str(store.entry(name))
    return SnapshotResult(
        srv.inst.name, name, path, stats.bytes, stats.files, stats.method, kind,
        pause.was_running, elapsed, pause.downtime,
        stats.bytes - stats.linked_bytes, stats.linked, shared_with,
    )  # fmt: skip


def _prepared(
    srv: Server, store: snapstore.Store, name: str | None, online: bool
) -> tuple[str, bool, list[str], int, bool]:
    """Before a snapshot's copy: the store swept and the data directory checked
    (:func:`_prepare`), the name picked, the store writable, whether it is still online
    (a stopped server's copy is consistent) and space enough. Returns the name, online,
    the earlier snapshots it may share files with, its size and whether copies are clones.

    :raises DatabaseException: it cannot be snapshotted, a bad or taken name, no space.
    """
    why, taken, earlier, sizes, clones = store.as_user(_prepare, store.path, srv.datadir)
    if why:
        raise DatabaseException(f"cannot snapshot '{srv.inst.name}': {why}; nothing was changed")
    name = pick_name(store, name, srv.inst.name, taken)
    # Before the server stops: it would not start again on a filesystem gone read-only.
    paths.check_writable(store.path, f"snapshot '{srv.inst.name}'", _HINT)
    online = online and srv.running() is not None  # stopped: a copy is consistent
    # pg_basebackup shares nothing and writes holes out: the whole size must fit. The
    # copy engine keeps holes: what the files allocate.
    size = sizes[0] if online else sizes[1]
    if online:
        earlier = []
    _check_space(store, srv.datadir, earlier, size, f"snapshot {name!r}", online)
    return name, online, earlier, size, clones


def _copy_stopped(
    srv: Server, store: snapstore.Store, staging: Path, name: str, earlier: list[str],
    clones: bool, pause: Pause, say: Callable[[str], None],
) -> tuple[copy.CopyStats, str, str | None]:  # fmt: skip
    """The copy of a snapshot while its server is stopped (by :func:`paused`), then the
    server spawned again: the copy's stats, system identifier, and the snapshot it
    shares files with. A failed copy's staging directory is removed before the start."""
    try:
        with copy.disk_full(f"snapshot {name!r}", store.path):
            stats, sysid, shared_with = store.as_user(
                _copy_identified, srv.datadir, staging, earlier, not clones
            )
    except BaseException:
        # Before the server starts again: a disk the copy filled would
        # refuse its start ("could not write lock file": left stopped).
        cleanup.quietly(lambda: store.as_user(snapstore.remove_tree, staging))
        raise
    testhook.pause("snapshot-copied")
    say("starting again" if pause.was_running else "naming")
    # Copied: naming it overlaps the start. A start refused before postgres
    # runs (port taken) is tried again at the end of paused(), and that
    # failure says the snapshot was taken, as one after the spawn does.
    with contextlib.suppress(PgmgrError):
        spawn_again(srv, pause)
    return stats, sysid, shared_with
