"""Which extensions an installation's binaries provide, and which a running server has.

An installation provides what its ``share/extension/*.control`` files describe (name,
default version, comment). The share directory is found without a subprocess where the
layout is known: ``<prefix>/share`` (source builds, the embedded wheel's ``pginstall``),
``<prefix>/share/postgresql``, ``/usr/share/postgresql/<major>`` (Debian/PGDG packages);
else ``pg_config --sharedir`` next to the binaries says.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgmgr.core.instance import Server
    from pgmgr.core.versions import Installation

_LINE_RE = re.compile(r"^\s*([A-Za-z_]+)\s*=\s*(.*?)\s*$")
#: Debian/PGDG package suffixes that differ from the extension's name.
DEBIAN_PACKAGES = {
    "vector": "pgvector",
    "postgis": "postgis-3",
    "pg_cron": "cron",
    "pg_partman": "partman",
    "pg_repack": "repack",
    "pg_squeeze": "squeeze",
    "hypopg": "hypopg",
    "pgaudit": "pgaudit",
    "pg_hint_plan": "pg-hint-plan",
    "plpython3u": "plpython3",
    "plperl": "plperl",
    "pltcl": "pltcl",
}


@dataclass
class Extension:
    """An extension the binaries provide, and where it is installed."""

    name: str
    default_version: str | None
    comment: str | None
    installed: dict[str, str] = field(default_factory=dict)  # database -> version


@dataclass
class Elsewhere:
    """An extension this installation lacks but another one has."""

    name: str
    version: str | None
    installation: str  # "18.6 embedded"


@dataclass
class Report:
    """The extensions of one installation (and instance)."""

    instance: str | None
    version: str
    bindir: str
    sharedir: str | None
    running: bool
    extensions: list[Extension]
    elsewhere: list[Elsewhere] = field(default_factory=list)
    hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_control(text: str) -> dict[str, str]:
    """The ``key = value`` lines of a control file (quotes removed, comments skipped)."""
    out = {}
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        m = _LINE_RE.match(line)
        if m:
            value = m.group(2)
            if len(value) >= 2 and value[0] == value[-1] == "'":
                value = value[1:-1].replace("''", "'")
            out[m.group(1)] = value
    return out


def sharedir(install: Installation) -> Path | None:
    """The install's share directory (the one holding ``extension/``), or None."""
    prefix = install.bindir.parent
    candidates = [
        prefix / "share",
        prefix / "share" / "postgresql",
        Path("/usr/share/postgresql") / install.major,
    ]
    for cand in candidates:
        if (cand / "extension").is_dir():
            return cand
    pg_config = install.bin("pg_config")
    if pg_config.is_file():
        from pgmgr.core import binout

        out = binout.cached_output([str(pg_config), "--sharedir"])
        if out and (Path(out) / "extension").is_dir():
            return Path(out)
    return None


def available(install: Installation) -> tuple[Path | None, list[Extension]]:
    """The extensions the install provides, by name."""
    share = sharedir(install)
    if share is None:
        return None, []
    found = []
    for control in sorted((share / "extension").glob("*.control")):
        try:
            meta = parse_control(control.read_text(errors="replace")[:65536])
        except OSError:
            continue
        found.append(Extension(control.stem, meta.get("default_version"), meta.get("comment")))
    return share, found


def installed(srv: Server) -> dict[str, dict[str, str]]:
    """``extension -> {database: version}`` over every database that takes connections
    (template databases left out: every extension of template1 is in each new database).

    :raises WorkerError: cannot connect.
    """
    import psycopg  # only here: it costs ~120 ms to import

    from pgmgr.core import ownconn
    from pgmgr.core.errors import WorkerError

    dsn = ownconn.dsn(srv)
    out: dict[str, dict[str, str]] = {}
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            dbs = [
                r[0]
                for r in conn.execute(
                    "SELECT datname FROM pg_database"
                    " WHERE datallowconn AND NOT datistemplate ORDER BY datname"
                )
            ]
        for db in dbs:
            with psycopg.connect(dsn, dbname=db, connect_timeout=5) as conn:
                for name, version in conn.execute("SELECT extname, extversion FROM pg_extension"):
                    out.setdefault(name, {})[db] = version
    except psycopg.Error as e:
        from pgmgr.core.readyfirst import cannot_connect

        raise WorkerError(cannot_connect(srv, e)) from None
    return out


def elsewhere(
    install: Installation, have: Sequence[Extension], others: Sequence[Installation]
) -> list[Elsewhere]:
    """Extensions other installations provide and this one does not (highest first)."""
    names = {e.name for e in have}
    found: dict[str, Elsewhere] = {}
    for other in others:
        if other.bindir == install.bindir:
            continue
        for ext in available(other)[1]:
            if ext.name not in names and ext.name not in found:
                where = f"{other.version} {other.source}"
                found[ext.name] = Elsewhere(ext.name, ext.default_version, where)
    return sorted(found.values(), key=lambda e: e.name)


def install_hint(install: Installation, missing: Sequence[Elsewhere]) -> str | None:
    """How to get what is missing: a package name where it is known (Debian/PGDG)."""
    if not missing:
        return None
    packaged = install.source in ("debian", "pgdg") or str(install.bindir).startswith(
        "/usr/lib/postgresql/"
    )
    if not packaged:
        return (
            "use an installation that has it (see 'pgmgr versions'), or build it with its pg_config"
        )
    known = [e.name for e in missing if e.name in DEBIAN_PACKAGES]
    search = f"apt-cache search postgresql-{install.major}-"
    if not known:
        return f"look for a package: {search}"
    pkgs = " ".join(f"postgresql-{install.major}-{DEBIAN_PACKAGES[n]}" for n in known)
    return f"apt-get install {pkgs} (for {', '.join(known)}); others: {search}"


def report(
    install: Installation, srv: Server | None = None, others: Sequence[Installation] = ()
) -> Report:
    """What ``install`` provides, what ``srv`` (if running) has installed, what is missing."""
    from pgmgr.core.readyfirst import ready_unlocked

    share, exts = available(install)
    # one another process starts: once it is ready (libpq said "starting up")
    what = f"list the extensions of '{srv.inst.name}'" if srv is not None else ""
    running = srv is not None and ready_unlocked(srv, "extensions", what) is not None
    if running:
        assert srv is not None
        where = installed(srv)
        for ext in exts:
            ext.installed = where.get(ext.name, {})
    missing = elsewhere(install, exts, others)
    return Report(
        srv.inst.name if srv is not None else None,
        install.version,
        str(install.bindir),
        str(share) if share else None,
        running,
        exts,
        missing,
        install_hint(install, missing),
    )
