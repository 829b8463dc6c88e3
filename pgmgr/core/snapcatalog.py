"""The snapshots an instance has: list, look up, name, delete.

See :mod:`pgmgr.core.snapstore` for where they live and :mod:`pgmgr.core.snapshot` for taking
and restoring them. Every function expects the caller to hold the instance's lock, except
listing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pgmgr.core import (
    diskio,
    ownerrm,
    pgcontrol,
    server,
    snapdoom,
    snapstore,
    storesweep,
    testhook,
    versions,
)
from pgmgr.core.errors import DatabaseException, UsageError, describe_os_error, doing
from pgmgr.core.instance import Server
from pgmgr.core.privileges import ServerUser
from pgmgr.core.snapstore import Meta, SnapshotNotFound, Store

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from typing import Any

#: what :func:`snapstore.list_metas` returns
Listing = list[tuple[str, Meta | None, str | None]]
#: why a snapshot whose ``data/`` was removed by hand is not restorable
COPY_MISSING = "its copy (data/) is missing"


def taken_names(store: Store) -> set[str]:
    return {n for n, _, _ in store.as_user(snapstore.list_metas, store.path)}


def pick_name(store: Store, name: str | None, instance: str, taken: set[str] | None = None) -> str:
    """``name`` (validated, free) or a fresh timestamp; ``taken``: the names in the store,
    when the caller has them already.

    :raises DatabaseException: a snapshot of that name exists.
    """
    taken = taken_names(store) if taken is None else taken
    if name is None:
        return snapstore.default_name(taken)
    snapstore.check_snap_name(name)
    if name in taken:
        raise DatabaseException(
            f"'{instance}' already has a snapshot named {name!r}",
            hint="choose another name, or delete it with 'pgmgr snapshot NAME SNAP --delete'",
        )
    return name


# --------------------------------------------------------------------------- list


@dataclass
class SnapshotInfo:
    """One snapshot, as ``pgmgr snapshots`` lists it."""

    instance: str
    snapshot: str
    created: float | None
    size: int | None
    version: str | None
    kind: str | None
    path: str
    problem: str | None = None
    #: another cluster's (a destroyed instance's, kept) or taken of another directory
    foreign: bool = False

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
    """The snapshots in ``srv``'s store, oldest first (unreadable ones say why); what a
    killed run left there is swept first (:func:`storesweep.dead_work`)."""
    storesweep.dead_work(srv)
    try:
        with snapstore.opened(srv.datadir, srv.user(), create=False) as store:
            entries, current, gone = store.as_user(_listing, store.path, srv.datadir)
    except SnapshotNotFound:
        return []
    out = []
    for name, meta, why in entries:
        path = str(snapstore.store_path(srv.datadir) / name)
        if meta is None:
            out.append(SnapshotInfo(srv.inst.name, name, None, None, None, None, path, why))
            continue
        problem = None if meta.datadir == srv.inst.datadir else f"taken of {meta.datadir}"
        foreign = problem is not None
        if name in gone:
            problem = COPY_MISSING
        if (
            problem is None
            and meta.major == srv.inst.major  # else restore says which major it is
            and current not in (None, meta.system_identifier, meta.upgraded_to)
        ):  # a destroyed instance's, kept; the data directory was made anew since
            problem = (
                f"of another cluster (system identifier {meta.system_identifier}); "
                "'branch --from' copies it"
            )
            foreign = True
        out.append(
            SnapshotInfo(
                srv.inst.name, name, meta.created, meta.size, meta.version, meta.kind, path,
                problem, foreign,
            )
        )  # fmt: skip
    out.sort(key=lambda s: (s.created or 0, s.snapshot))
    return out


def _listing(store: Path, datadir: Path) -> tuple[Listing, str | None, set[str]]:
    """:func:`snapstore.list_metas`, the system identifier of ``datadir`` now (None if
    unreadable), and the snapshots whose copy is gone (removed by hand). As the server
    user."""
    try:
        current: str | None = pgcontrol.system_identifier(datadir)
    except (OSError, ValueError):
        current = None
    listing = snapstore.list_metas(store)
    gone = {
        n for n, m, _ in listing
        if m is not None and not os.path.lexists(store / n / snapstore.DATA)
    }  # fmt: skip
    return listing, current, gone


def missing(instance: str, name: str) -> str:
    return f"'{instance}' has no snapshot named {name!r} (it has: none)"


def load(store: Store, name: str, instance: str, listed: Listing | None = None) -> Meta:
    """The metadata of snapshot ``name`` (from ``listed``, what
    :func:`snapstore.list_metas` returned, when the caller has it).

    :raises SnapshotNotFound: no such snapshot (exit code 4), listing the ones there are.
    :raises DatabaseException: its metadata is unreadable.
    """
    snapstore.check_snap_name(name)
    if listed is None:
        listed = store.as_user(snapstore.list_metas, store.path)
    entries = {n: (m, w) for n, m, w in listed}
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


def record_of(meta: Meta) -> dict[str, Any]:
    """The record's major, version, binaries and settings for the copy in snapshot
    ``meta`` when it is of another major than the instance (an upgrade's rollback, a
    branch of a pre-upgrade snapshot): the installation of that major it recorded while
    pgmgr still finds it, else another of that major found now. Never ``meta.bindir``
    itself: the server user can write the metadata, and root runs the record's binaries
    (``pgmgr psql`` as root); its settings are checked as ``-c`` ones are.

    :raises DatabaseException: no such major installed; settings pgmgr keeps for itself.
    """
    same = [
        i for i in versions.discover() if i.major == meta.major and str(i.bindir) == meta.bindir
    ]
    install = same[0] if same else versions.select(meta.major).installation
    try:
        settings = server.check_settings(meta.settings)
    except UsageError as e:
        raise DatabaseException(
            f"snapshot {meta.name!r} is damaged: its settings: {e}; nothing was changed"
        ) from None
    return {
        "major": install.major,
        "version": install.version,
        "bindir": str(install.bindir),
        "settings": settings,
    }


# --------------------------------------------------------------------------- delete


def _delete(store: Path, name: str) -> None:
    """Rename out of sight first (atomic), then remove. As the user."""
    doomed = store / snapstore.tmp_name("delete")
    with doing("delete", store / name):
        os.rename(store / name, doomed)
        # On disk before anything in it is deleted: after a power cut a half-deleted
        # snapshot came back under its own name, taken for whole by a restore.
        diskio.fsync_dir(store)
    snapstore.remove_tree(doomed)


def delete(srv: Server, name: str) -> Meta:
    """Delete snapshot ``name`` of ``srv``.

    :raises SnapshotNotFound: no such snapshot.
    """
    snapstore.check_snap_name(name)
    gone = missing(srv.inst.name, name)
    with snapstore.opened(
        srv.datadir, srv.user(), create=False, missing=gone, exclusive=True
    ) as store:
        store.as_user(snapstore.sweep, store.path)
        try:
            meta = load(store, name, srv.inst.name)
        except DatabaseException as e:
            if isinstance(e, SnapshotNotFound):
                raise
            meta = None  # unreadable metadata: still deletable
        store.as_user(_delete, store.path, name)
    return meta or Meta(name, srv.inst.name, srv.inst.datadir, "", "", "", "", 0.0)


def delete_some(datadir: Path, user: ServerUser | None, names: list[str]) -> int:
    """Remove snapshots ``names`` of ``datadir`` (``destroy --with-snapshots`` where the
    store also keeps another cluster's, which stay); how many."""
    try:
        with snapstore.opened(datadir, user, create=False, exclusive=True) as store:
            for name in names:
                store.as_user(_delete, store.path, name)
    except SnapshotNotFound:
        return 0
    return len(names)


def delete_all(datadir: Path, user: ServerUser | None) -> int:
    """Remove every snapshot of ``datadir`` (``destroy --with-snapshots``); how many."""
    try:
        with snapstore.opened(datadir, user, create=False, exclusive=True) as store:
            count = len(store.as_user(snapstore.list_metas, store.path))
            if os.fstat(store.top_fd).st_uid == os.geteuid():
                # The top is ours (as root: shared by server users; see snapstore): renamed
                # out of sight and removed through fds, never following a symlink.
                doomed = snapdoom.doomed_name()
                snapdoom.mark_doomed(store.fd, doomed)  # what the sweep of a killed one checks
                os.rename(store.path.name, doomed, src_dir_fd=store.top_fd,
                          dst_dir_fd=store.top_fd)  # fmt: skip
                diskio.fsync_dirs(store.top_fd)  # as in _delete
                testhook.pause("destroy-snapshots-renamed")
                try:  # the store is the server user's: emptied as that user
                    ownerrm.remove_at(store.top_fd, doomed)
                except OSError as e:  # what that user may not remove (another user's)
                    raise DatabaseException(
                        f"could not remove all of the snapshots in {store.path}: "
                        f"{e.filename or doomed}: {e.strerror}; what is left is in "
                        f"{store.path.parent / doomed}"
                    ) from None
            else:
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
    #: the instance's own snapshots (what --with-snapshots deletes)
    count: int
    path: str
    #: why the store was not looked at (unsafe: never touched; destroy says so)
    problem: str | None = None
    own: list[str] = field(default_factory=list)
    #: snapshots of another cluster in the same store (an instance destroyed before at the
    #: same path, whose snapshots that destroy kept): never deleted with this one
    others: int = 0

    @classmethod
    def of(cls, srv: Server) -> Kept:
        found: list[SnapshotInfo] = []
        problem = None
        try:
            found = list_snapshots(srv)
        except DatabaseException as e:  # an unsafe store is never touched
            problem = str(e)
        except OSError as e:  # nor one the server user cannot read (chmod 000 as root)
            problem = describe_os_error(e)
        path = str(snapstore.store_path(srv.datadir))
        own = [s.snapshot for s in found if not s.foreign]
        others = len(found) - len(own)
        return cls(srv.datadir, srv.user(), len(own), path, problem, own, others)

    def remove(self) -> int:
        if not self.count:
            return 0
        if self.others:
            return delete_some(self.datadir, self.user, self.own)
        return delete_all(self.datadir, self.user)

    def tidy(self) -> None:
        """Remove the store if it is empty (no snapshots to keep)."""
        if self.count or self.others or self.problem:
            return
        try:
            with snapstore.opened(self.datadir, self.user, create=False) as store:
                snapstore.drop_if_empty(store)
        except DatabaseException:
            pass  # none, or unsafe: left alone
