"""Whole snapshot stores being deleted (``destroy --with-snapshots``): renamed out of sight
in the top directory (``.pgmgr-snapshots``) first, then removed; what a killed or
interrupted deletion left is finished by the next command that opens a store beside it
(:func:`sweep_top`), and nothing else ever is.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat

from pgmgr.core import ownerrm, userfs

TMP = ".tmp-"

#: A whole store being deleted, in the top directory (see :func:`doomed_name`).
_DOOMED_RE = re.compile(r"^\.tmp-delete-(\d+)-[0-9a-f]{8}\Z")
#: In a store about to be renamed to a doomed name: that name (see :func:`mark_doomed`).
DOOMED_MARK = ".tmp-doomed"


def doomed_name() -> str:
    """The name a whole store is renamed to in the top directory before it is deleted
    (``destroy --with-snapshots``): it names the deleting process, so that what a killed
    or interrupted one left is removed later (:func:`sweep_top`), never while one is at it."""
    return f"{TMP}delete-{os.getpid()}-{os.urandom(4).hex()}"


def mark_doomed(store_fd: int, doomed: str) -> None:
    """Write ``doomed`` (the name the store is about to get) into the store, before the
    rename: :func:`sweep_top` removes only an entry that carries it. Killed before the
    rename, the mark stays in a live store, where it names another entry (and, being a
    ``.tmp-`` entry, the store's next :func:`pgmgr.core.snapstore.sweep` removes it)."""
    userfs.write_file_at(store_fd, DOOMED_MARK, doomed.encode(), 0o600)


def _marked(top_fd: int, name: str) -> bool:
    """Whether entry ``name`` of the top directory is a store pgmgr doomed: a real
    directory (no symlink followed) holding no ``PG_VERSION`` (never a data directory)
    and a regular :data:`DOOMED_MARK` file of ours (as root: root's, which no server user
    can make) that holds exactly ``name``."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top_fd)
    except OSError:
        return False
    try:
        with contextlib.suppress(FileNotFoundError):
            os.lstat("PG_VERSION", dir_fd=fd)
            return False
        mark = os.open(DOOMED_MARK, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        try:
            st = os.fstat(mark)
            ours = stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()
            return ours and os.read(mark, 64) == name.encode()
        finally:
            os.close(mark)
    except OSError:
        return False
    finally:
        os.close(fd)


def sweep_top(top_fd: int) -> None:
    """Finish the deletions of whole stores whose process is gone (killed or interrupted
    half-way: nothing else ever removed them, snapshots of an instance already
    destroyed). Only in a top directory that is ours (as root: root's), through fds.

    Gone means the store's lock is free: the deleting process holds it (``flock`` on the
    store, which the rename keeps) until the store is removed. Not the pid in the name: a
    pid reused since (by a daemon that runs for months) kept a doomed store for as long,
    and a deletion run in another PID namespace, its pid not seen here, looked gone.

    A name alone proves nothing: the store of a data directory named
    ``.tmp-delete-<pid>-<hex>`` has that name too (its basename), and so could any
    directory put there by hand. So an entry goes only if it also carries the mark
    :func:`mark_doomed` wrote into it before the rename (:func:`_marked`): a file of the
    top directory's owner (as root: root's, which the store's owner cannot forge) that
    names the entry itself, in a directory that is not a data directory. Marking beats
    recording the name elsewhere (a state directory differs between root's environments
    and would need its own sweeping) and beats trusting ownership alone (as root, the
    doomed store is the server user's, as a user's own directory would be)."""
    if os.fstat(top_fd).st_uid != os.geteuid():
        return
    for name in os.listdir(top_fd):
        if _DOOMED_RE.match(name) and _marked(top_fd, name):
            with contextlib.suppress(OSError):
                _remove_if_free(top_fd, name)


def _remove_if_free(top_fd: int, name: str) -> None:
    """Remove entry ``name`` of the top directory unless its lock is held, holding it
    meanwhile (a second sweep at it leaves it alone)."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=top_fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # its deletion is under way
        ownerrm.remove_at(top_fd, name)  # the server user's store: as that user
    finally:
        os.close(fd)
