"""Reading a bundle back: its manifest, the checksum of every file, the shape of every field
import reads, and the extensions the target binaries lack. Everything here is checked
before anything is created (:mod:`pgmgr.core.importer`); :mod:`pgmgr.core.bundle` writes
bundles, with :func:`checksums` from here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from pgmgr.core import server, versions
from pgmgr.core.errors import DatabaseException, UsageError

FORMAT = "pgmgr-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


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
    except RecursionError:  # "[[[[...": not a ValueError
        raise DatabaseException(f"{bundle}/{MANIFEST} is unreadable (nested too deep)") from None
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

    As root, an entry another user owns or can write is refused too (as
    :func:`~pgmgr.core.bundle.check_root_safe` refuses the bundle's own directory): its
    owner swapped a file for a symlink after this check (``sub/g.sql -> /root/secret``),
    and root read the file it pointed to into the new instance.

    :raises DatabaseException: a symlink, FIFO, socket or device; as root, an entry
        another user can change.
    """
    from pgmgr.core import privileges, userfs

    root = privileges.is_root()
    for top, dirs, names in os.walk(bundle):
        for name in [*dirs, *names]:
            path = Path(top) / name
            st = os.lstat(path)
            mode = st.st_mode
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                kind = "a symlink" if stat.S_ISLNK(mode) else "not a regular file"
                raise DatabaseException(
                    f"bundle {bundle} is damaged: {path.relative_to(bundle)} is {kind}; "
                    "nothing was created"
                )
            if root and userfs._others_write(st, os.geteuid()):
                raise DatabaseException(
                    f"refusing to import from {bundle} as root: another user can write "
                    f"{path.relative_to(bundle)} in it (nothing was created)",
                    hint="make root own the whole bundle (chown -R root:root), "
                    "or run pgmgr as that user",
                )


MANIFEST_LIMIT = 64 << 20  # bytes: a manifest lists files; more is not a manifest


def _read_manifest_file(path: Path) -> str:
    """The text of a regular file of at most :data:`MANIFEST_LIMIT` bytes, opened without
    blocking on a FIFO (a FIFO or a device named manifest.json hung the import).

    :raises FileNotFoundError: none. :raises OSError, ValueError: anything else wrong.
    """
    from pgmgr.core.regular import NotRegular, open_regular

    try:
        f = open_regular(path)
    except NotRegular:
        raise ValueError("not a regular file") from None
    with f:
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
    # initdb -U '' said only "FATAL: a name must follow the "/" sign at character 72"
    _want(data["superuser"] != "", "'superuser' is empty")
    _want(data.get("auth") in (None, *server.AUTH_METHODS), "'auth' is not an auth method")
    for key in ("major", "version"):
        _want(isinstance(data["source"][key], (str, int, float)), f"source {key!r}")
    try:  # else the import said "invalid --version 'abc'", which the user did not give
        versions.check_version_string(str(data["source"]["major"]), "source 'major'")
    except UsageError as e:
        raise ValueError(str(e)) from None
    _want(isinstance(data["settings"], dict), "'settings' is not an object")
    locale = data["locale"]
    _want(isinstance(locale, dict), "'locale' is not an object")
    _text(locale["collate"], "locale 'collate'")
    _text(locale["ctype"], "locale 'ctype'")
    _want(isinstance(data["databases"], list), "'databases' is not a list")
    for db in data["databases"]:
        _want(isinstance(db, dict), "a database is not an object")
        # A line break is a valid database name (PostgreSQL and pg_restore --create take
        # it, and export wrote it): refused, its own export could not be imported.
        _want(isinstance(db["name"], str) and "\0" not in db["name"], "a database name")
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


def _one_line(name: str) -> str:
    """``name`` for a one-line message: as it is, or quoted with its line breaks escaped."""
    return name if "\n" not in name and "\r" not in name else repr(name)


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
        f"{e['name']} {e['version']} (database {_one_line(db['name'])})"
        for db in manifest["databases"]
        for e in db["extensions"]
        if e["name"] not in have
    ]
