"""Where an instance's unix socket lives, so that socket directories cannot pile up.

- The data directory itself, when ``<datadir>/.s.PGSQL.<port>`` fits in the 107-byte socket
  path limit (nearly always): nothing is created, nothing can leak, and the directory is
  already private (0700, the server user's).
- Else ``<runtime>/<hash of the data dir>``, one per data directory, reused by every start,
  under a per-user runtime directory: ``$XDG_RUNTIME_DIR/pgmgr`` (not as root), else
  ``<temp dir>/pgmgr-<uid>``; each is verified before use (a real directory, not a symlink,
  owned by the server user, mode 0700), else pgmgr falls back to a fresh private directory.
- A directory named with ``--socket-dir`` is used as given, and a recorded one that is
  neither of the above (the user's own choice) is reused while it is still private.

Stale socket directories of older pgmgr versions (``<temp>/pgmgr-XXXXXXXX``) and stale
per-instance directories under the runtime directory are swept at start.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import time
from pathlib import Path

from pgmgr.core import process
from pgmgr.core.errors import PgmgrError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pgmgr.core.privileges import ServerUser

SOCKET_PATH_MAX = 107
#: A private socket dir made by ``tempfile.mkdtemp(prefix="pgmgr-")`` (pgmgr before 0.2).
LEGACY_RE = re.compile(r"^pgmgr-[a-z0-9_]{8}$")
#: Directories younger than this are never swept: their start may be under way.
SWEEP_AGE = 60.0


def fits(directory: Path | str, port: int) -> bool:
    return len(f"{directory}/.s.PGSQL.{port}") <= SOCKET_PATH_MAX


def _uid(user: ServerUser | None) -> int:
    return user.uid if user is not None else os.geteuid()


def private_ok(path: Path, user: ServerUser | None) -> bool:
    """A real directory (not a symlink), owned by the server user, mode 0700."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == _uid(user) and st.st_mode & 0o777 == 0o700


def runtime_base(user: ServerUser | None) -> Path:
    """The per-user runtime directory for sockets (not created here)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if user is None and xdg and os.path.isabs(xdg) and private_ok(Path(xdg), None):
        return Path(xdg) / "pgmgr"
    import tempfile  # here: a stop (removable) needs none of it, ~4 ms with random, shutil

    tmp = Path(tempfile.gettempdir())
    name = f"pgmgr-{_uid(user)}"
    if not fits(tmp / name / ("h" * 16), 65535):
        tmp = Path("/tmp")  # noqa: S108 - a private, verified directory is made inside
    return tmp / name


def instance_dir_name(datadir: Path) -> str:
    return hashlib.sha256(os.fsencode(os.path.realpath(datadir))).hexdigest()[:16]


def _ensure_private(path: Path, user: ServerUser | None) -> bool:
    """Make ``path`` (0700, the server user's) unless it exists; True if it is private."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return private_ok(path, user)
    except OSError:
        return False
    from pgmgr.core import testhook

    testhook.pause("runtime-dir-made")
    # Through an O_NOFOLLOW fd of it, not by path: as root, in a temp dir another user
    # can write, a symlink swapped in for it got root to chmod and chown its target.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            return False
        os.fchmod(fd, 0o700)
        if user is not None:
            os.fchown(fd, user.uid, user.gid)
    finally:
        os.close(fd)
    return private_ok(path, user)


def default_dir(datadir: Path, port: int, user: ServerUser | None) -> Path | None:
    """The data directory, else the instance's directory under the runtime base; None when
    neither can be used (the caller makes a fresh private directory)."""
    if fits(datadir, port) and '"' not in str(datadir):  # -k cannot quote a '"'
        return datadir
    base = runtime_base(user)
    if not _ensure_private(base, user):
        return None
    path = base / instance_dir_name(datadir)
    if not fits(path, port):
        return None
    from pgmgr.core import userfs

    # Inside the server user's directory: made by that user (DESIGN.md, trust boundaries).
    ok = userfs.as_user(user if os.geteuid() == 0 else None, _ensure_private, path, None)
    return path if ok else None


def is_managed(socket_dir: str | Path | None, datadir: Path) -> bool:
    """A socket dir pgmgr chose itself (the data dir, a runtime or legacy private dir)."""
    if not socket_dir:
        return False
    path = Path(socket_dir)
    return (
        os.path.realpath(path) == os.path.realpath(datadir)
        or path.name == instance_dir_name(datadir)
        or bool(LEGACY_RE.match(path.name))
    )


def removable(socket_dir: str | Path | None, datadir: Path) -> Path | None:
    """The directory that forget/destroy may remove with the instance: its own directory
    under the runtime base or a legacy ``pgmgr-XXXXXXXX``; never the data directory (the
    socket is inside it), never a directory the user named."""
    if not socket_dir or os.path.realpath(socket_dir) == os.path.realpath(datadir):
        return None
    path = Path(socket_dir)
    if path.name == instance_dir_name(datadir) or LEGACY_RE.match(path.name):
        return path
    return None


# --------------------------------------------------------------------------- sweeping


def _live_lock(directory: int) -> bool:
    """Some ``.s.PGSQL.*.lock`` in the directory names a live process."""
    for name in os.listdir(directory):
        if not name.endswith(".lock"):
            continue
        with contextlib.suppress(OSError, ValueError):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
            try:
                pid = int(os.read(fd, 64).split(b"\n")[0])
            finally:
                os.close(fd)
            if process.is_alive(pid):
                return True
    return False


def _stale(parent_fd: int, name: str) -> bool:
    """Only socket files, no live lock, and old enough."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
    try:
        st = os.fstat(fd)
        if time.time() - st.st_mtime < SWEEP_AGE:
            return False
        if any(not n.startswith(".s.PGSQL.") for n in os.listdir(fd)):
            return False
        return not _live_lock(fd)
    finally:
        os.close(fd)


def temp_dirs() -> list[str]:
    """Where pgmgr makes temporary directories: the temp dir, and /tmp (the fallback for
    short socket paths) unless ``TMPDIR`` points elsewhere (a sandbox, a test)."""
    import tempfile

    here = tempfile.gettempdir()
    return [here] if os.environ.get("TMPDIR") or here == "/tmp" else [here, "/tmp"]  # noqa: S108


def temp_base_for(user: ServerUser | None, make: bool = True) -> str:
    """The temp dir, if ``user`` may reach it and (``make``) make a directory there; else
    /tmp. As root the temp dir is root's, maybe private (``TMPDIR=/tmp/user/0``, 0700,
    with pam_tmpdir, or one inside root's home): an upgrade's socket dir, made there as
    the server user, failed ("Permission denied"), and the server user's ``postgres -C``
    of ``start --init -c`` (a directory root makes and gives it: ``make=False``) was
    pointed at a directory it could not enter."""
    import tempfile

    from pgmgr.core.privileges import _can, blocking_dir

    base = tempfile.gettempdir()
    try:
        st = os.stat(base)
    except OSError:
        return "/tmp"  # noqa: S108 - a private directory is made inside
    if user is None:
        return base
    writes = _can(st, user, 2) or not make
    if writes and _can(st, user, 1) and blocking_dir(Path(base), user) is None:
        return base
    return "/tmp"  # noqa: S108 - a private directory is made inside


def sweep(user: ServerUser | None, keep: Path | None = None) -> list[Path]:
    """Remove stale socket directories: legacy ``pgmgr-XXXXXXXX`` ones in the temp dirs
    and per-instance ones under the runtime base, when they are ours (the server user's),
    hold nothing but socket files, no live server's lock, and are older than a minute.
    Through directory fds, never following a symlink. Never raises."""
    from pgmgr.core import userfs

    removed = []
    uid = _uid(user)
    places = [*temp_dirs(), str(runtime_base(user))]
    for parent in dict.fromkeys(places):
        with contextlib.suppress(OSError, PgmgrError), userfs.opened_dir(parent) as pfd:
            legacy = parent != str(runtime_base(user))
            for name in os.listdir(pfd):
                if legacy and not LEGACY_RE.match(name):
                    continue
                path = Path(parent) / name
                with contextlib.suppress(OSError, PgmgrError):
                    st = os.lstat(name, dir_fd=pfd)
                    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or path == keep:
                        continue
                    if _stale(pfd, name):
                        from pgmgr.core import ownerrm

                        # as the one who may remove it there: in the server user's
                        # runtime directory, that user (root removed what it could not)
                        ownerrm.remove_at(pfd, name)
                        removed.append(path)
    return removed
