"""Portable bundles: ``pgmgr export NAME DIR`` and ``pgmgr import DIR -d NEWDIR``.

A bundle is a directory anyone with PostgreSQL's own tools can read:

    manifest.json        what it holds (written last: no manifest, no bundle; and the
                         whole bundle is built under a hidden name, renamed last)
    globals.sql          pg_dumpall --globals-only (roles, tablespaces), without passwords
                         unless asked for
    databases/N/         one pg_dump directory-format archive per database

The manifest records the source version, encoding and locale, the settings pgmgr keeps, each
database with its extensions (and versions), and a SHA-256 of every file, so an incomplete or
damaged bundle is refused before anything is created. Import uses the *target* major's
``pg_restore`` and ``psql`` (they read archives of older majors), so 15 -> 18 works.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgmgr import __version__
from pgmgr.core import dirpath, numtext, ownconn, process, rmtree, server, testhook, versions
from pgmgr.core.bundlecheck import FORMAT, FORMAT_VERSION, MANIFEST, checksums
from pgmgr.core.errors import DatabaseException, doing
from pgmgr.core.instance import Server, unfinished
from pgmgr.core.ops import require_running

GLOBALS = "globals.sql"

DATABASES_SQL = """
SELECT datname, pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database
WHERE datallowconn AND NOT datistemplate ORDER BY datname = 'postgres' DESC, datname
"""


@dataclass
class ExportResult:
    """What ``pgmgr export`` wrote."""

    path: Path
    databases: list[str]
    bytes: int
    elapsed: float


@dataclass
class ImportResult:
    """What ``pgmgr import`` made."""

    server: Server
    source_version: str
    databases: list[str]
    elapsed: float
    #: the bundle's settings it did not apply (:func:`pgmgr.core.server.portable_settings`)
    dropped_settings: list[str]
    #: the bundle's authentication method when it was not applied (``trust``: see
    #: :func:`pgmgr.core.importer._auth`), else None
    dropped_auth: str | None = None


def client_env(srv: Server, dbname: str = "postgres") -> dict[str, str]:
    """libpq variables for a superuser session (never a password on a command line)."""
    p = srv.conninfo()
    env = {"PGHOST": p["host"], "PGPORT": p["port"], "PGUSER": p["user"], "PGDATABASE": dbname}
    if srv.inst.password:
        env["PGPASSWORD"] = srv.inst.password
    return env


def check_root_safe(path: Path, what: str) -> None:
    """As root, refuse to read or write a bundle where another user could swap a symlink in
    between the checks and the dump tools (which resolve the path again).

    :raises DatabaseException: root, and someone else can write ``path`` or an ancestor.
    """
    from pgmgr.core import privileges, userfs

    if privileges.is_root() and userfs.others_can_write(path):
        raise DatabaseException(
            f"refusing to {what} {path} as root: another user can write to it or to a "
            "directory above it (nothing was created)",
            hint="use a directory only root can write, or run pgmgr as that user",
        )


def _new_dir(path: Path, what: str) -> Path:
    """:raises DatabaseException: ``path`` exists, or its parent does not.
    :raises UsageError: it holds a line break (pg_dumpall refused it halfway, in its words).
    """
    if "\n" in str(path) or "\r" in str(path):
        from pgmgr.core.errors import UsageError

        raise UsageError(f"invalid path {str(path)!r}: it holds a line break")
    path = Path(os.path.abspath(path))
    if os.path.lexists(path):
        raise DatabaseException(
            f"{path} already exists; {what} writes a new directory (nothing was created)",
            hint="choose a path that does not exist yet",
        )
    dirpath.check(path, "create", parents_only=True)
    if not path.parent.is_dir():
        raise DatabaseException(f"{path.parent} does not exist (nothing was created)")
    return path


# --------------------------------------------------------------------------- export


def _facts(srv: Server) -> tuple[list[dict[str, Any]], str]:
    """Each database (name, encoding, collate, ctype, extensions) and the server version."""
    import psycopg

    dbs: list[dict[str, Any]] = []
    try:
        with psycopg.connect(ownconn.dsn(srv), connect_timeout=5) as conn:
            rows = conn.execute(DATABASES_SQL).fetchall()
            ver = conn.execute("SHOW server_version").fetchone()
        for name, enc, collate, ctype in rows:
            with psycopg.connect(ownconn.dsn(srv), dbname=name, connect_timeout=5) as conn:
                exts = conn.execute("SELECT extname, extversion FROM pg_extension ORDER BY 1")
                found = [{"name": e, "version": v} for e, v in exts.fetchall()]
            dbs.append(
                {"name": name, "encoding": enc, "collate": collate, "ctype": ctype,
                 "extensions": found}
            )  # fmt: skip
    except psycopg.Error as e:
        from pgmgr.core.readyfirst import cannot_connect

        raise DatabaseException(cannot_connect(srv, e, "read")) from None
    return dbs, str(ver[0]) if ver else srv.inst.version


def export(srv: Server, dest: Path, *, with_passwords: bool = False) -> ExportResult:
    """Write a bundle of the running ``srv`` into the new directory ``dest``.

    It is built in a hidden work directory beside ``dest`` (``.NAME.pgmgr-export-PID``),
    flushed to disk, and renamed to ``dest`` last: an export killed at any moment leaves no
    ``dest`` at all (so a retry is not told it exists, and nothing half-written is ever
    taken for a bundle), and the next export to ``dest`` removes that work directory.

    :raises NotRunning: not running. :raises DatabaseException: ``dest`` exists; a dump
        failed (nothing is left).
    """
    from pgmgr.core import sigguard

    t0 = time.monotonic()
    from pgmgr.core.readyfirst import ready_unlocked

    if srv.inst.pending:  # a half-made instance would give a bundle that looks complete
        raise unfinished(srv.inst, "exported")
    # a server another process starts is waited for (libpq said "starting up")
    ready_unlocked(srv, "export", f"export '{srv.inst.name}'")
    require_running(srv)
    dest = _new_dir(dest, "export")
    check_root_safe(dest.parent, "export into")
    install = srv.installation()
    dbs, version = _facts(srv)
    _sweep_exports(dest)
    work = dest.parent / f"{_work_prefix(dest)}{os.getpid()}"
    with sigguard.interruptible():
        with doing("create the bundle", dest):  # not the work name: it said only that
            work.mkdir(mode=0o700)
        try:
            files = _dump(srv, install, work, dbs, with_passwords)
            manifest = _manifest(srv, install, version, dbs, files, with_passwords)
            _write_synced(work / MANIFEST, json.dumps(manifest, indent=2) + "\n")
            from pgmgr.core import copy

            copy.sync_fs(work)  # every file on disk before the bundle has its name
            testhook.pause("export-written")
            _rename_new(work, dest)
        except BaseException:
            rmtree.remove(work, ignore_errors=True)
            raise
    size = sum(f["size"] for f in files.values())
    return ExportResult(dest, [d["name"] for d in dbs], size, time.monotonic() - t0)


def _work_prefix(dest: Path) -> str:
    return f".{dest.name[:200]}.pgmgr-export-"


def _sweep_exports(dest: Path) -> None:
    """Remove the work directories of exports to ``dest`` whose process is gone: real
    directories of ours (anyone who can write beside ``dest`` may choose such a name; as
    root, :func:`check_root_safe` leaves only root), never through a symlink."""
    from pgmgr.core import userfs

    prefix = _work_prefix(dest)
    with contextlib.suppress(OSError, DatabaseException), userfs.opened_dir(dest.parent) as pfd:
        for entry in os.listdir(pfd):
            pid = numtext.whole(entry[len(prefix) :])
            if entry.startswith(prefix) and pid is not None and not process.is_alive(pid):
                with contextlib.suppress(OSError):
                    st = os.lstat(entry, dir_fd=pfd)
                    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
                        userfs.rmtree_at(pfd, entry)


def _rename_new(work: Path, dest: Path) -> None:
    """``work`` -> ``dest``, never replacing what appeared at ``dest`` meanwhile.

    :raises DatabaseException: something did.
    """
    from pgmgr.core import branchplace

    fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        branchplace.rename_noreplace(fd, work.name, fd, dest.name)
        os.fsync(fd)
    except FileExistsError:
        raise DatabaseException(
            f"{dest} appeared while the export ran; nothing was written there"
        ) from None
    finally:
        os.close(fd)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "x") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _dump(
    srv: Server,
    install: versions.Installation,
    work: Path,
    dbs: list[dict[str, Any]],
    with_passwords: bool,
) -> dict[str, dict[str, Any]]:
    """globals.sql and one pg_dump directory per database into ``work``; their checksums."""
    argv = [str(install.bin("pg_dumpall")), "--globals-only", "-f", str(work / GLOBALS)]
    if not with_passwords:
        argv.append("--no-role-passwords")
    server.run(argv, env=client_env(srv), timeout=3600, die_with_parent=True)
    (work / "databases").mkdir(mode=0o700)
    for i, db in enumerate(dbs, 1):
        db["dir"] = f"databases/{i}"
        argv = [str(install.bin("pg_dump")), "-Fd", "-f", str(work / db["dir"])]
        env = client_env(srv, db["name"])
        server.run(argv, env=env, timeout=24 * 3600, die_with_parent=True)
        testhook.pause("export-dumped-db")
    return checksums(work)


def _manifest(
    srv: Server,
    install: versions.Installation,
    version: str,
    dbs: list[dict[str, Any]],
    files: dict[str, dict[str, Any]],
    with_passwords: bool,
) -> dict[str, Any]:
    first = dbs[0] if dbs else {"encoding": "UTF8", "collate": "C", "ctype": "C"}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pgmgr_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {
            "name": srv.inst.name,
            "version": srv.inst.version,
            "major": install.major,
            "server_version": version,
        },
        "encoding": first["encoding"],
        "locale": {"collate": first["collate"], "ctype": first["ctype"]},
        "superuser": srv.inst.superuser,
        "auth": srv.inst.auth,
        "settings": dict(srv.inst.settings),
        "with_passwords": with_passwords,
        "globals": GLOBALS,
        "databases": dbs,
        "files": files,
    }
