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
import hashlib
import json
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgmgr import __version__
from pgmgr.core import process, server, testhook, versions
from pgmgr.core.errors import DatabaseException
from pgmgr.core.instance import Server, unfinished
from pgmgr.core.ops import require_running

FORMAT = "pgmgr-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
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
    """:raises DatabaseException: ``path`` exists, or its parent does not."""
    path = Path(os.path.abspath(path))
    if os.path.lexists(path):
        raise DatabaseException(
            f"{path} already exists; {what} writes a new directory (nothing was created)",
            hint="choose a path that does not exist yet",
        )
    if not path.parent.is_dir():
        raise DatabaseException(f"{path.parent} does not exist (nothing was created)")
    return path


# --------------------------------------------------------------------------- export


def _facts(srv: Server) -> tuple[list[dict[str, Any]], str]:
    """Each database (name, encoding, collate, ctype, extensions) and the server version."""
    import psycopg

    dbs: list[dict[str, Any]] = []
    try:
        with psycopg.connect(srv.dsn(), connect_timeout=5) as conn:
            rows = conn.execute(DATABASES_SQL).fetchall()
            ver = conn.execute("SHOW server_version").fetchone()
        for name, enc, collate, ctype in rows:
            with psycopg.connect(srv.dsn(), dbname=name, connect_timeout=5) as conn:
                exts = conn.execute("SELECT extname, extversion FROM pg_extension ORDER BY 1")
                found = [{"name": e, "version": v} for e, v in exts.fetchall()]
            dbs.append(
                {"name": name, "encoding": enc, "collate": collate, "ctype": ctype,
                 "extensions": found}
            )  # fmt: skip
    except psycopg.Error as e:
        raise DatabaseException(f"cannot read {srv.inst.name}: {str(e).strip()}") from None
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
    from pgmgr.core import staging

    t0 = time.monotonic()
    if srv.inst.pending:  # a half-made instance would give a bundle that looks complete
        raise unfinished(srv.inst, "exported")
    require_running(srv)
    dest = _new_dir(dest, "export")
    check_root_safe(dest.parent, "export into")
    install = srv.installation()
    dbs, version = _facts(srv)
    _sweep_exports(dest)
    work = dest.parent / f"{_work_prefix(dest)}{os.getpid()}"
    with staging.signals_interrupt():
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
            shutil.rmtree(work, ignore_errors=True)
            raise
    size = sum(f["size"] for f in files.values())
    return ExportResult(dest, [d["name"] for d in dbs], size, time.monotonic() - t0)


def _work_prefix(dest: Path) -> str:
    return f".{dest.name[:200]}.pgmgr-export-"


def _sweep_exports(dest: Path) -> None:
    """Remove the work directories of exports to ``dest`` whose process is gone."""
    prefix = _work_prefix(dest)
    with contextlib.suppress(OSError):
        for entry in os.listdir(dest.parent):
            pid = entry[len(prefix) :]
            if entry.startswith(prefix) and pid.isdigit() and not process.is_alive(int(pid)):
                shutil.rmtree(dest.parent / entry, ignore_errors=True)


def _rename_new(work: Path, dest: Path) -> None:
    """``work`` -> ``dest``, never replacing what appeared at ``dest`` meanwhile.

    :raises DatabaseException: something did.
    """
    from pgmgr.core import branch

    fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        branch._rename_noreplace(fd, work.name, fd, dest.name)
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


def checksums(root: Path) -> dict[str, dict[str, Any]]:
    """relative path -> {sha256, size} of every file under ``root``."""
    found: dict[str, dict[str, Any]] = {}
    for top, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(top) / name
            rel = str(path.relative_to(root))
            digest, size = _sha256(path, rel)
            found[rel] = {"sha256": digest, "size": size}
    return found


def _sha256(path: Path, rel: str) -> tuple[str, int]:
    """Hash a regular file, opened without following a symlink or blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise DatabaseException(f"{rel} is missing") from None
    except OSError as e:
        raise DatabaseException(f"{rel} cannot be read ({e.strerror})") from None
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise DatabaseException(f"{rel} is not a regular file")
        h = hashlib.sha256()
        size = 0
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


# --------------------------------------------------------------------------- read, check


def read_manifest(bundle: Path) -> dict[str, Any]:
    """The manifest of ``bundle``, after checking every file it lists.

    :raises DatabaseException: not a bundle, incomplete, or damaged (says which file).
    """
    bundle = Path(os.path.abspath(bundle))
    if not bundle.is_dir():
        raise DatabaseException(f"{bundle} is not a directory (a bundle from 'pgmgr export')")
    try:
        data = json.loads(_read_manifest_file(bundle / MANIFEST))
    except FileNotFoundError:
        raise DatabaseException(
            f"{bundle} is not a complete bundle: it has no {MANIFEST} "
            "(an export that did not finish, or not a bundle); nothing was created"
        ) from None
    except (OSError, ValueError) as e:
        raise DatabaseException(f"{bundle}/{MANIFEST} is unreadable ({e})") from None
    try:
        check_shape(data)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DatabaseException(f"{bundle}/{MANIFEST} is not a valid manifest ({e})") from None
    files = data["files"]
    _check_entries(bundle)
    for rel, want in sorted(files.items()):
        if os.path.isabs(rel) or ".." in Path(rel).parts:
            raise DatabaseException(f"{bundle}/{MANIFEST} names a file outside it: {rel}")
        try:
            digest, _ = _sha256(bundle / rel, rel)
        except DatabaseException as e:
            raise DatabaseException(
                f"bundle {bundle} is damaged: {e}; nothing was created"
            ) from None
        if digest != want.get("sha256"):
            raise DatabaseException(
                f"bundle {bundle} is damaged: {rel} does not match its checksum; "
                "nothing was created"
            )
    return dict(data)


def _check_entries(bundle: Path) -> None:
    """Every entry under ``bundle`` is a directory or a regular file: pg_restore (as root,
    when pgmgr is) reads whatever files a dump directory holds, listed in the manifest or
    not, so a symlink there (``databases/1/3338.dat -> /root/secret``) put a file only
    root can read into a table of the new instance.

    :raises DatabaseException: a symlink, FIFO, socket or device.
    """
    for top, dirs, names in os.walk(bundle):
        for name in [*dirs, *names]:
            path = Path(top) / name
            mode = os.lstat(path).st_mode
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                kind = "a symlink" if stat.S_ISLNK(mode) else "not a regular file"
                raise DatabaseException(
                    f"bundle {bundle} is damaged: {path.relative_to(bundle)} is {kind}; "
                    "nothing was created"
                )


MANIFEST_LIMIT = 64 << 20  # bytes: a manifest lists files; more is not a manifest


def _read_manifest_file(path: Path) -> str:
    """The text of a regular file of at most :data:`MANIFEST_LIMIT` bytes, opened without
    blocking on a FIFO (a FIFO or a device named manifest.json hung the import).

    :raises FileNotFoundError: none. :raises OSError, ValueError: anything else wrong.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        data = f.read(MANIFEST_LIMIT + 1)
    if len(data) > MANIFEST_LIMIT:
        raise ValueError(f"larger than {MANIFEST_LIMIT >> 20} MB")
    return data.decode()


def _want(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


def _text(value: Any, what: str) -> None:
    _want(isinstance(value, str) and "\n" not in value and "\0" not in value,
          f"{what} is not a one-line string")  # fmt: skip


def check_shape(data: Any) -> None:
    """Every field import reads has the type it expects (a hand-edited or hostile manifest
    is one clear error, never a traceback halfway through the import).

    :raises ValueError: (or KeyError, TypeError) what is wrong.
    """
    _want(isinstance(data, dict), "not a JSON object")
    if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"not a {FORMAT} version {FORMAT_VERSION}")
    files = data["files"]
    _want(isinstance(files, dict), "'files' is not an object")
    for rel, want in files.items():
        _want(isinstance(want, dict) and isinstance(want.get("sha256"), str),
              f"file {rel!r} has no sha256")  # fmt: skip
    for key in ("superuser", "encoding", "globals"):
        _text(data[key], repr(key))
    _want(data.get("auth") in (None, *server.AUTH_METHODS), "'auth' is not an auth method")
    for key in ("major", "version"):
        _want(isinstance(data["source"][key], (str, int, float)), f"source {key!r}")
    _want(isinstance(data["settings"], dict), "'settings' is not an object")
    locale = data["locale"]
    _want(isinstance(locale, dict), "'locale' is not an object")
    _text(locale["collate"], "locale 'collate'")
    _text(locale["ctype"], "locale 'ctype'")
    _want(isinstance(data["databases"], list), "'databases' is not a list")
    for db in data["databases"]:
        _want(isinstance(db, dict), "a database is not an object")
        _text(db["name"], "a database name")
        _text(db["dir"], f"database {db['name']!r}'s dir")
        if f"{db['dir']}/toc.dat" not in files:
            raise ValueError(f"database {db['name']!r} has no archive")
        _want(isinstance(db["extensions"], list), f"database {db['name']!r}'s extensions")
        for ext in db["extensions"]:
            _want(isinstance(ext, dict), f"database {db['name']!r}: an extension")
            _text(ext["name"], "an extension name")
            _text(ext["version"], "an extension version")
    if data["globals"] not in files:
        raise ValueError("no globals file")


def available_extensions(install: versions.Installation) -> set[str] | None:
    """Extensions the binaries can create (their ``.control`` files); None if unknown."""
    candidates = []
    with contextlib.suppress(Exception):
        out = server.run([str(install.bin("pg_config")), "--sharedir"], timeout=30).stdout
        candidates.append(Path(out.strip()) / "extension")
    root = install.bindir.parent
    candidates += [
        root / "share" / "postgresql" / "extension",
        root / "share" / "extension",
        Path(f"/usr/share/postgresql/{install.major}/extension"),
    ]
    for place in candidates:
        with contextlib.suppress(OSError):
            return {p.name[: -len(".control")] for p in place.glob("*.control")} or None
    return None


def missing_extensions(install: versions.Installation, manifest: dict[str, Any]) -> list[str]:
    """``name version (database db)`` for each extension the target binaries lack."""
    have = available_extensions(install)
    if have is None:
        return []
    return [
        f"{e['name']} {e['version']} (database {db['name']})"
        for db in manifest["databases"]
        for e in db["extensions"]
        if e["name"] not in have
    ]
