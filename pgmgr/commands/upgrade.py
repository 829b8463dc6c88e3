"""``pgmgr upgrade``: a major upgrade with pg_upgrade, keeping a snapshot for rollback."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from pgmgr import ui
from pgmgr.commands import _common as c
from pgmgr.commands.snapshot import RequiredName

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pgmgr.core.upgrade import UpgradeResult


def upgrade(
    name: RequiredName,
    version: Annotated[
        str, typer.Option("-v", "--version", help="The new major version (18).", show_default=False)
    ],
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="copy (default), link (fast, shares files) or clone "
            "(reflink; needs a filesystem that has it).",
        ),
    ] = "copy",
    check: Annotated[
        bool, typer.Option("--check", help="Only run pg_upgrade's checks; change nothing.")
    ] = False,
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation.")] = False,
    json: c.Json = False,
    quiet: c.Quiet = False,
) -> None:
    """Upgrade an instance to a new PostgreSQL major with pg_upgrade. The old state is
    kept as a snapshot ('pgmgr restore NAME pre-upgrade-OLD' rolls back); a running
    instance runs again afterwards, on the new version, with fresh statistics.

    Asks first unless --yes or --check; without a terminal, --yes is required.

    Example: pgmgr upgrade dev -v 18 --check
    """
    c.quiet(quiet, json)
    from pgmgr.core import sigguard, testhook
    from pgmgr.core import upgrade as up
    from pgmgr.core.errors import UsageError
    from pgmgr.core.locked import locked

    srv = c.resolve(name, None)
    old, new = up.prepare(srv, version, method)
    if not yes and not check:
        if not c.on_terminal():
            raise UsageError(
                f"refusing to upgrade '{srv.inst.name}' without --yes (no terminal to ask on)"
            )
        prompt = (f"Upgrade '{srv.inst.name}' from PostgreSQL {old.version} to {new.version}? "
                  "(the old state is kept as a snapshot)")  # fmt: skip
        if not c.confirm(prompt):
            ui.message("Nothing changed")
            raise typer.Exit(1)
    what = "Checking" if check else "Upgrading"
    with (
        sigguard.interruptible(),
        locked(srv),
        ui.spinner(f"{what} '{srv.inst.name}' {old.version} -> {new.version}:") as step,
    ):
        result = up.upgrade(srv, version, method=method, check=check, progress=step)
    testhook.pause("upgrade-done")  # upgraded, not yet said (tests: a signal now)
    from pgmgr.snapactions import note_left_stopped, standbys_of

    standbys = [] if check else standbys_of(srv)
    if json:
        ui.emit_json({**result.to_dict(), "standbys_not_following": standbys})
    else:
        _say(result, method, check, standbys)
    note_left_stopped(srv)


def _say(result: UpgradeResult, method: str, check: bool, standbys: list[str]) -> None:
    """The text of an upgrade (or of its --check)."""
    from pgmgr.snapactions import note_standbys

    if check:
        ui.message(f"'{result.name}' can be upgraded from {result.old_version} to "
                   f"{result.new_version} ({method}): pg_upgrade's checks passed")  # fmt: skip
        if result.rejected:
            ui.message(f"Settings PostgreSQL {result.new_version} rejects (the upgrade would "
                       "drop them): " + _rejected(result.to_dict()))  # fmt: skip
        _not_carried(result.not_carried, "would not be")
        _files(result, "would carry", "would not be")
        _slots(result.slots_dropped, "would drop")
        return
    down = f", downtime {ui.ms(result.downtime)}" if result.downtime is not None else ""
    ui.message(f"Upgraded '{result.name}' from PostgreSQL {result.old_version} to "
               f"{result.new_version} in {ui.ms(result.elapsed)}{down}")  # fmt: skip
    ui.message(f"Kept the old state as snapshot {result.snapshot!r}: "
               f"'pgmgr restore {result.name} {result.snapshot}' rolls back")  # fmt: skip
    if result.rejected:
        ui.message("Settings PostgreSQL " + result.new_version + " rejects (dropped): "
                   + _rejected(result.to_dict()))  # fmt: skip
    _not_carried(result.not_carried, "not")
    _files(result, "carried", "not")
    _slots(result.slots_dropped, "dropped")
    if result.analyzed:
        ui.message(f"Statistics rebuilt ({result.analyzed_with})")
    elif result.analyze_hint:
        ui.message("Statistics: " + result.analyze_hint)
    if result.extensions:
        import shlex

        names = ", ".join(f"{ext} ({db})" for db, ext in result.extensions)
        how = "ALTER EXTENSION ... UPDATE in each database updates them"
        if result.extensions_script:
            how = (f"'pgmgr psql {result.name} -- -f {shlex.quote(result.extensions_script)}'"
                   " updates them (pg_upgrade's script)")  # fmt: skip
        ui.message(f"Extensions still at their old version: {names}; {how}")
    note_standbys(result.name, standbys, "an upgrade")


def _rejected(doc: dict[str, Any]) -> str:
    """The rejected settings, each renamed one with its new name."""
    new = doc["renamed_settings"]
    return ", ".join(f"{n} (now {new[n]})" if n in new else n for n in doc["rejected_settings"])


def _slots(names: list[str], verb: str) -> None:
    if names:
        ui.message(f"Physical replication slots pg_upgrade does not carry over (the upgrade "
                   f"{verb} them; make them again for what uses them): "
                   + ", ".join(names))  # fmt: skip


def _files(result: UpgradeResult, carried: str, verb: str) -> None:
    """What of the data directory (besides PostgreSQL's own) the upgrade carries over."""
    files = result.files
    if files.files or files.includes:
        what = [", ".join(map(_shown, files.files))] if files.files else []
        if files.includes:
            lines = ", ".join(map(_shown, files.includes))
            what.append(f"the include lines of postgresql.conf ({lines})")
        ui.message(f"Files of the data directory the upgrade {carried} over: " + "; ".join(what))
    if files.dropped:
        ui.message(f"Files of the data directory {verb} carried over: "
                   + ", ".join(f"{_shown(n)} ({why})" for n, why in files.dropped))  # fmt: skip


def _shown(text: str) -> str:
    """A name (or include line) the server user chose, as visible text on one line: root
    runs the upgrade, and an escape sequence in a file name must not drive its terminal."""
    return ui.visible(text).replace("\t", "\\x09").replace("\n", "\\x0a")


def _not_carried(names: list[str], verb: str) -> None:
    if names:
        ui.message(f"Settings of postgresql.conf {verb} carried over (pgmgr keeps "
                   "postgresql.auto.conf and -c: set them again with ALTER SYSTEM or -c): "
                   + ", ".join(names))  # fmt: skip
