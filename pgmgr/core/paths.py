"""Where pgmgr keeps its files.

``PGMGR_STATE_DIR`` and ``PGMGR_CACHE_DIR`` override the platformdirs defaults, so tests and
sandboxes never touch a real home directory.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def state_dir() -> Path:
    """Instance records, logs and locks (``PGMGR_STATE_DIR`` overrides)."""
    env = os.environ.get("PGMGR_STATE_DIR")
    if env:
        return Path(env).expanduser().absolute()
    import platformdirs

    return Path(platformdirs.user_state_dir("pgmgr"))


def cache_dir() -> Path:
    """Version cache and data-directory templates (``PGMGR_CACHE_DIR`` overrides)."""
    env = os.environ.get("PGMGR_CACHE_DIR")
    if env:
        return Path(env).expanduser().absolute()
    import platformdirs

    return Path(platformdirs.user_cache_dir("pgmgr"))


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed, mode 0700 for every directory made here.

    Parents too: a state directory left group- or world-writable by the umask would let
    another user swap in their own ``instances`` directory (records name the binaries).
    Existing directories are left as they are.
    """
    missing = []
    parent = path
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True, mode=0o700)
    return path


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same dir, fsync, rename."""
    import tempfile

    ensure_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def flocked(path: Path, *, exclusive: bool, timeout: float, busy: str) -> Iterator[bool]:
    """Hold ``flock`` on ``path`` (created 0600), polling every 10 ms for up to ``timeout``.

    Yields False at once when ``timeout`` is 0 and the lock is taken.

    :raises Busy: still taken after ``timeout`` (the message is ``busy``).
    """
    import fcntl

    from pgmgr.core.errors import Busy

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES, errno.ENOSPC, errno.EDQUOT):
            raise
        # A read-only or full state filesystem: flock works on a read-only fd too, so an
        # existing lock file still serializes (a stop must still be able to stop).
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            raise e from None
    try:
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, mode)
                break
            except BlockingIOError:
                if timeout == 0:
                    yield False
                    return
                if time.monotonic() >= deadline:
                    raise Busy(f"{busy} (waited {timeout:.0f} s)") from None
                time.sleep(0.01)
        yield True
    finally:
        os.close(fd)
