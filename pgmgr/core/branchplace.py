"""A branch's copy put in place and registered, in an order no kill -9 can split.

The copy is made in the new data directory's store (``.tmp-branch``), then renamed into
place. It was renamed first and registered after: killed in between, a full copy of the
source stood at the new path that no record named (the same branch was then refused, the
directory exists, and nothing ever removed it).

Now the record comes first, marked ``pending = "branch"`` and pinned to the copy (a
rename keeps its device and inode, and :func:`pgmgr.core.branch._copy_own` gave it its
own system identifier); the rename follows, then the mark is cleared. A record still
marked when no command holds its data directory's lock (the branch holds it throughout)
is settled by the next load of it (:func:`settle`, from :func:`pgmgr.core.registry.load`):

- the pinned copy stands at its path: the branch is complete, registered now (stopped);
- nothing stands there, and the pinned copy is still staged: the branch is undone, its
  record and its staged copy removed;
- anything else is left for the identity check to report (nothing there and nothing
  staged: the directory may be away for a while, an unmounted disk).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pgmgr.core import (
    cleanup,
    dirlock,
    diskio,
    identity,
    ownerrm,
    registry,
    sigguard,
    snapstore,
    testhook,
)
from pgmgr.core.errors import DatabaseException, PgmgrError, PortInUse, doing
from pgmgr.core.registry import Instance

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pgmgr.core.instance import Server
    from pgmgr.core.pause import Pause

#: The mark of a branch's record until its copy is in place (see the module doc).
PENDING = "branch"
STAGED = snapstore.TMP + "branch"


def place(
    srv: Server, tstore: snapstore.Store, pause: Pause, source: str, *, start: bool, auto: bool
) -> None:
    """Register the staged copy as ``srv`` (pending), rename it into place, clear the mark,
    start it if asked. Signals only wait from here to a started branch: it is complete
    (``pause.done``: a signal while the source is waited for does not fail the command), or
    removed again if it cannot be registered, placed or started."""
    with sigguard.shielded():
        _register(srv, tstore, source)
        try:
            with doing("create", srv.datadir):
                rename_noreplace(tstore.fd, STAGED, tstore.parent_fd, srv.datadir.name)
        except BaseException:  # the name was taken meanwhile: neither record nor copy left
            registry.remove(srv.inst.name)
            cleanup.quietly(lambda: tstore.as_user(snapstore.remove_tree, tstore.entry(STAGED)))
            raise
        # On disk before the mark is cleared (the record may be on another filesystem:
        # after a power cut it said done while the copy was back in the store, swept).
        # Failing, the record stays pending: the next load settles it.
        with doing("create", srv.datadir):
            diskio.fsync_dirs(tstore.parent_fd, tstore.fd)
        testhook.pause("branch-placed")
        if identity.compare(srv.pinned(), srv.datadir)[0] is not None:  # swapped meanwhile
            registry.remove(srv.inst.name)
            ownerrm.remove_at(tstore.parent_fd, srv.datadir.name)  # as root: as its owner
            raise _replaced(srv)
        try:
            srv.inst.pending = srv.inst.pending_from = None
            srv.save()
            if start:  # under the target's lock (branch() holds it)
                _start(srv, auto)
        except BaseException:
            undo(srv, tstore)
            raise
        pause.done = True
        sigguard.commit()  # in place and started: the branch says so, whatever arrives


def _register(srv: Server, tstore: snapstore.Store, source: str) -> None:
    """Create the record of the copy still staged: pinned to it, marked pending. On
    failure the staged copy is removed."""
    try:
        try:
            now = identity.probe(tstore.entry(STAGED))
        except (OSError, PgmgrError):
            now = None
        if now is None or now.system_id is None:  # swapped by the server user meanwhile
            raise _replaced(srv)
        srv.inst.dev, srv.inst.ino, srv.inst.system_id = now.dev, now.ino, now.system_id
        srv.inst.pending, srv.inst.pending_from = PENDING, source
        # Exclusively: a name registered meanwhile (by a branch into another directory,
        # an init) is refused, never overwritten.
        made = registry.create(srv.inst)
        if made is not srv.inst:  # a record of this directory's path was there already
            raise DatabaseException(f"instance '{made.name}' is already recorded at {made.datadir}")
        testhook.pause("branch-registered")
    except BaseException:  # what cannot be removed is swept by the next command
        cleanup.quietly(lambda: tstore.as_user(snapstore.remove_tree, tstore.entry(STAGED)))
        raise


def _replaced(srv: Server) -> DatabaseException:
    return DatabaseException(
        f"the copy for '{srv.inst.name}' was replaced while it was made (it is no "
        "longer a directory pgmgr made); nothing was registered"
    )


def _start(srv: Server, auto: bool) -> None:
    """Start the branch on the port its record got (never the source's, which may not be
    bound again yet); with ``auto``, another free one if that was taken meanwhile."""
    from pgmgr.core.pause import READY_TIMEOUT

    try:
        srv.start(port=srv.inst.port, timeout=READY_TIMEOUT)
    except PortInUse:
        if not auto:
            raise
        srv.start(port="auto", timeout=READY_TIMEOUT)


def undo(srv: Server, tstore: snapstore.Store) -> None:
    """Remove a branch that could not be registered or started: its server, record and
    data directory (through the parent's fd)."""
    try:
        srv.stop("immediate")
    finally:
        registry.remove(srv.inst.name)
        # As root, the server user's data directory is emptied as that user (ownerrm).
        # What it may not remove stays: the caller's error says why the branch failed.
        cleanup.quietly(lambda: ownerrm.remove_at(tstore.parent_fd, srv.datadir.name))


def rename_noreplace(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    """Rename, refusing to replace ``dst`` (``RENAME_NOREPLACE``, else a check first).

    :raises FileExistsError: ``dst`` exists.
    """
    try:
        snapstore.renameat2(src_fd, src, dst_fd, dst, snapstore.RENAME_NOREPLACE)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
        try:
            os.lstat(dst, dir_fd=dst_fd)
        except FileNotFoundError:
            os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            return
        raise FileExistsError(errno.EEXIST, "exists", dst) from None


# --------------------------------------------------------------------------- settle


def settle(inst: Instance) -> Instance | None:
    """``inst`` (a branch's record still marked pending) settled by what stands at its
    path, when no command holds its lock (else the branch still runs: ``inst`` as it is);
    None when it was undone (no record any more). Best effort: should settling fail, the
    record stays for the next load."""
    try:
        with dirlock.try_lock(Path(inst.datadir)) as free:
            if not free:
                return inst
            inst = registry.load(inst.name, settle=False)  # as it is now, under the lock
            if inst.pending == PENDING:
                return settle_held(inst)
    except Exception:  # noqa: S110 - the record stays as it is; the next load tries again
        pass
    return inst


def settle_held(inst: Instance) -> Instance | None:
    """:func:`settle`, by a command that holds the lock of ``inst``'s data directory (it
    waited there while the branch ran, and the branch was killed)."""
    from pgmgr.core.instance import Server

    srv = Server(inst)
    state, _ = identity.compare(srv.pinned(), inst.datadir)
    if state is None:  # the copy is in place: the branch is made (not started)
        inst.pending = inst.pending_from = None
        registry.save(inst)
        return inst
    if not os.path.lexists(inst.datadir) and _drop_staged(srv):  # killed before the rename
        registry.remove(inst.name)
        return None
    # Another directory there (the identity check reports it), or nothing and no staged
    # copy either: the directory may be away for a while (an unmounted disk); kept.
    return inst


def _drop_staged(srv: Server) -> bool:
    """Remove the staged copy a branch killed before its rename left in its store, if it
    is the one the record pins (then no branch was placed): whether it was."""
    try:
        with snapstore.opened(srv.datadir, srv.user(), create=False) as store:
            staged = False
            with snapstore.held_if_free(store.top_fd, srv.datadir.name) as idle:
                entry = store.entry(STAGED)
                if idle and identity.compare(srv.pinned(), entry)[0] is None:
                    store.as_user(snapstore.remove_tree, entry)
                    staged = True
            snapstore.drop_if_empty(store)
            return staged
    except (OSError, PgmgrError):  # no store (or not reachable): nothing proven
        return False
