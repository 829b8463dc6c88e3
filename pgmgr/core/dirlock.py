"""One lock file per data directory, in the state directory, so that two pgmgr processes
never start, stop, initialize or change the same data directory at once (and lock files of
other purposes beside it: :func:`lock_file`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from pgmgr.core import paths

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


@contextlib.contextmanager
def lock(datadir: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the per-data-directory lock; other pgmgr processes wait up to ``timeout``
    (default :data:`WAIT`)."""
    with paths.flocked(
        _lock_path(datadir),
        exclusive=True,
        timeout=WAIT if timeout is None else timeout,
        busy=f"another pgmgr is working on {datadir}",
    ):
        yield


@contextlib.contextmanager
def queued(datadir: Path) -> Iterator[None]:
    """Keep ``datadir``'s lock file open (not locked) while the caller polls for the lock
    another way, as :func:`lock`'s own wait keeps it: who queues for an instance is told
    by its open lock file (``/proc/PID/fd``)."""
    try:
        fd = os.open(_lock_path(datadir), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:  # a read-only state filesystem without the file: nothing to show
        fd = -1
    try:
        yield
    finally:
        if fd >= 0:
            os.close(fd)


@contextlib.contextmanager
def try_lock(datadir: Path) -> Iterator[bool]:
    """Hold ``datadir``'s lock if it is free now: yields whether it is held."""
    with paths.flocked(_lock_path(datadir), exclusive=True, timeout=0, busy="") as got:
        yield got


def is_locked(datadir: Path) -> bool:
    """Whether another process holds ``datadir``'s lock now (a build still running)."""
    try:
        with paths.flocked(_lock_path(datadir), exclusive=True, timeout=0, busy="") as got:
            return not got
    except OSError:
        return False
