"""Whether a snapshot store has room for a copy, and is where a copy can be renamed into
place. Split from :mod:`pgmgr.core.snapstore`, which re-exports these names."""

from __future__ import annotations

import os
from pathlib import Path

from pgmgr.core import copy, dirpath
from pgmgr.core.diskio import human as human
from pgmgr.core.errors import DatabaseException

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms

if TYPE_CHECKING:
    from pgmgr.core.snapstore import Store


def free_bytes(fd: int) -> int:
    st = os.fstatvfs(fd)
    return st.f_bavail * st.f_frsize


#: A clone shares the source's blocks until one side writes them: of the bytes it copies,
#: a copy by reflink asks this share free (the filesystem's metadata, the first writes).
CLONE_SHARE = 64


def check_space(store: Store, needed: int, what: str, source: Path | None = None) -> None:
    """:raises DatabaseException: the filesystem has less than ``needed`` bytes free; or,
    when the copy is of ``source`` on this same filesystem and that clones
    (:func:`copy.clones`), less than ``needed / CLONE_SHARE``. Should the clones use more,
    the copy fails as on any full disk (:func:`copy.disk_full`): nothing is changed."""
    free = free_bytes(store.fd)
    if free < needed and source is not None and _clones_from(store, source):
        needed //= CLONE_SHARE
    if free < needed:
        raise DatabaseException(
            f"not enough disk space for {what}: {human(needed)} needed, "
            f"{human(free)} free on the filesystem of {store.path}; nothing was changed",
            hint="free some space (e.g. delete old snapshots with "
            "'pgmgr snapshot NAME SNAP --delete')",
        )


def allocated_if_short(store: Store, needed: int, source: Path) -> int:
    """``needed`` (a copy's size: a snapshot's, say), or, when the store's filesystem has
    less free than that, what the copy of ``source`` allocates if it is less: the copy
    keeps a sparse file's holes (:func:`copy.tree_allocated`; worked out only when it
    matters, as it walks the whole tree). As root too: the walk runs as the user."""
    if free_bytes(store.fd) >= needed:
        return needed
    try:
        return min(needed, store.as_user(copy.tree_allocated, source))
    except OSError:  # gone meanwhile: the copy says the rest
        return needed


def check_same_fs(store: Store, what: str) -> None:
    """:raises DatabaseException: the store is on another filesystem than the data
    directory's parent (a mount at ``.pgmgr-snapshots``), or on another mount of the same
    one (a bind mount there, or at the store): what is copied there is renamed into place,
    which fails across mounts, and only after the server was stopped and the work done (a
    restore's copy, pg_upgrade)."""
    other = dirpath.other_mount(store.fd, store.parent_fd)
    if other is not None:
        also = " (a bind mount of its filesystem)" if other == "mount" else ""
        raise DatabaseException(
            f"cannot {what}: the snapshots in {store.path} are on another {other} than "
            f"{store.datadir.parent}{also}, and the copy made there cannot be renamed into "
            "place; nothing was changed",
            hint=f"keep {store.path.parent} on the data directory's filesystem "
            "(not a mount point); 'branch --from SNAP -d DIR' copies a snapshot elsewhere",
        )


def _clones_from(store: Store, source: Path) -> bool:
    """Whether copies of ``source`` into ``store`` are clones: one filesystem that clones."""
    try:
        if os.stat(source).st_dev != os.fstat(store.fd).st_dev:
            return False
    except OSError:
        return False
    return bool(store.as_user(copy.clones, store.path))
