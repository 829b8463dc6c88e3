"""Major upgrades with pg_upgrade, and the snapshot that rolls them back.

The new cluster is initialized in the instance's snapshot store (same filesystem, private),
with the old one's encoding, locales and checksum setting, and pg_upgrade fills it there,
run as the server user in a working directory of its own (it writes its logs there). Only
when it succeeded: the configuration pgmgr keeps is carried over (pg_hba.conf,
pg_ident.conf, postgresql.auto.conf, the record's settings, each checked against the new
major), and what PostgreSQL did not make in the data directory with the include lines of
postgresql.conf (:mod:`pgmgr.core.upgradefiles`, checked before anything is stopped), the
new data directory is swapped in with one atomic rename, the old one becomes the
``pre-upgrade`` snapshot (with ``--method copy`` or ``clone`` the old directory itself, so
no extra copy; with ``link`` a copy made first, since linking shares the files), and the
record switches to the new version. Before that point nothing changes: an error or an
interrupt removes the new cluster and starts the old server again if it was running.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgmgr.core import (
    cleanup,
    copy,
    delta,
    dirpath,
    intent,
    paths,
    pgcontrol,
    roles,
    server,
    sigguard,
    snapshot,
    snapstore,
    snapswap,
    sockets,
    sweep,
    testhook,
    tools,
    upgradefiles,
    upgradehba,
    upgradekept,
    upgradeprobe,
    upgraderun,
    versions,
)
from pgmgr.core import upgradeconf as conf
from pgmgr.core import upgradeplan as plan
from pgmgr.core.errors import DatabaseException
from pgmgr.core.instance import Server
from pgmgr.core.pause import done_then, not_started, paused, resume
from pgmgr.core.snapcatalog import taken_names
from pgmgr.core.snapstore import Meta, Store
from pgmgr.core.versions import Installation

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pgmgr.core.privileges import ServerUser

#: Where the pre-upgrade snapshot is assembled (a work name: swept if pgmgr is killed).
KEEP = snapstore.TMP + "keep"


@dataclass
class UpgradeResult:
    """What ``pgmgr upgrade`` did."""

    name: str
    old_version: str
    new_version: str
    method: str
    check_only: bool
    elapsed: float
    was_running: bool = False
    snapshot: str | None = None
    rejected: list[str] = field(default_factory=list)
    not_carried: list[str] = field(default_factory=list)
    analyzed: bool = False
    analyzed_with: str | None = None
    analyze_hint: str | None = None
    downtime: float | None = None
    #: (database, extension) that kept the old major's version (pg_upgrade's advice)
    extensions: list[tuple[str, str]] = field(default_factory=list)
    #: pg_upgrade's script that updates them, kept under the state directory
    extensions_script: str | None = None
    #: the old cluster's physical replication slots, which pg_upgrade never carries over
    slots_dropped: list[str] = field(default_factory=list)
    #: what of the old data directory is carried over (or would be, with ``--check``)
    files: upgradefiles.Carried = field(default_factory=upgradefiles.Carried)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "old_version": self.old_version,
            "new_version": self.new_version,
            "method": self.method,
            "check_only": self.check_only,
            "was_running": self.was_running,
            "rollback_snapshot": self.snapshot,
            "rejected_settings": self.rejected,
            "postgresql_conf_not_carried": self.not_carried,
            "renamed_settings": plan.renamed(self.rejected, self.new_version.split(".")[0]),
            "statistics_rebuilt": self.analyzed,
            "statistics_rebuilt_with": self.analyzed_with,
            "statistics_hint": self.analyze_hint,
            "elapsed_ms": round(self.elapsed * 1000, 1),
            "downtime_ms": None if self.downtime is None else round(self.downtime * 1000, 1),
            "extensions_to_update": [
                {"database": db, "extension": ext} for db, ext in self.extensions
            ],
            "extensions_script": self.extensions_script,
            "replication_slots_dropped": self.slots_dropped,
            "files_carried": self.files.files,
            "files_not_carried": [{"name": n, "why": w} for n, w in self.files.dropped],
            "include_lines_carried": self.files.includes,
        }


# --------------------------------------------------------------------------- the upgrade


def prepare(srv: Server, major: str, method: str) -> tuple[Installation, Installation]:
    """Validate the request; the old and new installations.

    :raises UsageError: a bad method, the same or a lower major.
    :raises VersionNotFound: the new major is not installed.
    :raises DatabaseException: a binary pg_upgrade needs is missing; a standby.
    """
    plan.check_method(method)
    snapshot.require_datadir(srv)
    if roles.is_standby(srv):  # pg_upgrade refuses one, but only once it is stopped
        raise DatabaseException(
            f"'{srv.inst.name}' is a standby: pg_upgrade upgrades primaries only; nothing "
            "was changed",
            hint=f"upgrade its primary{f' ({srv.inst.primary!r})' if srv.inst.primary else ''}"
            ", then make the standby again ('pgmgr destroy' and 'pgmgr replica')",
        )
    old_major = server.datadir_major(srv.datadir) or srv.inst.major
    wanted = versions.check_version_string(major)
    plan.check_direction(old_major, versions.major_of(wanted))
    new = versions.select(wanted).installation
    old = srv.installation()
    plan.check_binaries(old, new)
    return old, new


def upgrade(
    srv: Server, major: str, *, method: str = "copy", check: bool = False,
    progress: Callable[[str], None] | None = None,
) -> UpgradeResult:  # fmt: skip
    """Upgrade ``srv`` to ``major`` (see the module doc); the caller holds the lock.
    ``progress`` is told each slow step as it begins ("pg_upgrade --copy, 1.2 GB").

    :raises UsageError, VersionNotFound, DatabaseException: see :func:`prepare`; also
        pg_upgrade's own failure (its logs are kept), not enough space. Nothing changed.
    :raises KeyboardInterrupt: interrupted before the switch: nothing changed. In-process,
        a signal after it reaches the caller's handler (a Ctrl-C: this) once the upgrade
        is complete (unless it cut the statistics step short: the result says so).
    """
    t0 = time.monotonic()
    say = progress or (lambda _step: None)
    old, new = _prepare_ready(srv, major, method, check)
    result = UpgradeResult(srv.inst.name, srv.inst.version, new.version, method, check, 0.0)
    su = srv.user()
    with (
        sigguard.interruptible(),
        snapstore.opened(srv.datadir, su, exclusive=True) as store,
        _dropped_if_empty(store),
    ):
        size = _check_room(srv, store, method, check)
        work = store.entry(snapstore.tmp_name("upgrade"))
        sweep.dead_runs(store.user)  # socket dirs of upgrades killed before they removed theirs
        sockdir = held = None
        # Interrupted or failed, a clean-up that fails (a directory something still writes
        # in) leaves its entry to the next command's sweep: the interrupt or error wins.
        with cleanup.always(
            lambda: sockdir is None or store.as_user(upgraderun.remove_socket_dir, sockdir),
            lambda: sweep.release(held),
            lambda: store.as_user(snapstore.remove_tree, work),
            lambda: store.as_user(snapstore.remove_tree, store.entry(KEEP)),
        ):
            # In the block: a signal during it is raised as the call returns, the work
            # directory made (the socket dir's name is the run's: swept once it is gone).
            sockdir = store.as_user(upgraderun.mkdirs, work, os.getpid(), sockets.temp_base_for(su))
            held = sweep.hold(sockdir)  # see pgmgr.core.sweep: live, whatever pid
            newdata, result.slots_dropped, result.files = _init_new(
                srv, store, new, work, sockdir, su, say
            )
            if check or srv.running() is not None:
                # Running: pg_upgrade's checks first, on the live server, so that what it
                # refuses (a library, --method clone here) costs no stop and start.
                say("pg_upgrade --check" + ("" if check else " (server running)"))
                upgraderun.run_pg_upgrade(
                    srv, store, old, new, newdata, work, sockdir, method, True
                )
                rejected = conf.rejected(srv, store, new, newdata)
                result.rejected, result.not_carried = conf.left_behind(
                    srv, store, new, newdata, rejected
                )
            if not check:
                steps = _Steps(say, size)
                script = _switch(srv, store, old, new, work, sockdir, method, result, steps)
                upgraderun.keep_extension_script(srv, result, script)
        if not check and result.was_running:
            say("statistics (vacuumdb)")
            result.analyzed_with, result.analyze_hint = conf.rebuild_statistics(srv, new)
            result.analyzed = result.analyzed_with is not None
    if not check and not result.was_running:
        result.analyze_hint = f"start it ('pgmgr start {srv.inst.name}'), then run: " + (
            conf.shell(conf.analyze_argvs(srv, new))
        )
    result.elapsed = time.monotonic() - t0
    return result


@contextlib.contextmanager
def _dropped_if_empty(store: Store) -> Iterator[None]:
    """The instance's snapshot store, made for the work, removed after it if it holds
    nothing: a ``--check``, or a failed upgrade, of an instance that had no snapshots left
    one beside its data directory (``--check`` changes nothing)."""
    try:
        yield
    finally:
        snapstore.drop_if_empty(store)


def _prepare_ready(
    srv: Server, major: str, method: str, check: bool
) -> tuple[Installation, Installation]:
    """:func:`prepare`, the data directory checked not to be a mount point (``--check``
    too), then a server another process starts waited for: asked, and pg_upgrade --check
    run, on a running server, they failed with "the database system is starting up"."""
    old, new = prepare(srv, major, method)
    dirpath.check_not_mount(srv.datadir, f"upgrade '{srv.inst.name}'")  # --check too
    from pgmgr.core.readyfirst import ready_first

    ready_first(srv, "upgrade", f"{'check the upgrade of' if check else 'upgrade'} "
                f"'{srv.inst.name}'")  # fmt: skip
    return old, new


def _check_room(srv: Server, store: Store, method: str, check: bool) -> int:
    """Before any work in the store (swept first): the data directory all in one place
    (:func:`_check_keepable`) and on the store's filesystem; unless ``check``, its parent
    writable and space enough for ``method``. The data directory's size (0 for a check).

    :raises DatabaseException: one of these is not so; nothing was changed.
    """
    store.as_user(snapstore.sweep, store.path)
    _check_keepable(srv, store)
    snapstore.check_same_fs(store, f"upgrade '{srv.inst.name}'")
    size = 0
    if not check:
        # The new directory is swapped in there: checked before pg_upgrade runs (it
        # ran, the server stopped for it, then "cannot replace DIR: Permission denied").
        paths.check_writable(srv.datadir.parent, f"upgrade '{srv.inst.name}'")
        # The rollback snapshot keeps a sparse file's holes: what the files allocate.
        size, used = store.as_user(copy.tree_sizes, srv.datadir)
        needed = used * (2 if method == "link" else 1) if method != "clone" else 0
        snapstore.check_space(store, needed, f"upgrading '{srv.inst.name}'")
    return size


def _init_new(
    srv: Server, store: Store, new: Installation, work: Path, sockdir: str,
    su: ServerUser | None, say: Callable[[str], None],
) -> tuple[Path, list[str], upgradefiles.Carried]:  # fmt: skip
    """The configuration and libraries checked for ``new``, then its cluster initialized
    in ``work`` with the options of the old one (probed through ``sockdir``), and the
    settings scoped to it, the files of the data directory, postgresql.conf's include
    lines, pg_hba.conf and pg_ident.conf carried to it checked. The new data directory,
    the old cluster's physical replication slots (not carried over), and what of the
    data directory would be carried."""
    conf.check_regular(srv, store)
    conf.check_libraries(srv, store, new)
    testhook.pause("upgrade-checked")
    opts, scoped, slots = upgradeprobe.probe(srv, sockdir, new)
    newdata = work / "data"
    say(f"initdb {new.version}")
    tools.run(plan.initdb_argv(new, newdata, srv.inst.superuser, opts), su, cwd=work)
    conf.check_scoped(srv, new, newdata, scoped)
    with upgradefiles.placed(srv, store, new, newdata) as files:
        upgradehba.check(srv, store, new, newdata, sockdir, files.files)
    return newdata, slots, files


def _check_keepable(srv: Server, store: Store) -> None:
    """:raises DatabaseException: the data directory is not all in one place (tablespaces,
    a pg_wal symlink): the pre-upgrade snapshot could not be restored (the check and the
    link method's copy said so only once the server was stopped; copy and clone upgraded,
    and the rollback then failed)."""
    why = store.as_user(snapstore.unsupported, srv.datadir)
    if why:
        raise DatabaseException(
            f"cannot upgrade '{srv.inst.name}': {why}, so the snapshot that rolls an upgrade "
            "back could not hold it; nothing was changed",
            hint="move what lives elsewhere into the data directory (ALTER TABLE ... SET "
            "TABLESPACE pg_default, then DROP TABLESPACE), or run pg_upgrade yourself",
        )


def _switch(
    srv: Server, store: Store, old: Installation, new: Installation, work: Path,
    sockdir: str, method: str, result: UpgradeResult, steps: _Steps,
) -> str | None:  # fmt: skip
    """Stop, pg_upgrade, carry the configuration over, swap, snapshot the old state,
    switch the record, start. Past the swap, signals cannot split it; a kill cannot split
    the record from the directory either (see :mod:`pgmgr.core.intent`). The script
    pg_upgrade wrote to update extensions, if any."""
    newdata = work / "data"
    old_sysid = store.as_user(pgcontrol.system_identifier, srv.datadir)
    snap_name = f"{snapstore.PRE_UPGRADE}{old.major}"
    if snap_name in taken_names(store):
        snap_name += "-" + snapstore.default_name(set())
    meta = snapshot.meta_for(srv, snap_name, old_sysid, "pre-upgrade", copy.CopyStats())
    said = f"'{srv.inst.name}' was upgraded to PostgreSQL {new.major}"
    with (
        done_then(said, srv.inst.name) as upgraded,
        paused(srv, "upgrade") as pause,
        _freed_if_failed(store, work, upgraded),
    ):
        result.was_running = pause.was_running
        if method == "link":  # the old files will be shared: keep a real copy first
            steps.say("copy for the snapshot")
            stats = store.as_user(snapshot.copy_into, srv.datadir, store.entry(KEEP))
            meta.size, meta.files, meta.method = stats.bytes, stats.files, stats.method
        steps.say(f"pg_upgrade --{method}")
        with _link_undone_if_killed(srv, store, newdata, method):
            upgraderun.run_pg_upgrade(srv, store, old, new, newdata, work, sockdir, method, False)
            # What pg_upgrade read (it stopped the old server last): a server run on it
            # since (by hand, or the pgmgr of another registration) refuses the swap.
            control = store.as_user(delta.control, srv.datadir)
            testhook.pause("upgrade-ran")
            script = store.as_user(conf.extension_script, work)
            it = _intent(srv, store, new, newdata, method, meta, result)
            with sigguard.shielded():
                ran = store.as_user(delta.control, srv.datadir) != control
                not_started(srv, "upgrade", ran=ran)  # its writes would be lost
                intent.begin(srv, it)  # replaces the one that undoes --link after a kill
                try:
                    store.as_user(_hold, store.path, newdata, it.old, KEEP, it.source)
                    testhook.pause("upgrade-switching")
                    snapswap.swap_in(store, it.old)
                except BaseException:
                    intent.discard(srv, store)
                    raise
                sigguard.commit()  # swapped: the upgrade completes and says so
                upgraded.append(True)
                testhook.pause("upgrade-swapped")
                gone = intent.complete(srv, store)
                if pause.stopped_at is not None:
                    steps.say(f"starting {new.version}", size=False)
                try:
                    resume(srv, pause)
                finally:  # not before: freeing its blocks competes with the start
                    intent.remove(store, gone)
    result.snapshot, result.downtime = snap_name, pause.downtime
    return script


@contextlib.contextmanager
def _freed_if_failed(store: Store, work: Path, upgraded: list[bool]) -> Iterator[None]:
    """The new cluster, the check's kept copies and the link method's copy removed when
    the switch fails before the swap, before the old server starts again: removed only
    after it, they held the disk they may have filled (a file copied again during the
    downtime), and the old server, "nothing changed", did not start ("could not write
    lock file postmaster.pid: No space left on device"). What is left is the caller's
    clean-up's, as before."""
    try:
        yield
    except BaseException:
        if not upgraded:
            for path in (work / "data", work / upgradekept.KEPT, store.entry(KEEP)):
                with contextlib.suppress(Exception):
                    store.as_user(snapstore.remove_tree, path, True)
        raise


@dataclass
class _Steps:
    """Says each step of the switch, with the data directory's size."""

    progress: Callable[[str], None]
    size: int

    def say(self, step: str, *, size: bool = True) -> None:
        self.progress(f"{step}, {snapstore.human(self.size)}" if size else step)


@contextlib.contextmanager
def _link_undone_if_killed(srv: Server, store: Store, newdata: Path, method: str) -> Iterator[None]:
    """With ``--method link``: an intent that switches nothing, from before pg_upgrade
    disables the old cluster (renames its ``pg_control``) until the block replaces it with
    the switch's own. Killed meanwhile, the next command settles it by discarding it,
    which enables the old cluster again (:func:`intent.discard`); it failed with "could
    not open file global/pg_control" until the user found pg_control.old. The block
    failing or interrupted: discarded here, before the old server starts again."""
    if method != "link":
        yield
        return
    undo = intent.Intent("upgrade", store.as_user(intent.identify, newdata), {},
                         intent.held_name("upgrade"))  # fmt: skip
    try:
        with sigguard.shielded():
            intent.begin(srv, undo)
        yield
    except BaseException:
        if srv.inst.intent == undo.to_dict():  # not yet replaced by the switch's
            with sigguard.shielded():
                intent.discard(srv, store)
        raise


def _intent(
    srv: Server, store: Store, new: Installation, newdata: Path, method: str, meta: Meta,
    result: UpgradeResult,
) -> intent.Intent:  # fmt: skip
    """Carry the configuration over to the upgraded ``newdata`` (what the new major
    rejects, and what is not carried, go in ``result``) and make the switch's intent (see
    :mod:`pgmgr.core.intent`)."""
    rejected = conf.rejected(srv, store, new, newdata)
    result.rejected, result.not_carried = conf.left_behind(srv, store, new, newdata, rejected)
    conf.reading(srv, store, conf.carry, srv.datadir, newdata, set(rejected))
    result.files = upgradefiles.copied(
        srv, store, upgradefiles.carry, srv.datadir, newdata, result.files
    )
    new_id = store.as_user(intent.identify, newdata)
    meta.upgraded_to = store.as_user(pgcontrol.system_identifier, newdata)
    if meta.size == 0:
        meta.size = store.as_user(copy.tree_size, srv.datadir)
    store.as_user(copy.sync_fs, store.path)
    settings = {k: v for k, v in srv.inst.settings.items() if k not in rejected}
    record: dict[str, Any] = {
        "major": new.major, "version": new.version, "bindir": str(new.bindir),
        "settings": settings,
    }  # fmt: skip
    held = intent.held_name("upgrade")
    source = intent.held_name("keep") if method == "link" else held
    return intent.Intent("upgrade", new_id, record, held, meta.name, source, meta.to_dict())


def _hold(store: Path, newdata: Path, held: str, keep: str, source: str) -> None:
    """Move the new cluster, and the copy made for ``--method link``, to the names the
    intent gives them (fsynced: they must be there after a crash). As the user."""
    os.rename(newdata, store / held)
    if source != held:
        os.rename(store / keep, store / source)
    copy.fsync_dir(store)
