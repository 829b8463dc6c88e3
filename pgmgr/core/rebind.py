"""A data directory switched by pgmgr under another registration of it.

Root and the server user may each register the same data directory, in their own
registries (one OS user cannot register one twice: ``init -d`` finds its record). A
restore or an upgrade through one registration puts another directory at the path (a
copy of the cluster: another inode; after pg_upgrade, another system identifier too),
and the other registration's record then found its instance "replaced": status, start,
stop and destroy refused it for good, and 'forget' then 'init -d' was the only way out.

:func:`follow` recognizes such a switch and the record follows it, when the directory is
provably this instance's and could only have been put there by its owner or root:

- it is reached without untrusted symlinks, is a complete data directory owned by the
  instance's server user (as root: the one recorded; else the invoking user), and nobody
  but root and that user can write its parent or an ancestor (as root, with no server
  user recorded: nobody but root);
- it holds the recorded cluster (same system identifier) and a snapshot of the path in
  its store holds it too (a restore), or the pre-upgrade snapshots there link the two
  clusters (``system_identifier`` -> ``upgraded_to``, one per upgrade: an upgrade, or the
  rollback of one);
- it has no ``postmaster.pid`` but its own server's (a copy of a running instance's
  directory names the server still running in the original).

Anything else stays "replaced" (another cluster, someone else's directory, a copy made by
hand beside no snapshot). The binaries follow the directory's PG_VERSION at the next start
(:meth:`Server.installation`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pgmgr.core import dirpath, identity, process, snapmeta, userfs
from pgmgr.core.errors import DatabaseException

if TYPE_CHECKING:
    from pgmgr.core.instance import Server

#: Upgrades a chain of pre-upgrade snapshots is followed through (9.6 -> 18 is eight).
MAX_UPGRADES = 16
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def follow(srv: Server) -> str | None:
    """If the directory at ``srv``'s path is its instance as switched under another
    registration (see the module doc), pin it in ``srv.inst`` (in memory: the caller
    saves) and say how: "restored" or "upgraded"; else None, with nothing changed."""
    inst = srv.inst
    if inst.intent or inst.pending or None in (inst.dev, inst.ino, inst.system_id):
        return None  # a switch of this registration's own is settled by pgmgr.core.intent
    try:
        fd = userfs.open_dir(srv.datadir)
    except (OSError, DatabaseException):
        return None
    try:
        st = os.fstat(fd)
        now = identity.Identity(st.st_dev, st.st_ino, identity.system_id(fd))
    finally:
        os.close(fd)
    if now.system_id is None or (now.dev, now.ino) == (inst.dev, inst.ino):
        return None
    if not _only_owner_or_root(srv, st.st_uid) or not _no_other_server(srv):
        return None
    how = _switch(srv, str(inst.system_id), str(now.system_id))
    if how is None:
        return None
    inst.dev, inst.ino, inst.system_id = now.dev, now.ino, now.system_id
    return how


def follow_switch(srv: Server, save: bool = True) -> bool:
    """Whether the directory at the path is this instance as restored or upgraded by
    pgmgr under another registration of it (see the module doc): then the record pins it
    (saved with ``save``, the settings the new major rejects dropped after an upgrade)."""
    how = follow(srv)
    if how is None:
        return False
    if save:
        gone = drop_rejected(srv) if how == "upgraded" else []
        if gone:
            srv.notes.append(
                f"'{srv.inst.name}' was upgraded under another registration: dropped "
                f"the settings PostgreSQL {srv.inst.version} rejects: {', '.join(gone)}"
            )
        srv.save()
    return True


def drop_rejected(srv: Server) -> list[str]:
    """After following an upgrade (or its rollback): remove from ``srv.inst`` (the caller
    saves) the settings the major now in the data directory rejects, as the upgrade did
    for the registration that ran it (the start failed on them: "unrecognized
    configuration parameter"); their names. None when that major's binaries are missing:
    the start says so."""
    from pgmgr.core import upgradeconf
    from pgmgr.core.errors import PgmgrError

    try:
        install = srv.installation()
        gone = upgradeconf.rejected_settings(install, srv.datadir, srv.inst.settings, srv)
    except (OSError, PgmgrError):
        return []
    srv.inst.settings = {k: v for k, v in srv.inst.settings.items() if k not in gone}
    return gone


def _only_owner_or_root(srv: Server, uid: int) -> bool:
    """Whether only root and the instance's owner could have put the directory of owner
    ``uid`` at its path: it is the owner's, and nobody else can write its parent or an
    ancestor. The owner: as root, the recorded server user (none recorded: root alone
    may write there); else the invoking user."""
    parent = str(srv.datadir.parent)
    try:
        if os.geteuid() != 0:
            return uid == os.geteuid() and not userfs.others_can_write(parent)
        if not srv.inst.server_user:
            return not userfs.others_can_write(parent)
        su = srv.user()
        # Asked as root, not in a process of the server user's (its fork cost each status
        # of a replaced record ~3 ms): nobody but root may write there, which is stricter
        # (the server user neither), and which the store's opening next requires anyway.
        return su is not None and uid == su.uid and not userfs.others_can_write(parent)
    except (OSError, DatabaseException):
        return False


def _no_other_server(srv: Server) -> bool:
    """Whether the directory has no ``postmaster.pid``, or one whose server runs in it: a
    copy of a running instance's directory (moved into place by hand, say) names the
    server still running in the original, which the record must not lose sight of."""
    pf = process.PidFile.read(srv.datadir)
    return pf is None or process.serves(pf.pid, srv.datadir, pf.start_time)


def _switch(srv: Server, recorded: str, now: str) -> str | None:
    """How the snapshots in the instance's store account for its cluster going from
    ``recorded`` to ``now`` (system identifiers): "restored" (one of them holds ``now``,
    which is ``recorded``), "upgraded" (pre-upgrade snapshots link them: each links the
    cluster it kept to the one its upgrade made, so upgrades lead one way and their
    rollbacks, restores of one, the other), or None (they do not: a copy made by hand,
    another cluster)."""
    if not _named(srv, "" if recorded == now else snapmeta.PRE_UPGRADE):
        return None
    from pgmgr.core import snapstore  # here: most replaced records end above

    try:
        # Unlocked: only read (a status must not wait for the other's restore or upgrade).
        with snapstore.opened(srv.datadir, srv.user(), create=False) as store:
            found = store.as_user(_evidence, store.path, srv.inst.datadir, recorded, now)
    except (OSError, DatabaseException):
        return None
    if isinstance(found, bool):
        return "restored" if found else None
    return _linked(found, recorded, now)


def _named(srv: Server, prefix: str) -> bool:
    """Whether the instance's store has a snapshot whose name starts with ``prefix``:
    names only, read through directory fds opened with ``O_NOFOLLOW`` (as root too: no
    file is opened, no process of the server user's is needed), so that the status of a
    record replaced by another cluster, with no pre-upgrade snapshot, imports and forks
    nothing more."""
    try:
        fd = userfs.open_dir(srv.datadir.parent)
    except (OSError, DatabaseException):
        return False
    fds = [fd]
    try:
        for name in (dirpath.STORE, srv.datadir.name):
            fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            fds.append(fd)
        names = os.listdir(fd)
    except OSError:
        return False
    finally:
        for each in fds:
            os.close(each)
    return any(n.startswith(prefix) and snapmeta.SNAP_RE.match(n) for n in names)


def _evidence(store: Path, datadir: str, recorded: str, now: str) -> bool | list[tuple[str, str]]:
    """What :func:`_switch` needs of the snapshots of ``datadir`` in ``store``, reading no
    more of them than that (each ``status`` of a replaced record asks): for a restore
    (``recorded == now``), whether one holds ``now`` (up to the first that does); else
    the links the pre-upgrade ones make (``system_identifier``, ``upgraded_to``). As the
    server user."""
    if recorded == now:
        return any(
            m is not None and m.datadir == datadir and m.system_identifier == now
            for _, m, _ in snapmeta.iter_metas(store)
        )
    return [
        (m.system_identifier, m.upgraded_to)
        for _, m, _ in snapmeta.iter_metas(store, snapmeta.PRE_UPGRADE)
        if m is not None and m.datadir == datadir and m.upgraded_to
    ]


def _linked(pairs: list[tuple[str, str]], recorded: str, now: str) -> str | None:
    """Whether the ``pairs`` of clusters (one per upgrade) lead from ``recorded`` to
    ``now``, one way or the other, in at most :data:`MAX_UPGRADES` steps: "upgraded",
    else None."""
    links: dict[str, set[str]] = {}
    for old, new in pairs:
        links.setdefault(old, set()).add(new)
        links.setdefault(new, set()).add(old)
    seen, frontier = {recorded}, {recorded}
    for _ in range(MAX_UPGRADES):
        frontier = {n for c in frontier for n in links.get(c, ())} - seen
        if now in frontier:
            return "upgraded"
        if not frontier:
            return None
        seen |= frontier
    return None
