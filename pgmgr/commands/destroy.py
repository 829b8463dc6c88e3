"""``pgmgr destroy``: stop an instance and remove its data directory and record."""

from __future__ import annotations

from typing import Annotated

import typer

from pgmgr import ui
from pgmgr.commands import _common as c

RequiredName = Annotated[
    str,
    typer.Argument(
        help="Instance name (or a data directory path).",
        autocompletion=c.complete_names,
        show_default=False,
    ),
]

NOTHING_TO_DESTROY = "nothing to destroy there; 'pgmgr status' lists the instances pgmgr knows"


def destroy(
    name: RequiredName,
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation.")] = False,
    with_snapshots: Annotated[
        bool,
        typer.Option("--with-snapshots", help="Also delete its snapshots (kept otherwise)."),
    ] = False,
    json: c.Json = False,
    quiet: c.Quiet = False,
) -> None:
    """Stop an instance, delete its data directory, and forget it. Cannot be undone.

    Asks first unless --yes; without a terminal, --yes is required. Its snapshots are
    kept (and said where) unless --with-snapshots.

    Example: pgmgr destroy scratch --yes
    """
    c.quiet(quiet, json)
    from pgmgr.core import replica, roles, snapcatalog, teardown
    from pgmgr.core.errors import UsageError
    from pgmgr.core.instance import DataDirNotFound
    from pgmgr.core.locked import locked

    try:
        srv = c.resolve(name, None)
    except DataDirNotFound as e:  # not "create it with pgmgr init": nothing to destroy
        raise DataDirNotFound(e.datadir, e.why, hint=NOTHING_TO_DESTROY) from None
    teardown.check_destroyable(srv)
    standbys = roles.standbys_of(srv)
    if standbys:
        ui.message(
            f"'{srv.inst.name}' is the primary of {', '.join(standbys)}: their replication "
            "slots go with it, and the standbys are left as they are (they keep their data "
            "and receive no more changes; 'pgmgr promote NAME' makes one a primary)"
        )
    kept = snapcatalog.Kept.of(srv)
    if not yes and not srv.inst.pending:  # an unfinished import/replica holds no data yet
        if not c.on_terminal():
            raise UsageError(
                f"refusing to destroy '{srv.inst.name}' without --yes (no terminal to ask on)"
            )
        prompt = f"Delete '{srv.inst.name}' and all its data in {srv.datadir}?"
        if kept.count:
            what = "and" if with_snapshots else "keeping"
            prompt = prompt[:-1] + f", {what} its {kept.count} snapshot(s)?"
        if not c.confirm(prompt):
            ui.message("Nothing removed")
            raise typer.Exit(1)
    with locked(srv), ui.spinner(f"Destroying '{srv.inst.name}' …"):
        # Counted again: a snapshot or restore --save-current this waited for may have
        # added one since (--with-snapshots left it behind, unlisted, and said nothing).
        kept = snapcatalog.Kept.of(srv)
        dropped, note = replica.release_to_destroy(srv)
        result = teardown.destroy(srv)
        removed = kept.remove() if with_snapshots else 0
        kept.tidy()
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
            }
        )
    else:
        gone = "" if result.removed_datadir else " (its data directory was already gone)"
        ui.message(f"Destroyed '{result.name}'{gone}: {result.datadir}")
        if dropped:
            ui.message(f"Dropped on its primary: {', '.join(dropped)}")
        if removed:
            ui.message(f"Deleted its {removed} snapshot(s)")
        elif kept.count:
            ui.message(
                f"Kept its {kept.count} snapshot(s) in {kept.path} "
                "(--with-snapshots deletes them too)"
            )
        if kept.others:
            ui.message(
                f"Kept {kept.others} snapshot(s) of another cluster in {kept.path} (kept by "
                "an earlier destroy at that path)"
            )
        if kept.problem:
            ui.message(f"Note: its snapshots were left alone: {kept.problem}")
    if note:
        ui.message("Note: " + note)
