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


def _crc_offset(control: bytes) -> int | None:
    """The offset of the struct's ``crc`` field in ``control``: see :func:`intact`."""
    table, crc = _table(), 0xFFFFFFFF
    for n in range(min(len(control) - 3, _CRC_SPAN.stop)):
        if n in _CRC_SPAN and crc ^ 0xFFFFFFFF == int.from_bytes(control[n : n + 4], "little"):
            return n
        crc = table[(crc ^ control[n]) & 0xFF] ^ (crc >> 8)
    return None


def _crc32c(data: bytes) -> int:
    table, crc = _table(), 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _table() -> list[int]:
    """CRC-32C (Castagnoli, reflected), as PostgreSQL's ``pg_crc32c``: made on first use."""
    if not _TABLE:
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            _TABLE.append(c)
    return _TABLE


def intact(control: bytes) -> bool:
    """Whether ``control`` (the start of a ``pg_control`` file) holds a whole struct whose
    CRC-32C matches, as PostgreSQL checks at start-up: the CRC of the bytes before the
    ``crc`` field equals that field. The field's offset differs between majors, so every
    4-byte-aligned offset of :data:`_CRC_SPAN` is tried (a damaged file matching at one
    by chance: about 1 in 10**8). A file damaged after the struct (zero padding) passes,
    as it does for PostgreSQL."""
    return _crc_offset(control) is not None


#: ``XLogLongPageHeaderData``: ``xlp_info`` at byte 2 (``XLP_LONG_HEADER``: 0x0002), the
#: system identifier at 24; the first page of every WAL segment has one.
_XLP_LONG_HEADER = 0x0002
_XLP_SYSID = 24


def new_identity(datadir: Path, *, sync: bool, clean: bool = True) -> int:
    """Give the cleanly shut-down ``datadir``, a copy of a template, a system identifier of
    its own, as initdb would have (the time in the high 32 bits, here random low ones):
    in ``global/pg_control`` (its CRC recomputed) and in the long header of each WAL
    segment that carries the old one (PostgreSQL checks they match). Nothing else holds
    it. WAL first, ``pg_control`` last; the caller commits the directory only afterwards.
    With ``sync``, both are fsynced. As the server user. Returns the new identifier.

    Not ``clean``: a copy that crash recovery (or the recovery of an online backup) will
    replay is accepted too: that WAL is all in ``pg_wal`` and every segment of it carries
    the old identifier, rewritten with the rest. Not one that recovers from elsewhere
    (``recovery.signal`` or ``standby.signal``: an archive, a primary, with the old one).

    :raises ValueError: ``pg_control`` is damaged, or the cluster was not shut down cleanly
        (``clean``) or recovers WAL from elsewhere.
    """
    import time

    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK
    control = _read(datadir, _FILE_SIZE)
    at = _crc_offset(control)
    state = int.from_bytes(control[16:20], "little")
    if at is None or (clean and state not in _CLEAN_STATES):
        raise ValueError("global/pg_control is damaged or not of a clean shutdown")
    if any(os.path.lexists(datadir / f) for f in ("recovery.signal", "standby.signal")):
        raise ValueError("it recovers WAL from elsewhere (recovery.signal, standby.signal)")
    old = control[:8]
    new = ((int(time.time()) << 32) | int.from_bytes(os.urandom(4), "little")).to_bytes(8, "little")
    wal = datadir / "pg_wal"
    for name in sorted(n for n in os.listdir(wal) if _SEGMENT_RE.match(n)):
        fd = os.open(wal / name, flags)
        try:
            head = os.pread(fd, _XLP_SYSID + 8, 0)
            if len(head) > _XLP_SYSID and head[2] & _XLP_LONG_HEADER and head[_XLP_SYSID:] == old:
                os.pwrite(fd, new, _XLP_SYSID)
                if sync:
                    os.fsync(fd)
        finally:
            os.close(fd)
    body = new + control[8:at]
    fd = os.open(datadir / "global" / "pg_control", flags)
    try:
        os.pwrite(fd, body + _crc32c(body).to_bytes(4, "little"), 0)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return int.from_bytes(new, "little")


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
