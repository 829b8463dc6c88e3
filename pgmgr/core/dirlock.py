"""One lock file per data directory, in the state directory, so that two pgmgr processes
never start, stop, initialize or change the same data directory at once (and lock files of
other purposes beside it: :func:`lock_file`).

A lock file exists only while it is used: its holder deletes it as it lets go (a suite that
made thousands of temporary instances left thousands of files in ``locks/``, for ever). So
the file a process waited on may be gone when it gets the lock, with a new one at the path
that a third process holds: a lock is only held once the open file is still the one at the
path (same device and inode) after ``flock`` (else it opens the path again), and only a
holder deletes the file, while it holds it. A file left by a killed holder is reused, and
deleted by the next holder. Each user's pgmgr has its own state directory, so it only ever
deletes its own lock files (root's pgmgr locks a server user's data directory in root's).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from _thread import allocate_lock  # threading's own lock, without importing threading
from collections.abc import Iterator
from pathlib import Path

from pgmgr.core import paths, testhook
from pgmgr.core.errors import Busy, PgmgrError

#: How long a command waits for another pgmgr holding an instance's lock (an export, a
#: snapshot's copy, another command) before it says the instance is busy.
WAIT = 30.0


def _lock_path(datadir: Path) -> Path:
    return lock_file(datadir, ".lock")


def lock_file(datadir: Path, suffix: str) -> Path:
    """A lock file of ``datadir`` in the state directory: ``.lock`` is the instance's (see
    :func:`lock`); others serve other purposes (``.attend``: :mod:`pgmgr.core.attend`)."""
    import hashlib  # only here: it costs ~2 ms to import

    key = hashlib.sha256(os.path.realpath(datadir).encode()).hexdigest()[:20]
    return paths.ensure_private_dir(paths.state_dir() / "locks") / f"{key}{suffix}"


def _open(path: Path, *, create: bool) -> tuple[int, bool]:
    """``path`` opened for ``flock`` (created 0600 with ``create``), and False; -1 if it
    is absent (without ``create``). A read-only or full state file system: an existing file
    still serializes; with none (deleted by its last holder), the ``locks`` directory itself
    is opened, and True: flocked instead, it serializes all who cannot make their file (a
    stop must still be able to stop), though not with one who made its own meanwhile."""
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        return os.open(path, flags | (os.O_CREAT if create else 0), 0o600), False
    except FileNotFoundError:
        if create:
            raise
        return -1, False
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES, errno.ENOSPC, errno.EDQUOT):
            raise
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW), False
        except FileNotFoundError:
            if not create:
                return -1, False
        try:
            return os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), True
        except OSError:
            raise e from None


def _at_path(fd: int, path: Path) -> bool:
    """Whether the open ``fd`` is still the file at ``path`` (not deleted by its holder
    while this process waited on it)."""
    st = os.fstat(fd)
    try:
        there = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (there.st_dev, there.st_ino)


@contextlib.contextmanager
def held(path: Path, *, timeout: float, busy: str, create: bool = True) -> Iterator[bool]:
    """Hold ``flock`` on the lock file ``path`` exclusively, polling for up to ``timeout``
    (0: yields False at once if it is taken); the file is deleted as the lock is let go.
    Without ``create``, an absent file is a free lock that is not taken (yields True: see
    :func:`is_locked`).

    :raises Busy: still taken after ``timeout`` (the message is ``busy``).
    """
    deadline = time.monotonic() + timeout
    while True:
        fd, whole = _open(path, create=create)
        if fd < 0:
            yield True
            return
        if whole:  # the locks directory: no file of its own to check or delete
            with _whole_held(fd, path, timeout, deadline, busy) as got:
                yield got
            return
        try:
            left = 0.0 if timeout == 0 else max(deadline - time.monotonic(), 1e-6)
            if not paths.flock_fd(fd, exclusive=True, timeout=left, busy=busy):
                yield False
                return
            testhook.pause("dirlock-locked")
            if not _at_path(fd, path):
                continue  # its holder deleted it meanwhile: the file at the path now
            testhook.pause("dirlock-held")
            try:
                yield True
            finally:
                with contextlib.suppress(OSError):  # a read-only file system: it stays
                    os.unlink(path)  # still held: no one else holds the file at the path
        finally:
            os.close(fd)
        return


class _Whole:
    """This process's flock of a ``locks`` directory (the fallback of :func:`_open`), shared
    by the locks it stands for: a command that holds two (a branch: its source's and its
    target's) waited for itself, for the whole timeout, then said another pgmgr was working.
    ``fd`` is -1 while the thread that made it still waits for the flock."""

    def __init__(self, path: Path) -> None:
        self.fd = -1
        self.paths: set[Path] = {path}


#: The ``locks`` directories this process holds, by (device, inode); guarded by ``_mutex``.
_wholes: dict[tuple[int, int], _Whole] = {}
_mutex = allocate_lock()  # (every command imports this module: status too)


@contextlib.contextmanager
def _whole_held(fd: int, path: Path, timeout: float, deadline: float, busy: str) -> Iterator[bool]:
    """Hold the ``locks`` directory, open as ``fd``, for the lock file ``path`` that could
    not be made, as :func:`held` holds a file (``timeout``, ``deadline``). When a lock of
    this process holds it already, it is shared; but not for the same ``path`` (another
    thread's), which is waited for as its file would be. One thread flocks it for all: the
    others wait for that. Takes ``fd`` over.

    :raises Busy: still taken at ``deadline`` (the message is ``busy``).
    """
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    mine: _Whole | None = None
    try:
        while mine is None:
            with _mutex:
                entry = _wholes.get(key)
                if entry is None:  # this thread flocks it
                    entry = mine = _wholes[key] = _Whole(path)
                elif entry.fd >= 0 and path not in entry.paths:
                    entry.paths.add(path)
                    mine = entry
            if mine is not None:
                break
            if timeout == 0:
                yield False
                return
            if time.monotonic() >= deadline:
                raise Busy(f"{busy} (waited {timeout:.0f} s)")
            time.sleep(0.01)  # another thread's flock is on its way, or its hold of path
        if mine.fd < 0:  # made here: flock it, then others may share it
            try:
                left = 0.0 if timeout == 0 else max(deadline - time.monotonic(), 1e-6)
                got = paths.flock_fd(fd, exclusive=True, timeout=left, busy=busy)
            except BaseException:
                _let_go(key, mine, path)
                raise
            if not got:
                _let_go(key, mine, path)
                yield False
                return
            # the flock is the entry's from here: if interrupted in between, the descriptor
            # stays open (the flock held until the process ends), never closed under it
            fd, mine.fd = -1, fd
        try:
            yield True
        finally:
            _let_go(key, mine, path)
    finally:
        if fd >= 0:
            os.close(fd)


def _let_go(key: tuple[int, int], mine: _Whole, path: Path) -> None:
    """``path`` no longer needs ``mine``: the last one out closes it (and so unlocks)."""
    with _mutex:
        mine.paths.discard(path)
        if mine.paths:
            return
        del _wholes[key]  # first: an interrupt then leaks the flock, never shares a lost one
        held, mine.fd = mine.fd, -1
    if held >= 0:
        os.close(held)


@contextlib.contextmanager
def lock(datadir: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the per-data-directory lock; other pgmgr processes wait up to ``timeout``
    (default :data:`WAIT`)."""
    with held(
        _lock_path(datadir),
        timeout=WAIT if timeout is None else timeout,
        busy=f"another pgmgr is working on {datadir}",
    ):
        yield


@contextlib.contextmanager
def queued(datadir: Path) -> Iterator[None]:
    """Keep ``datadir``'s lock file open (not locked) while the caller polls for the lock
    another way, as :func:`lock`'s own wait keeps it: who queues for an instance is told
    by its open lock file (``/proc/PID/fd``). Not created: absent, the lock is free (a
    file made here would outlive the wait; see the module docstring)."""
    try:
        fd = os.open(_lock_path(datadir), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:  # absent: nothing to queue behind
        fd = -1
    try:
        yield
    finally:
        if fd >= 0:
            os.close(fd)


@contextlib.contextmanager
def try_lock(datadir: Path) -> Iterator[bool]:
    """Hold ``datadir``'s lock if it is free now: yields whether it is held."""
    with held(_lock_path(datadir), timeout=0, busy="") as got:
        yield got


def is_locked(datadir: Path) -> bool:
    """Whether another process holds ``datadir``'s lock now (a build still running). No
    file is made for the question; a free one (a killed holder's) is deleted."""
    try:
        with held(_lock_path(datadir), timeout=0, busy="", create=False) as got:
            return not got
    except OSError:
        return False


#: What :func:`lock_file` names lock files with (``.waits`` files are notes, not locks).
LOCK_SUFFIXES = (".lock", ".attend")


def sweep() -> None:
    """Delete the lock files no one holds in this user's ``locks/``: a killed holder's (a
    temporary instance's data directory is never locked again), or an older pgmgr's, which
    kept one per data directory for ever. Each is deleted as a holder deletes it (see the
    module docstring); one held, or waited on and taken meanwhile, stays."""
    try:
        where = paths.state_dir() / "locks"
        names = os.listdir(where)
    except (OSError, PgmgrError):  # none yet; an unusable state directory: said elsewhere
        return
    for name in names:
        if name.endswith(LOCK_SUFFIXES) and name != "registry.lock":
            with contextlib.suppress(OSError), held(where / name, timeout=0, busy="", create=False):
                pass
