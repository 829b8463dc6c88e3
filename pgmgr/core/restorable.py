"""Whether a snapshot can be restored into an instance, and how (by difference, or as a
rollback of an upgrade): what :func:`pgmgr.core.restore.restore` checks before it stops the
server. Split from :mod:`pgmgr.core.restore`.
"""

from __future__ import annotations

from pathlib import Path

from pgmgr.core import copy, delta, server, snapstore
from pgmgr.core.errors import DatabaseException, PgmgrError
from pgmgr.core.instance import Server
from pgmgr.core.snapcatalog import Listing
from pgmgr.core.snapshot import _identify
from pgmgr.core.snapstore import Meta, Store

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
    on_disk = server.datadir_major(srv.datadir)
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
