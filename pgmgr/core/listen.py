"""Where a server listens: ports (free, checked, probed as postgres binds) and the unix
socket directory (checked, chosen, created; see :mod:`pgmgr.core.sockets` for the default
places). Nothing here imports ``socket`` at the top: 'pgmgr status' never needs it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from pgmgr.core import dirpath, numtext, process
from pgmgr.core.errors import DatabaseException, PortInUse, PortPrivileged, UsageError
from pgmgr.core.privileges import ServerUser

SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


def check_socket_dir_text(path: str | Path) -> Path:
    """A socket directory PostgreSQL can be given (``-k``): absolute, valid UTF-8, no line
    break, NUL or double quote (unix_socket_directories is a quoted list), short enough for
    a socket path. Pure: call it before anything is created.

    :raises UsageError: it cannot.
    """
    text = os.path.abspath(path)
    try:
        text.encode()
    except UnicodeEncodeError:
        raise UsageError(
            f"invalid socket directory {text!r}: the path is not valid UTF-8"
        ) from None
    for bad, what in (("\n", "a line break"), ("\r", "a line break"), ("\0", "a NUL byte"),
                      ('"', "a double quote")):  # fmt: skip
        if bad in text:
            raise UsageError(f"invalid socket directory {text!r}: it holds {what}")
    if len(socket_path(Path(text), 65535)) > SOCKET_PATH_MAX:
        raise UsageError(
            f"socket directory {text} is too long: the socket path must fit in "
            f"{SOCKET_PATH_MAX} bytes"
        )
    return Path(text)


def socket_path(socket_dir: Path, port: int) -> str:
    return f"{socket_dir}/.s.PGSQL.{port}"


def clear_stale_socket_lock(
    socket_dir: Path, port: int, datadir: Path, user: ServerUser | None = None
) -> None:
    """Remove the socket and its ``.lock`` left behind by a killed postmaster of ``datadir``.

    postgres removes a stale socket lock itself only when its pid is gone; a SIGKILLed
    postmaster whose parent has exited stays a zombie until init reaps it (~1.5 s here), and
    ``kill(pid, 0)`` succeeds on a zombie, so postgres would refuse to start. Call this only
    when no postmaster serves ``datadir``. A lock of another data directory or of a live
    process is left alone.
    """
    lock = Path(socket_path(socket_dir, port) + ".lock")
    text = process.read_small(lock)
    try:
        lines = (text or "").split("\n")
        pid = int(lines[0])
    except (ValueError, IndexError):
        return
    ours = len(lines) > 1 and os.path.realpath(lines[1].strip()) == os.path.realpath(datadir)
    if (ours and not process.serves(pid, datadir)) or not process.is_alive(pid):
        from pgmgr.core import testhook, userfs

        # As the server user ``user``, who made them: as root, the socket dir (often the
        # data dir) may be in that user's directory, swapped meanwhile for a symlink to
        # another cluster's, whose live socket and lock root removed.
        testhook.pause("stale-socket-lock")
        paths = (str(lock), socket_path(socket_dir, port))
        userfs.as_user(user, unlink_missing_ok, *paths)


def unlink_missing_ok(*paths: str) -> None:
    """Unlink each of ``paths`` (by path: call it as the user they belong to)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def loopback_of(host: str) -> str:
    """The ``listen_addresses`` of a server made from one that listens on ``host`` (a
    replica, a branch): the loopback addresses among them, else ``127.0.0.1``. A source
    recorded with another address (by an older pgmgr, which allowed ``-H 0.0.0.0``)
    does not make its copies listen there."""
    from pgmgr.core.loopback import is_loopback

    kept = [h.strip() for h in host.split(",") if is_loopback(h)]
    return ",".join(kept) or "127.0.0.1"


def port_free(host: str, port: int) -> bool:
    """Whether ``port`` can be bound on ``host`` (as postgres would, with SO_REUSEADDR).

    :raises PortPrivileged: a port this user may not bind (pgmgr runs as the server).
    :raises DatabaseException: it cannot be bound for another reason (a foreign address).
    """
    import socket  # here, not at the top: 'pgmgr status' never needs it

    hosts = [h.strip() for h in host.split(",") if h.strip()] or ["127.0.0.1"]
    for h in hosts:
        if h in ("*", "0.0.0.0", "localhost"):  # noqa: S104 - only probing, as postgres would
            h = "127.0.0.1" if h == "localhost" else ""
        family = socket.AF_INET6 if ":" in h else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((h, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    return False
                if e.errno == errno.EACCES and port < unprivileged_start():
                    import pwd

                    me = pwd.getpwuid(os.geteuid()).pw_name
                    raise PortPrivileged(h or "*", port, me, unprivileged_start()) from None
                raise _cannot_listen(h, port, e) from None
    return True


def unprivileged_start() -> int:
    """The lowest port a user without ``CAP_NET_BIND_SERVICE`` may bind (Linux's
    ``net.ipv4.ip_unprivileged_port_start``, 1024 unless lowered)."""
    text = process.read_small(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start"))
    try:
        return int((text or "").strip())
    except ValueError:
        return 1024


def _binds_low(postgres: Path | None) -> bool:
    """Whether ``postgres`` has file capabilities (``setcap cap_net_bind_service``): it
    may then bind a low port whoever runs it (not read any closer: its start says)."""
    if postgres is None:
        return False
    try:
        os.getxattr(postgres, "security.capability")
    except OSError:
        return False
    return True


def _cannot_listen(host: str, port: int | None, e: OSError) -> DatabaseException:
    """A bind that failed for another reason than a busy port (bad or foreign address)."""
    where = (host or "*") + (f":{port}" if port else "")
    return DatabaseException(
        f"cannot listen on {where}: {e.strerror or e}",
        hint="check --host: a loopback address or name, e.g. 127.0.0.1, ::1 or localhost",
    )


#: ``I/N`` (N up to 8): :func:`free_port` answers only ports of slice ``I`` of ``N``. For
#: test suites: each parallel worker has its own, so two workers never pick one port (the
#: second one's server failing to bind it because the first one's has meanwhile). Unset:
#: any free port.
PORT_SLICE_ENV = "PGMGR_PORT_SLICE"


def free_port(host: str) -> int:
    """A port the kernel says is free now on ``host`` (the caller retries on a race)."""
    import socket

    h = host.split(",")[0].strip() or "127.0.0.1"
    h = "127.0.0.1" if h in ("localhost", "*", "0.0.0.0") else h  # noqa: S104 - mapped away
    family = socket.AF_INET6 if ":" in h else socket.AF_INET
    index, count = _port_slice()
    port = 0
    with contextlib.ExitStack() as held:  # every try on a socket still bound: another port
        for _ in range(32 * count):
            s = held.enter_context(socket.socket(family, socket.SOCK_STREAM))
            try:
                s.bind((h, 0))
            except OSError as e:
                raise _cannot_listen(h, None, e) from None
            port = int(s.getsockname()[1])
            # By port // 2: the kernel gives bind(0) odd ports (and connect() even ones).
            if port // 2 % count == index:
                break
    return port  # of the slice, or (none came) any free one


def _port_slice() -> tuple[int, int]:
    """``(I, N)`` from ``PGMGR_PORT_SLICE``; ``(0, 1)`` (every port) if unset or invalid."""
    index, _, count = os.environ.get(PORT_SLICE_ENV, "").partition("/")
    i, n = numtext.whole(index), numtext.whole(count)
    if i is not None and n is not None and i < n <= 8:
        return i, n
    return 0, 1


def _private_dir_ok(path: Path, user: ServerUser | None) -> bool:
    try:
        st = path.lstat()
    except OSError:
        return False
    uid = user.uid if user is not None else os.geteuid()
    return (
        not path.is_symlink() and path.is_dir() and st.st_uid == uid and (st.st_mode & 0o077) == 0
    )


def socket_dir(
    recorded: str | None,
    requested: str | None,
    port: int,
    user: ServerUser | None,
    datadir: Path | None = None,
) -> Path:
    """The directory for the unix socket (see :mod:`pgmgr.core.sockets`).

    A directory the user names is used as given, after checking it can be written (the
    seed's lock-dir check). A recorded directory the user chose earlier is reused while it
    is still private (the server user's, 0700, not a symlink) and short enough. Otherwise
    the data directory itself when the socket path fits there, else the instance's own
    directory under the per-user runtime directory, else (that one cannot be trusted) a
    fresh private directory in the temp dir. Stale socket directories are swept.

    :raises DatabaseException: a named directory cannot be created or written.
    """
    from pgmgr.core import sockets

    if requested:
        path = check_socket_dir_text(requested)
        check_socket_dir(path, user)
        return path
    if recorded and datadir is not None and not sockets.is_managed(recorded, datadir):
        path = Path(recorded)
        short = len(socket_path(path, port)) <= SOCKET_PATH_MAX
        # as root, not below a directory another user now owns (an older pgmgr took it)
        if _private_dir_ok(path, user) and short and not others_can_swap(path, user):
            return path
    chosen = sockets.default_dir(datadir, port, user) if datadir is not None else None
    sockets.sweep(user, keep=chosen)
    if chosen is not None:
        return chosen
    import tempfile

    base = sockets.temp_base_for(user)  # one the server can reach (root's may be private)
    if len(socket_path(Path(base) / "pgmgr-xxxxxxxx", port)) > SOCKET_PATH_MAX:
        base = "/tmp"  # noqa: S108 - a short private dir is made inside it, mode 0700
    path = Path(tempfile.mkdtemp(prefix="pgmgr-", dir=base))
    if user is not None:
        from pgmgr.core import testhook, userfs

        testhook.pause("socket-dir-fresh")
        with userfs.opened_dir(path.parent) as parent:
            _give_away(parent, path, user)
    return path


def others_can_swap(path: Path, user: ServerUser | None) -> bool:
    """As root: whether a user other than root and the server user could replace the
    socket in ``path`` (see :func:`check_socket_dir`). The server user counts as root does,
    on the socket's own path: a sticky directory protects the server user's entries, and
    its own group counts as its own (``/run/postgresql``, 2775 postgres:postgres)."""
    if os.geteuid() != 0 or user is None:
        return False
    from pgmgr.core import userfs

    return userfs.others_can_write(path / ".s.PGSQL", 0, user.gid, user.uid)


def check_socket_dir(path: Path, user: ServerUser | None) -> None:
    """The seed's ``_check_lockdir_permissions``: the server must be able to create its
    socket and lock file in ``path``. A directory it creates is the server user's.

    As root, a directory that a user other than root and the server user can change (own,
    write without a sticky bit, or a directory above it) is refused: that user could swap
    the socket for their own, and pgmgr's clients (an export's pg_dump, with the password
    in PGPASSWORD) would talk to their server. A sticky one (``/tmp``) is fine.
    """
    dirpath.check(path, "use socket directory")
    if others_can_swap(path, user):
        assert user is not None
        raise DatabaseException(
            f"refusing socket directory {path} as root: a user other than root and "
            f"{user.name!r} can change it or a directory above it (and swap the socket "
            "for their own)",
            hint="choose a directory only root and the server user can write (or a "
            "sticky one such as /tmp), or leave the default",
        )
    try:
        if not path.exists():
            _make_socket_dir(path, user)
    except OSError as e:
        raise DatabaseException(f"cannot create socket directory {path}: {e.strerror}") from None
    if not path.is_dir():
        raise DatabaseException(f"socket directory {path} is not a directory")
    if user is None:
        ok = os.access(path, os.W_OK | os.X_OK)
    else:
        st = path.stat()
        from pgmgr.core.privileges import _can

        ok = _can(st, user, 2) and _can(st, user, 1)
    if not ok:
        who = f"user {user.name!r}" if user else "you"
        raise DatabaseException(
            f"no write permission on socket directory {path} for {who}",
            hint="choose a directory you can write with --socket-dir",
        )


def _make_socket_dir(path: Path, user: ServerUser | None) -> None:
    """Create ``path`` (mode 0700) for the server user through directory fds: as root, the
    new directory is given away by ``fchown`` on an ``O_NOFOLLOW`` fd of the directory made
    here, so a user who can write the parent and swaps it for a symlink (or another
    directory) between the mkdir and the chown never gets root to chown something else.

    :raises DatabaseException: it was replaced before it could be given to the server user.
    :raises OSError: it cannot be created.
    """
    from pgmgr.core import testhook

    parent = _open_made_dir(path.parent)
    try:
        try:
            os.mkdir(path.name, 0o700, dir_fd=parent)
        except FileExistsError:
            return  # made meanwhile: checked below as any existing directory
        if user is None:
            return
        testhook.pause("socket-dir-made")
        _give_away(parent, path, user)
    finally:
        os.close(parent)


def _give_away(parent: int, path: Path, user: ServerUser) -> None:
    """Give the directory ``path`` (entry ``path.name`` of ``parent``), made by root just
    now, to ``user`` by ``fchown`` on an ``O_NOFOLLOW`` fd of it: never what a user who can
    write the parent swapped in for it (a symlink: root chowned where it pointed).

    :raises DatabaseException: it was replaced meanwhile.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path.name, flags, dir_fd=parent)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            raise
        fd = -1
    try:
        if fd < 0 or os.fstat(fd).st_uid != os.geteuid():
            raise DatabaseException(
                f"socket directory {path} was replaced while pgmgr created it (another "
                "user can write its parent directory); it was left alone",
                hint="choose a --socket-dir in a directory only you can write",
            )
        os.fchown(fd, user.uid, user.gid)
    finally:
        if fd >= 0:
            os.close(fd)


def _open_made_dir(path: Path) -> int:
    """An fd of directory ``path``, its missing components made on the way: as root through
    ``O_NOFOLLOW`` fds (``mkdir -p`` followed another user's symlink on the way and made a
    directory where it pointed before :func:`~pgmgr.core.userfs.open_dir` refused); as
    anyone else, as the user's own ``mkdir -p`` would (through their own symlinks too).

    :raises UnsafePath: an existing part of ``path`` crosses an untrusted symlink.
    :raises OSError: a component cannot be made, or is not a directory (or a symlink).
    """
    from pgmgr.core import userfs

    if os.geteuid() != 0:  # no one to guard against: the caller's own symlinks are fine
        path.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    missing: list[str] = []
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path.name)
        path = path.parent
    fd = userfs.open_dir(path)
    try:
        for name in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o777, dir_fd=fd)
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            fd, parent = os.open(name, flags, dir_fd=fd), fd
            os.close(parent)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_port(
    host: str,
    port: int,
    su: ServerUser | None = None,
    postgres: Path | None = None,
    *,
    taken_ok: bool = False,
) -> None:
    """Refuse a port postgres could not listen on (on ``host``; none without one: unix
    socket only), before anything is made or stopped. As root, ``su`` is the server user:
    it may not bind a low port that root may (unless the ``postgres`` binary may).
    ``taken_ok``: a port only recorded for a later start (it may be free by then), so
    only what never changes is refused.

    :raises UsageError: not a port number.
    :raises PortPrivileged: a low port the server user may not bind.
    :raises PortInUse: it is taken.
    """
    if not 1 <= port <= 65535:
        raise UsageError(f"invalid port {port}: must be between 1 and 65535")
    if not host:
        return
    if su is not None and port < unprivileged_start() and not _binds_low(postgres):
        raise PortPrivileged(host, port, su.name, unprivileged_start())
    if not port_free(host, port) and not taken_ok:
        raise PortInUse(host, port)


def check_new_port(
    host: str, port: str | None, su: ServerUser | None, postgres: Path | None
) -> None:
    """The ``-p`` of a command that makes a new instance and starts it last (``replica``,
    ``import``): checked as that start will (:func:`check_port`), but before anything is
    made (a low port was refused only after a whole base backup or restore, then undone).
    None or ``auto``: a free port is picked at the start.

    :raises UsageError: not a port number. :raises PortPrivileged, PortInUse: see
        :func:`check_port`.
    """
    check_port_option(port)
    if port is not None and port != "auto":
        check_port(host, int(port), su, postgres)


def check_port_option(port: str | None) -> None:
    """A ``-p`` value: a number from 1 to 65535, ``auto``, or None (checked before any work).

    :raises UsageError: anything else.
    """
    if port is None or port == "auto":
        return
    number = numtext.whole(port)
    if number is None or not 1 <= number <= 65535:
        raise UsageError(f"invalid --port {port!r}: a number from 1 to 65535, or 'auto'")
