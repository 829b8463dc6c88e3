"""Restore by difference: put a data directory back to a snapshot by copying only what
changed since, and hard-linking the rest from the directory being replaced.

A snapshot keeps an index beside its copy: for each file of the data directory, the
``(inode, size, mtime, ctime)`` it had when the snapshot was taken (the server stopped, before
the copy), on the data directory's device. A restore builds the new data directory with
the copy engine's ``link_dest``: a file whose current ``lstat`` still matches the index has
not been written since (any write, truncation, ``chmod`` or replacement changes its ctime,
which no user call can set back, or its inode), so it holds the snapshot's bytes and is
linked instead of copied. Everything else comes from the snapshot. The server may still
run meanwhile: a linked file it writes before it is stopped gets a new ctime, and is
copied from the snapshot after all (:func:`pgmgr.core.restore._recheck`). (Between the
check of a live file and its link, only its inode, size and mtime can be compared again,
the link itself changing the ctime: a tool that rewrites a file and sets its mtime back in
that moment is not seen. PostgreSQL never sets file times.) The restored directory
never shares a file with the snapshot itself, and the directory it replaced (which shares
the linked files) loses their names before the server starts again; then the index is
taken afresh from the restored directory, for the next restore.

Timestamps are coarse (one clock tick, or a whole second on some filesystems): a write
in the same tick as the state an index records could leave the ctime unchanged.
:func:`settle` waits, before the server may write again, until the filesystem stamps
times past every ctime an index holds (git's "racily clean" problem, solved by waiting
instead of re-reading); an index it cannot wait out (file times ahead of a clock set
back) is not kept. With no index, or one that matches nothing, a restore is a full copy.

Runs as the server user (:func:`pgmgr.core.userfs.as_user`), like everything in the store.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pgmgr.core import copydata, diskio, process

INDEX = "index.json"
FORMAT = 1
_LIMIT = 64 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CLOCK = getattr(time, "CLOCK_REALTIME_COARSE", 5)  # what the kernel stamps files with
#: (inode, size, mtime, ctime) of a file
Stamp = tuple[int, int, int, int]
#: (inode, size, mtime) of a file of a snapshot's own copy
_Own = tuple[int, int, int]
#: How long :func:`settle` waits at most (a filesystem keeping whole seconds needs one).
SETTLE_LIMIT = 2.5


@dataclass
class Index:
    """What each regular file of a data directory was at one moment (see the module doc)."""

    dev: int
    files: dict[str, Stamp]
    #: the boot it was taken in (see :func:`load`)
    boot: str = ""
    #: the snapshot's own copy of each file, as it was made (see :func:`base`)
    own: dict[str, _Own] = field(default_factory=dict)

    def unchanged(self, rel: str, st: os.stat_result) -> bool:
        """Whether the file at ``rel`` (its ``lstat`` is ``st``) is as recorded."""
        if st.st_dev != self.dev:
            return False
        return self.files.get(rel) == (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def newest(self) -> int:
        return max((s[3] for s in self.files.values()), default=0)


def take(datadir: Path, exclude: tuple[str, ...] = ("postmaster.pid",)) -> Index:
    """The index of ``datadir`` now (symlinks are not followed, so a tablespace link is
    not entered)."""
    fd = os.open(datadir, _DIR_FLAGS)
    try:
        files: dict[str, Stamp] = {}
        _walk(fd, "", files, exclude)
        return Index(os.fstat(fd).st_dev, files, boot_id())
    finally:
        os.close(fd)


def _walk(fd: int, rel: str, files: dict[str, Stamp], exclude: tuple[str, ...]) -> None:
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.name in exclude:
                continue
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                files[rel + entry.name] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            elif stat.S_ISDIR(st.st_mode):
                sub = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                try:
                    _walk(sub, f"{rel}{entry.name}/", files, ())
                finally:
                    os.close(sub)


def control(datadir: Path | int) -> Stamp | None:
    """The stamp of ``global/pg_control`` of ``datadir`` (a path or a directory fd), or
    None (there is none): any server that starts or stops on it writes that file, so a
    changed stamp means a server ran meanwhile."""
    try:
        if isinstance(datadir, int):
            st = os.stat("global/pg_control", dir_fd=datadir, follow_symlinks=False)
        else:
            st = os.stat(datadir / "global" / "pg_control", follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def save(snapdir: Path, index: Index) -> None:
    """Write the index of snapshot ``snapdir`` (atomically: a reader sees the old one,
    the new one, or none). Not flushed: an index lost in a crash costs a full copy, and
    one that is stale matches nothing."""
    data = json.dumps(
        {
            "format": FORMAT,
            "dev": index.dev,
            "boot": index.boot,
            "files": index.files,
            "own": index.own,
        },
        separators=(",", ":"),
    ).encode()
    tmp = snapdir / f".{INDEX}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):  # left by a killed run of the same pid
        os.unlink(tmp)
    diskio.write_new(snapdir / INDEX, tmp, data)


def load(snapdir: Path) -> Index | None:
    """The index of snapshot ``snapdir``, or None (none, unreadable, malformed, or taken
    before the machine last booted: the restore is a full copy). Across a crash, a file
    written since the index can hold its new data with its old times (``fdatasync`` and
    ``lazytime`` write data without the timestamp update), so only an index of this
    boot is trusted."""
    try:
        fd = os.open(snapdir / INDEX, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _LIMIT:
            return None
        raw = os.read(fd, _LIMIT + 1)
    finally:
        os.close(fd)
    try:
        doc = json.loads(raw)
        if doc.get("format") != FORMAT or doc.get("boot") != boot_id():
            return None
        files = {str(k): _stamp(v) for k, v in doc["files"].items()}
        own = {str(k): _own(v) for k, v in doc.get("own", {}).items()}
        return Index(int(doc["dev"]), files, str(doc["boot"]), own)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError):
        # OverflowError: int() of a number JSON parsed as infinity (1e400, Infinity)
        return None


def kept_bytes(index: Index, datadir: Path, copydir: Path) -> int:
    """What the copies in ``copydir`` (a snapshot's) of the files of ``datadir`` that
    match ``index`` now allocate (:func:`allocated`): what a restore by difference keeps
    instead of copying (the server may be running: an estimate)."""
    try:
        now = take(datadir)
    except OSError:  # a file the server removed meanwhile
        return 0
    if now.dev != index.dev:
        return 0
    return allocated(copydir, [rel for rel, s in now.files.items() if index.files.get(rel) == s])


def allocated(top: Path, rels: Iterable[str]) -> int:
    """What a copy of the files ``rels`` under ``top`` allocates, a sparse file's holes
    kept (:func:`copydata.allocation`): a room check that asks for what the
    copies of a tree allocate (:func:`pgmgr.core.copy.tree_allocated`) takes off this for
    the files it shares, not their sizes (a 1 GiB sparse file holding 1 MiB took off
    1 GiB, and the check let through a copy the disk could not hold). A file gone
    meanwhile counts 0. As the user."""
    total = 0
    for rel in rels:
        with contextlib.suppress(OSError):
            st = os.stat(top / rel, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                total += copydata.allocation(top / rel, st)
    return total


def _stamp(value: object) -> Stamp:
    if not isinstance(value, list) or len(value) != 4:
        raise ValueError("bad entry")
    ino, size, mtime, ctime = (int(v) for v in value)
    return ino, size, mtime, ctime


def _own(value: object) -> _Own:
    if not isinstance(value, list) or len(value) != 3:
        raise ValueError("bad entry")
    ino, size, mtime = (int(v) for v in value)
    return ino, size, mtime


def boot_id() -> str:
    """This boot's id (Linux), or "" where there is none."""
    return process.boot_id()


def drop(snapdir: Path) -> None:
    """Forget the index (the next restore copies everything)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(snapdir / INDEX)


def settle(index: Index, where: Path, limit: float = SETTLE_LIMIT) -> bool:
    """Return True once a change to a file beside ``where`` (a directory of the user's,
    on the filesystem of the indexed files) would be stamped with a ctime past every
    ctime in ``index``: from then on any change to a recorded file gives it another
    ctime. Asks the filesystem as well as the clock: ``where``'s own ctime is stamped (a
    ``chmod`` to its mode) until it passes, since a filesystem may keep coarser times
    than the clock's tick (whole seconds: ext4 with 128-byte inodes), and a clock tick
    later would then still be the same second. False if that takes more than ``limit``
    seconds (the files' times are ahead of the clock: it was set back): the index must
    not be kept."""
    newest = index.newest()
    if newest > time.clock_gettime_ns(_CLOCK) + int(limit * 1e9):
        return False
    deadline = time.monotonic() + limit
    fd = os.open(where, _DIR_FLAGS)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        while True:
            try:
                os.fchmod(fd, mode)
            except OSError:  # not the owner of ``where``: no way to ask
                return False
            if os.fstat(fd).st_ctime_ns > newest and time.clock_gettime_ns(_CLOCK) > newest:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
    finally:
        os.close(fd)


def unlink_shared(old: Path) -> int:
    """In the replaced directory ``old`` (thrown away), remove now the names of the files
    it shares with the restored one, so that their ctime no longer changes once the index
    is taken; the rest of ``old`` goes in the background. Returns how many."""
    fd = os.open(old, _DIR_FLAGS)
    try:
        return _unlink(fd)
    finally:
        os.close(fd)


def _unlink(fd: int) -> int:
    n = 0
    with os.scandir(fd) as entries:
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                os.unlink(entry.name, dir_fd=fd)
                n += 1
            elif stat.S_ISDIR(st.st_mode):
                sub = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                try:
                    n += _unlink(sub)
                finally:
                    os.close(sub)
    return n


# --------------------------------------------------------------------------- snapshot


def mine(copydir: Path) -> dict[str, _Own]:
    """``(inode, size, mtime)`` of each regular file of a snapshot's copy ``copydir``,
    for :attr:`Index.own`."""
    return {rel: (s[0], s[1], s[2]) for rel, s in take(copydir, exclude=()).files.items()}


@dataclass
class Base:
    """An earlier snapshot a new one shares files with: hard links, as rsync's
    ``--link-dest`` and backup tools do between backups. Safe because no snapshot is ever
    written: files go from a data directory into a snapshot and back by copying, never by
    linking, so a file a snapshot holds is never one a server writes (restores link only
    between two data directories, see the module doc)."""

    #: its copy of the data directory
    data: Path
    #: the files of the data directory whose content is still that of the snapshot's
    #: copy (their stamps match the snapshot's index), and that copy's :data:`_Own`
    same: dict[str, _Own]
    #: their bytes
    size: int

    def unchanged(self, prefix: str = "") -> Callable[[str, os.stat_result], bool]:
        """For :func:`pgmgr.core.copy.copy_tree`'s ``unchanged`` (its paths relative to
        ``prefix`` under the data directory): the file of the snapshot's copy is linked
        if the data directory's still holds the same bytes and the copy is as it was
        made (same inode, size and mtime)."""

        def check(rel: str, st: os.stat_result) -> bool:
            return self.same.get(prefix + rel) == (st.st_ino, st.st_size, st.st_mtime_ns)

        return check


def base(snapdirs: Iterable[Path], now: Index, data: str) -> Base | None:
    """Of the snapshots ``snapdirs``, the one sharing most bytes with the stopped data
    directory whose index is ``now`` (``data``: the name of a snapshot's copy in its
    directory), or None (no index of this boot with its own copy's stamps matches)."""
    best: Base | None = None
    for snapdir in snapdirs:
        index = load(snapdir)
        if index is None or index.dev != now.dev or not index.own:
            continue
        same = {
            rel: index.own[rel]
            for rel, st in now.files.items()
            if index.files.get(rel) == st and rel in index.own
        }
        size = sum(now.files[rel][1] for rel in same)
        if size and (best is None or size > best.size):
            best = Base(snapdir / data, same, size)
    return best


def spread(index: Index, snapdir: Path, limit: int = 8) -> int:
    """After a restore from ``snapdir`` (``index``: the restored directory's, with the
    snapshot's own copy): give the ``limit`` most recently indexed other snapshots of its
    store the restored directory's stamps of the files their copy shares with
    ``snapdir``'s (same inode, size and mtime: the same bytes). Their old entries go: a
    restore gives every file of the data directory a new ctime, so none could match
    again. A later snapshot can then share files with any of them, even once
    ``snapdir`` is deleted. Returns how many indexes were rewritten."""
    store = snapdir.parent
    found: list[tuple[int, str]] = []
    with os.scandir(store) as entries:
        for entry in entries:
            if entry.name.startswith(".") or entry.name == snapdir.name:
                continue
            with contextlib.suppress(OSError):
                st = os.stat(os.path.join(entry.path, INDEX), follow_symlinks=False)
                found.append((st.st_mtime_ns, entry.name))
    n = 0
    for _, name in sorted(found)[-limit:]:
        other = load(store / name)
        if other is None or not other.own:
            continue
        files = {
            rel: st
            for rel, st in index.files.items()
            if rel in other.own and other.own[rel] == index.own.get(rel)
        }
        save(store / name, Index(index.dev, files, index.boot, other.own))
        n += 1
    return n
