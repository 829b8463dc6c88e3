"""Take an instance's lock and act on its record as it is under that lock.

A command resolves its instance (reads the record) before it takes the per-data-directory
lock. One that waited there behind an upgrade or a restore, which switch the record's
major, binaries and pin under that lock, would otherwise act on the record as it was before
the switch, and the identity check would refuse the instance as "replaced" though it is
fine. :func:`locked` reads the record again once the lock is held.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pgmgr.core import dirlock, registry, storesweep
from pgmgr.core.errors import Busy, InstanceNotFound

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms (start, stop)
if TYPE_CHECKING:
    from pgmgr.core.instance import Server

#: What a switch of the data directory (upgrade, restore) changes in the record.
SWITCHED = ("major", "version", "bindir", "settings", "dev", "ino", "system_id", "intent")


@contextlib.contextmanager
def locked(
    srv: Server, timeout: float | None = None, *, only: tuple[str, ...] | None = None,
    sweep: bool = True,
) -> Iterator[Server]:  # fmt: skip
    """Hold ``srv``'s lock, with ``srv.inst`` read again under it (a registered record);
    with ``only``, just those fields (an object that keeps unsaved changes of its own).
    What killed runs left for it is swept (:func:`storesweep.dead_runs`); not its store
    when not ``sweep`` (only :func:`storesweep.beside`): a snapshot, restore or delete sweeps
    its store itself, at once, before it checks the space (the background removal may not be
    done by then).

    :raises Busy: another pgmgr held the lock for ``timeout`` seconds (default
        :data:`dirlock.WAIT`).
    :raises InstanceNotFound: the record was removed, or now names another data directory,
        while this command waited for the lock.
    """
    with contextlib.ExitStack() as held:
        with _behind_stop(srv):
            held.enter_context(dirlock.lock(srv.datadir, timeout))
        refresh(srv, only)
        if sweep:
            storesweep.dead_runs(srv)  # what killed runs left in its store, beside it
        else:  # its store is swept by the command itself; what is beside it, here
            storesweep.beside(srv)
        yield srv


@contextlib.contextmanager
def _behind_stop(srv: Server) -> Iterator[None]:
    """A lock that stayed busy because a stop waits for the server to go (a smart one, for
    its clients), or a start for it to be ready: say so, and how to end it (see
    :mod:`pgmgr.core.stopwait`)."""
    try:
        yield
    except Busy as e:
        from pgmgr.core import stopwait

        note = stopwait.read(srv.datadir)
        if note is None:
            raise
        smart = note.mode == "smart"
        e.message += f": {note.holder()} waits for the server {note.waits_for()}" + (
            " (for its clients to disconnect)" if smart else ""
        )
        e.hint = e.hint or stopwait.way_out(note, srv.inst.name)
        raise


def refresh(srv: Server, only: tuple[str, ...] | None = None) -> None:
    """Read ``srv``'s record again; the caller holds its lock. An unregistered or not yet
    saved instance has no record to read: it stays as it is (so does one whose record is
    gone, with ``only``)."""
    if not srv.register or srv.new:
        return
    name = srv.inst.name
    try:
        fresh = registry.load(name, settle=False)
        if fresh.intent is not None:  # a switch killed half-way: settle it, we hold the lock
            from pgmgr.core import intent

            intent.settle_held(fresh)
            fresh = registry.load(name, settle=False)
        if fresh.pending == "branch":  # a branch killed while this command waited for it
            from pgmgr.core import branchplace

            settled = branchplace.settle_held(fresh)
            if settled is None:  # undone: no record any more
                raise InstanceNotFound(name)
            fresh = settled
    except InstanceNotFound:
        if only is not None:  # an object that keeps its own record saves it again (Manager)
            return
        raise InstanceNotFound(
            f"instance {name!r} was removed while this command waited for it",
            hint="'pgmgr status' lists the known instances",
        ) from None
    if fresh.datadir != srv.inst.datadir:
        raise InstanceNotFound(
            f"instance {name!r} now names another data directory ({fresh.datadir}, "
            f"not {srv.inst.datadir}): it changed while this command waited for it",
            hint="run the command again",
        )
    if only is None:
        srv.inst = fresh
    for key in only or ():
        setattr(srv.inst, key, getattr(fresh, key))
