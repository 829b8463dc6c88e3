"""What ``pgmgr snapshot``, ``pgmgr restore`` and ``pgmgr branch`` do, without Typer.

The Typer commands (:mod:`pgmgr.commands.snapshot`, :mod:`pgmgr.commands.restore`,
:mod:`pgmgr.commands.branch`) parse the command line and call these; so does the fast path
in :mod:`pgmgr.entry` for the plain forms (``pgmgr snapshot NAME [SNAP]``, ``pgmgr restore
NAME SNAP --yes``, ``pgmgr branch NAME NEW [options]``), which skips importing Typer (~30 ms
of a snapshot-and-restore's fixed cost, twice; ~40 ms of a branch). Each function returns
the exit code and raises :class:`~pgmgr.core.errors.PgmgrError` on failure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pgmgr import ui
from pgmgr.actions import resolve

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pgmgr.core.instance import Server


def snapshot(
    name: str,
    snap: str | None = None,
    *,
    online: bool = False,
    delete: bool = False,
    json: bool = False,
    quiet: bool = False,
) -> int:
    """Take snapshot ``snap`` of instance ``name`` (or delete it)."""
    ui.settings.quiet = quiet
    from pgmgr.core import sigguard, testhook
    from pgmgr.core import snapcatalog as catalog
    from pgmgr.core import snapshot as snaps
    from pgmgr.core.errors import UsageError
    from pgmgr.core.locked import locked

    if delete and online:  # a delete with an option for taking one: a slip, not ignored
        raise UsageError("--online is for taking a snapshot, not with --delete")
    srv = resolve(name, None)
    if delete:
        if snap is None:
            raise UsageError(
                "--delete needs the snapshot's name: pgmgr snapshot NAME SNAP --delete"
            )
        with locked(srv, sweep=False):  # it sweeps the store itself
            catalog.delete(srv, snap)
        if json:  # only the document, as every other --json
            ui.emit_json({"instance": srv.inst.name, "snapshot": snap, "deleted": True})
            return 0
        ui.message(f"Deleted snapshot {snap!r} of '{srv.inst.name}'")
        return 0
    how = "an online" if online else "a"
    with (
        sigguard.interruptible(),
        locked(srv, sweep=False),  # it sweeps the store itself
        ui.spinner(f"Taking {how} snapshot of '{srv.inst.name}':") as step,
    ):
        result = snaps.create(srv, snap, online=online, progress=step)
    testhook.pause("snapshot-done")  # taken, not yet said (tests: a signal now)
    if json:
        ui.emit_json(result.to_dict())
        note_left_stopped(srv)
        return 0
    parts = [ui.size(result.size), result.method]
    if result.shared_with:
        parts[1] = (
            f"{ui.size(result.copied)} copied, {result.shared} files shared with "
            f"{result.shared_with!r}"
        )
    if result.downtime is not None:
        parts.append(f"downtime {ui.ms(result.downtime)}")
    ui.message(
        f"Snapshot {result.snapshot!r} of '{result.instance}' taken in {ui.ms(result.elapsed)} "
        f"({', '.join(parts)}): {result.path}"
    )
    note_left_stopped(srv)
    return 0


def restore(
    name: str,
    snap: str,
    *,
    save_current: bool = False,
    json: bool = False,
    quiet: bool = False,
    confirm: Callable[[Server], None] | None = None,
) -> int:
    """Put instance ``name`` back to snapshot ``snap``, once ``confirm`` (given unless
    ``--yes``) has let it: it raises to refuse."""
    ui.settings.quiet = quiet
    from pgmgr.core import restore as restoring
    from pgmgr.core import sigguard, testhook
    from pgmgr.core.locked import locked
    from pgmgr.core.snapstore import human

    srv = resolve(name, None)
    if confirm is not None:
        confirm(srv)
    with (
        sigguard.interruptible(),
        locked(srv, sweep=False),  # it sweeps the store itself
        ui.spinner(f"Restoring {snap!r} into '{srv.inst.name}':") as step,
    ):
        result = restoring.restore(
            srv, snap, save_current="" if save_current else None, progress=step
        )
    testhook.pause("restore-done")  # restored, not yet said (tests: a signal now)
    standbys = standbys_of(srv)
    if json:
        ui.emit_json({**result.to_dict(), "standbys_not_following": standbys})
        note_left_stopped(srv)
        return 0
    parts = [f"copied {human(result.copied)}"]
    if result.kept:
        parts[0] += f", {result.kept} files unchanged"
    if result.downtime is not None:
        parts.append(f"downtime {ui.ms(result.downtime)}")
    if result.saved:
        parts.append(f"previous state saved as {result.saved!r}")
    if result.rolled_back_from:
        parts.append(f"rolled back from PostgreSQL {result.rolled_back_from}")
    extra = f" ({', '.join(parts)})"
    state = "running" if result.was_running else "stopped"
    ui.message(
        f"Restored '{result.instance}' to {result.snapshot!r} in {ui.ms(result.elapsed)}{extra}; "
        f"PostgreSQL {result.version}, {state}"
    )
    note_standbys(result.instance, standbys, "a restore")
    note_left_stopped(srv)
    return 0


def check_listed(srv: Server, snap: str) -> None:
    """Before ``restore`` asks: ``snap`` is a valid name of one of ``srv``'s snapshots, not
    "Replace the data by 'typo'? [y/N]" and then an error (the restore checks it again
    under the lock, and whether it can be restored).

    :raises UsageError: an invalid name.
    :raises SnapshotNotFound: no such snapshot.
    """
    from pgmgr.core import snapcatalog as catalog
    from pgmgr.core.snapstore import SnapshotNotFound, check_snap_name

    check_snap_name(snap)
    names = sorted(s.snapshot for s in catalog.list_snapshots(srv))
    if snap not in names:
        raise SnapshotNotFound(
            f"'{srv.inst.name}' has no snapshot named {snap!r} (it has: "
            f"{', '.join(names) or 'none'})",
            hint="'pgmgr snapshots' lists them",
        )


def branch(
    name: str,
    new: str,
    *,
    from_: str | None = None,
    datadir: Path | None = None,
    port: str | None = None,
    start: bool = False,
    json: bool = False,
    quiet: bool = False,
) -> int:
    """Make instance ``new`` from ``name``'s current state or its snapshot ``from_``."""
    ui.settings.quiet = quiet
    from pgmgr.core import branch as branches
    from pgmgr.core import listen, sigguard
    from pgmgr.core.locked import locked

    listen.check_port_option(port)
    srv = resolve(name, None)
    with (
        sigguard.interruptible(),
        locked(srv),
        ui.spinner(f"Branching '{srv.inst.name}' into '{new}':") as step,
    ):
        result = branches.branch(
            srv, new, snap=from_, datadir=datadir,
            port=int(port) if port and port != "auto" else port, start=start, progress=step,
        )  # fmt: skip
    if json:
        ui.emit_json(result.to_dict())
        note_left_stopped(srv)
        return 0
    origin = f"snapshot {result.snapshot!r} of " if result.snapshot else ""
    down = ""
    if result.source_downtime is not None:
        down = f"; '{result.source}' was stopped for {ui.ms(result.source_downtime)}"
    ui.message(
        f"Branched '{result.name}' from {origin}'{result.source}' in {ui.ms(result.elapsed)} "
        f"({ui.size(result.size)}, {result.method}{down}): {result.datadir}"
    )
    if result.started:
        ui.message(f"Started '{result.name}': {result.url}")
    else:
        ui.message(f"Start it with 'pgmgr start {result.name}' (port {result.port})")
    note_left_stopped(srv)
    return 0


def standbys_of(srv: Server) -> list[str]:
    """The registered standbys of ``srv``: none follows a restore or an upgrade of it."""
    from pgmgr.core import roles

    return roles.standbys_of(srv)


def note_left_stopped(srv: Server) -> None:
    """Say that ``srv``'s server is still stopped when a command killed before it started
    it again (or whose start failed) left it so (see :mod:`pgmgr.core.stopmark`): this
    command found it stopped, did its work and, starting nothing behind the user's back,
    ends with it stopped. The line ``status`` shows."""
    from pgmgr.core import stopmark

    mark = stopmark.left_now(srv)
    if mark is not None:
        name = srv.inst.name
        ui.message(f"Note: {mark.sentence(name)}; it is still stopped: "
                   f"start it with 'pgmgr start {name}'")  # fmt: skip


def note_standbys(name: str, standbys: list[str], what: str) -> None:
    """Say that ``standbys`` of ``name`` cannot follow ``what`` (their WAL no longer
    continues the primary's: "record with incorrect prev-link", or another major)."""
    if standbys:
        ui.message(
            f"Note: the standbys of '{name}' ({', '.join(standbys)}) cannot follow {what}: "
            f"make them again ('pgmgr destroy STANDBY --yes', then 'pgmgr replica {name}')"
        )
