"""The privilege boundary: file work in directories that another OS user controls.

pgmgr often runs as root and then serves several OS users at once. The rule (DESIGN.md,
"Trust boundaries"): root never reads, writes, renames, chmods, chowns or deletes a path inside
a directory that a non-root user can write. Such work runs either

- in a process that has become that user (:func:`as_user`: ``fork``, drop groups, gid and
  uid, run a function, send its result back through a pipe), so that a symlink or FIFO the
  user swaps in can only hurt the user; or
- through directory file descriptors reached once, component by component, with
  ``O_NOFOLLOW`` (:func:`open_dir`, :func:`rmtree_at`, :func:`read_file_at`,
  :func:`write_file_at`), so that no path is resolved twice.

This mirrors OpenSSH's privilege separation and systemd's ``chase()``; Debian's
``pg_ctlcluster`` likewise switches to the cluster owner before it does anything.
Every file operation of pgmgr on a user's directory goes through this module.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from pgmgr.core.errors import DatabaseException

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from typing import Any, TypeVar

    from pgmgr.core.privileges import ServerUser

    T = TypeVar("T")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40  # as the kernel's MAXSYMLINKS
_PR_SET_PDEATHSIG = 1
_DEFERRED = frozenset({2, 1, 15})  # SIGINT, SIGHUP, SIGTERM
#: Imported before :func:`as_user` forks: the child may not be able to import anything.
#: Not ``secrets`` (~3 ms with hashlib and OpenSSL, paid by each command as root): random
#: names in the child are ``os.urandom``'s.
PRELOAD = (
    "ctypes",
    "fcntl",
    "json",
    "pickle",
    "pgmgr.core.rmtree",
    "shutil",
    "subprocess",
    "tempfile",
    "threading",
)


class UnsafePath(DatabaseException):
    """A path crosses a symlink or a directory that pgmgr may not trust."""

    def __init__(self, path: str | Path, why: str) -> None:
        self.path = str(path)
        self.why = why
        super().__init__(
            f"refusing {self.path}: {why}",
            hint="use a path whose directories are not symlinks that another user controls",
        )


# --------------------------------------------------------------------------- as_user


def _is_self(user: ServerUser | None) -> bool:
    return user is None or (user.uid == os.geteuid() and user.gid == os.getegid())


def as_user(user: ServerUser | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` run as ``user``: in a forked child that dropped its groups,
    gid and uid (umask 077), its return value or exception handed back through a pipe.

    ``fn`` and what it calls may only use modules imported before the call: once it has
    become the user, the child may no longer reach Python's own library (an interpreter
    under /root, say). This function imports the standard modules file work needs first
    (:data:`PRELOAD`); callers import their own.

    With ``user`` None (pgmgr is not root) or already the current user, ``fn`` just runs
    here. File descriptors opened before the call are inherited by the child, so root can
    open its own files first and pass the descriptors to work that runs as the user. The
    child gets SIGTERM if this process dies, so it never outlives pgmgr.

    :raises DatabaseException: pgmgr is not root and ``user`` is another user, or the
        child died without an answer.
    :raises: whatever ``fn`` raised (its type kept where it can be rebuilt).
    """
    if _is_self(user):
        return fn(*args, **kwargs)
    assert user is not None
    if os.geteuid() != 0:
        raise DatabaseException(f"cannot act as OS user {user.name!r}: pgmgr is not root")
    import importlib
    import pickle

    for name in PRELOAD:
        importlib.import_module(name)
    # A stand-in that imports inspect on first use (pgmgr.entry.defer_inspect) must not
    # get to do so in the child: touching it imports inspect now.
    getattr(sys.modules.get("inspect"), "signature", None)
    import signal

    parent = os.getpid()
    # Signals wait until both sides can handle them: one arriving inside os.fork() would
    # raise from Python's own after-fork hooks in the child ("Exception ignored ...").
    # The mask is read first: a pending signal's handler runs inside pthread_sigmask and
    # may raise after the signals are blocked, which would leave them blocked for good.
    # The pipe is made once they wait, so that no handler raises between it and the try.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    r = w = -1
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
        r, w = os.pipe()
        pid = os.fork()
    except BaseException:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # last: a held handler may raise
        raise
    if pid == 0:  # pragma: no cover - the child; its effects are tested, not its lines
        os.close(r)
        _child(user, w, fn, args, kwargs, mask, parent)
    os.close(w)
    pipe = open(r, "rb")  # noqa: SIM115 - closes r, also when a held signal raises next
    try:
        with pipe:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a held handler may raise
            chunks = []
            while chunk := pipe.read(65536):
                chunks.append(chunk)
    except BaseException:
        # Interrupted (a SIGTERM or SIGHUP sent to pgmgr alone, made a KeyboardInterrupt):
        # the child's work is no longer wanted, and waiting for it could take long.
        with contextlib.suppress(OSError):
            os.kill(pid, 15)
        raise
    finally:
        _wait_child(pid)
    data = b"".join(chunks)
    if not data:
        raise DatabaseException(f"a pgmgr process working as {user.name!r} died without answer")
    kind, payload = pickle.loads(data)  # noqa: S301 - our own child, through our own pipe
    if kind == "ok":
        return payload  # type: ignore[no-any-return]
    if kind == "err":
        raise payload
    raise DatabaseException(payload)


def _wait_child(pid: int) -> None:
    """Reap the child even when a signal (Ctrl-C) interrupts the wait: the child got the
    same signal (same process group) or gets SIGTERM through its death signal."""
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            return
        except BaseException:
            # Not reaped yet, so the pid is still the child's (a handler may have raised
            # right after waitpid returned: then the pid may already be someone else's).
            try:
                alive = os.waitpid(pid, os.WNOHANG)[0] == 0
            except ChildProcessError:
                alive = False
            if alive:
                with contextlib.suppress(OSError):
                    os.kill(pid, 15)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            raise


def _child(
    user: ServerUser,
    w: int,
    fn: Callable[..., Any],
    args: Any,
    kwargs: Any,
    mask: Any,
    parent: int,
) -> None:  # pragma: no cover - runs in the forked child
    import pickle
    import signal

    code = 0
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending one is handled here
        os.setgroups(list(user.groups))
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)
        os.umask(0o077)
        _set_death_signal()  # after setresuid: a credential change clears it
        _die_when_orphaned(parent)
        try:
            result: tuple[str, Any] = ("ok", fn(*args, **kwargs))
        except BaseException as e:
            result = ("err", e)
        try:
            data = pickle.dumps(result)
        except Exception:
            data = pickle.dumps(("text", _describe(result[1])))
        with open(w, "wb") as pipe:
            pipe.write(data)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _describe(value: object) -> str:
    if isinstance(value, BaseException):
        return str(value) or type(value).__name__
    return f"unpicklable result {type(value).__name__}"


def _die_when_orphaned(parent: int) -> None:  # pragma: no cover - runs in the forked child
    """The death signal (SIGTERM) ends the child even where it inherited a handler that
    only records SIGTERM (forked inside sigguard.shielded or after sigguard.commit): the
    parent holds that signal, but its child must not go on working once it is gone."""
    import signal

    held = signal.getsignal(signal.SIGTERM)
    if not callable(held):
        return

    def on_term(signum: int, frame: Any) -> None:
        if os.getppid() != parent:
            os._exit(128 + signum)
        held(signum, frame)

    signal.signal(signal.SIGTERM, on_term)


def _set_death_signal() -> None:  # pragma: no cover - runs in the forked child
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, 15, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


# --------------------------------------------------------------------------- fd walking


def _trusted_link(dir_fd: int, name: str) -> bool:
    """A symlink may be followed when root owns it and the directory holding it, and that
    directory is not writable by group or others (``/var/run -> /run``, say)."""
    try:
        link = os.lstat(name, dir_fd=dir_fd)
        parent = os.fstat(dir_fd)
    except OSError:
        return False
    return link.st_uid == 0 and parent.st_uid == 0 and not parent.st_mode & 0o022


def open_dir(path: str | Path, *, follow_trusted: bool = True) -> int:
    """An ``O_DIRECTORY`` fd for ``path``, reached from ``/`` one component at a time with
    ``O_NOFOLLOW``. A symlink on the way is followed only when :func:`_trusted_link` (and
    ``follow_trusted``); any other one is refused. The caller closes the fd.

    :raises UnsafePath: the path crosses an untrusted symlink.
    :raises OSError: a component is missing, not a directory, or cannot be opened.
    """
    todo = _components(os.path.abspath(path))
    fd = os.open("/", _DIR_FLAGS)
    links = 0
    try:
        while todo:
            name = todo.pop(0)
            try:
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if not _is_link(fd, name):
                    raise OSError(e.errno, e.strerror, str(path)) from None
                links += 1
                if not follow_trusted or links > _MAX_LINKS or not _trusted_link(fd, name):
                    raise UnsafePath(path, f"{name!r} on its way is a symlink") from None
                target = os.readlink(name, dir_fd=fd)
                todo = _components(target) + todo
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", _DIR_FLAGS)
                continue
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _components(path: str) -> list[str]:
    return [c for c in path.split("/") if c and c != "."]


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


@contextlib.contextmanager
def opened_dir(path: str | Path) -> Any:
    """``with opened_dir(p) as fd:`` :func:`open_dir`, closed on exit."""
    fd = open_dir(path)
    try:
        yield fd
    finally:
        os.close(fd)


def rmtree_at(dir_fd: int, name: str) -> None:
    """Remove entry ``name`` of ``dir_fd`` and everything below it, through fds, never
    following a symlink (a symlink is removed, not what it points to). Missing is fine.
    (:func:`pgmgr.core.rmtree.remove_at`: many files go by several threads where each
    unlink waits for the disk.)"""
    from pgmgr.core import rmtree

    rmtree.remove_at(dir_fd, name)


def read_file_at(dir_fd: int, name: str, limit: int = 1 << 20) -> bytes:
    """The bytes of regular file ``name`` in ``dir_fd``: never a symlink, never blocking on
    a FIFO or device (opened ``O_NONBLOCK``, then checked with ``fstat``).

    :raises UnsafePath: not a regular file, or larger than ``limit``.
    :raises OSError: it cannot be opened.
    """
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(name, "not a regular file")
        if st.st_size > limit:
            raise UnsafePath(name, f"larger than {limit} bytes")
        chunks = []
        left = limit + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 16))):
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise UnsafePath(name, f"larger than {limit} bytes")
        return data
    finally:
        os.close(fd)


def write_file_at(
    dir_fd: int, name: str, data: bytes, mode: int = 0o600, *, sync: bool = True
) -> None:
    """Replace ``name`` in ``dir_fd`` with ``data`` atomically: a new private file (created
    exclusively, never through a symlink), written, fsynced, renamed over ``name`` (a symlink
    there is replaced, not followed)."""
    tmp = f".{name}.pgmgr-{os.getpid()}-{os.urandom(4).hex()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


# --------------------------------------------------------------------------- who can write


def _others_write(st: os.stat_result, me: int, gid: int = 0) -> bool:
    """Whether a user other than root and ``me`` may write (or, for a directory, replace
    entries in) the object with stat ``st``. A group other than root's (and ``gid``, when
    the caller counts its own group in) counts as others."""
    if st.st_uid not in (0, me):
        return True
    if st.st_mode & 0o020 and st.st_gid not in (0, gid):
        return True
    return bool(st.st_mode & 0o002)


#: Symlinks :func:`others_can_write` follows before it gives up (the kernel's ELOOP limit).
_MAX_HOPS = 40


def others_can_write(
    path: str | Path, _hops: int = 0, gid: int = 0, uid: int | None = None
) -> bool:
    """Whether some user other than root and the caller can change what ``path`` names:
    write it or one of its existing ancestors, or own a symlink on the way. ``uid``: the
    user who counts as the caller (default: this process's); ``gid``: a group whose write
    access does not count either (that user's own, when it is trusted).

    A sticky directory (``/tmp``) protects the entries its writers do not own, so it does
    not count for an ancestor whose entry below it is root's or the caller's.
    """
    me = os.geteuid() if uid is None else uid
    # A link's target is walked as written (below), its ".." then resolved by the kernel
    # after the directories before it, all real: not folded away as text.
    parts = _components(os.path.abspath(path) if _hops == 0 else str(path))
    prev: os.stat_result | None = None
    for i in range(len(parts) + 1):
        current = "/" + "/".join(parts[:i])
        below = parts[i] if i < len(parts) else None
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return False  # nothing below exists yet: whoever creates it decides
        except OSError:
            return True
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid != 0 or (prev is not None and _others_write(prev, me, gid)):
                return True
            if _hops >= _MAX_HOPS:  # a symlink loop: ELOOP
                return True
            # Its target, walked link by link: realpath() went through any link it leads
            # to unchecked (root's link to another user's, which they retarget at will).
            try:
                target = os.readlink(current)
            except OSError:
                return True
            where = os.path.join(os.path.dirname(current), target, *parts[i + 1 :])
            return others_can_write(where, _hops + 1, gid, me)
        if _others_write(st, me, gid):
            sticky_ok = (
                below is not None
                and st.st_mode & stat.S_ISVTX
                and st.st_uid in (0, me)
                and _child_owned_by(current, below, me)
            )
            if not sticky_ok:
                return True
        prev = st
    return False


def _child_owned_by(directory: str, name: str, me: int) -> bool:
    try:
        return os.lstat(os.path.join(directory, name)).st_uid in (0, me)
    except FileNotFoundError:
        return True  # not there yet: we will create it
    except OSError:
        return False
