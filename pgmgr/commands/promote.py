"""``pgmgr promote NAME``: make a standby a primary."""

from __future__ import annotations

from pgmgr import ui
from pgmgr.commands import _common as c


def promote(name: c.Name = None, json: c.Json = False, quiet: c.Quiet = False) -> None:
    """Promote a standby (made by 'pgmgr replica') to a primary that accepts writes; its
    slot, replication role and pg_hba.conf lines on the former primary are dropped.

    Example: pgmgr promote web-2
    """
    c.quiet(quiet, json)
    from pgmgr.core import replica

    with ui.spinner("Promoting …"):
        res = replica.promote(c.resolve(name, None))
    if json:
        ui.emit_json(
            {
                "name": res.name,
                "former_primary": res.former_primary,
                "dropped": res.detached,
                "note": res.note,
            }
        )
        return
    ui.message(f"Promoted '{res.name}': it is a primary now and accepts writes")
    if res.detached:
        ui.message(f"Dropped on '{res.former_primary}': " + ", ".join(res.detached))
    if res.note:
        ui.message("Note: " + res.note)
