"""Removing, as root, a tree that holds other users' directories: each directory is emptied
by its owner (DESIGN.md, "Trust boundaries").

As root, pgmgr removes trees that hold a server user's files: a killed or finished temporary
run's directory (root's, with the server user's data directory and socket dir in it), the
short-lived directories it hands over to that user (the settings check's, an import's copy
of an archive, an upgrade's socket dir). Removed by root, even through fds that never follow
a symlink, such a tree loses what its owner could not have removed: the files of a third
user in a directory of theirs that the server user's tree holds (a server user's directory
made writable for others, a world-writable one inside it). So, as root:

- a directory that root owns and nobody else can write is emptied by root, entry by entry
  (each by these rules);
- any other directory is emptied by its owner, in a process that has become that uid
  (:func:`userfs.as_user`), through the fd root opened (``O_NOFOLLOW``), which that process
  inherits: it need not reach the path (root's private temp dir);
- a name is removed from a directory by root where that directory is root's own, by the
  directory's owner where that is another user, and by the entry's owner in a directory of
  root's that others can write (``/tmp``: sticky, only the entry's owner may remove it).

Not root: :func:`pgmgr.core.rmtree.remove_at`, unchanged.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Callable

from pgmgr.core import rmtree, userfs
from pgmgr.core.errors import PgmgrError
from pgmgr.core.privileges import ServerUser

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T")

_NOGROUP = 65534
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove(path: str | os.PathLike[str], *, ignore_errors: bool = False) -> None:
    """:func:`remove_at` of ``path``, its parent opened as :func:`rmtree.remove` does (the
    caller trusts the path up to its last component)."""
    if os.geteuid() != 0:
        rmtree.remove(path, ignore_errors=ignore_errors)
        return
    parent, name = os.path.split(os.path.abspath(os.fspath(path)))
    try:
        fd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        if ignore_errors:
            return
        raise
    try:
        remove_at(fd, name)
    except (OSError, PgmgrError):  # PgmgrError: a child of as_user died without answer
        if not ignore_errors:
            raise
    finally:
        os.close(fd)


def remove_at(dir_fd: int, name: str) -> None:
    """Remove entry ``name`` of ``dir_fd`` and everything below it, each directory emptied
    by its owner (see the module doc); a symlink is removed, never followed. Missing is fine.

    :raises OSError: something could not be removed by the one allowed to (what could
        stays, the rest is gone).
    """
    if os.geteuid() != 0:
        rmtree.remove_at(dir_fd, name)
        return
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    actor = remover(os.fstat(dir_fd), st)
    if actor != 0:
        userfs.as_user(user_for(actor, st.st_gid), remove_here, dir_fd, name)
        return
    if not stat.S_ISDIR(st.st_mode):
        _unlink(dir_fd, name)
        return
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    try:
        empty(fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)  # empty, or refused


def empty(fd: int) -> None:
    """Remove everything in the directory open as ``fd``, by the rules of the module doc.

    :raises OSError: an entry could not be removed.
    """
    st = os.fstat(fd)
    if os.geteuid() != 0 or st.st_uid != 0:
        userfs.as_user(user_for(st.st_uid, st.st_gid), _empty_here, fd)
        return
    first = None
    for name in os.listdir(fd):
        try:
            remove_at(fd, name)
        except OSError as e:
            first = first or e
    if first is not None:
        raise first


def as_owner(fd: int, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` run as the owner of the directory open as ``fd`` (here when
    root owns it, or when this process is not root)."""
    st = os.fstat(fd)
    return userfs.as_user(user_for(st.st_uid, st.st_gid), fn, *args, **kwargs)


def _empty_here(fd: int) -> None:
    """Empty ``fd`` as this process, all that can go; then the first error."""
    first = None
    for name in os.listdir(fd):
        try:
            rmtree.remove_at(fd, name)
        except OSError as e:
            first = first or e
            rmtree.remove_at(fd, name, ignore_errors=True)
    if first is not None:
        raise first


def remove_here(dir_fd: int, name: str) -> None:
    """:func:`rmtree.remove_at` of all that can go, then the first error: raised at once,
    it left the rest of the tree (the server user's own files) for no reason."""
    try:
        rmtree.remove_at(dir_fd, name)
    except OSError as first:
        rmtree.remove_at(dir_fd, name, ignore_errors=True)
        raise first from None


def _root_own(st: os.stat_result) -> bool:
    """Root's, and no one else can write it (a group other than root's counts as others)."""
    group_writes = st.st_mode & 0o020 and st.st_gid != 0
    return st.st_uid == 0 and not group_writes and not st.st_mode & 0o002


def remover(parent: os.stat_result, entry: os.stat_result) -> int:
    """The uid that may remove ``entry`` from ``parent``."""
    if _root_own(parent):
        return 0
    if parent.st_uid != 0:
        return parent.st_uid
    return entry.st_uid  # root's, writable by others: the entry's owner (sticky /tmp)


def user_for(uid: int, gid: int) -> ServerUser | None:
    """Who to become for ``uid`` (its groups, if it has a passwd entry; else ``gid``, the
    directory's group, unless that is root's: then ``nogroup``); None for root (or, not
    root, for anyone: :func:`userfs.as_user` then works as this process)."""
    if uid == 0 or os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return ServerUser(str(uid), uid, gid or _NOGROUP, (), "/")
    groups = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
    return ServerUser(pw.pw_name, uid, pw.pw_gid, groups, pw.pw_dir)


def _unlink(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:  # a directory swapped in meanwhile
        remove_at(dir_fd, name)
