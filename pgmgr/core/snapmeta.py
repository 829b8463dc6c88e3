"""What a snapshot records (``snapshot.json``: :class:`Meta`), its name, and the seal on
its copy's ``pg_control``. Split from :mod:`pgmgr.core.snapstore`, which re-exports these
names. The readers and writers run as the store's owner (:func:`userfs.as_user`)."""

from __future__ import annotations

import json
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pgmgr.core import diskio
from pgmgr.core.errors import DatabaseException, UsageError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from typing import Any

META = "snapshot.json"
FORMAT = 1
SNAP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")  # \Z: "$" lets "x\n" pass
META_LIMIT = 1 << 20
#: The name of the snapshot an upgrade keeps starts so: ``pre-upgrade-<old major>``.
PRE_UPGRADE = "pre-upgrade-"


class SnapshotNotFound(DatabaseException):
    exit_code = 4


@dataclass
class Meta:
    """``snapshot.json``: what a snapshot is a copy of."""

    name: str
    instance: str
    datadir: str
    system_identifier: str
    major: str
    version: str
    bindir: str
    created: float
    size: int = 0
    files: int = 0
    method: str = ""
    kind: str = "snapshot"  # snapshot | online | pre-upgrade | saved
    settings: dict[str, str] = field(default_factory=dict)
    #: for a pre-upgrade snapshot: the upgraded cluster's identifier (restore accepts it)
    upgraded_to: str | None = None
    format: int = FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> Meta:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        meta = cls(**known)
        # every field: a 'files' of "x" ended restore and branch in a TypeError
        for key in ("name", "instance", "datadir", "system_identifier", "major", "version"):
            if not isinstance(getattr(meta, key), str):
                raise ValueError(f"{key!r} must be a string")
        for key in ("bindir", "method"):
            if not isinstance(getattr(meta, key), str):
                raise ValueError(f"{key!r} must be a string")
        if not isinstance(meta.created, int | float) or isinstance(meta.created, bool):
            raise ValueError("'created' must be a number")
        for key in ("size", "files", "format"):
            value = getattr(meta, key)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{key!r} must be a whole number")
        # NaN, 1e308, 10**400 (JSON has them): the listing, the space check would fail
        if not 0 <= meta.created < 1e11 or not 0 <= meta.size < 1 << 62:
            raise ValueError("'created' or 'size' is out of range")
        if not 0 <= meta.files < 1 << 62 or not 0 <= meta.format < 1 << 62:
            raise ValueError("'files' or 'format' is out of range")
        if not isinstance(meta.settings, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.settings.items()
        ):
            raise ValueError("'settings' must map names to strings")
        if not isinstance(meta.upgraded_to, str | None) or not isinstance(meta.kind, str):
            raise ValueError("'upgraded_to' and 'kind' must be strings")
        return meta


def check_snap_name(name: str) -> str:
    if not SNAP_RE.match(name):
        raise UsageError(
            f"invalid snapshot name {name!r}: use letters, digits, '.', '_' or '-' "
            "(at most 63, starting with a letter or digit)"
        )
    return name


def default_name(taken: set[str]) -> str:
    """A UTC timestamp, with a suffix if one was already taken this second."""
    base = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    return name


def read_meta(snapdir: Path) -> Meta:
    """:raises ValueError: unreadable or invalid. Runs as the store's owner."""
    fd = os.open(snapdir / META, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = os.read(fd, META_LIMIT)
    finally:
        os.close(fd)
    try:
        doc = json.loads(data)
    except RecursionError:  # the server user's file: "[[[[..." is not a ValueError
        raise ValueError("nested too deep") from None
    return Meta.from_dict(doc)


def write_meta(snapdir: Path, meta: Meta, *, fsync: bool = True) -> None:
    """Atomically (temp name, fsync, rename). Runs as the store's owner. ``fsync=False``
    for a caller that flushes the whole filesystem next (``syncfs`` covers the file)."""
    data = (json.dumps(meta.to_dict(), indent=2, sort_keys=True) + "\n").encode()
    diskio.write_new(snapdir / META, snapdir / f".{META}.{os.urandom(4).hex()}", data, fsync=fsync)


def list_metas(store: Path) -> list[tuple[str, Meta | None, str | None]]:
    """``(name, meta or None, why unreadable)`` for every snapshot in ``store``."""
    return list(iter_metas(store))


def iter_metas(store: Path, prefix: str = "") -> Iterator[tuple[str, Meta | None, str | None]]:
    """:func:`list_metas`, read one at a time (a caller may stop at the one it needs), of
    the snapshots whose name starts with ``prefix``."""
    try:
        names = sorted(os.listdir(store))
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(".") or not name.startswith(prefix) or not SNAP_RE.match(name):
            continue
        try:
            meta = read_meta(store / name)
            meta.name = name  # the directory's name, whatever a copied or edited file says
        except (OSError, ValueError, TypeError) as e:
            yield name, None, str(e)
            continue
        yield name, meta, None


def seal(datadir: Path) -> None:
    """Make ``global/pg_control`` of a snapshot's copy read-only: a server started on the
    copy by hand fails at once ("could not open file global/pg_control: Permission
    denied") instead of writing into files other snapshots share (hard links, see
    :class:`pgmgr.core.delta.Base`). Copies out of a snapshot :func:`unseal` theirs. As
    the server user."""
    _pg_control_mode(datadir, 0o400)


def unseal(datadir: Path) -> None:
    """Give a data directory copied out of a snapshot its ``pg_control`` mode back (group
    readable when the directory is). As the server user."""
    _pg_control_mode(datadir, 0o640 if os.stat(datadir).st_mode & 0o040 else 0o600)


def _pg_control_mode(datadir: Path, mode: int) -> None:
    try:
        fd = os.open(datadir / "global" / "pg_control", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, mode)
    finally:
        os.close(fd)
