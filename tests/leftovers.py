"""What a killed test run left behind, removed by the next run.

A run that ends (passed or failed) removes its directories and stops its servers; one
killed (SIGKILL, a CI timeout's second signal, a machine reset) cannot. Every run's
controller holds a shared ``flock`` on the directory ``/tmp`` itself for its lifetime (the
kernel drops it when the process dies, however it dies; a lock file would be one more thing
left in /tmp). A run that starts while no other run holds it (it gets the lock exclusively)
knows that every test directory of this user is a dead run's: it stops the servers in them,
removes them, then holds the lock shared like the others. While another run is alive (of
any user) nothing is swept.

Only this suite's own directory names (:data:`PREFIXES`) in /tmp, /dev/shm and
``PGMGR_TEST_TMP``, owned by this user, never followed through a symlink.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import stat
import time
from pathlib import Path

from tests.helpers import kill_postmasters, postgres_pids_under

#: The names this suite's fixtures and tests give their top-level directories.
PREFIXES = (
    f"pytest-of-{getpass.getuser()}-",
    "pgmgr-cli-",
    "pgmgr-ops-",
    "pgmgr-test-",
    "pgmgr-rel-",
    "pgmgr-snap-",
    "pgmgr-speed-",
    "pgmgr-hook-",
    "pgmgr-link-",
    "pgs-",
    ".pgmgr-test-graves-",  # tests.helpers.Graveyard: what a killed run had not deleted yet
)

_held: list[int] = []


def places() -> list[Path]:
    found = [Path("/tmp"), Path("/dev/shm")]
    forced = os.environ.get("PGMGR_TEST_TMP")
    if forced:
        found.append(Path(forced))
    return found


def hold_and_sweep(path: str | None = None, where: list[Path] | None = None) -> list[Path]:
    """Take this run's share of the lock on the directory ``path`` (default /tmp; kept
    until the process exits), sweeping ``where`` (default: :func:`places`) first when no
    other run holds it; the directories removed. ``PGMGR_TEST_NO_SWEEP=1`` takes the lock
    but sweeps nothing."""
    try:
        fd = os.open(path or "/tmp", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return []
    swept: list[Path] = []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another run is alive: its directories are not ours to judge
        pass
    else:
        if os.environ.get("PGMGR_TEST_NO_SWEEP") != "1":
            swept = sweep(places() if where is None else where)
            if where is None:
                drop_dead_segments()
    deadline = time.monotonic() + 120
    while True:  # not a blocking flock: whoever holds /tmp exclusively must not hang us
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            break
        except BlockingIOError:  # another run sweeping (seconds), or a stranger
            if time.monotonic() > deadline:
                os.close(fd)  # run unguarded: a sweep may not know this run is alive
                return swept
            time.sleep(0.1)
    _held.append(fd)
    return swept


def sweep(where: list[Path]) -> list[Path]:
    """Stop the servers in every test directory of this user in ``where`` and remove them
    (call with the lock held exclusively: no run is alive)."""
    from tests.conftest import _rmtree

    swept = []
    for place in where:
        try:
            names = os.listdir(place)
        except OSError:
            continue
        for name in names:
            if not name.startswith(PREFIXES):
                continue
            path = place / name
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                    continue
                kill_postmasters(postgres_pids_under(path))
                _unmount_under(path)
                _rmtree(path)
                swept.append(path)
    return swept


def _unmount_under(path: Path) -> None:
    """Unmount what a killed run mounted under ``path`` (as root, a test's small tmpfs: a
    full disk), deepest first: its files cannot be removed through a mount, and the mount
    would outlive the directory. Lazily if busy."""
    import subprocess

    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            points = [line.split()[1] for line in f if len(line.split()) > 1]
    except OSError:
        return
    # /proc/self/mounts escapes a space, tab, newline and backslash as octal
    points = [p.encode().decode("unicode_escape") for p in points]
    top = str(path) + "/"
    for point in sorted((p for p in points if p.startswith(top)), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def drop_dead_segments(where: Path = Path("/dev/shm")) -> list[str]:
    """Remove the dynamic shared memory segments (``PostgreSQL.*``) of servers no longer
    running: a killed run's servers, killed by :func:`sweep` or before, cannot remove
    theirs. Only those no process maps, and older than every running ``postgres`` (a live
    server's pinned segments are mapped by none, but made after it started); another
    user's are left where they may not be deleted. The names removed."""
    from tests.conftest import _mapped_segments, _oldest_postgres_start

    try:
        names = [n for n in os.listdir(where) if n.startswith("PostgreSQL.")]
    except OSError:
        return []
    oldest = _oldest_postgres_start()
    mapped = _mapped_segments()
    removed = []
    for name in names:
        if name in mapped:
            continue
        with contextlib.suppress(OSError):
            if os.lstat(where / name).st_mtime < oldest - 1:
                os.unlink(where / name)
                removed.append(name)
    return removed
