"""Removing what is provably an instance's, and nothing else (issue 11.1, 11.4, 11.11).

- :func:`foreign_entries`: what in a data directory PostgreSQL (or pgmgr) did not make;
  a directory holding any of it is not destroyed unless it is a registered instance whose
  pinned identity still matches.
- :func:`remove_datadir`: rename the directory to a trash name beside it, then delete the
  trash; both through a directory fd reached with ``O_NOFOLLOW`` (:mod:`pgmgr.core.userfs`),
  so root never follows a path another user can change. An interrupted destroy leaves a
  trash directory, which never counts as a data directory and which the next destroy or
  forget of the instance removes (:func:`sweep_trash`).
- :func:`remove_socket_dir`: the instance's private socket directory, once it holds only
  the instance's own socket and lock files.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from pgmgr.core import diskio, testhook, userfs
from pgmgr.core.errors import DatabaseException

#: The top-level entries of a data directory made by initdb (PostgreSQL 15 and 18 make the
#: same), plus what a server, a backup or recovery, or pgmgr itself add there.
PG_ENTRIES = frozenset(
    {
        # initdb
        "PG_VERSION",
        "base",
        "global",
        "pg_commit_ts",
        "pg_dynshmem",
        "pg_hba.conf",
        "pg_ident.conf",
        "pg_logical",
        "pg_multixact",
        "pg_notify",
        "pg_replslot",
        "pg_serial",
        "pg_snapshots",
        "pg_stat",
        "pg_stat_tmp",
        "pg_subtrans",
        "pg_tblspc",
        "pg_twophase",
        "pg_wal",
        "pg_xact",
        "postgresql.auto.conf",
        "postgresql.conf",
        # a running or crashed server, logging_collector, backups, recovery, standbys
        "postmaster.pid",
        "postmaster.opts",
        "current_logfiles",
        "log",
        "pg_log",
        "backup_label",
        "backup_label.old",
        "backup_manifest",
        "tablespace_map",
        "tablespace_map.old",
        "recovery.signal",
        "standby.signal",
        "recovery.conf",
        "recovery.done",
        # pgmgr's own
        "pgmgr.conf",
    }
)
#: What makes a data directory complete.
REQUIRED = ("PG_VERSION", "global/pg_control", "base")
TRASH_MARK = ".pgmgr-trash-"
#: An interrupted init's work directory (pgmgr.core.staging.WORK_PREFIX).
INIT_WORK = ".pgmgr-init-"
#: The server's socket and lock file (pgmgr puts the socket in the data dir when it fits).
_SOCKET_RE = re.compile(r"^\.s\.PGSQL\.\d+(\.lock)?$")
_TRASH_RE = re.compile(r"^\..+\.pgmgr-trash-\d+$")


def is_socket_name(name: str) -> bool:
    """Whether ``name`` is a server's socket or its lock file (``.s.PGSQL.5432.lock``)."""
    return bool(_SOCKET_RE.match(name))


def is_trash(path: str | Path) -> bool:
    """Whether ``path`` is a destroy's trash directory (never a data directory)."""
    return bool(_TRASH_RE.match(os.path.basename(os.fspath(path))))


def trash_name(name: str) -> str:
    return f".{name[:200]}{TRASH_MARK}{os.getpid()}"


def check_complete(datadir: Path, *, partial: bool = False) -> None:
    """:raises DatabaseException: ``datadir`` is not a complete PostgreSQL data directory,
    or holds entries PostgreSQL did not make (they are listed). With ``partial`` (an
    interrupted ``pgmgr import``/``replica`` whose record pins no directory) it need not be
    complete, and may hold an interrupted init's work directory, but must not hold a
    ``PG_VERSION``: those commands pin the directory they make before they build anything
    in it, so a data directory found there is someone else's (made after the kill)."""
    with userfs.opened_dir(datadir) as fd:
        if partial and _exists_at(fd, "PG_VERSION"):
            raise DatabaseException(
                f"refusing to remove {datadir}: a data directory the unfinished command did "
                "not make stands there; nothing was removed",
                hint="move it away if it is yours, or remove it yourself",
            )
        missing = [] if partial else [r for r in REQUIRED if not _exists_at(fd, r)]
        extras = sorted(
            e
            for e in os.listdir(fd)
            if e not in PG_ENTRIES
            and not _SOCKET_RE.match(e)
            and not (partial and (e.startswith(INIT_WORK) or e == "backup_manifest.tmp"))
        )
    if missing:
        raise DatabaseException(
            f"refusing to remove {datadir}: it is not a complete PostgreSQL data directory "
            f"(no {', '.join(missing)}); nothing was removed",
            hint="remove it yourself if you are sure; 'pgmgr forget NAME' drops only a record",
        )
    if extras:
        shown = ", ".join(extras[:10]) + (
            f" and {len(extras) - 10} more" if len(extras) > 10 else ""
        )
        raise DatabaseException(
            f"refusing to remove {datadir}: it holds entries PostgreSQL did not make "
            f"({shown}); nothing was removed",
            hint="move them out first, or remove the directory yourself",
        )


def _exists_at(dir_fd: int, relpath: str) -> bool:
    parts = relpath.split("/")
    fd = dir_fd
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            if fd != dir_fd:
                os.close(fd)
            fd = nxt
        os.lstat(parts[-1], dir_fd=fd)
        return True
    except OSError:
        return False
    finally:
        if fd != dir_fd:
            os.close(fd)


def remove_datadir(datadir: Path, expect: tuple[int, int] | None = None) -> bool:
    """Rename ``datadir`` to a trash name beside it, then delete that, through an fd of its
    parent (reached without untrusted symlinks): a swapped entry is renamed or deleted, never
    followed. With ``expect`` (device, inode), only that very directory is removed.

    :returns: False if there was nothing to remove.
    :raises DatabaseException: it is not a directory, or not the expected one.
    :raises UnsafePath: its parent path crosses a symlink another user controls.
    """
    try:
        pfd = userfs.open_dir(datadir.parent)
    except (FileNotFoundError, NotADirectoryError):
        return False  # its parent is gone: so is it
    try:
        return _rename_and_delete(pfd, datadir, expect)
    finally:
        os.close(pfd)


def _rename_and_delete(pfd: int, datadir: Path, expect: tuple[int, int] | None) -> bool:
    """As root, where the parent is not root's own (a server user's home, say), the rename
    and the removal run as the one who may remove the entry there (its owner in a sticky
    directory of root's, else the parent's owner): root renamed in the user's directory
    and removed what that user could not (a bystander's files inside)."""
    from pgmgr.core import ownerrm

    try:
        st = os.lstat(datadir.name, dir_fd=pfd)
    except FileNotFoundError:
        return False
    actor = ownerrm.remover(os.fstat(pfd), st)
    if actor != 0 and os.geteuid() == 0:
        who = ownerrm.user_for(actor, st.st_gid)
        return userfs.as_user(who, _rename_and_delete_here, pfd, datadir, expect)
    return _rename_and_delete_here(pfd, datadir, expect)


def _rename_and_delete_here(pfd: int, datadir: Path, expect: tuple[int, int] | None) -> bool:
    name = datadir.name
    try:
        st = os.lstat(name, dir_fd=pfd)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        raise DatabaseException(f"refusing to remove {datadir}: not a directory")
    if expect is not None and (st.st_dev, st.st_ino) != expect:
        raise DatabaseException(f"refusing to remove {datadir}: it was replaced")
    trash = trash_name(name)
    os.rename(name, trash, src_dir_fd=pfd, dst_dir_fd=pfd)
    moved = os.lstat(trash, dir_fd=pfd)
    if (moved.st_dev, moved.st_ino) != (st.st_dev, st.st_ino):
        # swapped between the check and the rename: put it back, delete nothing
        with contextlib.suppress(OSError):
            os.rename(trash, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        raise DatabaseException(f"refusing to remove {datadir}: it changed meanwhile")
    # On disk before anything is deleted (and the record removed): after a power cut the
    # half-deleted directory came back at its own name, still pinned by the record.
    diskio.fsync_dirs(pfd)
    testhook.pause("destroy-renamed")
    try:
        _delete_trash(pfd, trash)
    except OSError as e:  # as root, what the server user may not remove (another user's)
        raise DatabaseException(
            f"could not remove all of {datadir}: {e.filename or trash}: {e.strerror}; "
            f"what is left is in {datadir.parent / trash}"
        ) from None
    return True


def _delete_trash(parent_fd: int, trash: str) -> None:
    """PG_VERSION first (what is left is no data directory, whatever its name), then all."""
    from pgmgr.core import ownerrm

    with contextlib.suppress(OSError, DatabaseException):
        fd = os.open(trash, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
        try:
            ownerrm.as_owner(fd, os.unlink, "PG_VERSION", dir_fd=fd)
        finally:
            os.close(fd)
    testhook.pause("destroy-unversioned")
    ownerrm.remove_at(parent_fd, trash)  # as root: what the server user owns, as that user


def sweep_trash(
    datadir: Path, expect: tuple[int, int] | None = None, owner: int | None = None
) -> list[str]:
    """Finish interrupted destroys of ``datadir``: delete its trash directories (callers
    hold the data directory's lock). The names removed.

    A name proves nothing (the owner of the parent, or anyone where others can write,
    may call a directory so), so a trash goes only if it is what a destroy of this
    instance renamed: a real directory (no symlink followed), its process (the pid in
    the name) gone, and the data directory itself: with ``expect`` (the recorded device
    and inode, kept by the rename), that very inode; else (an older record) a directory
    of ours or of the server user ``owner``."""
    prefix = f".{datadir.name[:200]}{TRASH_MARK}"
    try:
        pfd = userfs.open_dir(datadir.parent)
    except (OSError, DatabaseException):
        return []
    removed = []
    try:
        for entry in os.listdir(pfd):
            if not (entry.startswith(prefix) and is_trash(entry)):
                continue
            with contextlib.suppress(OSError):
                if _own_trash(pfd, entry, expect, owner):
                    _delete_trash(pfd, entry)
                    removed.append(entry)
    finally:
        os.close(pfd)
    return removed


def _own_trash(pfd: int, entry: str, expect: tuple[int, int] | None, owner: int | None) -> bool:
    """See :func:`sweep_trash`."""
    from pgmgr.core import process

    st = os.lstat(entry, dir_fd=pfd)
    if not stat.S_ISDIR(st.st_mode) or process.is_alive(int(entry.rsplit("-", 1)[1])):
        return False
    if expect is not None:
        return (st.st_dev, st.st_ino) == expect
    return st.st_uid in (os.geteuid(), owner)


def remove_socket_dir(
    sockdir: str | None, datadir: Path, port: int | None, owner: int | None
) -> bool:
    """Remove the private socket directory pgmgr made for an instance (see
    :func:`pgmgr.core.sockets.removable`: never the data directory, never one the user
    named): a real directory of mode 0700 owned by the server user ``owner``, once it holds
    nothing but that instance's ``.s.PGSQL.<port>`` socket and lock file. Else left alone."""
    from pgmgr.core import sockets

    path = sockets.removable(sockdir, datadir)
    if path is None:
        return False
    own = {f".s.PGSQL.{port}", f".s.PGSQL.{port}.lock"} if port else set()
    try:
        with userfs.opened_dir(path.parent) as pfd:
            fd = os.open(path.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=pfd)
            try:
                st = os.fstat(fd)
                if stat.S_IMODE(st.st_mode) & 0o077 or (owner is not None and st.st_uid != owner):
                    return False
                entries = set(os.listdir(fd))
                if not entries <= own:
                    return False
                for entry in entries:
                    os.unlink(entry, dir_fd=fd)
            finally:
                os.close(fd)
            os.rmdir(path.name, dir_fd=pfd)
    except (OSError, DatabaseException):
        return False
    return True


@dataclass(frozen=True)
class Outside:
    """A part of a data directory kept elsewhere, which its removal leaves: a tablespace
    (``pg_tblspc/OID`` links to it) or the WAL directory (``pg_wal`` is a symlink)."""

    kind: str  # "tablespace" or "wal"
    path: str
    oid: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"kind": self.kind, "oid": self.oid, "path": self.path}


def outside(datadir: Path) -> list[Outside]:
    """What of ``datadir`` lives outside it (its symlinks, read through directory fds and
    never followed): pgmgr removes only the data directory, so this stays. Best effort:
    what cannot be read is not listed (the removal goes on either way)."""
    found: list[Outside] = []
    try:
        fd = userfs.open_dir(datadir)
    except (OSError, userfs.UnsafePath):
        return found
    try:
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.lstat("pg_wal", dir_fd=fd).st_mode):
                found.append(Outside("wal", _target(datadir, "pg_wal", fd)))
        with contextlib.suppress(OSError):
            tfd = os.open("pg_tblspc", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            try:
                for name in sorted(os.listdir(tfd)):
                    with contextlib.suppress(OSError):
                        if stat.S_ISLNK(os.lstat(name, dir_fd=tfd).st_mode):
                            where = _target(datadir / "pg_tblspc", name, tfd)
                            found.append(Outside("tablespace", where, name))
            finally:
                os.close(tfd)
    finally:
        os.close(fd)
    inside = str(datadir).rstrip("/") + "/"
    return [o for o in found if not o.path.startswith(inside)]


def _target(directory: Path, name: str, dir_fd: int) -> str:
    """Where the symlink ``name`` of ``directory`` points, made absolute (not resolved)."""
    return os.path.normpath(os.path.join(directory, os.readlink(name, dir_fd=dir_fd)))
