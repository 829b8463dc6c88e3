"""The user's lasting pgmgr settings: for now, the default PostgreSQL version.

They live in ``config.json`` under :func:`pgmgr.core.paths.config_dir` (platformdirs'
user config dir, e.g. ``~/.config/pgmgr``; ``PGMGR_CONFIG_DIR`` overrides), private like the
state directory: the directory is made 0700 and the file 0600, and a file or directory that
belongs to someone else, or that others can write, is refused rather than read (it chooses
which binaries pgmgr runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from pgmgr.core import paths
from pgmgr.core.errors import DatabaseException, doing

FILE = "config.json"
#: Larger than any settings file pgmgr writes; anything bigger is not one of ours.
MAX_BYTES = 64 * 1024


class UnreadableConfig(DatabaseException):
    """The settings file is there but is not one pgmgr wrote (corrupt, truncated, foreign)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(
            f"cannot read {path}: not a pgmgr settings file",
            hint=f"remove it (it only holds the default version): rm {path}",
        )


def config_file() -> Path:
    return paths.config_dir() / FILE


def _check_private(st: os.stat_result, path: Path, what: str) -> None:
    if st.st_uid != os.geteuid():
        raise DatabaseException(
            f"refusing to use {what} {path}: it belongs to uid {st.st_uid}, not to you",
            hint="remove it, or set PGMGR_CONFIG_DIR to a directory of your own",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise DatabaseException(
            f"refusing to use {what} {path}: others can write it "
            f"(mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"make it private: chmod go-w {path}",
        )


def load() -> dict[str, Any]:
    """The settings (empty when there is no file).

    :raises DatabaseException: the file or its directory is not private, or not valid.
    """
    path = config_file()
    try:
        with doing("look at"):
            dst = os.stat(path.parent)
    except FileNotFoundError:
        return {}
    _check_private(dst, path.parent, "the config directory")
    from pgmgr.core import userfs

    if userfs.others_can_write(path.parent):
        raise DatabaseException(
            f"refusing to use the config directory {path.parent}: another user can "
            "write one of the directories above it",
            hint="set PGMGR_CONFIG_DIR to a private directory",
        )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise DatabaseException(f"cannot read {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise DatabaseException(f"refusing to read {path}: not a regular file")
        _check_private(st, path, "the config file")
        data = f.read(MAX_BYTES + 1)
    try:
        doc = json.loads(data) if len(data) <= MAX_BYTES else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise UnreadableConfig(path)
    return doc


def save(doc: dict[str, Any]) -> Path:
    """Write the settings atomically (0600, in a 0700 directory); remove the file if empty."""
    path = config_file()
    if not doc:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return path
    paths.write_json_atomic(path, doc)
    return path


def default_version() -> str | None:
    """The version set with ``pgmgr versions --set-default``, or None.

    :raises DatabaseException: the settings file cannot be trusted or read.
    """
    value = load().get("default_version")
    return value if isinstance(value, str) and value else None


def set_default_version(version: str) -> Path:
    doc = _load_for_update()
    doc["default_version"] = version
    return save(doc)


def unset_default_version() -> bool:
    """:returns: whether a default was set."""
    doc = _load_for_update()
    had = doc.pop("default_version", None) is not None
    save(doc)
    return had


def _load_for_update() -> dict[str, Any]:
    """The settings to change; a corrupt file is replaced (it only ever held our keys), an
    unsafe one is still refused."""
    try:
        return load()
    except UnreadableConfig:
        return {}
