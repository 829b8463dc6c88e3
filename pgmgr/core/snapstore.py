"""Where snapshots live, what they record, and the few file operations they need.

Layout: beside the data directory, on the same filesystem (so the copy engine can reflink
or ``copy_file_range``, and a restore can swap directories with one ``rename``)::

    <parent>/.pgmgr-snapshots/                 0700, the server user's (as root: root's,
                                               0755, shared by the server users beside)
        <datadir basename>/                    0700: this data directory's snapshots
            <snap>/data/                       the copy (never started, never registered)
            <snap>/snapshot.json               instance identity, major, created, size
            .tmp-<op>-<random>/                work in progress (swept under the lock)

Keyed by the data directory's basename, not the instance name, so snapshots follow the
directory (a branch at ``<parent>/NEW`` gets ``<parent>/.pgmgr-snapshots/NEW``). A snapshot
also records the data directory and its system identifier (``global/pg_control``), so one
moved in from another instance is refused. Only the server user and root can enter the
store; as root, everything inside it runs as the server user (:func:`userfs.as_user`), and
root itself only creates the two store directories and renames entries, through directory
file descriptors opened with ``O_NOFOLLOW``; a whole store removed from root's top directory
(``destroy --with-snapshots``) is emptied as the server user (:mod:`pgmgr.core.ownerrm`).
"""

from __future__ import annotations

import contextlib
import ctypes  # here, not lazily: as root, work runs in children that may not reach the stdlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pgmgr.core import dirpath, diskio, paths, rmtree, snapdoom, userfs
from pgmgr.core.errors import DatabaseException
from pgmgr.core.privileges import ServerUser
from pgmgr.core.snapmeta import FORMAT as FORMAT
from pgmgr.core.snapmeta import META as META
from pgmgr.core.snapmeta import META_LIMIT as META_LIMIT
from pgmgr.core.snapmeta import PRE_UPGRADE as PRE_UPGRADE
from pgmgr.core.snapmeta import SNAP_RE as SNAP_RE
from pgmgr.core.snapmeta import Meta as Meta
from pgmgr.core.snapmeta import SnapshotNotFound as SnapshotNotFound
from pgmgr.core.snapmeta import check_snap_name as check_snap_name
from pgmgr.core.snapmeta import default_name as default_name
from pgmgr.core.snapmeta import list_metas as list_metas
from pgmgr.core.snapmeta import read_meta as read_meta
from pgmgr.core.snapmeta import seal as seal
from pgmgr.core.snapmeta import unseal as unseal
from pgmgr.core.snapmeta import write_meta as write_meta
from pgmgr.core.snapspace import CLONE_SHARE as CLONE_SHARE
from pgmgr.core.snapspace import allocated_if_short as allocated_if_short
from pgmgr.core.snapspace import check_same_fs as check_same_fs
from pgmgr.core.snapspace import check_space as check_space
from pgmgr.core.snapspace import free_bytes as free_bytes
from pgmgr.core.snapspace import human as human

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T")

STORE = dirpath.STORE
DATA = "data"
TMP = ".tmp-"
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def store_path(datadir: Path) -> Path:
    return datadir.parent / STORE / datadir.name


def owner_ids(user: ServerUser | None) -> tuple[int, int]:
    return (user.uid, user.gid) if user is not None else (os.geteuid(), os.getegid())


# --------------------------------------------------------------------------- the store


@dataclass
class Store:
    """A data directory's snapshot store, opened through fds (see :func:`opened`)."""

    datadir: Path
    user: ServerUser | None
    parent_fd: int  # the data directory's parent
    fd: int  # <parent>/.pgmgr-snapshots/<basename>
    top_fd: int = -1  # <parent>/.pgmgr-snapshots

    @property
    def path(self) -> Path:
        return store_path(self.datadir)

    def entry(self, name: str) -> Path:
        return self.path / name

    def as_user(self, fn: Callable[..., T], *args: Any) -> T:
        return userfs.as_user(self.user, fn, *args)

    def rename(self, src: str, dst: str) -> None:
        """Rename the store's entry ``src`` to ``dst`` through the store's fd, as
        :func:`pgmgr.core.snapswap.swap_in` does: no path is resolved (a symlink put there
        is renamed itself, never followed), so root needs no process of the server user's
        for it (~5 ms each). An error names the entries' full paths, as ``os.rename`` of
        them would."""
        try:
            os.rename(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except OSError as e:
            a, b = str(self.entry(src)), str(self.entry(dst))
            raise type(e)(e.errno, e.strerror, a, None, b) from None


def _private_subdir(
    dir_fd: int, name: str, where: Path, owner: tuple[int, int], create: bool, top: bool = False
) -> int:
    """Open (creating when asked) ``name`` under ``dir_fd``: it must be a real directory of
    ``owner`` with no group/other access; or, for the ``top`` one (``.pgmgr-snapshots``),
    root's and writable by root only: as root, pgmgr makes it so (mode 755), because the
    data directories beside each other may belong to different server users, each with
    their own private store inside it.

    :raises DatabaseException: it is anything else (nothing is changed).
    :raises FileNotFoundError: absent and not ``create``.
    """
    made = False
    shared = top and os.geteuid() == 0
    if create:
        try:
            os.mkdir(name, 0o755 if shared else 0o700, dir_fd=dir_fd)
            made = True
        except FileExistsError:
            pass
        except OSError as e:  # not "no snapshots" (ENOENT under /proc): what failed
            raise DatabaseException(f"cannot create the directory {where}: {e.strerror}") from None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise
        raise _not_usable(dir_fd, name, where, owner, e) from None
    st = os.fstat(fd)
    if made and shared:  # whatever root's umask: each user reaches their own store
        os.fchmod(fd, 0o755)
        st = os.fstat(fd)
    mode = stat.S_IMODE(st.st_mode)
    if top and st.st_uid == 0 and not mode & 0o022:
        return fd  # root's: the users' stores inside are checked one by one
    if shared and st.st_uid not in (0, owner[0]):
        os.close(fd)
        raise DatabaseException(
            f"refusing to use {where}: it is uid {st.st_uid}'s (an older pgmgr made it "
            f"for that server user's snapshots), not root's",
            hint=f"as root: 'chown root: {where}; chmod 755 {where}' (what is inside stays "
            "theirs); pgmgr then keeps each server user's snapshots there",
        )
    if st.st_uid != owner[0] and st.st_uid == os.geteuid() and (made or not os.listdir(fd)):
        # Root made it under a parent no other user can write: now, or in a run killed
        # between the mkdir and this fchown (then it is still empty).
        os.fchown(fd, *owner)
        st = os.fstat(fd)
    if st.st_uid != owner[0] or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        raise DatabaseException(
            f"refusing to use {where}: owned by uid {st.st_uid} with mode "
            f"{stat.S_IMODE(st.st_mode):o} (expected uid {owner[0]}, mode 700)",
            hint="remove it if you did not make it; pgmgr keeps snapshots there",
        )
    return fd


def _not_usable(
    dir_fd: int, name: str, where: Path, owner: tuple[int, int], e: OSError
) -> DatabaseException:
    """Why ``name`` under ``dir_fd`` could not be opened as a directory (``e``)."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except OSError:
        return DatabaseException(f"cannot open {where}: {e.strerror}")
    if not stat.S_ISDIR(st.st_mode):
        return DatabaseException(
            f"refusing to use {where}: it is {dirpath.kind(st.st_mode)}, not a directory",
            hint="remove or rename it; pgmgr keeps snapshots there",
        )
    return DatabaseException(  # a directory this user cannot enter (EACCES)
        f"cannot open {where}: {e.strerror} (owned by uid {st.st_uid} with mode "
        f"{stat.S_IMODE(st.st_mode):o}; expected uid {owner[0]}, mode 700)",
        hint="remove it if you did not make it; pgmgr keeps snapshots there",
    )


@contextlib.contextmanager
def opened(
    datadir: Path,
    user: ServerUser | None,
    *,
    create: bool = True,
    missing: str | None = None,
    exclusive: bool = False,
    shared: bool = False,
) -> Iterator[Store]:
    """The store of ``datadir``, made private if absent (when ``create``). ``exclusive``:
    for work that sweeps or changes it, held with ``flock`` on the store itself; ``shared``:
    for work that reads a snapshot (a branch copying one), which none of those may delete
    meanwhile. The instance's lock is in the state directory of the user running pgmgr:
    the pgmgr of another OS user who registered the same data directory (root and its
    server user) does not wait for it, and its sweep removed a snapshot under way.

    :raises SnapshotNotFound: no store and not ``create`` (the message is ``missing``).
    :raises DatabaseException: the store or its parent is unsafe.
    :raises Busy: ``exclusive`` or ``shared``, and another pgmgr held it for 30 s.
    """
    parent = datadir.parent
    if userfs.others_can_write(parent) and os.geteuid() == 0:
        raise DatabaseException(
            f"refusing to keep snapshots under {parent}: another user can write it",
            hint="move the data directory under a directory only its owner can write",
        )
    owner = owner_ids(user)
    parent_fd = userfs.open_dir(parent)
    fds = [parent_fd]
    try:
        try:
            top = _private_subdir(parent_fd, STORE, parent / STORE, owner, create, top=True)
            fds.append(top)
            if create:
                snapdoom.sweep_top(top)
            fd = _private_subdir(top, datadir.name, store_path(datadir), owner, create)
            fds.append(fd)
            if create:  # each snapshot or staged copy in a block group of its own
                diskio.spread_subdirs(fd)
            if exclusive or shared:
                busy = f"another pgmgr is working on the snapshots in {store_path(datadir)}"
                paths.flock_fd(fd, exclusive=exclusive, timeout=30.0, busy=busy)
        except FileNotFoundError:
            raise SnapshotNotFound(
                missing or f"no snapshots of {datadir}", hint="'pgmgr snapshots' lists them"
            ) from None
        yield Store(datadir, user, parent_fd, fd, top)
    finally:
        for fd in fds:
            os.close(fd)


@contextlib.contextmanager
def held_if_free(top_fd: int, name: str) -> Iterator[bool]:
    """Hold store ``name`` of the top directory ``top_fd`` (as :func:`opened` with
    ``exclusive`` does) if no pgmgr holds it now: whether it is held."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=top_fd)  # fmt: skip
    except OSError:
        fd = -1
    try:
        yield fd >= 0 and paths.flock_fd(fd, exclusive=True, timeout=0, busy="")
    finally:
        if fd >= 0:
            os.close(fd)


def drop_if_empty(store: Store, name: str | None = None) -> None:
    """Remove ``store`` (or the store ``name`` beside it) if it holds nothing: that of a
    branch that failed or was killed, or of an instance destroyed without snapshots (they
    piled up, one per name ever used)."""
    try:
        if name is None and os.listdir(store.fd):
            return
        name = name or store.datadir.name
        if os.fstat(store.top_fd).st_uid == os.geteuid():  # root's or ours: by fd
            os.rmdir(name, dir_fd=store.top_fd)  # refused if something is in it
        else:
            store.as_user(os.rmdir, store.path.parent / name)
    except OSError:
        pass  # something appeared meanwhile: kept


def tmp_name(op: str) -> str:
    return f"{TMP}{op}-{os.urandom(4).hex()}"


# --------------------------------------------------------------------------- as the user


def remove_tree(path: Path, ignore_errors: bool = False) -> None:
    """Delete ``path`` and everything under it, never following a symlink: one put there
    (a snapshot directory swapped for a symlink) is removed itself, not refused."""
    rmtree.remove(path, ignore_errors=ignore_errors)


def unsupported(datadir: Path) -> str | None:
    """Why a copy of ``datadir`` would not be a copy of the instance: tablespaces or a
    ``pg_wal`` symlink live elsewhere, and the copy would share them. As the user."""
    if os.path.islink(datadir / "pg_wal"):
        return "its WAL directory is elsewhere (pg_wal is a symlink)"
    try:
        if os.listdir(datadir / "pg_tblspc"):
            return "it has tablespaces (pg_tblspc is not empty)"
    except FileNotFoundError:
        pass
    return None


def check_supported(store: Store, datadir: Path, what: str) -> None:
    """:raises DatabaseException: see :func:`unsupported`."""
    why = store.as_user(unsupported, datadir)
    if why:
        raise DatabaseException(f"cannot {what}: {why}; nothing was changed")


def remove_later(path: Path, user: ServerUser | None) -> None:
    """Delete ``path`` in the background (``rm -rf`` as ``user``, in its own session), so
    that freeing a data directory's blocks is not part of the command's time. Killed
    half-way, it leaves a work entry the next command sweeps."""
    import subprocess

    uid, gid, groups = (user.uid, user.gid, list(user.groups)) if user else (None, None, None)
    subprocess.Popen(
        ["rm", "-rf", "--", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",
        start_new_session=True,
        user=uid,
        group=gid,
        extra_groups=groups,
    )


def sweep(store: Path) -> list[str]:
    """Remove work-in-progress entries a killed pgmgr left (call only under the lock)."""
    gone = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(store):
            if name.startswith(TMP):  # a background removal may be at it too
                remove_tree(store / name, ignore_errors=True)
                gone.append(name)
    return gone


# --------------------------------------------------------------------------- as root, by fd


def renameat2(a_fd: int, a: str, b_fd: int, b: str, flags: int) -> None:
    """``renameat2(2)``: :data:`RENAME_EXCHANGE` swaps two entries atomically,
    :data:`RENAME_NOREPLACE` refuses to replace anything (even an empty directory).

    :raises OSError: EINVAL/ENOSYS when the filesystem or libc cannot; anything else.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:  # pragma: no cover - glibc < 2.28
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if fn(a_fd, a.encode(), b_fd, b.encode(), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), b)
