"""Why a path cannot be (or be made) a directory: a component on the way, or the path
itself, is a regular file, a FIFO, a dangling symlink... ``mkdir -p`` reports that as
"File exists" and a permission check as "someone else can change it", both misleading.

Imports only the standard library at the top: :func:`blocker` may run in a child that has
become the server user (:func:`pgmgr.core.userfs.as_user`), which can import nothing new.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from pgmgr.core.errors import DatabaseException

#: The snapshot stores' directory beside data directories (see :mod:`pgmgr.core.snapstore`).
STORE = ".pgmgr-snapshots"

_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symlink"),
)


def kind(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is ("a regular file", "a FIFO"...), for a
    message about something that should have been a directory."""
    return next((name for test, name in _KINDS if test(mode)), "an unusual file")


def blocker(path: str | Path, *, parents_only: bool = False) -> str | None:
    """What stops ``path`` from being a directory, as a phrase ("/a/f is a regular file,
    not a directory"), or None: every existing component is a directory (or a symlink to
    one) and the rest can be made. Reads metadata only (lstat/stat), never opens anything.
    A component it cannot look at (no permission) ends the walk: the caller's own error
    says that. With ``parents_only``, ``path`` itself is left to the caller.
    """
    current = Path("/")
    parts = Path(os.path.abspath(path)).parts[1:]
    for name in parts[:-1] if parents_only else parts:
        current = current / name
        try:
            st = os.lstat(current)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            try:
                st = os.stat(current)
            except FileNotFoundError:
                return f"{current} is a dangling symlink (to {os.readlink(current)})"
            except OSError as e:
                if e.errno == errno.ELOOP:
                    return f"{current} is a symlink loop"
                return None
        if not stat.S_ISDIR(st.st_mode):
            return f"{current} is {kind(st.st_mode)}, not a directory"
    return None


def check(path: str | Path, doing: str, *, parents_only: bool = False) -> None:
    """Refuse ``path`` in one line when :func:`blocker` finds why it cannot be a directory:
    "cannot {doing} {path}: {why}".

    :raises DatabaseException: a component is not a directory.
    """
    why = blocker(path, parents_only=parents_only)
    if why is not None:
        raise DatabaseException(f"cannot {doing} {path}: {why}")


def check_datadir_place(path: str | Path, doing: str) -> None:
    """Refuse a data directory inside a snapshot store or inside another data directory:
    deleting that snapshot, restoring or destroying that instance would take it along,
    and a snapshot or branch of it would copy it (into its own store). Symlinks on the
    way are resolved. Reads metadata only.

    :raises DatabaseException: it is.
    """
    real = Path(os.path.realpath(path))
    if STORE in real.parts:
        store = Path(*real.parts[: real.parts.index(STORE) + 1])
        raise DatabaseException(
            f"cannot {doing} {path}: it is inside the snapshot store {store}",
            hint="choose a directory outside it; pgmgr keeps snapshots there",
        )
    for parent in real.parents:
        try:
            inside = (parent / "PG_VERSION").is_file()
        except OSError:  # a parent it cannot enter: nothing can be made there (said next)
            continue
        if inside:
            raise DatabaseException(
                f"cannot {doing} {path}: it is inside the data directory {parent}",
                hint="choose a directory outside it",
            )


def mount_id(fd: int) -> int | None:
    """The id of the mount ``fd`` is on ("mnt_id:" of ``/proc/self/fdinfo/FD``), or None
    where /proc does not say. Two mounts of one filesystem (a bind mount) share a device
    number (``st_dev``) but not this id, and rename() does not cross mounts."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            for line in f:
                if line.startswith(b"mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def mount_of(fd: int) -> tuple[int, int | None]:
    """Where ``fd`` is: its filesystem (``st_dev``) and mount (:func:`mount_id`). Two
    fds with different ones are in places a rename cannot cross."""
    return os.fstat(fd).st_dev, mount_id(fd)


def other_mount(a_fd: int, b_fd: int) -> str | None:
    """Whether a rename from ``a_fd`` to ``b_fd`` crosses a mount: "filesystem" (another
    one), "mount" (another mount of the same filesystem: a bind mount), or None."""
    (a_dev, a_mnt), (b_dev, b_mnt) = mount_of(a_fd), mount_of(b_fd)
    if a_dev != b_dev:
        return "filesystem"
    if a_mnt is not None and b_mnt is not None and a_mnt != b_mnt:
        return "mount"
    return None


def _mount_point(fd: int, parent_fd: int) -> bool:
    """Whether the directory ``fd`` is mounted on its parent ``parent_fd``: another mount
    (:func:`mount_id`) where /proc says, else another filesystem. Not a btrfs subvolume
    in its parent's mount: it has a device number of its own, but is no mount point (a
    rename moves it, and puts another directory in its place, as any directory)."""
    ids = mount_id(fd), mount_id(parent_fd)
    if None not in ids:
        return ids[0] != ids[1]
    return os.fstat(fd).st_dev != os.fstat(parent_fd).st_dev


def check_not_mount(datadir: Path, what: str) -> None:
    """:raises DatabaseException: ``datadir`` is a mount point (another filesystem than its
    parent's, or a bind mount of the same one): a restore or an upgrade puts a new
    directory in its place (one rename, which a mount point refuses: "Device or resource
    busy", after the whole copy), and snapshots, kept beside it, would fill the parent's
    filesystem instead. Opens both with ``O_PATH`` (metadata only: a FIFO never blocks)."""
    fds = []
    try:
        for path in (datadir, datadir.parent):
            fds.append(os.open(path, os.O_PATH | os.O_CLOEXEC))
        mounted = _mount_point(fds[0], fds[1])
    except OSError:
        return  # the caller's own checks say what is missing
    finally:
        for fd in fds:
            os.close(fd)
    if mounted:
        raise DatabaseException(
            f"cannot {what}: its data directory {datadir} is a mount point (restores "
            "and upgrades replace the directory itself, snapshots are kept beside it on "
            "its filesystem); nothing was changed",
            hint="keep the data directory in a directory of that filesystem "
            "(e.g. MOUNT/data) to use them",
        )
