"""What ``global/pg_control`` says that snapshots need: the database system identifier, and
which WAL segments a copy of a cleanly shut-down cluster can leave out; and whether the
file is intact (its CRC-32C). Plain reads through ``O_NOFOLLOW`` descriptors, run as the
server user (:func:`pgmgr.core.userfs.as_user`)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path


def _read(datadir: Path, size: int) -> bytes:
    """:raises ValueError: not a regular file (a FIFO would read as empty)."""
    fd = os.open(datadir / "global" / "pg_control", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("global/pg_control is not a regular file")
        return os.read(fd, size)
    finally:
        os.close(fd)


def system_identifier(datadir: Path, *, verify: bool = False) -> str:
    """The database system identifier: the first 8 bytes of ``global/pg_control``.

    :raises ValueError: the file is truncated, or (``verify``) damaged: see :func:`intact`.
    """
    head = _read(datadir, _FILE_SIZE if verify else 8)
    if len(head) < 8:
        raise ValueError("global/pg_control is truncated")
    if verify and not intact(head):
        raise ValueError("global/pg_control is damaged (checksum mismatch)")
    return str(int.from_bytes(head[:8], "little"))


#: ``PG_CONTROL_FILE_SIZE``; the struct PostgreSQL checks is its first ~300 bytes.
_FILE_SIZE = 8192
#: Where the struct's own ``crc`` field may sit: 288 in PostgreSQL 15, 292 in 18; the span
#: covers every supported major without a table of them.
_CRC_SPAN = range(240, 400, 4)
_TABLE: list[int] = []


def intact(control: bytes) -> bool:
    """Whether ``control`` (the start of a ``pg_control`` file) holds a whole struct whose
    CRC-32C matches, as PostgreSQL checks at start-up: the CRC of the bytes before the
    ``crc`` field equals that field. The field's offset differs between majors, so every
    4-byte-aligned offset of :data:`_CRC_SPAN` is tried (a damaged file matching at one
    by chance: about 1 in 10**8). A file damaged after the struct (zero padding) passes,
    as it does for PostgreSQL."""
    if not _TABLE:
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            _TABLE.append(c)
    table, crc = _TABLE, 0xFFFFFFFF
    for n in range(min(len(control) - 3, _CRC_SPAN.stop)):
        if n in _CRC_SPAN and crc ^ 0xFFFFFFFF == int.from_bytes(control[n : n + 4], "little"):
            return True
        crc = table[(crc ^ control[n]) & 0xFF] ^ (crc >> 8)
    return False


#: ``DBState`` values of a cluster shut down cleanly (``DB_SHUTDOWNED``, ``..._IN_RECOVERY``).
_CLEAN_STATES = (1, 2)
_SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")


def unneeded_wal(datadir: Path) -> set[str]:
    """Names in ``pg_wal`` a copy of the cleanly shut-down ``datadir`` does not need:
    segments after the one holding the shutdown checkpoint (and the next, should the record
    straddle a boundary) are recycled files whose contents are never read. Nothing when the
    cluster was not shut down cleanly (crash recovery reads forward from the checkpoint),
    ``pg_control`` is damaged, or pg_wal is a symlink. From ``global/pg_control``:
    ``state`` at byte 16, the checkpoint's redo pointer at 40 (the layout of every
    supported major)."""
    wal = datadir / "pg_wal"
    if os.path.islink(wal) or not os.path.isdir(wal):
        return set()
    head = _read(datadir, _FILE_SIZE)
    if not intact(head):  # the fields below may be wrong: the copy keeps every segment
        return set()
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
