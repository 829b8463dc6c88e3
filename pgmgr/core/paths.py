"""Where pgmgr keeps its files.

``PGMGR_STATE_DIR``, ``PGMGR_CACHE_DIR`` and ``PGMGR_CONFIG_DIR`` override the platformdirs
defaults, so tests and sandboxes never touch a real home directory.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from pgmgr.core import testhook
from pgmgr.core.errors import PgmgrError, UsageError, doing

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from typing import Any


def state_dir() -> Path:
    """Instance records, logs and locks (``PGMGR_STATE_DIR`` overrides).

    :raises UnsafePlace: it is not private (see :func:`check_private_place`).
    """
    env = os.environ.get("PGMGR_STATE_DIR")
    if env:
        path = Path(env).expanduser().absolute()
    else:
        import platformdirs

        path = Path(platformdirs.user_state_dir("pgmgr"))
    return check_private_place(path, "state", "PGMGR_STATE_DIR")


def cache_dir() -> Path:
    """Version cache and data-directory templates (``PGMGR_CACHE_DIR`` overrides).

    :raises UnsafePlace: it is not private (see :func:`check_private_place`).
    """
    env = os.environ.get("PGMGR_CACHE_DIR")
    if env:
        path = Path(env).expanduser().absolute()
    else:
        import platformdirs

        path = Path(platformdirs.user_cache_dir("pgmgr"))
    return check_private_place(path, "cache", "PGMGR_CACHE_DIR")


class UnsafePlace(PgmgrError):
    """A state or cache directory that another user could change (as ``~/.ssh``, refused)."""

    def __init__(self, path: Path, what: str, why: str, fix: str) -> None:
        self.path = path
        self.why = why
        super().__init__(f"refusing the {what} directory {path}: it {why}", hint=fix)


#: Directories found private by this process (they stay so: only their owner could change
#: that), so that the check costs one walk per process and not one per call.
_PRIVATE: set[str] = set()


def check_private_place(path: Path, what: str, env: str) -> Path:
    """``path`` if only the invoking user (and root) can change it: not a symlink, owned by
    the invoking user, not writable by group or others, and inside directories no other user
    can write (sticky ``/tmp`` is fine). A directory not made yet only needs private parents.
    And pgmgr's alone: not a system directory, the user's home or in a PostgreSQL data
    directory (:func:`shared_place`).

    :raises UnsafePlace: it is not; the error names the directory and the fix.
    """
    key = str(path)
    if key in _PRIVATE:
        return path
    import stat

    from pgmgr.core import userfs

    me = os.geteuid()
    elsewhere = f"or set {env} to a directory of your own that only you can write"
    refusal = shared_place(path, env)
    if refusal:
        raise UnsafePlace(path, what, *refusal)
    why = fix = ""
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:  # not reachable: a file on the way, a directory it cannot enter
        if what != "state":  # an unusable cache only costs speed: its users say so
            return path
        from pgmgr.core import dirpath

        why = dirpath.blocker(path) or e.strerror or str(e)
        raise PgmgrError(
            f"cannot use {path} as pgmgr's {what} directory: {why}",
            hint=f"set {env} to a directory of your own",
        ) from None
    if st is not None and stat.S_ISLNK(st.st_mode):
        why, fix = "is a symlink", f"set {env} to the real directory ({os.path.realpath(path)})"
    elif st is not None and st.st_uid != me:
        why = f"belongs to {_user_name(st.st_uid)}, not to you ({_user_name(me)})"
        fix = f"remove it if you do not know who made it, {elsewhere}"
    elif st is not None and st.st_mode & 0o022:
        why = f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
        fix = f"chmod go-w {path}, {elsewhere}"
    elif userfs.others_can_write(path):
        why = "lies in a directory that another user can write"
        fix = f"move it, {elsewhere}"
    if why:
        raise UnsafePlace(path, what, why, fix)
    if st is not None:
        _PRIVATE.add(key)
    return path


#: Directories that hold the system's files: never pgmgr's state or cache directory. Root
#: owns them and no one else can write them, so as root they passed every other check, and
#: ``PGMGR_STATE_DIR=/`` put pgmgr's ``locks``, ``logs`` and ``instances`` in ``/``.
_SYSTEM_DIRS = """
    / /bin /boot /dev /etc /home /lib /lib32 /lib64 /libx32 /media /mnt /opt /proc /root /run
    /sbin /srv /sys /tmp /usr /usr/bin /usr/include /usr/lib /usr/lib64 /usr/libexec /usr/local
    /usr/sbin /usr/share /usr/src /var /var/cache /var/lib /var/log /var/mail /var/opt /var/run
    /var/spool /var/tmp
"""
SYSTEM_DIRS = frozenset(_SYSTEM_DIRS.split())


#: What pgmgr makes in its state and cache directories.
OWN_NAMES = frozenset({"instances", "locks", "logs", "pgpass", "templates", "binaries.json"})


def shared_place(path: Path, env: str) -> tuple[str, str] | None:
    """Why ``path`` is not pgmgr's alone, and the fix (for its refusal; ``env`` names the
    variable that chose it), or None: one of :data:`SYSTEM_DIRS` (symlinks resolved), a
    place in the kernel's ``/proc`` or ``/sys``, a PostgreSQL data directory or a place in
    one (:func:`_data_dir_around`), or the invoking user's home directory itself while it
    holds files and none of pgmgr's (a service account whose home is pgmgr's directory is
    fine)."""
    real = os.path.realpath(path)
    via = f" ({real})" if real != os.path.normpath(path) else ""
    alone = "not one for pgmgr alone"
    fix = f"set {env} to a directory for pgmgr alone (made if missing)"
    if real in SYSTEM_DIRS or real.startswith(("/proc/", "/sys/")):
        return f"is a system directory{via}, {alone}", fix
    datadir = _data_dir_around(real)
    if datadir is not None:
        where = "" if datadir == real else "in "
        return (
            f"is {where}the PostgreSQL data directory {datadir}, which a restore or an "
            "upgrade replaces whole, with pgmgr's files in it",
            f"move it out of {datadir} and set {env} to its new place"
            if where
            else f"move pgmgr's files out of {datadir} into a new directory and set {env} to it",
        )
    import pwd

    homes = {os.path.expanduser("~")}
    with contextlib.suppress(KeyError):
        homes.add(pwd.getpwuid(os.geteuid()).pw_dir)
    if real not in {os.path.realpath(h) for h in homes if h and h != "~"}:
        return None
    try:
        names = os.listdir(real)
    except OSError:
        return None
    if names and OWN_NAMES.isdisjoint(names):
        return f"is your home directory{via}, {alone}", fix
    return None


def _data_dir_around(real: str) -> str | None:
    """The PostgreSQL data directory (``PG_VERSION`` and ``global``) that is ``real`` or
    holds it, if any. A stat or two per level, once per process."""
    place = real
    while True:
        if os.path.isfile(os.path.join(place, "PG_VERSION")) and os.path.isdir(
            os.path.join(place, "global")
        ):
            return place
        parent = os.path.dirname(place)
        if parent == place:
            return None
        place = parent


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def config_dir() -> Path:
    """The user's settings, e.g. the default version (``PGMGR_CONFIG_DIR`` overrides)."""
    env = os.environ.get("PGMGR_CONFIG_DIR")
    if env:
        return Path(env).expanduser().absolute()
    import platformdirs

    return Path(platformdirs.user_config_dir("pgmgr"))


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
        try:
            with doing("create the directory"):
                directory.mkdir(mode=0o700)
        except FileExistsError:
            continue  # someone else's: checked where it matters
        # made private by us: no need to check it again in this process (nor in a child
        # that became the server user, to whom it does not belong)
        _PRIVATE.add(str(directory))
    return path


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same dir, fsync, rename."""
    ensure_private_dir(path.parent)
    with doing("create the temporary file"):  # it names the new file, not its directory
        fd, tmp = _new_temp(path)
    try:
        with doing("write", path), os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        testhook.pause(f"write-{path.name}")  # tests: a kill -9 leaves the temporary file
        with doing("rename"):
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _new_temp(path: Path) -> tuple[int, str]:
    """A new file ``.NAME.<random>`` next to ``path``, made as tempfile.mkstemp makes one
    (O_EXCL, O_NOFOLLOW, mode 0600) without importing tempfile: with random and shutil
    ~4 ms of every 'pgmgr stop'."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{os.urandom(6).hex()}")
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {path}")


#: Room a record needs at least (a few kB; one block of most filesystems): less than this
#: free, and a write of it fails.
RECORD_ROOM = 64 * 1024


#: The end of the hint of :func:`check_writable` for the state directory.
STATE_ELSEWHERE = "PGMGR_STATE_DIR chooses another place"


def check_writable(directory: Path, action: str, also: str | None = None) -> None:
    """:raises PgmgrError: files cannot be written in ``directory`` (or, while it does
    not exist, in the nearest directory above it) now: a read-only filesystem, no write
    permission, or a full disk. Checked before an operation that would otherwise fail
    half-way (``action``: what is refused), so that it changes nothing. ``also`` ends
    the hint. (Only a check: the writes themselves still say why they failed.)"""
    place = directory
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        st = os.statvfs(place)
    except OSError as e:
        code = e.errno or errno.EIO
    else:
        free = (st.f_bavail if os.geteuid() else st.f_bfree) * st.f_frsize
        if st.f_flag & os.ST_RDONLY:
            code = errno.EROFS
        elif not os.access(place, os.W_OK | os.X_OK):
            code = errno.EACCES
        elif free < RECORD_ROOM or (st.f_files and not st.f_favail):
            code = errno.ENOSPC
        else:
            return
    hint = "free some space there" if code == errno.ENOSPC else "make it writable"
    raise PgmgrError(
        f"cannot {action}: pgmgr cannot write in {place} ({os.strerror(code)}); "
        "nothing was changed",
        hint=hint + (f"; {also}" if also else ""),
    )


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def flocked(path: Path, *, exclusive: bool, timeout: float, busy: str) -> Iterator[bool]:
    """Hold ``flock`` on ``path`` (created 0600), polling every 10 ms for up to ``timeout``.

    Yields False at once when ``timeout`` is 0 and the lock is taken.

    :raises Busy: still taken after ``timeout`` (the message is ``busy``).
    """
    try:
        with doing("open the lock file"):  # one made a directory: say which file
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
        yield flock_fd(fd, exclusive=exclusive, timeout=timeout, busy=busy)
    finally:
        os.close(fd)


def flock_fd(fd: int, *, exclusive: bool, timeout: float, busy: str) -> bool:
    """``flock`` the open ``fd`` (held until it is closed), polling every 10 ms for up to
    ``timeout``; False at once when ``timeout`` is 0 and the lock is taken.

    :raises Busy: still taken after ``timeout`` (the message is ``busy``).
    """
    import fcntl

    from pgmgr.core.errors import Busy

    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, mode)
            return True
        except BlockingIOError:
            if timeout == 0:
                return False
            if time.monotonic() >= deadline:
                raise Busy(f"{busy} (waited {timeout:.0f} s)") from None
            time.sleep(0.01)


def check_path_text(path: Path, what: str) -> Path:
    """``path`` if pgmgr can record and hand it to PostgreSQL: valid UTF-8 (records are
    JSON), no line break (postmaster.pid is line-based), no NUL.

    :raises UsageError: it cannot.
    """
    text = str(path)
    try:
        text.encode()
    except UnicodeEncodeError:
        shown = text.encode(errors="surrogateescape").decode(errors="backslashreplace")
        raise UsageError(
            f"invalid {what} {shown!r}: the path is not valid UTF-8",
            hint="rename it, or use a path whose name is valid UTF-8",
        ) from None
    if "\n" in text or "\r" in text or "\0" in text:
        bad = "a NUL byte" if "\0" in text else "a line break"  # only a library caller's
        raise UsageError(f"invalid {what} {text!r}: it holds {bad}")
    return path
