"""``pgmgr forget``: remove an instance's record, keeping its data directory."""

from __future__ import annotations

from pgmgr import ui
from pgmgr.commands import _common as c
from pgmgr.commands.destroy import RequiredName


def forget(name: RequiredName, quiet: c.Quiet = False) -> None:
    """Remove the record of a stopped instance; the data directory stays where it is.

    Refuses a running instance (stop it first), so no server is left unmanaged. An
    unreadable record is removed as it is, and nothing else.

    Example: pgmgr forget old
    """
    c.quiet(quiet)
    from pgmgr.core import registry, teardown
    from pgmgr.core.locked import locked

    try:
        srv = c.resolve(name, None)
    except registry.CorruptRecord as e:
        if e.path.stem != name:
            raise
        path = teardown.forget_unreadable(e)
        ui.message(
            f"Removed the unreadable record of '{name}' ({path}). No data directory was "
            "touched, and pgmgr cannot tell from the record whether a server still runs: "
            "'pgmgr status -d DIR' checks a data directory"
        )
        return
    with locked(srv):
        teardown.forget(srv)
    ui.message(f"Forgot '{srv.inst.name}'; its data directory stays: {srv.datadir}")
    from pgmgr.destroyaction import note_units

    note_units(srv)
