"""The copy engine: one way to copy a data directory, for templates, spares, snapshots,
branches and upgrades.

Per file it tries, in order, and remembers for the rest of the tree what the filesystem
refused:

1. ``FICLONE`` (reflink: btrfs, XFS, bcachefs, ZFS 2.2+): no data moves, any size in ~0 ms;
2. ``copy_file_range(2)``: the kernel copies (~1 GiB in 0.25 s from the page cache on this
   machine's ext4), no round trip through user space;
3. ``read``/``write`` in 1 MiB blocks: anything else (other filesystems, old kernels).

The last two keep a sparse file's holes (only its data extents are copied: see
:mod:`pgmgr.core.copydata`); a clone shares them anyway.

``PGMGR_COPY_METHOD=copy_file_range`` or ``read`` forces a fallback (tests, and a way out if a
filesystem misbehaves). The tree is walked through directory file descriptors, symlinks are
copied as symlinks and never followed, FIFOs, sockets and devices are skipped, and every new
entry is created exclusively. The copy runs as whoever calls it: as root, wrap it in
:func:`pgmgr.core.userfs.as_user` so that the new files belong to the server user and no path
a user controls is resolved as root. One :func:`sync_fs` afterwards makes the copy durable
(~25 ms, against ~500 ms for an fsync per file of a 1000-file data directory).

With ``flush=True`` (for a caller that syncs afterwards) the data is copied in 32 MiB
chunks and ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` starts the writeback of each chunk
as soon as it is copied: the disk writes while the copy goes on, and the final
:func:`sync_fs` finds little left to do (1.15 GB on this machine's ext4: 0.35 s copy +
0.37 s sync before, ~0.5 s for both with it). Without it, a copy that is thrown away soon
(a scratch copy) is not written out at all.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from pathlib import Path

from pgmgr.core import copydata, copypool
from pgmgr.core.copydata import FICLONE as FICLONE
from pgmgr.core.copydata import Flush as Flush
from pgmgr.core.copydata import allocation as allocation
from pgmgr.core.diskio import disk_full as disk_full
from pgmgr.core.diskio import fsync_dir as fsync_dir
from pgmgr.core.diskio import sync_fs as sync_fs
from pgmgr.core.diskio import tree_allocated as tree_allocated
from pgmgr.core.diskio import tree_size as tree_size
from pgmgr.core.diskio import tree_sizes as tree_sizes
from pgmgr.core.errors import UsageError, doing

METHODS = ("reflink", "copy_file_range", "read")
ENV_METHOD = "PGMGR_COPY_METHOD"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class CopyStats:
    """What :func:`copy_tree` did: entries made and bytes moved by each method."""

    files: int = 0
    dirs: int = 0
    links: int = 0
    skipped: int = 0
    bytes: int = 0
    #: files (and their bytes, part of ``bytes``) hard-linked from ``link_dest``
    linked: int = 0
    linked_bytes: int = 0
    by_method: dict[str, int] = field(default_factory=dict)

    @property
    def method(self) -> str:
        """The method that moved most bytes ("none" for a tree of empty files)."""
        if not self.by_method:
            return "none"
        return max(self.by_method, key=lambda m: self.by_method[m])

    def to_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "dirs": self.dirs,
            "links": self.links,
            "bytes": self.bytes,
            "method": self.method,
            "linked_files": self.linked,
            "linked_bytes": self.linked_bytes,
        }


@dataclass
class _State:
    """What one :func:`copy_tree` carries from file to file."""

    methods: list[str]
    stats: CopyStats
    umask: int = 0o077  # of this process: a new file's mode bits it strips need an fchmod
    flush: Flush | None = None  # see copydata.writeback
    #: link_dest: whether the file at this path relative to the top is unchanged
    unchanged: Callable[[str, os.stat_result], bool] | None = None
    #: link_dest: the stamp of each file linked, by its path relative to the top
    linked: dict[str, tuple[int, int, int, int]] | None = None
    #: copies the bytes of large files while the walk goes on (:mod:`copypool`)
    pool: copypool.Pool | None = None


def forced_method() -> str | None:
    """The method ``PGMGR_COPY_METHOD`` forces, or None.

    :raises UsageError: it names no method.
    """
    value = os.environ.get(ENV_METHOD, "").strip()
    if not value:
        return None
    if value not in METHODS:
        raise UsageError(f"invalid {ENV_METHOD}={value!r}: use " + ", ".join(METHODS))
    return value


def clones(directory: Path) -> bool:
    """Whether a file made in ``directory`` can be cloned (``FICLONE``) there: two
    unnamed temporary files (``O_TMPFILE``, gone when closed), one block written to the
    first, cloned into the second. False when ``PGMGR_COPY_METHOD`` forces another
    method, or on a full disk. As a user who may write in ``directory``."""
    import fcntl

    if forced_method() not in (None, "reflink"):
        return False
    fds: list[int] = []
    try:
        for _ in range(2):
            fds.append(os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600))
        os.write(fds[0], bytes(4096))
        fcntl.ioctl(fds[1], FICLONE, fds[0])
        return True
    except OSError:
        return False
    finally:
        for fd in fds:
            os.close(fd)


def clones_from(src: Path, directory: Path) -> bool:
    """Whether copies of ``src`` made in ``directory`` are clones: one filesystem, which
    :func:`clones`. As a user who may write in ``directory``."""
    try:
        if os.stat(src).st_dev != os.stat(directory).st_dev:
            return False
    except OSError:
        return False
    return clones(directory)


def current_umask() -> int:
    """This process's umask, read from ``/proc/self/status`` (Linux 4.7+) without changing
    it: setting it to read it back would, for that moment, apply to files other threads of
    a library caller create. Set and put back only where ``/proc`` does not say."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def copy_tree(
    src: str | Path | int,
    dst: str | Path,
    *,
    dst_dir_fd: int | None = None,
    exclude: Container[str] = (),
    flush: bool = False,
    link_dest: int | None = None,
    unchanged: Callable[[str, os.stat_result], bool] | None = None,
    linked: dict[str, tuple[int, int, int, int]] | None = None,
) -> CopyStats:
    """Copy the directory ``src`` (a path, or a directory fd the caller keeps) to ``dst``,
    which must not exist (relative to ``dst_dir_fd`` when given). Modes are kept; owner is
    the caller. Top-level names in ``exclude`` (``postmaster.pid``, say) are left out.
    ``flush``: start the writeback of the data as it is copied (the caller syncs next).

    ``link_dest`` (a directory fd) and ``unchanged``, as rsync's ``--link-dest``: a regular
    file of ``src`` whose counterpart at the same place under ``link_dest`` passes
    ``unchanged(relative path, its lstat)`` is hard-linked from there instead of copied
    (copied after all where a link fails: another filesystem, too many links). ``linked``,
    if given, gets the ``(inode, size, mtime, ctime)`` of each file linked, as it was once
    linked: ``link_dest`` may be live, and a caller that lets it be written meanwhile
    tells by them which of those files were written since (and copies them again).

    On failure the partial ``dst`` is left for the caller to remove (it knows whether it
    may): :func:`pgmgr.core.userfs.rmtree_at`.

    :raises FileExistsError: ``dst`` exists.
    :raises OSError: reading or writing failed (ENOSPC, EACCES, ...).
    """
    state = _State(
        _methods(), CopyStats(), current_umask(), copydata.writeback() if flush else None
    )
    if link_dest is not None and unchanged is not None:
        state.unchanged = unchanged
        state.linked = linked
    else:
        link_dest = None
    sfd = src if isinstance(src, int) else os.open(src, _DIR_FLAGS)
    try:
        smode = os.fstat(sfd).st_mode
        os.mkdir(dst, 0o700, dir_fd=dst_dir_fd)
        dfd = os.open(dst, _DIR_FLAGS, dir_fd=dst_dir_fd)
        try:
            with doing("copy"):
                try:
                    _copy_pooled(sfd, dfd, state, exclude, link_dest)
                except OSError as e:
                    _locate(e, src, dst, dst_dir_fd)
                    raise
            os.fchmod(dfd, stat.S_IMODE(smode))
        finally:
            os.close(dfd)
    finally:
        if not isinstance(src, int):
            os.close(sfd)
    state.stats.dirs += 1
    return state.stats


def _copy_pooled(
    sfd: int, dfd: int, state: _State, exclude: Container[str], lfd: int | None
) -> None:
    """:func:`_copy_dir` of the top, large files' bytes copied by a :mod:`copypool`
    thread meanwhile; returns (or raises) once that thread has ended."""
    pool = state.pool = copypool.Pool(state.methods, state.flush)
    try:
        _copy_dir(sfd, dfd, state, exclude, lfd, "")
    except BaseException:
        pool.close(ok=False)
        raise
    pool.close()
    for method, size in pool.done:
        state.stats.files += 1
        state.stats.bytes += size
        state.stats.by_method[method] = state.stats.by_method.get(method, 0) + size


def _copy_dir(
    sfd: int, dfd: int, state: _State, exclude: Container[str], lfd: int | None, rel: str
) -> None:
    """Copy the entries of ``sfd`` into ``dfd``; ``lfd``: the same place under link_dest
    (or None), ``rel``: its path relative to the top (``""`` or ending in ``/``)."""
    with os.scandir(sfd) as entries:
        for entry in entries:
            if entry.name in exclude:
                continue
            try:
                _copy_entry(entry, sfd, dfd, state, lfd, rel)
            except OSError as e:
                e.__dict__.setdefault(_WHERE, rel + entry.name)  # the innermost counts
                raise


def _copy_entry(
    entry: os.DirEntry[str], sfd: int, dfd: int, state: _State, lfd: int | None, rel: str
) -> None:
    name = entry.name
    # The type from the directory entry (no stat); a file is fstat'ed once opened.
    if entry.is_file(follow_symlinks=False):
        if lfd is None or not _link(lfd, dfd, name, rel + name, state):
            _copy_file(sfd, dfd, name, state, rel)
        return
    mode = entry.stat(follow_symlinks=False).st_mode
    if stat.S_ISDIR(mode):
        os.mkdir(name, 0o700, dir_fd=dfd)
        sub_s = os.open(name, _DIR_FLAGS, dir_fd=sfd)
        sub_l = None
        try:
            if lfd is not None:
                with contextlib.suppress(OSError):  # not there (or not a directory)
                    sub_l = os.open(name, _DIR_FLAGS, dir_fd=lfd)
            sub_d = os.open(name, _DIR_FLAGS, dir_fd=dfd)
            try:
                _copy_dir(sub_s, sub_d, state, (), sub_l, f"{rel}{name}/")
                os.fchmod(sub_d, stat.S_IMODE(mode))
            finally:
                os.close(sub_d)
        finally:
            os.close(sub_s)
            if sub_l is not None:
                os.close(sub_l)
        state.stats.dirs += 1
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
        state.stats.links += 1
    elif stat.S_ISREG(mode):  # a filesystem that reports no type in its entries
        _copy_file(sfd, dfd, name, state, rel)
    else:  # FIFO, socket, device: nothing a copy of a data directory needs
        state.stats.skipped += 1


#: The attribute of an :class:`OSError` of the copy: the path (under the top) it failed on.
_WHERE = copypool.WHERE


def _locate(e: OSError, src: str | Path | int, dst: str | Path, dst_dir_fd: int | None) -> None:
    """Name the file of a failed copy, which the calls name by their name in their
    directory only (``rootfile``: "Permission denied: rootfile"), or not at all (a read,
    a write): the source and the copy, where known."""
    rel = e.__dict__.pop(_WHERE, "")
    if e.filename and os.path.isabs(os.fsdecode(e.filename)):
        return
    a = None if isinstance(src, int) else os.path.join(src, rel)
    b = os.path.join(dst, rel) if dst_dir_fd is None else None
    e.filename, e.filename2 = (a or b or rel or None), (b if a else None)


def _link(lfd: int, dfd: int, name: str, rel: str, state: _State) -> bool:
    """Hard-link ``name`` from ``lfd`` into ``dfd`` if it is an unchanged regular file."""
    assert state.unchanged is not None
    try:
        st = os.stat(name, dir_fd=lfd, follow_symlinks=False)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or not state.unchanged(rel, st):
        return False
    try:
        os.link(name, name, src_dir_fd=lfd, dst_dir_fd=dfd, follow_symlinks=False)
    except OSError as e:
        # ENOENT: removed since the check (``link_dest`` may be live: PostgreSQL unlinks a
        # dropped relation's FSM and VM forks at commit, a checkpoint removes or recycles
        # WAL segments); copied from ``src`` instead, as any file not linked.
        if e.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.EOPNOTSUPP, errno.ENOENT):
            raise
        return False
    # What was linked is the file that was checked, unwritten since: ``link_dest`` may be
    # live (a restore stages while the server runs), and a file renamed over that name
    # between the stat and the link (PostgreSQL rewrites a few that way) or written
    # meanwhile must be copied instead. (Writes after this the caller checks: a write
    # sets a newer mtime, see pgmgr.core.delta.)
    now = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    if (now.st_ino, now.st_size, now.st_mtime_ns) != (st.st_ino, st.st_size, st.st_mtime_ns):
        os.unlink(name, dir_fd=dfd)
        return False
    if state.linked is not None:
        state.linked[rel] = (now.st_ino, now.st_size, now.st_mtime_ns, now.st_ctime_ns)
    state.stats.files += 1
    state.stats.bytes += st.st_size
    state.stats.linked += 1
    state.stats.linked_bytes += st.st_size
    state.stats.by_method["link"] = state.stats.by_method.get("link", 0) + st.st_size
    return True


def _methods() -> list[str]:
    """The methods to try, in order, from the one ``PGMGR_COPY_METHOD`` forces if set."""
    forced = forced_method()
    return list(METHODS[METHODS.index(forced) :]) if forced else list(METHODS)


def copy_file(sfd: int, dfd: int, name: str) -> CopyStats:
    """Copy the regular file ``name`` of the directory ``sfd`` into the directory ``dfd``
    (where ``name`` must not exist), as :func:`copy_tree` copies each of its files."""
    state = _State(_methods(), CopyStats(), current_umask())
    _copy_file(sfd, dfd, name, state)
    return state.stats


def _copy_file(sfd: int, dfd: int, name: str, state: _State, rel: str = "") -> None:
    fin = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=sfd)
    job: copypool.Job | None = None  # handed to the pool: its descriptors may be the pool's
    held = False  # they are (asked once; a Ctrl-C may come at any point of the hand-over)
    try:
        st = os.fstat(fin)
        if not stat.S_ISREG(st.st_mode):  # swapped since scandir looked: skip it
            state.stats.skipped += 1
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        mode = stat.S_IMODE(st.st_mode)
        fout = os.open(name, flags, mode | 0o600, dir_fd=dfd)
        try:
            # else open() set the mode
            chmod = mode if mode & (state.umask | 0o7000) or mode & 0o600 != 0o600 else None
            # A clone moves no bytes (XFS, btrfs): nothing to overlap, so no thread for it.
            if (
                state.pool is not None
                and st.st_size >= copypool.OFFLOAD_MIN
                and state.methods[0] != "reflink"
            ):
                job = copypool.Job(fin, fout, st.st_size, chmod, rel + name)
                job.sparse = copydata.may_be_sparse(st)
                if state.pool.take(job):
                    return  # counted when the pool is done
            if st.st_size:
                method = copydata.copy_data(
                    fin, fout, st.st_size, state.methods, state.flush, copydata.may_be_sparse(st)
                )
                state.stats.by_method[method] = state.stats.by_method.get(method, 0) + st.st_size
            if chmod is not None:
                os.fchmod(fout, chmod)
        finally:
            held = job is not None and state.pool is not None and state.pool.holds(job)
            if not held:
                os.close(fout)
        state.stats.files += 1
        state.stats.bytes += st.st_size
    finally:
        if not held:
            os.close(fin)
