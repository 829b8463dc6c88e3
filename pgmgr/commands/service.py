"""``pgmgr service install | show | remove``: a systemd unit that supervises an instance."""

from __future__ import annotations

from typing import Annotated

import typer

from pgmgr import ui
from pgmgr.commands import _common as c

app = typer.Typer(
    name="service",
    help="Run an instance under systemd (Type=notify, restarted on failure).\n\n"
    "Example: pgmgr service install dev --user",
    no_args_is_help=True,
)

InstanceName = Annotated[
    str,
    typer.Argument(help="Instance name.", autocompletion=c.complete_names, show_default=False),
]
System = Annotated[
    bool,
    typer.Option("--system", help="A system unit (/etc/systemd/system; default as root)."),
]
UserMode = Annotated[
    bool,
    typer.Option("--user", help="A user unit (~/.config/systemd/user; default otherwise)."),
]


def _mode(system: bool, user: bool) -> str | None:
    from pgmgr.core.errors import UsageError

    if system and user:
        raise UsageError("give --system or --user, not both")
    return "system" if system else "user" if user else None


@app.command("install")
def install(
    name: InstanceName,
    system: System = False,
    user: UserMode = False,
    enable: Annotated[
        bool, typer.Option("--enable", help="Also enable and start it (systemd must run).")
    ] = False,
    json: c.Json = False,
    quiet: c.Quiet = False,
) -> None:
    """Write a systemd unit running 'pgmgr start NAME --foreground'.

    Example: pgmgr service install web --user --enable
    """
    c.quiet(quiet, json)
    from pgmgr.core import service

    res = service.install(c.resolve(name, None), _mode(system, user), enable=enable)
    if json:
        ui.emit_json(
            {
                "unit": res.unit.path.name,
                "path": str(res.unit.path),
                "mode": res.unit.mode,
                "user": res.unit.run_as,
                "replaced": res.replaced,
                "systemd_running": res.systemd_running,
                "enabled": res.enabled,
                "next_steps": res.next_steps,
            }
        )
        return
    verb = "Replaced" if res.replaced else "Wrote"
    ui.message(f"{verb} {res.unit.path}")
    if res.enabled:
        ui.message(f"Enabled and started {res.unit.path.name}")
    for step in res.next_steps:
        ui.message("  " + step)


@app.command("show")
def show(name: InstanceName, system: System = False, user: UserMode = False) -> None:
    """Print the installed unit of NAME, or the one 'install' would write.

    Example: pgmgr service show web
    """
    from pgmgr.core import service
    from pgmgr.core.errors import InstanceNotFound

    try:
        srv = c.resolve(name, None)
    except InstanceNotFound:
        srv = None
    unit, installed = service.show(srv, name, _mode(system, user))
    where = f"installed: {unit.path}" if installed else f"not installed (would be {unit.path})"
    if unit.whose is not None:
        where += f", the unit of {unit.whose}"
    ui.message(f"# {where}")
    ui.emit(unit.text.rstrip("\n"))


@app.command("remove")
def remove(
    name: InstanceName, system: System = False, user: UserMode = False, quiet: c.Quiet = False
) -> None:
    """Stop, disable and delete the unit of NAME (the instance itself stays).

    Example: pgmgr service remove web
    """
    c.quiet(quiet)
    from pgmgr.core import service

    for path in service.remove(name, _mode(system, user)):
        ui.message(f"Removed {path}")
