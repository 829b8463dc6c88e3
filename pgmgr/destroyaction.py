"""What ``pgmgr destroy`` does, without Typer: the instance resolved and checked, its
standbys named, the confirmation (the command's, unless ``--yes``) asked, then under the
instance's lock its replication slots released, the server stopped, its data directory removed,
its snapshots kept or (``--with-snapshots``) deleted, and its record removed; the outcome said
as text or ``--json``. :mod:`pgmgr.commands.destroy` parses the command line and calls it.
"""

from __future__ import annotations

from collections.abc import Callable

from pgmgr import ui
from pgmgr.actions import resolve

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pgmgr.core.instance import Server
    from pgmgr.core.snapcatalog import Kept
    from pgmgr.core.teardown import DestroyResult

NOTHING_TO_DESTROY = "nothing to destroy there; 'pgmgr status' lists the instances pgmgr knows"


def destroy(
    name: str,
    *,
    with_snapshots: bool = False,
    json: bool = False,
    confirm: Callable[[Server, int], None] | None = None,
) -> None:
    """Destroy instance ``name``, once ``confirm`` (given unless ``--yes``; called with the
    instance and its snapshot count, not for an unfinished import or replica) has let it:
    it raises to refuse.

    :raises DataDirNotFound: no such data directory (nothing to destroy).
    """
    from pgmgr.core import replica, roles, snapcatalog, teardown, testhook
    from pgmgr.core.errors import DatabaseException
    from pgmgr.core.identity import IdentityChanged
    from pgmgr.core.instance import DataDirNotFound
    from pgmgr.core.locked import locked

    try:
        srv = resolve(name, None)
    except DataDirNotFound as e:  # not "create it with pgmgr init": nothing to destroy
        raise DataDirNotFound(e.datadir, e.why, hint=NOTHING_TO_DESTROY) from None
    try:
        teardown.check_destroyable(srv)
    except IdentityChanged:
        # A restore or upgrade may be swapping the directory under the instance's lock (it
        # was refused as "replaced"): the check that counts is made once that is done.
        with locked(srv):
            teardown.check_destroyable(srv)
    standbys = roles.standbys_of(srv)
    if standbys:
        ui.message(
            f"'{srv.inst.name}' is the primary of {', '.join(standbys)}: their replication "
            "slots go with it, and the standbys are left as they are (they keep their data "
            "and receive no more changes; 'pgmgr promote NAME' makes one a primary)"
        )
    kept = snapcatalog.Kept.of(srv)
    # Not asked for an unfinished import or replica: it holds no data yet.
    if confirm is not None and not srv.inst.pending:
        confirm(srv, kept.count)
    with locked(srv), ui.spinner(f"Destroying '{srv.inst.name}' …"):
        # Counted again: a snapshot or restore --save-current this waited for may have
        # added one since (--with-snapshots left it behind, unlisted, and said nothing).
        kept = snapcatalog.Kept.of(srv)
        dropped, note = replica.release_to_destroy(srv)
        # The snapshots go before the record: a destroy killed after the record went left
        # them for good (the same command then found no such instance; 'snapshots' listed
        # none of them). Killed before, the record is there and the same command finishes.
        removed = 0

        def remove_snapshots() -> None:
            nonlocal removed
            try:
                removed = kept.remove()
            except DatabaseException as e:  # the data directory is gone already: say so
                raise DatabaseException(
                    f"{e}; the data directory {srv.datadir} is removed, the record kept",
                    hint="make what is left removable, then run the same destroy again",
                ) from None

        result = teardown.destroy(srv, before_forget=remove_snapshots if with_snapshots else None)
        testhook.pause("destroy-forgotten")
        kept.tidy()
    _say(result, kept, removed, dropped, with_snapshots=with_snapshots, json=json)
    if note:
        ui.message("Note: " + note)
    note_units(srv)


def note_units(srv: Server) -> None:
    """Destroyed or forgotten: say which of this registry's systemd units of the instance
    stay (systemd would go on starting it), and how to remove them."""
    from pgmgr.core import service
    from pgmgr.core.errors import PgmgrError

    try:
        units = service.units_of(srv.inst.name, srv.inst.datadir)
    except (OSError, PgmgrError):  # the work is done: a note that cannot be made is none
        return
    for path in units:
        ui.message(
            f"Note: its systemd unit stays: {path} ('pgmgr service remove {srv.inst.name}' "
            "stops and deletes it)"
        )


def _say(
    result: DestroyResult,
    kept: Kept,
    removed: int,
    dropped: list[str],
    *,
    with_snapshots: bool,
    json: bool,
) -> None:
    """Say what was destroyed, removed and kept: the ``--json`` document, or messages."""
    left = kept.others + (0 if with_snapshots else kept.count)
    if json:
        ui.emit_json(
            {
                "name": result.name,
                "datadir": result.datadir,
                "was_running": result.was_running,
                "removed_datadir": result.removed_datadir,
                "removed_record": result.removed_record,
                "snapshots_removed": removed,
                "snapshots_kept": left,
                "snapshots_dir": kept.path if left else None,
                "snapshots_problem": kept.problem,
                "left_outside": [o.to_dict() for o in result.left_outside],
            }
        )
        return
    gone = "" if result.removed_datadir else " (its data directory was already gone)"
    ui.message(f"Destroyed '{result.name}'{gone}: {result.datadir}")
    if dropped:
        ui.message(f"Dropped on its primary: {', '.join(dropped)}")
    if removed:
        ui.message(f"Deleted its {removed} snapshot(s)")
    elif kept.count:
        ui.message(
            f"Kept its {kept.count} snapshot(s) in {kept.path} (--with-snapshots deletes them too)"
        )
    if kept.others:
        ui.message(
            f"Kept {kept.others} snapshot(s) of another cluster in {kept.path} (kept by "
            "an earlier destroy at that path)"
        )
    if kept.problem:
        ui.message(f"Note: its snapshots were left alone: {kept.problem}")
    _say_outside(result)


def _say_outside(result: DestroyResult) -> None:
    """The tablespaces and WAL directory of the data directory kept elsewhere: left."""
    for o in result.left_outside:
        # the names and link targets are the user's: one line, no terminal control
        oid = ui.visible_line(o.oid or "")
        what = f"its tablespace {oid}" if o.kind == "tablespace" else "its WAL directory"
        ui.message(
            f"Note: left {what} in {ui.visible_line(o.path)}: pgmgr deletes nothing outside the "
            "data directory; remove it yourself once nothing else uses it"
        )
