"""A switch of an instance's data directory that no kill -9 can split from its record.

Upgrade and restore put another directory where the data directory is (one atomic
exchange, :func:`pgmgr.core.snapswap.swap_in`); the record must then pin that directory
(and, for an upgrade or its rollback, name its major, binaries and settings), and the
replaced directory becomes a snapshot or goes. A kill between the exchange and the
record's save left a record disagreeing with what stands on disk (PostgreSQL 15 and its
binaries recorded, an 18 data directory there, pinned to the old inode).

So the record gets an *intent* before the exchange (:func:`begin`): the identity of the
directory that is to stand there, what the record becomes with it, the store entry that
receives the replaced directory, and the snapshot that is made of it, if any. The command
completes it itself (:func:`complete`); after a kill, the next load of the record settles
it by what stands on disk (:func:`settle`, from :func:`pgmgr.core.registry.load`, under the
data directory's lock, so never while the command that wrote it still runs):

- the new directory: the switch happened; the intent is completed (its snapshot named);
- the recorded one: it did not; the intent is dropped, with what was prepared for it;
- anything else (nothing, another directory): it is left for the identity check to report.

The entries an intent names are ``.held-*`` entries of the snapshot store, which the sweep
of work entries (:func:`pgmgr.core.snapstore.sweep`) leaves alone until it is settled.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from pgmgr.core import delta, dirlock, diskio, identity, registry, snapstore, snapswap, userfs
from pgmgr.core.registry import Instance

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pgmgr.core.instance import Server
    from pgmgr.core.snapstore import Store

#: Store entries an intent names (never swept as work in progress).
HELD = ".held-"
#: The record fields an intent may set (the rest of what it holds is the identity).
FIELDS = ("major", "version", "bindir", "settings")


def held_name(op: str) -> str:
    return f"{HELD}{op}-{os.urandom(4).hex()}"


@dataclass
class Intent:
    """A switch of the data directory under way, as the record holds it."""

    op: str
    new: identity.Identity  # the directory that is to stand at the data directory's path
    record: dict[str, Any]  # FIELDS the record takes with it
    old: str  # the store entry that receives the replaced directory
    keep: str | None = None  # the snapshot made of ``source``
    source: str | None = None  # a store entry holding a data directory (``old``, or a copy)
    meta: dict[str, Any] | None = None  # ``keep``'s snapshot.json

    def to_dict(self) -> dict[str, Any]:
        new = {"dev": self.new.dev, "ino": self.new.ino, "system_id": self.new.system_id}
        return {
            "op": self.op, "new": new, "record": self.record, "old": self.old,
            "keep": self.keep, "source": self.source, "meta": self.meta,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Intent:
        """:raises ValueError: not an intent (a corrupt record)."""
        try:
            new = data["new"]
            ident = identity.Identity(int(new["dev"]), int(new["ino"]), new.get("system_id"))
            it = cls(str(data["op"]), ident, dict(data["record"]), str(data["old"]),
                     data.get("keep"), data.get("source"), data.get("meta"))  # fmt: skip
            ok = _valid(it)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"'intent' is not a valid intent ({e})") from None
        if not ok:
            raise ValueError("'intent' names an unknown field, or an entry outside the store")
        return it


def _valid(it: Intent) -> bool:
    """Whether what ``it`` sets and names is what :func:`begin` writes."""
    names = [it.old, *([it.source] if it.source is not None else [])]
    held = all(n.startswith(HELD) and "/" not in n and "\0" not in n for n in names)
    rec = it.record
    fields = set(rec) <= set(FIELDS) and all(
        isinstance(rec[k], str) for k in ("major", "version", "bindir") if k in rec
    )
    settings = rec.get("settings", {})
    fields = fields and all(isinstance(k, str) and isinstance(v, str) for k, v in settings.items())
    keep = it.keep is None or bool(snapstore.SNAP_RE.match(it.keep))
    sid = it.new.system_id is None or isinstance(it.new.system_id, int)
    return held and fields and keep and sid and (it.meta is None or isinstance(it.meta, dict))


def identify(path: Path) -> identity.Identity:
    """The identity of the data directory at ``path``. As the server user."""
    return identity.probe(path)


def begin(srv: Server, it: Intent) -> None:
    """Record ``it`` (before the store entry ``it.old`` is exchanged with the data
    directory)."""
    srv.inst.intent = it.to_dict()
    srv.save()


def complete(srv: Server, store: Store) -> list[str]:
    """After the exchange: name the snapshot, switch the record. Each step can be done
    again after a kill.

    :returns: the work entry to :func:`remove` (the replaced directory, unless it became
        the snapshot), once the server runs again: freeing its blocks competes with the
        start (a second on XFS for a replaced 1 GB directory), and the caller may still
        work in it first. It is renamed out of the held names here: once the record
        forgets the intent, nothing else would remove it after a kill, and the sweep
        removes work names."""
    it = Intent.from_dict(srv.inst.intent or {})
    if it.keep and it.source and it.meta:
        store.as_user(_keep, store.path, it.source, it.keep, it.meta)
    gone = []
    if it.source != it.old or not it.keep:
        gone.append(snapstore.tmp_name("drop"))
        try:
            store.rename(it.old, gone[0])
        except FileNotFoundError:  # done before a kill
            gone = []
        # On disk before the record forgets the intent: after a power cut the entry was
        # back under its held name, which nothing removes without an intent naming it.
        diskio.fsync_dirs(store.fd)
    for key, value in it.record.items():
        setattr(srv.inst, key, value)
    srv.inst.dev, srv.inst.ino, srv.inst.system_id = it.new.dev, it.new.ino, it.new.system_id
    srv.inst.intent = None
    srv.save()
    return gone


def discard(srv: Server, store: Store) -> None:
    """The exchange did not happen: forget ``it``, and remove what was prepared for it. An
    upgrade's ``pg_upgrade --link`` may have disabled the data directory still in place
    (its ``global/pg_control`` renamed to ``pg_control.old``): enabled again first."""
    it = Intent.from_dict(srv.inst.intent or {})
    if it.op == "upgrade":
        store.as_user(undo_link, srv.datadir)
    srv.inst.intent = None
    srv.save()
    drop(store, [it.old, *([it.source] if it.source else [])])


def undo_link(datadir: Path) -> None:
    """Undo what ``pg_upgrade --link`` does to the old cluster once it starts linking
    (renames ``global/pg_control`` to ``pg_control.old``, so that it cannot start): safe
    while the new cluster has not been started (it never is before the swap). As the
    server user."""
    old, cur = datadir / "global" / "pg_control.old", datadir / "global" / "pg_control"
    if os.path.lexists(old) and not os.path.lexists(cur):
        os.rename(old, cur)


def remove(store: Store, names: list[str]) -> None:
    """Remove the work entries :func:`complete` returned, in the background."""
    for name in names:
        snapstore.remove_later(store.entry(name), store.user)


def drop(store: Store, names: list[str]) -> None:
    """Remove held entries, in the background: renamed to work names first (the next
    sweep finishes a removal that was killed)."""
    for name in names:
        work = snapstore.tmp_name("drop")
        with contextlib.suppress(FileNotFoundError):
            store.rename(name, work)
            snapstore.remove_later(store.entry(work), store.user)


def _keep(store: Path, source: str, name: str, meta: dict[str, Any]) -> None:
    """``store/source`` (a data directory) becomes snapshot ``name``; done again after a
    kill, from wherever it stopped. As the server user."""
    final = store / name
    if os.path.lexists(final):
        return
    holder = store / f"{HELD}snap-{name}"
    with contextlib.suppress(FileExistsError):
        os.mkdir(holder, 0o700)
    if not os.path.lexists(holder / snapstore.DATA):
        os.rename(store / source, holder / snapstore.DATA)
    snapstore.seal(holder / snapstore.DATA)
    kept = snapstore.Meta.from_dict(meta)
    if kept.files <= 0:
        # The data directory itself (a restore's --save-current, the state before an
        # upgrade), not a copy whose files were counted as they were made: counted now,
        # so that one removed or truncated by hand later is seen before a restore puts it
        # in place (restorable._check_tally; a damaged one was restored without a word).
        files = delta.take(holder / snapstore.DATA, exclude=()).files
        kept.files, kept.size = len(files), sum(s[1] for s in files.values())
    snapstore.write_meta(holder, kept)
    diskio.fsync_dir(holder)  # its data/ and snapshot.json entries, before it is named
    os.rename(holder, final)
    diskio.fsync_dir(store)


# --------------------------------------------------------------------------- settle


def settle(inst: Instance) -> Instance:
    """``inst`` with its intent settled by what stands on disk (see the module doc), when
    no command holds its lock (else that command is still at it: ``inst`` as it is).
    Best effort: should settling fail, the intent stays for the next load."""
    datadir = Path(inst.datadir)
    try:
        with dirlock.try_lock(datadir) as free:
            if not free:
                return inst
            inst = registry.load(inst.name, settle=False)  # as it is now, under the lock
            if inst.intent is not None:
                _settle_locked(inst)
    except Exception:  # noqa: S110 - the record stays as it is; the next load tries again
        pass
    return inst


def settle_held(inst: Instance) -> None:
    """Settle ``inst``'s intent; the caller holds its lock. Best effort, as :func:`settle`."""
    with contextlib.suppress(Exception):  # the record stays as it is; the next load retries
        _settle_locked(inst)


def _settle_locked(inst: Instance) -> None:
    from pgmgr.core.instance import Server

    it = Intent.from_dict(inst.intent or {})
    srv = Server(inst)
    with snapstore.opened(srv.datadir, srv.user(), create=False) as store:
        _unhold(store, it.old)
        try:
            now: identity.Identity | None = identity.probe(inst.datadir)
        except (OSError, userfs.UnsafePath):
            now = None
        if now is not None and (now.dev, now.ino) == (it.new.dev, it.new.ino):
            drop(store, complete(srv, store))
        elif now is not None and (inst.dev is None or (now.dev, now.ino) == (inst.dev, inst.ino)):
            discard(srv, store)
        # else nothing there, or a third directory: left for the identity check to report


def _unhold(store: Store, old: str) -> None:
    """Undo what a kill left of the three renames of :func:`snapswap.swap_in` (no
    exchange on this filesystem): the data directory held in the store goes back to its
    place if nothing is there yet (the swap did not happen), else to ``old`` (it did)."""
    hold = snapswap.hold_name(old)
    try:
        os.stat(hold, dir_fd=store.fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    try:
        os.stat(store.datadir.name, dir_fd=store.parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(hold, store.datadir.name, src_dir_fd=store.fd, dst_dir_fd=store.parent_fd)
        return
    os.rename(hold, old, src_dir_fd=store.fd, dst_dir_fd=store.fd)
