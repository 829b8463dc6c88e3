"""What ``global/pg_control`` says that snapshots need: the database system identifier, and
which WAL segments a copy of a cleanly shut-down cluster can leave out. Plain reads through
``O_NOFOLLOW`` descriptors, run as the server user (:func:`pgmgr.core.userfs.as_user`)."""

from __future__ import annotations

import os
import re
from pathlib import Path


def system_identifier(datadir: Path) -> str:
    """The database system identifier: the first 8 bytes of ``global/pg_control``."""
    fd = os.open(datadir / "global" / "pg_control", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        head = os.read(fd, 8)
    finally:
        os.close(fd)
    if len(head) != 8:
        raise ValueError("global/pg_control is truncated")
    return str(int.from_bytes(head, "little"))


#: ``DBState`` values of a cluster shut down cleanly (``DB_SHUTDOWNED``, ``..._IN_RECOVERY``).
_CLEAN_STATES = (1, 2)
_SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")


def unneeded_wal(datadir: Path) -> set[str]:
    """Names in ``pg_wal`` a copy of the cleanly shut-down ``datadir`` does not need:
    segments after the one holding the shutdown checkpoint (and the next, should the record
    straddle a boundary) are recycled files whose contents are never read. Nothing when the
    cluster was not shut down cleanly (crash recovery reads forward from the checkpoint)
    or pg_wal is a symlink. From ``global/pg_control``: ``state`` at byte 16, the
    checkpoint's redo pointer at 40 (the layout of every supported major)."""
    wal = datadir / "pg_wal"
    if os.path.islink(wal) or not os.path.isdir(wal):
        return set()
    fd = os.open(datadir / "global" / "pg_control", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        head = os.read(fd, 56)
    finally:
        os.close(fd)
    state = int.from_bytes(head[16:20], "little")
    redo = int.from_bytes(head[40:48], "little")
    segments = [n for n in os.listdir(wal) if _SEGMENT_RE.match(n)]
    if state not in _CLEAN_STATES or not segments:
        return set()
    size = os.stat(wal / segments[0]).st_size
    if size <= 0 or size & (size - 1):
        return set()
    per_id = 0x100000000 // size
    last_needed = redo // size + 1
    return {n for n in segments if int(n[8:16], 16) * per_id + int(n[16:], 16) > last_needed}
