"""``pgmgr extensions [NAME]``: the extensions an instance's binaries provide and has."""

from __future__ import annotations

from pathlib import Path

from pgmgr import ui
from pgmgr.commands import _common as c

COLUMNS = [
    ui.Col("extension", key=True),
    ui.Col("version"),
    ui.Col("installed in"),
    ui.Col("comment", wrap=True),
]


def installed_text(where: dict[str, str]) -> str:
    """``{'app': '0.8.0', 'postgres': '0.8.0'} -> '0.8.0: app, postgres'``."""
    if not where:
        return "-"
    by_version: dict[str, list[str]] = {}
    for db, version in sorted(where.items()):
        by_version.setdefault(version, []).append(db)
    return "; ".join(f"{v}: {', '.join(dbs)}" for v, dbs in by_version.items())


def extensions(
    name: c.Name = None,
    datadir: c.DataDir = None,
    version: c.Version = None,
    json: c.Json = False,
) -> None:
    """List the extensions the PostgreSQL binaries provide and, when the server runs,
    which are installed in which database.

    Without NAME: the binaries of the default version (or -v). Extensions that another
    installation has and this one lacks are named, with a hint on how to get them.

    Example: pgmgr extensions dev
    """
    from pgmgr.core import extensions as core
    from pgmgr.core import versions

    installs = versions.discover()
    srv = None
    if name or datadir:
        if version:
            from pgmgr.core.errors import UsageError

            raise UsageError("give an instance or -v VERSION, not both")
        srv = c.resolve(name, Path(datadir) if datadir else None)
        recorded = srv.installation()
        install = next((i for i in installs if i.bindir == recorded.bindir), recorded)
    else:
        install = versions.select(version, installs=installs).installation
    report = core.report(install, srv, installs)
    if json:
        ui.emit_json(report.to_dict())
        return
    rows = [
        [e.name, e.default_version or "?", installed_text(e.installed), e.comment or ""]
        for e in report.extensions
    ]
    if rows:
        ui.table(COLUMNS, rows)
    who = (
        f"'{report.instance}' (PostgreSQL {report.version})"
        if srv
        else f"PostgreSQL {report.version}"
    )
    if not report.extensions:
        ui.message(f"No extensions found for {who} in {install.bindir}")
    elif srv is not None and not report.running:
        ui.message(f"'{report.instance}' is not running: start it to see what is installed")
    if report.elsewhere:
        names = ", ".join(f"{e.name} ({e.installation})" for e in report.elsewhere)
        ui.message(f"Not with {who}, but with another installation: {names}")
        if report.hint:
            ui.message(f"Hint: {report.hint}")
