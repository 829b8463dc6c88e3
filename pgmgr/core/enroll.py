"""Finding or making the record for a data directory (:meth:`Server.for_datadir
<pgmgr.core.instance.Server.for_datadir>`): the registered instance of the directory, or a
new record named after it, with the binaries its ``PG_VERSION`` pins; and those binaries for
an existing record (:meth:`Server.installation <pgmgr.core.instance.Server.installation>`).

Loaded by ``init``, ``start`` and the like; ``pgmgr status`` of a registered instance loads
it only to report the version of a directory switched under another registration.
"""

from __future__ import annotations

import os
from pathlib import Path

from pgmgr.core import identity, registry, server, versions
from pgmgr.core.errors import DatabaseException, UsageError
from pgmgr.core.paths import check_path_text
from pgmgr.core.registry import Instance

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pgmgr.core.instance import Server


def for_datadir(
    cls: type[Server],
    datadir: Path,
    *,
    name: str | None = None,
    version: str | None = None,
    register: bool = True,
) -> Server:
    """The registered instance of ``datadir``, or a new record (not yet saved), as a
    ``cls``.

    A data directory's ``PG_VERSION`` pins the major version.

    :raises DatabaseException: the version asked for is not the data directory's.
    """
    datadir = check_path_text(Path(os.path.abspath(datadir)), "data directory")
    real = identity.check_links(datadir)
    inst = None
    if register:
        inst = registry.find_by_datadir(datadir)
        if inst is None and real != str(datadir):
            inst = registered_at(datadir)
    if inst is not None:
        srv = cls(inst, register=register)
        if version:
            srv.installation(version)  # refuses a different major
        return srv
    install = pick_installation(datadir, version)
    name, base = _new_name(name, real, register)
    inst = Instance(
        name=name,
        datadir=real,
        major=install.major,
        version=install.version,
        bindir=str(install.bindir),
    )
    return cls(inst, register=register, new=True, name_base=base)


def _new_name(name: str | None, real: str, register: bool) -> tuple[str, str | None]:
    """The name of a new record for the data directory at ``real`` and the base a free
    name is derived from when it was generated (None when ``name`` was given).

    :raises UsageError: ``name`` is invalid, or registered for another data directory.
    """
    if name:
        registry.check_name(name)
        if register and name in registry.names():
            other = registry.load(name)
            if other.datadir != real:
                raise UsageError(
                    f"instance name {name!r} is already used for {other.datadir}",
                    hint="choose another --name",
                )
        return name, None
    base = Path(real).name
    return (registry.unique_name(base) if register else base), base


def registered_at(datadir: Path) -> Instance | None:
    """The record pinned to the very directory ``datadir`` leads to through symlinks
    (trusted ones only: :func:`identity.probe`), or None. As root, a path through a link to
    a directory the server user can write is compared as written (see
    :func:`registry.canonical`), so 'init -d LINK --name X' of a registered directory said
    "registered" for an X it never made; by the directory itself, opened once, no swap
    between a check and a use can point it at another instance."""
    try:
        now = identity.probe(datadir)
    except (OSError, DatabaseException):
        return None
    for inst in registry.load_all()[0]:
        if (inst.dev, inst.ino) == (now.dev, now.ino) and not inst.pending:
            return inst
    return None


def installation(srv: Server, requested: str | None = None) -> versions.Installation:
    """The binaries for this instance: the recorded ones while they still exist and
    match, else a fresh selection of the same major.

    :raises DatabaseException: ``requested`` names another major than the data dir's, or
        its PG_VERSION names none (:class:`server.BadPgVersion`).
    """
    on_disk = server.datadir_major(srv.datadir)
    major = on_disk or srv.inst.major
    if requested:
        requested = check_major(srv.datadir, major, requested)
    recorded = Path(srv.inst.bindir) / "postgres"
    if not requested and recorded.is_file() and srv.inst.major == major:
        return versions.Installation(
            srv.inst.major, srv.inst.version, Path(srv.inst.bindir), "record"
        )
    if requested:
        origin = "--version"
    else:
        origin = (
            f"the PG_VERSION of {srv.datadir}" if on_disk else f"the record of '{srv.inst.name}'"
        )
    install = versions.select(requested or major, origin=origin).installation
    srv.inst.major, srv.inst.version, srv.inst.bindir = (
        install.major,
        install.version,
        str(install.bindir),
    )
    return install


def pick_installation(datadir: Path, version: str | None) -> versions.Installation:
    """The seed's version rules, with an existing data dir's PG_VERSION pinning the major."""
    on_disk = server.datadir_major(datadir) if datadir.is_dir() else None
    if on_disk and version:
        version = check_major(datadir, on_disk, version)
    if on_disk and not version:
        return versions.select(on_disk, origin=f"the PG_VERSION of {datadir}").installation
    return versions.select(version).installation


def check_major(datadir: Path, major: str, requested: str) -> str:
    """``requested`` (validated) if it names the data directory's ``major`` version.

    :raises UsageError: not a version. :raises DatabaseException: another major.
    """
    requested = versions.check_version_string(requested)
    if versions.major_of(requested) != major and requested != major:
        raise DatabaseException(
            f"data directory {datadir} is PostgreSQL {major}; "
            f"it cannot be run with version {requested}",
            hint=f"leave out --version, or use -v {major}",
        )
    return requested
