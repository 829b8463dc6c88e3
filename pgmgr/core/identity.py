"""What identifies a data directory, and whether the one at a recorded path is still it.

An instance record pins its data directory (DESIGN.md, "An instance is what it was"): the
device and inode of the directory, and the database system identifier from
``global/pg_control``. Before stop, restart, destroy or status act, the directory at the
recorded path is reached again without following any symlink another user controls
(:func:`pgmgr.core.userfs.open_dir`) and compared:

- ``moved``: the path now crosses such a symlink (someone swapped a parent directory);
- ``replaced``: another data directory (another cluster, or a copy) stands at the path;
- ``missing``: nothing, or a directory that is no data directory, is there.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from pgmgr.core import userfs
from pgmgr.core.errors import InstanceNotFound

MOVED = "moved"
REPLACED = "replaced"


@dataclass(frozen=True)
class Identity:
    """What a data directory is: its inode (device, number) and its cluster's database
    system identifier (a docstring keeps dataclasses from importing inspect for one)."""

    dev: int
    ino: int
    system_id: int | None  # None: no readable global/pg_control (not a complete data dir)


class IdentityChanged(InstanceNotFound):
    """The directory at the recorded path is not the instance's any more (exit code 4)."""

    def __init__(self, name: str, datadir: str, state: str, why: str, action: str) -> None:
        self.state = state
        self.why = why
        super().__init__(
            f"refusing to {action} '{name}': its data directory {datadir} was {state} ({why})",
            hint=f"if the data directory really is elsewhere now, 'pgmgr forget {name}' and "
            "register it again with 'pgmgr init -d DIR'",
        )


def check_links(path: str | Path) -> str:
    """A path given on the command line may cross symlinks of root's or of the invoking
    user's, not another user's: that one could point it at someone else's data directory.
    Each link on the way is checked, also one that another link leads to; the owner and
    the target are read from the one link (an ``O_PATH`` descriptor), so it cannot be
    swapped between the two. The path with those links resolved, as ``realpath`` gives
    it (which, called after the check, would follow a link swapped in meanwhile).

    :raises UnsafePath: it crosses such a symlink.
    """
    import stat

    me = os.geteuid()
    done: list[str] = []  # the real directories walked so far
    todo = [c for c in reversed(os.path.abspath(path).split("/")) if c]
    links = 0
    while todo:
        part = todo.pop()
        if part in (".", ".."):
            if part == ".." and done:
                done.pop()
            continue
        current = "/" + "/".join([*done, part])
        try:
            fd = os.open(current, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # nothing more exists (or cannot be looked at): who makes it decides
            return os.path.normpath("/" + "/".join([*done, part, *reversed(todo)]))
        try:
            st = os.fstat(fd)
            if not stat.S_ISLNK(st.st_mode):
                done.append(part)
                continue
            if st.st_uid not in (0, me):
                raise userfs.UnsafePath(path, f"{current} is a symlink of another user")
            links += 1
            if links > _MAX_LINKS:  # the kernel's limit: it fails there too (ELOOP), and
                return os.path.abspath(path)  # the caller says so where it uses the path
            target = os.readlink("", dir_fd=fd)  # this very link's (readlinkat, empty path)
        finally:
            os.close(fd)
        if target.startswith("/"):
            done = []
        todo.extend(c for c in reversed(target.split("/")) if c)
    return "/" + "/".join(done)


#: Symlinks a path may cross (the kernel's ``MAXSYMLINKS``): more, and nothing resolves it.
_MAX_LINKS = 40


def system_id(dir_fd: int) -> int | None:
    """The database system identifier in ``global/pg_control`` of the data directory open
    at ``dir_fd`` (its first 8 bytes, native byte order), or None when there is none."""
    try:
        gfd = os.open("global", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        data = userfs.read_file_at(gfd, "pg_control", limit=1 << 16)
    except (OSError, userfs.UnsafePath):
        return None
    finally:
        os.close(gfd)
    if len(data) < 8:
        return None
    return int(struct.unpack("=Q", data[:8])[0])


def probe(datadir: str | Path) -> Identity:
    """The identity of the directory at ``datadir``, reached without untrusted symlinks.

    :raises UnsafePath: the path crosses a symlink another user controls.
    :raises OSError: the path does not lead to a directory (ENOENT, ENOTDIR, EACCES...).
    """
    fd = userfs.open_dir(datadir)
    try:
        st = os.fstat(fd)
        return Identity(st.st_dev, st.st_ino, system_id(fd))
    finally:
        os.close(fd)


def compare(recorded: Identity | None, datadir: str | Path) -> tuple[str | None, str]:
    """(None, "") if the directory at ``datadir`` is still ``recorded``; else its state
    (``moved`` / ``replaced`` / ``missing``) and why, in words.

    System identifiers are compared when both are known (pg_control may be unreadable to
    an ordinary user, or gone while the directory is the same: then it is not "replaced").
    """
    try:
        now = probe(datadir)
    except userfs.UnsafePath as e:
        return MOVED, f"its path now crosses a symlink: {e.why}"
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return "missing", "it does not exist"
        return "missing", f"it cannot be reached: {e.strerror}"
    if recorded is None:
        return None, ""
    if (now.dev, now.ino) != (recorded.dev, recorded.ino):
        if now.system_id is None:
            return "missing", "another directory, not a data directory, stands there"
        if recorded.system_id is not None and now.system_id == recorded.system_id:
            return REPLACED, "another directory holding a copy of its cluster stands there"
        return REPLACED, "another directory stands there"
    if None not in (recorded.system_id, now.system_id) and now.system_id != recorded.system_id:
        return REPLACED, "it holds another database cluster (system identifier changed)"
    return None, ""
