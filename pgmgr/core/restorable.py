"""Whether a snapshot can be restored into an instance, and how (by difference, or as a
rollback of an upgrade): what :func:`pgmgr.core.restore.restore` checks and works out before
it stops the server (:func:`plan`), and whether a snapshot's copy still matches its metadata
(:func:`check_data`, which a branch of a snapshot checks too). Split from
:mod:`pgmgr.core.restore` and :mod:`pgmgr.core.snapshot`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pgmgr.core import copy, delta, paths, pgcontrol, server, snapstore
from pgmgr.core.errors import DatabaseException, PgmgrError
from pgmgr.core.instance import Server
from pgmgr.core.snapcatalog import COPY_MISSING, Listing, load, pick_name, record_of
from pgmgr.core.snapshot import meta_for
from pgmgr.core.snapstore import Meta, Store

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from typing import Any

#: What :func:`_inspect` returned (or raised) for a snapshot's metadata, found by
#: :func:`survey` in its process (None: not worked out there)
Inspected = tuple[Meta, "tuple[str, str | None, delta.Index | None] | PgmgrError | OSError"]


def check_restorable(
    srv: Server, store: Store, meta: Meta, by_difference: bool = False,
    inspected: Inspected | None = None,
) -> tuple[bool, delta.Index | None]:  # fmt: skip
    """Whether restoring ``meta`` is a rollback of an upgrade (True) or a plain restore;
    and, with ``by_difference`` and not a rollback, the index to restore by difference
    with (see :func:`_index`), worked out in the same process (or taken from
    ``inspected``, when it is of ``meta``).

    :raises DatabaseException: the snapshot is of another instance or another major, or
        does not hold what its metadata says.
    """
    name = meta.name
    if meta.datadir != srv.inst.datadir:
        raise DatabaseException(
            f"snapshot {name!r} is of another instance ({meta.instance}, {meta.datadir}); "
            "nothing was changed"
        )
    if inspected is not None and inspected[0] == meta:
        if isinstance(inspected[1], Exception):
            raise inspected[1]
        current, why, index = inspected[1]
    else:
        current, why, index = store.as_user(
            _inspect, srv.datadir, store.entry(name), meta, by_difference
        )
    rollback = meta.upgraded_to is not None and meta.upgraded_to == current
    try:
        on_disk = server.datadir_major(srv.datadir)
    except server.BadPgVersion:  # damaged: what the snapshot replaces, of the record's major
        on_disk = srv.inst.major
    if meta.major != on_disk and not rollback:
        raise DatabaseException(
            f"snapshot {name!r} is PostgreSQL {meta.major} but '{srv.inst.name}' is "
            f"PostgreSQL {on_disk}; nothing was changed",
            hint=_rollback_hint(srv, store, current),
        )
    if meta.system_identifier != current and not rollback:
        raise DatabaseException(
            f"snapshot {name!r} is of another cluster than '{srv.inst.name}' (system "
            f"identifier {meta.system_identifier}, the instance has {current}); "
            "nothing was changed"
        )
    if why:
        raise DatabaseException(f"snapshot {name!r} is damaged: {why}; nothing was changed")
    return rollback, None if rollback else index


def _rollback_hint(srv: Server, store: Store, current: str) -> str:
    """Which snapshot rolls the last upgrade back, when one does (after upgrades and
    rollbacks, only the last upgrade's: the others are of earlier states of the old major,
    to restore once it is back)."""
    metas = store.as_user(snapstore.list_metas, store.path)
    back = [n for n, m, _ in metas if m is not None and m.upgraded_to == current]
    if not back:
        return "only the snapshot kept by 'pgmgr upgrade' can roll an upgrade back"
    return (f"'pgmgr restore {srv.inst.name} {back[0]}' rolls the upgrade back; this "
            "snapshot can be restored then")  # fmt: skip


def _inspect(
    datadir: Path, snapdir: Path, meta: Meta, by_difference: bool
) -> tuple[str, str | None, delta.Index | None]:
    """:func:`_identify`, and :func:`_index` if ``by_difference``: one process as the user."""
    current, why = _identify(datadir, snapdir, meta)
    return current, why, _index(snapdir) if by_difference and not why else None


def survey(
    store: Path, name: str, datadir: Path, recorded: str, by_difference: bool
) -> tuple[Listing, Inspected | None]:
    """Sweep what a killed run left in ``store``, and list it; then, in the same process
    (one fork as root, not two), :func:`_inspect` snapshot ``name`` if it is listed and
    of the data directory the record names (``recorded``), as :func:`check_restorable`
    would next, what it raises kept for it to raise. As the user."""
    snapstore.sweep(store)
    listing = snapstore.list_metas(store)
    meta = next((m for n, m, _ in listing if n == name), None)
    if meta is None or meta.datadir != recorded or not snapstore.SNAP_RE.match(name):
        return listing, None
    try:
        return listing, (meta, _inspect(datadir, store / name, meta, by_difference))
    except (PgmgrError, OSError) as e:
        return listing, (meta, e)


def _index(snapdir: Path) -> delta.Index | None:
    """The index of ``snapdir``, to restore by difference with; None where the copy is by
    clones (reflink): cloning every file takes longer than hard-linking most of them (~50
    against ~15 us a file on XFS), but leaves nothing to relink or reindex
    (:func:`pgmgr.core.restore._reindex`) once the server is stopped. (However little of
    the data directory still matches it: what does not is copied while the server runs, as a
    full copy would be.) As the user."""
    if copy.clones_from(snapdir, snapdir.parent):
        return None
    return delta.load(snapdir)


@dataclass(frozen=True)
class Plan:
    """What a restore works out before it stops the server: the snapshot's metadata,
    whether it rolls back an upgrade (then ``record``: the record's fields of that major),
    the index of a restore by difference, the snapshot ``--save-current`` makes, and the
    snapshot's directory."""

    meta: Meta
    rollback: bool
    index: delta.Index | None
    record: dict[str, Any]
    keep: Meta | None
    snapdir: Path


def plan(srv: Server, store: Store, name: str, save_current: str | None) -> Plan:
    """The checks of a restore of snapshot ``name`` before it stops the server, and
    what it works out on the way (see :class:`Plan`).

    :raises SnapshotNotFound: no such snapshot.
    :raises DatabaseException: see :func:`check_restorable`; not enough space.
    """
    # By difference (module doc of pgmgr.core.delta), unless the replaced state is kept
    # (it would share files with the restored one) or the snapshot is of another major.
    by_difference = save_current is None
    listing, inspected = store.as_user(
        survey, store.path, name, srv.datadir, srv.inst.datadir, by_difference
    )
    meta = load(store, name, srv.inst.name, listing)
    # The copy is swapped in by a rename there: checked before it is made.
    parent = srv.datadir.parent
    paths.check_writable(parent, f"restore '{srv.inst.name}'")
    rollback, index = check_restorable(srv, store, meta, by_difference, inspected)
    record = record_of(meta) if rollback else {}
    keep = None if save_current is None else saved_meta(srv, store, meta, save_current)
    snapdir = store.entry(name)
    snapstore.check_same_fs(store, f"restore '{srv.inst.name}'")
    check_space(store, srv, meta, index, snapdir)
    return Plan(meta, rollback, index, record, keep, snapdir)


def check_space(
    store: Store, srv: Server, meta: Meta, index: delta.Index | None, snapdir: Path
) -> None:
    """:func:`snapstore.check_space` for the copy a restore makes: by difference
    (``index``), less the bytes of the data directory that still match the index (linked,
    not copied; worked out only when the disk is short, as for a snapshot), and a sparse
    file's holes, which the copy keeps (:func:`snapstore.allocated_if_short`). A restore
    that copies more, the server once stopped having written more, fails as on any full
    disk (:func:`copy.disk_full`): nothing is changed."""
    needed = snapstore.allocated_if_short(store, meta.size, snapdir / snapstore.DATA)
    if index is not None and snapstore.free_bytes(store.fd) < needed:
        kept = store.as_user(delta.kept_bytes, index, srv.datadir, snapdir / snapstore.DATA)
        needed = max(0, needed - kept)
    snapstore.check_space(store, needed, f"restoring {meta.name!r}", snapdir)


def saved_meta(srv: Server, store: Store, meta: Meta, save_as: str) -> Meta:
    """The metadata of the snapshot ``--save-current`` makes of the replaced state."""
    saved = pick_name(store, save_as or None, srv.inst.name)
    sysid = store.as_user(pgcontrol.system_identifier, srv.datadir)
    keep = meta_for(srv, saved, sysid, "saved", copy.CopyStats())
    keep.size = meta.size
    return keep


def check_data(snapdir: Path, meta: Meta) -> str | None:
    """Why the copy in ``snapdir`` does not match its metadata, or None."""
    data = snapdir / snapstore.DATA
    if not os.path.lexists(data):
        return COPY_MISSING
    try:
        major = server.datadir_major(data)
    except server.BadPgVersion as e:
        return f"its data directory's PG_VERSION is invalid ({e.why})"
    if major != meta.major:
        return f"its data directory is PostgreSQL {major or 'unknown'}, not {meta.major}"
    try:
        sysid = pgcontrol.system_identifier(data, verify=True)
    except ValueError as e:  # truncated, damaged
        return f"its {e}"
    except OSError as e:  # missing, a FIFO...
        return f"its global/pg_control is unreadable ({e})"
    if sysid != meta.system_identifier:
        return "its data directory has another system identifier than recorded"
    return _check_tally(data, meta)


def _check_tally(data: Path, meta: Meta) -> str | None:
    """Why the copy ``data`` of snapshot ``meta`` is not the one it took: other files
    or bytes than it recorded (a file truncated, removed or added since), or None. Only
    for a copy whose files it counted (``meta.files``: a plain snapshot, or the copy a
    ``--link`` upgrade keeps); one lstat per file, before anything is stopped."""
    if meta.files <= 0:
        return None
    try:
        files = delta.take(data, exclude=()).files
    except OSError as e:
        return f"its copy is unreadable ({e})"
    count, size = len(files), sum(s[1] for s in files.values())
    if (count, size) == (meta.files, meta.size):
        return None
    return (
        f"its copy holds {count} files, {size} bytes, but {meta.files} files, "
        f"{meta.size} bytes when it was taken (changed since: truncated, removed or added)"
    )


def _identify(datadir: Path, snapdir: Path, meta: Meta) -> tuple[str, str | None]:
    """The instance's system identifier, and :func:`check_data` of the snapshot: one
    process as the server user.

    :raises DatabaseException: the instance's ``pg_control`` is unreadable.
    """
    try:
        current = pgcontrol.system_identifier(datadir)
    except (OSError, ValueError) as e:
        raise DatabaseException(
            f"cannot read {datadir}/global/pg_control ({e}); nothing was changed"
        ) from None
    return current, check_data(snapdir, meta)
