"""Sweeping what killed pgmgr processes left behind in the temp directory.

A ``pgmgr run`` (or pytest plugin) server dies with its pgmgr, even on SIGKILL (see
``server.spawn(die_with_parent=True)``), but its directory cannot remove itself: each one
names its owner (``pgmgr.owner``: pid and start time), and the next temporary instance
removes those whose owner is gone and that no process works in. initdb's password dirs
and the settings check's dirs (``pgmgr-pw-<pid>-*``, ``pgmgr-cfg-<pid>-*``) are swept once
their pid is gone, if they are ours or the server user's: anyone can choose such a name.

A pid alone cannot tell a live run everywhere: a pgmgr in another PID namespace that
shares this temp dir (a container with the host's /tmp) has a pid that is gone here, or
another process's. So each run also holds its directory with a shared ``flock`` for as
long as it lives (:func:`hold`), and a directory held so is never swept, whatever its name
or owner file say (the kernel sees every namespace's locks).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path

from pgmgr.core import numtext, process
from pgmgr.core.errors import PgmgrError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pgmgr.core.privileges import ServerUser

#: In each temporary directory: ``<pid> <start time>`` of the pgmgr process that owns it.
OWNER_FILE = "pgmgr.owner"
#: Name prefixes of temporary directories (``pgmgr run``, the pytest plugin) that are swept.
SWEPT_PREFIXES = ("pgmgr-run-", "pgmgr-pytest-")
#: Short-lived directories named ``<prefix><pid>-*`` (initdb's password file, the settings
#: check of ``start --init``, an import's copy of an archive, an upgrade's socket dir):
#: swept once that pid is gone.
PID_PREFIXES = ("pgmgr-pw-", "pgmgr-cfg-", "pgmgr-imp-", "pgmgr-up-")


#: A directory opened to be held or removed: never through a symlink, never inherited by a
#: program a thread of the process runs meanwhile (it would hold the lock on).
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def hold(path: str | Path, uid: int | None = None) -> int:
    """Hold directory ``path``, made by this run, until the returned fd is closed (or this
    process and every child that inherited it are gone): :func:`dead_runs` never removes
    it meanwhile (see the module doc). Close-on-exec: a server or tool it runs does not
    keep it held after this run.

    :param uid: whose it must be, checked before the wait for its lock: another user's
        directory swapped in, whose owner holds it, would keep that wait going for ever.
    :raises PgmgrError: it is not ``uid``'s.
    """
    fd = os.open(path, _DIR_FLAGS)
    try:
        if uid is not None and os.fstat(fd).st_uid != uid:
            raise replaced(Path(path))
        fcntl.flock(fd, fcntl.LOCK_SH)  # a sweep removing it: until it is gone
    except BaseException:
        os.close(fd)
        raise
    return fd


def release(fd: int | None) -> None:
    """Close an fd :func:`hold` returned (None: nothing held). Never raises."""
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _held(fd: int) -> bool:
    """Whether a live run holds the directory open as ``fd`` (:func:`hold`)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    return False


def make_dir(prefix: str, parent: str | None = None) -> tuple[Path, int]:
    """A new private directory (``tempfile.mkdtemp``) in ``parent`` (default: the temp
    dir), held (:func:`hold`) from the moment it is found under its name: returns it and
    the fd to :func:`release`. As root, never where a user other than root can write
    (``TMPDIR`` in a user's directory): that user could swap it for a symlink before root
    writes into it or chowns it, and have root do so wherever they point it. /tmp then
    (root's, sticky).

    Until it is held, a new directory is one a sweep cannot tell from a killed run's (no
    owner file, not held, its pid maybe in another namespace), and may remove: the maker
    sees that (the name no longer leads to what it holds) and makes another. So nothing
    made is ever left unclaimed, however early its maker is killed.

    :raises PgmgrError: the new directory was swapped for something else (another user
        can write ``parent``), or swept away each time.
    """
    import tempfile

    from pgmgr.core import userfs

    for _attempt in range(20):
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        if os.geteuid() == 0 and userfs.others_can_write(path):
            with contextlib.suppress(OSError):  # a symlink swapped in: not a directory, left
                os.rmdir(path)
            path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        try:
            fd = hold(path, os.geteuid())
        except FileNotFoundError:
            continue  # swept before it was held: made again
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):  # a symlink or a file swapped in
                raise replaced(path) from None
            raise
        if still_named(fd, path):
            return path, fd
        release(fd)  # swept while it was being held: made again
    where = parent or tempfile.gettempdir()
    raise PgmgrError(f"cannot make a temporary directory in {where}: removed as soon as made")


def replaced(path: Path) -> PgmgrError:
    return PgmgrError(
        f"{path} was replaced while it was made: another user can write {path.parent}",
        hint="use a temporary directory only you can write (TMPDIR), or a sticky one",
    )


def still_named(fd: int, path: Path) -> bool:
    """Whether ``path`` (not followed) is still the directory open as ``fd``."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def owner_token(pid: int) -> str:
    started = process.start_time(pid)
    return f"{pid} {started or 0:.0f}\n"


def _owner_alive(base: Path) -> bool:
    """Whether the pgmgr process named in ``base``'s owner file still runs (same pid, same
    start time: a reused pid is another process). No readable file: gone (its maker holds
    it before it writes that file, see :func:`make_dir`, and the caller checks that no one
    holds it before it removes it)."""
    try:
        pid_text, started = (base / OWNER_FILE).read_text().split()
        pid = numtext.whole(pid_text)
        float(started)
    except (OSError, ValueError):
        return False
    if pid is None:
        return False
    if not process.is_alive(pid):
        return False
    now = process.start_time(pid)
    return now is None or abs(now - float(started)) <= 2


def _in_use(base: Path) -> bool:
    """Some live process works in ``base``: its working directory is there (postgres, its
    backends) or an argument names it (``initdb -D``, which works from ``/``)."""
    prefix = os.path.realpath(base) + os.sep
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            places = [os.readlink(f"/proc/{entry}/cwd"), *process.cmdline(int(entry))]
            named = any((p + os.sep).startswith(prefix) or prefix in p for p in places)
            if named and process.is_alive(int(entry)):
                return True
    return False


def dead_runs(user: ServerUser | None = None, also: str | None = None) -> list[Path]:
    """Remove the temporary directories of pgmgr processes that died without cleaning up
    (SIGKILL, a power cut): ours (same owner, not a symlink), their owner gone and no
    process working in them, in the temp dirs and in ``also`` (where the caller makes its
    own: the pytest plugin's /dev/shm or ``pgmgr_tmpdir``, which no other sweep visits).
    Their servers died with their pgmgr (``die_with_parent``).
    The short-lived ``<prefix><pid>-*`` ones (:data:`PID_PREFIXES`) may be the server
    user's (as root, pgmgr hands them over or makes them as that user): those of ``user``
    go too, through fds (that user may not reach a private temp dir of root's); another
    user's directory of such a name (anyone can choose it) is never touched.

    :returns: what was removed.
    """

    removed = []
    me = os.geteuid()
    from pgmgr.core.sockets import temp_base_for, temp_dirs

    # Where ``user``'s runs made theirs: /tmp when it cannot write the temp dir (root's,
    # private: TMPDIR=/tmp/user/0), which temp_dirs() leaves out under such a TMPDIR.
    places = [*temp_dirs(), *([temp_base_for(user)] if user is not None else [])]
    if also and os.path.realpath(also) not in map(os.path.realpath, places):
        places.append(also)
    for parent in dict.fromkeys(places):
        try:
            entries = [n for n in os.listdir(parent) if n.startswith("pgmgr-")]
        except OSError:
            continue
        names = [n for n in entries if n.startswith(SWEPT_PREFIXES)]
        for name in [n for n in entries if n.startswith(PID_PREFIXES)]:
            if not _pw_dir_dead(name):
                continue
            with contextlib.suppress(OSError, PgmgrError):
                uid = os.lstat(os.path.join(parent, name)).st_uid
                if uid != me and (user is None or uid != user.uid):
                    continue  # another user's (who may choose any name): never touched
                _remove_pid_dir(parent, name, uid)
                removed.append(Path(parent) / name)
        for name in names:
            base = Path(parent) / name
            try:
                st = base.lstat()
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != me:
                continue
            if _owner_alive(base) or _in_use(base):
                continue
            with contextlib.suppress(OSError, PgmgrError):
                _remove_run_dir(parent, name)
                removed.append(base)
    return removed


def _pw_dir_dead(name: str) -> bool:
    """``pgmgr-{pw,cfg,imp,up}-<pid>-*`` of a pgmgr process that is gone."""
    pid = name.split("-")[2]
    number = numtext.whole(pid)
    return number is not None and not process.is_alive(number)


def _remove_pid_dir(parent: str, name: str, uid: int) -> None:
    """Remove directory ``parent/name`` if it is ``uid``'s, through fds: opened without
    following a symlink, its owner checked on the fd (not a name that may have been
    swapped since), emptied through it, then removed (``rmdir``: refused if something
    else took its place meanwhile). As root, a server user's is emptied as that user
    (:mod:`pgmgr.core.ownerrm`): root removed what the user could not (a third user's
    files in it)."""
    from pgmgr.core import ownerrm, userfs

    with userfs.opened_dir(parent) as parent_fd:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        try:
            if os.fstat(fd).st_uid != uid:
                raise PermissionError(f"{name} is not uid {uid}'s")
            if _held(fd):  # a live run whose pid is not ours to see
                raise BlockingIOError(f"{name} is held by a live run")
            ownerrm.empty(fd)
            # still locked: a maker that has just made it waits, then makes another
            ownerrm.remove_at(parent_fd, name)
        finally:
            os.close(fd)


def _remove_run_dir(parent: str, name: str) -> None:
    """Remove ``parent/name`` through fds, its owner file last: a removal that fails half
    way leaves a directory the next sweep still recognizes and retries. As root, what the
    server user owns in it (its data directory, socket dir) is emptied as that user
    (:mod:`pgmgr.core.ownerrm`)."""
    from pgmgr.core import ownerrm, userfs

    with userfs.opened_dir(parent) as parent_fd:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        try:
            if _held(fd):  # a live run whose pid is not ours to see
                raise BlockingIOError(f"{name} is held by a live run")
            for entry in os.listdir(fd):
                if entry != OWNER_FILE:
                    ownerrm.remove_at(fd, entry)
            # still locked: a maker that has just made it waits, then makes another
            ownerrm.remove_at(parent_fd, name)
        finally:
            os.close(fd)
