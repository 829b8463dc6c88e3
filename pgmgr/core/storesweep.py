"""What killed runs left for an instance, removed by the next command that takes its lock
(start, stop, restart, config...; :func:`dead_runs`), not only by the next command of the
same kind: until then it held its disk space, unlisted. In its snapshot store, the ``.tmp-*``
work entries of a snapshot, restore or upgrade (a staged copy as big as the data directory;
also when its snapshots are listed); beside it, a killed branch's copy and a killed
``destroy --with-snapshots``'s store; as root, on ``start``, the temporary directories of
its server user (:func:`temp_dirs`).

Whether the run that made an entry is gone is told by the store's own lock, not by a pid:
every run that makes or works in a ``.tmp-`` entry holds the store with ``flock`` for as
long as it does (:func:`pgmgr.core.snapstore.opened`), and so does every process it forked
that inherited the lock (a copy still at work). A lock the kernel holds for any process (of
any user, in any PID namespace, whatever pid it had) is never taken for a dead run's, and
a pid reused since fools nothing. ``pgmgr status`` does no such work: it stays fast.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms (start, stop)
if TYPE_CHECKING:
    from pathlib import Path

    from pgmgr.core.instance import Server
    from pgmgr.core.snapstore import Store

TMP = ".tmp-"
#: :data:`pgmgr.core.dirpath.STORE`, not imported from there: ~1 ms more for start and stop.
STORE = ".pgmgr-snapshots"
#: :data:`pgmgr.core.sweep.PID_PREFIXES`, likewise.
PID_PREFIXES = ("pgmgr-pw-", "pgmgr-cfg-", "pgmgr-imp-", "pgmgr-up-")
#: How :func:`pgmgr.core.snapdoom.doomed_name` names a store being deleted.
DOOMED = ".tmp-delete-"


def dead_runs(srv: Server) -> None:
    """:func:`dead_work`, :func:`doomed_stores` and :func:`abandoned_branches`: one
    listdir of the store and one of the stores' directory when there is nothing to do.
    Never raises."""
    dead_work(srv)
    beside(srv)


def beside(srv: Server) -> None:
    """:func:`doomed_stores` and :func:`abandoned_branches` (what killed runs left beside
    ``srv``'s store), for a command that sweeps its own store itself (a snapshot, restore or
    delete): a killed branch's copy stayed through any number of those. One listdir when
    there is nothing to do. Never raises."""
    try:
        beside = os.listdir(srv.datadir.parent / STORE)
    except OSError:
        beside = []
    if any(n.startswith(DOOMED) for n in beside):
        doomed_stores(srv)
    abandoned_branches(srv, beside)


def temp_dirs(srv: Server) -> None:
    """As root, the temporary directories dead runs left for ``srv``'s server user
    (:func:`pgmgr.core.sweep.dead_runs`: a killed upgrade's socket dir, import's archive
    copy, settings check's dir), which only the next upgrade or import for that very user
    swept (``pgmgr run`` sweeps ``postgres``'s and root's). Not needed otherwise: a
    user's own are swept with any temporary server's. For ``start`` (which imports
    ``tempfile`` anyway; ``stop`` does not). Never raises."""
    if os.geteuid() != 0:
        return
    from pgmgr.core.errors import PgmgrError

    try:
        user = srv.user()
        if user is not None and user.uid != 0 and _pid_dirs():
            from pgmgr.core import sweep

            sweep.dead_runs(user)
    except (OSError, PgmgrError):
        pass


def _pid_dirs() -> bool:
    """Whether a temp dir holds a ``pgmgr-<what>-<pid>-*`` name at all: a listdir or two,
    where :func:`pgmgr.core.sweep.dead_runs` imports ``tempfile`` first (~5 ms)."""
    places = {os.environ.get(k) for k in ("TMPDIR", "TEMP", "TMP")} | {"/tmp", "/var/tmp"}  # noqa: S108
    for place in places:
        try:
            if place and any(n.startswith(PID_PREFIXES) for n in os.listdir(place)):
                return True
        except OSError:
            continue
    return False


def dead_work(srv: Server) -> list[str]:
    """Remove (in the background: freeing a copy's blocks is not this command's time) the
    work entries of ``srv``'s store when no pgmgr holds that store; what was removed. Each
    one is first renamed to a fresh work name under the store's lock, so that its removal
    can never reach an entry of the same name a later run makes (``.tmp-branch``).

    Nothing when the record is mid-switch (an intent) or a branch not yet placed: their
    settling decides what becomes of the entries they name. Best effort: never raises.
    """
    inst = srv.inst
    if srv.new or inst.intent is not None or inst.pending is not None:
        return []
    store = srv.datadir.parent / STORE / srv.datadir.name
    try:  # the common case, nothing to sweep, costs one listdir
        if not any(n.startswith(TMP) for n in os.listdir(store)):
            return []
    except OSError:  # no store, or not this user's to read
        return []
    from pgmgr.core import snapstore
    from pgmgr.core.errors import PgmgrError

    try:
        with snapstore.opened(srv.datadir, srv.user(), create=False) as opened:
            return _drop(opened)
    except (OSError, PgmgrError):
        return []


def _drop(store: Store) -> list[str]:
    """:func:`dead_work` of an opened store."""
    from pgmgr.core import snapstore

    gone = []
    with snapstore.held_if_free(store.top_fd, store.datadir.name) as free:
        if not free:  # a run is at work in it (or a copy it started still is)
            return []
        for name in os.listdir(store.fd):
            if not name.startswith(TMP):
                continue
            work = snapstore.tmp_name("drop")
            try:
                store.rename(name, work)
            except OSError:
                continue
            snapstore.remove_later(store.entry(work), store.user)
            gone.append(name)
    return gone


def doomed_stores(srv: Server) -> None:
    """Finish, now, the deletions of whole stores (``destroy --with-snapshots``) killed
    beside ``srv``'s data directory (:func:`pgmgr.core.snapdoom.sweep_top`), which only a
    snapshot, branch or upgrade beside it finished: the instance is gone, and a start or
    stop of its neighbours is what comes next. Rare (a killed destroy), so not in the
    background: it takes what the destroy had left to do. Never raises."""
    from pgmgr.core import snapdoom, userfs
    from pgmgr.core.errors import PgmgrError

    try:
        with userfs.opened_dir(srv.datadir.parent) as parent:
            top = os.open(STORE, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
            try:
                snapdoom.sweep_top(top)
            finally:
                os.close(top)
    except (OSError, PgmgrError):
        pass


def abandoned_branches(srv: Server, beside: list[str]) -> list[str]:
    """Remove, in the background, the staged copies of branches killed before they
    registered (a whole copy of a data directory, ``.tmp-branch`` in the store of the new
    one) beside ``srv``'s data directory, when neither that new data directory's lock nor
    its store is held (as :func:`pgmgr.core.branch._sweep_abandoned`, which only the next
    branch there ran: one not made again held its disk space until then). Records of
    branches killed once registered are settled first (that settling removes or keeps
    their copy); a name one still names is left to it. So are the work entries of a store
    of no data directory (such a copy, half-removed by a sweep that was killed). Best
    effort: never raises."""
    top = srv.datadir.parent / STORE
    names = [n for n in beside if not n.startswith(".") and n != srv.datadir.name]
    staged = [
        n for n in names if os.path.lexists(top / n / (TMP + "branch")) or _dead_work_of(top, n)
    ]
    if not staged:  # the common case: one listdir (and one per store of no data directory)
        return []
    from pgmgr.core import registry
    from pgmgr.core.errors import PgmgrError

    try:  # loading settles them: what stays pending is under way, or blocked
        pending = {os.path.basename(i.datadir) for i in registry.load_all()[0] if i.pending}
    except (OSError, PgmgrError):
        return []
    gone = []
    for name in staged:
        try:
            if name not in pending and _drop_staged(srv, name):
                gone.append(name)
        except (OSError, PgmgrError):
            continue
    return gone


def _dead_work_of(top: Path, name: str) -> bool:
    """Whether the store ``name`` in ``top`` holds work entries, or nothing, while no data
    directory of that name stands beside it: what a sweep killed while it removed a dead
    branch's copy left (``.tmp-drop-*``, most of a data directory), or a branch killed
    before its copy began (an empty store), which no instance's own sweep reaches."""
    if os.path.lexists(top.parent / name):
        return False
    try:
        entries = os.listdir(top / name)
    except OSError:
        return False
    return not entries or any(n.startswith(TMP) for n in entries)


def _drop_staged(srv: Server, name: str) -> bool:
    """:func:`abandoned_branches` of the store ``name`` beside ``srv``'s."""
    from pgmgr.core import dirlock, snapstore, testhook

    datadir = srv.datadir.parent / name
    with (
        snapstore.opened(datadir, srv.user(), create=False) as store,
        dirlock.try_lock(datadir) as free,
        snapstore.held_if_free(store.top_fd, name) as idle,
    ):
        if not (free and idle):
            return False
        if os.path.lexists(store.entry(TMP + "branch")):
            staged = snapstore.tmp_name("drop")
            store.rename(TMP + "branch", staged)
            if os.path.lexists(datadir):
                snapstore.remove_later(store.entry(staged), store.user)  # a store in use
                return True
        elif os.path.lexists(datadir):  # placed meanwhile: its own sweep's
            return False
        works = [n for n in os.listdir(store.fd) if n.startswith(TMP)]
        if len(works) != len(os.listdir(store.fd)):  # snapshots kept by a destroy, too
            for entry in works:
                work = snapstore.tmp_name("drop")
                store.rename(entry, work)
                snapstore.remove_later(store.entry(work), store.user)
            return True
        # Nothing's store: removed now, with the store itself (in the background, the
        # store outlived it: still not empty when the next branch looked, it stayed for
        # good, one per name ever tried; killed branches are rare, so this is too).
        # Killed meanwhile, what is left is a work entry in nothing's store: the next
        # sweep here removes it (see _dead_work_of).
        for entry in works:
            testhook.pause("branch-drop-removing")
            store.as_user(snapstore.remove_tree, store.entry(entry))
        snapstore.drop_if_empty(store)
        return True
