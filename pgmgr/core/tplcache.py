"""``pgmgr cache list | clear`` and pruning: the templates of every server user.

Root's part of the cache (``<templates>``: locks and ``<key>.json``) is root's own; each
``u<uid>`` belongs to its user, so everything inside is reached through directory fds opened
with ``O_NOFOLLOW`` (sizes by ``fwalk``): a symlink a user planted there is never followed.
A removal in it runs as that user (:func:`pgmgr.core.ownerrm.as_owner`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pgmgr.core import linked, ownerrm
from pgmgr.core.errors import doing
from pgmgr.core.template import (
    LOCK_TIMEOUT,
    SPARE,
    locked,
    templates_dir,
)
from pgmgr.core.templatekey import locale_fingerprint

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_USER_DIR = re.compile(r"^u\d+$")


def _user_dirs(rfd: int) -> Iterator[tuple[str, int]]:
    """(name, fd) of each ``u<uid>`` directory (closed when the caller moves on)."""
    for name in sorted(os.listdir(rfd)):
        if not _USER_DIR.match(name):
            continue
        try:
            fd = os.open(name, _DIR, dir_fd=rfd)
        except OSError:
            continue
        try:
            yield name, fd
        finally:
            os.close(fd)


def _is_dir_at(fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(name, dir_fd=fd).st_mode)
    except OSError:
        return False


def _size_at(fd: int, name: str) -> int:
    from pgmgr.core.copy import tree_size

    try:
        sub = os.open(name, _DIR, dir_fd=fd)
    except OSError:
        return 0
    try:
        return tree_size(sub)
    finally:
        os.close(sub)


def _spare_ready_at(fd: int, name: str) -> bool:
    if not _is_dir_at(fd, name):
        return False
    try:
        sub = os.open(name, _DIR, dir_fd=fd)
    except OSError:
        return False
    try:
        return (
            stat.S_ISREG(os.lstat("PG_VERSION", dir_fd=sub).st_mode)
            and _is_dir_at(sub, "global")
            and stat.S_ISREG(os.lstat("global/pg_control", dir_fd=sub).st_mode)
        )
    except OSError:
        return False
    finally:
        os.close(sub)


def list_templates() -> list[dict[str, Any]]:
    """Every template in the cache: its key, path, size, whether it is stale (binaries
    changed or gone, their ICU changed, or the installed locales changed) and what it was
    built from."""
    root = templates_dir()
    try:
        rfd = os.open(root, _DIR)
    except OSError:
        return []
    found = []
    locales = locale_fingerprint()
    try:
        for uname, ufd in _user_dirs(rfd):
            for name in sorted(os.listdir(ufd)):
                if name.startswith(".") or name.endswith(SPARE) or not _is_dir_at(ufd, name):
                    continue
                try:
                    meta = json.loads((root / f"{name}.json").read_text())
                except (OSError, ValueError):
                    meta = {}
                stale = not _binaries_match(meta) or meta.get("locales") != locales
                spare = _spare_ready_at(ufd, f"{name}{SPARE}")
                found.append(
                    {"key": name, "path": str(root / uname / name), "bytes": _size_at(ufd, name)}
                    | {"stale": stale, **meta, "spare": spare}
                )
    finally:
        os.close(rfd)
    return found


def _binaries_match(meta: dict[str, Any]) -> bool:
    try:
        bindir = Path(meta["bindir"])
        return bool(
            _stamp(bindir / "postgres") == meta["postgres"]
            and _stamp(bindir / "initdb") == meta["initdb"]
            and linked.icu_fingerprint(bindir / "postgres") == meta["icu"]
        )
    except (KeyError, OSError, TypeError):
        return False


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _remove(key: str, *, wait: bool) -> bool:
    """Remove template ``key`` (and its spare, temporaries, metadata) under its exclusive
    lock; False if busy and not ``wait``."""
    root = templates_dir()
    with locked(key, exclusive=True, timeout=LOCK_TIMEOUT if wait else 0) as got:
        if not got:
            return False
        existed = False
        rfd = os.open(root, _DIR)
        try:
            for user, ufd in _user_dirs(rfd):
                for name in os.listdir(ufd):
                    if name in (key, f"{key}{SPARE}") or name.startswith(f".{key}.tmp-"):
                        existed = existed or not name.startswith(".")
                        trash = f".{key}.tmp-trash-{os.getpid()}"
                        # renamed away first: a claim gets all or nothing
                        with doing("remove", root / user / name):
                            ownerrm.as_owner(ufd, _trash, ufd, name, trash)
            if _is_dir_at(rfd, key):  # a template of an older pgmgr, root's
                existed = True
                with doing("remove", root / key):
                    ownerrm.remove_at(rfd, key)  # what a server user owns: as that user
        finally:
            os.close(rfd)
        with contextlib.suppress(FileNotFoundError):
            (root / f"{key}.json").unlink()
        return existed


def _trash(ufd: int, name: str, trash: str) -> None:
    """As the owner of ``ufd`` (a user's part of the cache: as root, root renamed and
    removed in it, and so removed what that user could not): rename, then remove."""
    os.rename(name, trash, src_dir_fd=ufd, dst_dir_fd=ufd)
    ownerrm.remove_here(ufd, trash)  # all that can go


def prune(fields: dict[str, Any], keep: str) -> list[str]:
    """Remove templates of the same bin dir and user that are stale (other binaries or
    locales: not waiting on one in use), and templates whose binaries are gone."""
    removed = []
    root = templates_dir()
    with contextlib.suppress(OSError):
        for old in root.glob("pg*"):  # an older pgmgr's template, shared by every user
            if old.is_dir() and not old.is_symlink() and _remove(old.name, wait=False):
                removed.append(old.name)
    for t in list_templates():
        if t["key"] == keep:
            continue
        same = t.get("bindir") == fields["bindir"] and t.get("uid") == fields["uid"]
        gone = not Path(str(t.get("bindir", ""))).is_dir()
        if ((same and t["stale"]) or gone) and _remove(t["key"], wait=False):
            removed.append(t["key"])
    return removed


def clear() -> list[str]:
    """Remove every template (waiting for inits that are copying one).

    :returns: the keys removed.
    """
    root = templates_dir()
    keys = {t["key"] for t in list_templates()}
    with contextlib.suppress(OSError):
        keys |= {p.stem for p in root.glob("*.json")}
        keys |= {p.name for p in root.iterdir() if p.name.startswith("pg") and p.is_dir()}
        rfd = os.open(root, _DIR)
        try:
            for _, ufd in _user_dirs(rfd):
                for name in os.listdir(ufd):
                    if name.endswith(SPARE):
                        keys.add(name[: -len(SPARE)])
                    elif name.startswith(".") and ".tmp-" in name:
                        keys.add(name.split(".tmp-")[0][1:])
        finally:
            os.close(rfd)
    return [key for key in sorted(keys) if _remove(key, wait=True)]
