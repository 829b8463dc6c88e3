"""Restore: put an instance back to one of its snapshots (see the module doc of
:mod:`pgmgr.core.snapshot`): by difference where the snapshot has an index of the data
directory (:mod:`pgmgr.core.delta`), else a full copy. Either is made while the server
still runs; by difference, the files it links that the server writes meanwhile are copied
again once it is stopped (:func:`_recheck`), so the downtime is the stop, that check, the
swap and the start. The swap goes through the record's intent (:mod:`pgmgr.core.intent`).

Every function expects the caller to hold the instance's lock (``dirlock.lock``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pgmgr.core import (
    cleanup,
    copy,
    delta,
    dirpath,
    identity,
    intent,
    restorable,
    sigguard,
    snapstore,
    snapswap,
    testhook,
    userfs,
)
from pgmgr.core.errors import DatabaseException, PgmgrError
from pgmgr.core.instance import Server
from pgmgr.core.pause import Pause, done_then, not_started, paused, resume, spawn_again
from pgmgr.core.snapcatalog import missing
from pgmgr.core.snapshot import copy_into, require_datadir
from pgmgr.core.snapstore import Store

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from typing import Any

#: :attr:`delta.Index.own`: (inode, size, mtime) of each file of a snapshot's copy
Own = dict[str, tuple[int, int, int]]
#: (inode, size, mtime, ctime) of each file a restore linked, as linked (see copy_tree)
Linked = dict[str, tuple[int, int, int, int]]


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


def _stage(src: Path, staging: Path, store: Path) -> tuple[copy.CopyStats, identity.Identity]:
    """``staging`` := a durable copy of the snapshot's ``src``; with its identity
    (:func:`intent.identify`: nothing changes it once made). As the server user."""
    stats = copy_into(src, staging)
    copy.sync_fs(store)
    return stats, intent.identify(staging)


def _stage_delta(
    src: Path, datadir: Path, staging: Path, store: Path, index: delta.Index
) -> tuple[copy.CopyStats, Linked, delta.Stamp | None]:
    """``staging`` := the snapshot's ``src``, with the files of ``datadir`` that ``index``
    says are unchanged linked instead of copied; durable. The server may be running: it
    may write a linked file after it was linked, which :func:`_recheck` undoes once it is
    stopped, by the stamps returned (each linked file's, as linked). With the stamp of
    ``datadir``'s ``pg_control`` before (for an instance that is not running: see
    :func:`_identify_staged`). As the user.

    ``pg_control`` itself is always copied (8 kB): a hard link to it changes its ctime,
    which is how a server started meanwhile is told (an instance restored, stopped and
    untouched since the snapshot was refused as "started during the restore")."""

    def unchanged(rel: str, st: os.stat_result) -> bool:
        return rel != "global/pg_control" and index.unchanged(rel, st)

    linked: Linked = {}
    lfd = os.open(datadir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        control = delta.control(lfd)
        stats = copy.copy_tree(
            src, staging, exclude=("postmaster.pid",), flush=True,
            link_dest=lfd, unchanged=unchanged, linked=linked,
        )  # fmt: skip
    finally:
        os.close(lfd)
    snapstore.unseal(staging)
    copy.sync_fs(store)
    return stats, linked, control


def _recheck(
    src: Path, datadir: Path, staging: Path, store: Path, linked: Linked
) -> tuple[delta.Stamp | None, int, int]:
    """Once the server is stopped: the files :func:`_stage_delta` linked that were written
    since (the server ran meanwhile: a write, a truncation, a rename changes the ctime,
    which nothing sets back) are copied from the snapshot ``src`` instead; durable. With
    the stamp of ``datadir``'s ``pg_control`` first (see :func:`_identify_staged`), and
    how many files were copied again, and their bytes. As the user."""
    fd = os.open(datadir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        control = delta.control(fd)
    finally:
        os.close(fd)
    again = size = 0
    for rel, stamp in linked.items():
        st = os.stat(staging / rel, follow_symlinks=False)
        if (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) == stamp:
            continue
        head, _, name = rel.rpartition("/")
        with (
            userfs.opened_dir(staging / head) as dfd,
            userfs.opened_dir(src / head) as sfd,
        ):
            os.unlink(name, dir_fd=dfd)
            size += copy.copy_file(sfd, dfd, name).bytes
        again += 1
    if again:
        copy.sync_fs(store)
    return control, again, size


def _identify_staged(
    staging: Path, datadir: Path, control: delta.Stamp | None, instance: str
) -> identity.Identity:
    """:func:`intent.identify` of ``staging``, once sure no server ran on ``datadir``
    since ``control`` (its ``pg_control`` then): one started by hand meanwhile, and
    stopped again, wrote into files the staged directory shares. ``control`` is from
    before the links were made for an instance that was not running, else from once the
    restore stopped it (:func:`_recheck`: what its own server wrote before is copied
    again). As the user.

    :raises DatabaseException: it did.
    """
    fd = os.open(datadir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        ran = delta.control(fd) != control
    finally:
        os.close(fd)
    if ran:
        raise DatabaseException(
            f"'{instance}' was started during the restore; nothing was changed",
            hint="stop what starts it (pg_ctl, a script) and restore again",
        )
    return intent.identify(staging)


def _reindex(old: Path | None, datadir: Path, snapdir: Path, own: Own | None = None) -> None:
    """After the swap, before the server starts: drop the replaced directory's names of
    shared files (``old``: None when it is kept), index the restored ``datadir`` for the
    next restore of ``snapdir``, and wait for the file clock (:func:`delta.settle`). An
    index that cannot be written or waited out is dropped: the next restore copies
    everything. The index also records the snapshot's copy (the restored directory holds
    its bytes), for snapshots that share files with it (:func:`_spread`, once the server
    runs again): ``own``, as the snapshot's index has it (its copy is never written: a
    file changed by hand no longer matches it, and is not shared), else as it is now."""
    testhook.pause("restore-reindexing")
    try:
        if old is not None:
            delta.unlink_shared(old)
        index = delta.take(datadir)
        index.own = own or delta.mine(snapdir / snapstore.DATA)
        if delta.settle(index, datadir):
            delta.save(snapdir, index)
            return
    except OSError:
        pass
    with contextlib.suppress(OSError):
        delta.drop(snapdir)


def _spread(snapdir: Path) -> None:
    """:func:`delta.spread` of the index :func:`_reindex` saved. After the server started:
    it rewrites the indexes of up to 8 snapshots (seconds for a data directory of 100,000
    files), and needs no stopped server (their stamps are those taken before the start;
    a file written since no longer matches them). Optional: a snapshot whose index was
    not updated copies the files whose stamps changed. As the user."""
    testhook.pause("restore-spreading")
    index = delta.load(snapdir)
    if index is not None and index.own:
        with contextlib.suppress(OSError):
            delta.spread(index, snapdir)


def restore(
    srv: Server, name: str, *, save_current: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> RestoreResult:  # fmt: skip
    """Put ``srv`` back to snapshot ``name`` (see the module doc). ``save_current``: keep
    the state being replaced as a snapshot of that name (``""`` for a timestamp).
    ``progress`` is told each slow step as it begins ("copying 1.2 GB").

    :raises SnapshotNotFound: no such snapshot.
    :raises DatabaseException: see :func:`check_restorable`; not enough space.
    :raises KeyboardInterrupt: interrupted before the swap: nothing changed (a server
        that was stopped runs again); after it: the restore is complete.
    """
    # 'init -d' would make another cluster, which no snapshot of this one restores into.
    hint = f"'pgmgr branch {srv.inst.name} NEW --from {name}' makes an instance of the snapshot"
    require_datadir(srv, hint)
    dirpath.check_not_mount(srv.datadir, f"restore '{srv.inst.name}'")
    t0 = time.monotonic()
    old_version = srv.inst.version
    gone = missing(srv.inst.name, name)
    with (
        sigguard.interruptible(),
        snapstore.opened(
            srv.datadir, srv.user(), create=False, missing=gone, exclusive=True
        ) as store,
    ):
        plan = restorable.plan(srv, store, name, save_current)
        index, keep, snapdir = plan.index, plan.keep, plan.snapdir
        say = progress or (lambda _step: None)
        how = "copying what changed of" if index is not None else "copying"
        say(f"{how} {snapstore.human(plan.meta.size)}")
        staging = store.entry(snapstore.tmp_name("restore"))
        swapped = False
        # Not swapped in (failed, interrupted): the staged copy goes; one that cannot be
        # removed is left to the next command's sweep, the failure or interrupt wins.
        with cleanup.always(lambda: swapped or store.as_user(snapstore.remove_tree, staging)):
            # Made while the server still runs: a full copy, or one by difference whose
            # files the server writes meanwhile are copied again once it is stopped.
            with copy.disk_full(f"restoring {name!r}", store.path):
                if index is None:
                    stats, staged = store.as_user(
                        _stage, snapdir / snapstore.DATA, staging, store.path
                    )
                else:
                    stats, linked, before = store.as_user(
                        _stage_delta, snapdir / snapstore.DATA, srv.datadir, staging,
                        store.path, index,
                    )  # fmt: skip
                    testhook.pause("restore-linked")  # tests: the server writes now
            # The state being replaced is thrown away (unless kept): no shutdown checkpoint.
            # Should the swap fail, it starts again with crash recovery, losing nothing.
            mode = "immediate" if keep is None else "fast"
            said = f"'{srv.inst.name}' was restored to {name!r}"
            say("swapping it in")  # the downtime: the stop, a recheck, the swap
            with (
                done_then(said, srv.inst.name) as restored,
                paused(srv, "restore", mode=mode) as pause,
            ):
                if index is not None:
                    control = _recheck_stopped(store, snapdir, srv, staging, linked, stats, name)
                    if not pause.was_running:  # a start by hand since the links is refused
                        control = before
                    testhook.pause("restore-staged")
                    staged = store.as_user(
                        _identify_staged, staging, srv.datadir, control, srv.inst.name
                    )
                it = intent.Intent("restore", staged, plan.record, intent.held_name("restore"))
                if keep is not None:  # the replaced state becomes this snapshot
                    it.keep, it.source, it.meta = keep.name, it.old, keep.to_dict()
                with sigguard.shielded():
                    not_started(srv, "restore")
                    # A full copy by clones is not indexed: the next restore clones too.
                    reindex = index is not None or stats.method != "reflink"
                    own = index.own if index is not None else None
                    replaced = _switch(srv, store, it, staging, snapdir, restored, reindex, own)
                    swapped = pause.done = True
                    say("starting again" if pause.was_running else "done")
                    _start_again(srv, store, pause, snapdir, reindex, replaced)
    return RestoreResult(
        srv.inst.name, name, srv.inst.version, pause.was_running, time.monotonic() - t0,
        pause.downtime, keep.name if keep else None, old_version if plan.rollback else None,
        copied=stats.bytes - stats.linked_bytes, kept=stats.linked,
    )  # fmt: skip


def _start_again(
    srv: Server, store: Store, pause: Pause, snapdir: Path, reindex: bool, replaced: list[str]
) -> None:
    """Once the copy is swapped in (signals held by the caller): the server spawned again
    and waited for, the index spread meanwhile (when ``reindex``), then the replaced
    directory removed."""
    try:
        # The restore completes, then says so; _spread overlaps the start.
        with contextlib.suppress(KeyboardInterrupt):  # cancelled: resume()
            spawn_again(srv, pause)
        if reindex:
            with contextlib.suppress(PgmgrError):  # optional: see _spread
                store.as_user(_spread, snapdir)
        resume(srv, pause)
    finally:  # not before: freeing its blocks competes with the start
        intent.remove(store, replaced)


def _recheck_stopped(
    store: Store, snapdir: Path, srv: Server, staging: Path, linked: Linked,
    stats: copy.CopyStats, name: str,
) -> delta.Stamp | None:  # fmt: skip
    """:func:`_recheck` once the server is stopped, ``stats`` updated; a failure removes
    the staged copy before the server starts again (a disk the copy filled would refuse
    its start)."""
    try:
        with copy.disk_full(f"restoring {name!r}", store.path):
            control, again, size = store.as_user(
                _recheck, snapdir / snapstore.DATA, srv.datadir, staging, store.path, linked
            )
    except BaseException:
        cleanup.quietly(lambda: store.as_user(snapstore.remove_tree, staging))
        raise
    stats.linked -= again
    stats.linked_bytes -= size
    return control


def _switch(
    srv: Server, store: Store, it: intent.Intent, staging: Path, snapdir: Path,
    restored: list[bool], reindex: bool = True, own: Own | None = None,
) -> list[str]:  # fmt: skip
    """Swap the staged copy in, and the record with it, whatever kills this meanwhile (see
    :mod:`pgmgr.core.intent`), and mark it ``restored`` (what fails from here says it was);
    then, if ``reindex``, index the restored directory for the next restore by difference,
    before the server starts. Returns the replaced directory's work entry, to remove once
    the server runs (:func:`intent.remove`). Signals held by the caller."""
    intent.begin(srv, it)
    try:
        store.rename(staging.name, it.old)
        snapswap.swap_in(store, it.old)
    except BaseException:
        intent.discard(srv, store)
        raise
    sigguard.commit()  # swapped: the restore completes and says so, whatever arrives
    restored.append(True)
    testhook.pause("restore-swapped")
    gone = intent.complete(srv, store)
    testhook.pause("restore-completed")
    if not reindex:
        return gone
    try:
        store.as_user(_reindex, store.entry(gone[0]) if gone else None, srv.datadir, snapdir, own)
    except PgmgrError:  # its process died: restored all the same, the next one copies all
        with contextlib.suppress(PgmgrError, OSError):
            store.as_user(delta.drop, snapdir)
    return gone
