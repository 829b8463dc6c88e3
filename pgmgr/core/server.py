"""Low-level server work: argv builders (pure), one runner, spawn, readiness, stop.

Measured on a 2-core machine with PostgreSQL 15 (DESIGN.md): postgres is ready ~35 ms after
spawn while ``pg_ctl start -w`` takes ~114 ms (it polls every 100 ms), and a signal plus a
fast poll stops it in ~16 ms against ~102 ms for ``pg_ctl stop -w``. So pgmgr spawns
``postgres`` itself and watches ``postmaster.pid``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pgmgr.core import process
from pgmgr.core.errors import CommandFailed, DatabaseException, PortInUse, UsageError, WorkerError
from pgmgr.core.lazyre import LazyRegex
from pgmgr.core.privileges import ServerUser, chown
from pgmgr.core.versions import Installation

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    import subprocess

SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
SETTING_NAME_RE = LazyRegex(r"^[A-Za-z_][A-Za-z0-9_.]*$")
#: Settings pgmgr owns: they come from --host/--port/the socket dir, never from -c.
RESERVED_SETTINGS = frozenset(
    {"port", "listen_addresses", "unix_socket_directories", "config_file"}
)
AUTH_METHODS = ("scram-sha-256", "trust", "md5", "password")
STOP_SIGNALS = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}


@dataclass(frozen=True)
class InitOptions:
    """How ``initdb`` (or a template copy) makes a new cluster."""

    superuser: str = "postgres"
    auth: str = "scram-sha-256"
    encoding: str = "UTF8"
    locale: str = "C"
    extra: tuple[str, ...] = ()
    no_sync: bool = False


# --------------------------------------------------------------------------- pure builders


def parse_setting(text: str) -> tuple[str, str]:
    """``'name=value'`` -> ``('name', 'value')``.

    :raises UsageError: malformed, reserved, or holding a newline.
    """
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not SETTING_NAME_RE.match(name):
        raise UsageError(f"invalid setting {text!r}: expected name=value, e.g. -c work_mem=64MB")
    if name.lower() == "config_file":
        raise UsageError(
            "setting 'config_file' is managed by pgmgr: it is the data dir's pgmgr.conf"
        )
    if name.lower() in RESERVED_SETTINGS:
        raise UsageError(
            f"setting {name!r} is managed by pgmgr: use --host, --port or --socket-dir"
        )
    if "\n" in value or "\r" in value or "\0" in value:
        raise UsageError(f"invalid setting {name!r}: the value holds a line break")
    return name, value


def check_settings(settings: Mapping[str, object]) -> dict[str, str]:
    return dict(parse_setting(f"{k}={v}") for k, v in settings.items())


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


def _quote_dir(path: Path) -> str:
    text = str(path)
    if '"' in text:
        raise UsageError(f"socket directory {text!r} may not contain a double quote")
    return f'"{text}"' if ("," in text or " " in text) else text


def initdb_argv(
    install: Installation, datadir: Path, opts: InitOptions, pwfile: Path | None
) -> list[str]:
    """The initdb command line for ``datadir``."""
    argv = [str(install.bin("initdb")), "-D", str(datadir), "-U", opts.superuser]
    if opts.auth == "trust":
        argv.append("--auth=trust")
    else:
        argv += ["--auth-local=trust", f"--auth-host={opts.auth}"]
    if pwfile is not None:
        argv.append(f"--pwfile={pwfile}")
    if opts.encoding:
        argv += ["-E", opts.encoding]
    if opts.locale:
        argv.append(f"--locale={opts.locale}")
    if opts.no_sync:
        argv.append("--no-sync")
    argv += list(opts.extra)
    return argv


def postgres_argv(
    install: Installation,
    datadir: Path,
    *,
    host: str,
    port: int,
    socket_dir: Path,
    settings: Mapping[str, str],
    config_file: Path | None = None,
) -> list[str]:
    """The postgres command line: pgmgr's own settings first, then ``config_file`` (the
    instance's ``pgmgr.conf``, which holds the kept settings, see :mod:`pgmgr.core.pgconf`),
    then ``settings`` as ``-c`` (which a reload cannot change)."""
    argv = [
        str(install.bin("postgres")),
        "-D",
        str(datadir),
        "-p",
        str(port),
        "-k",
        _quote_dir(socket_dir),
        "-c",
        f"listen_addresses={host}",
    ]
    if config_file is not None:
        argv += ["-c", f"config_file={config_file}"]
    for name, value in settings.items():
        argv += ["-c", f"{name}={value}"]
    return argv


def socket_path(socket_dir: Path, port: int) -> str:
    return f"{socket_dir}/.s.PGSQL.{port}"


def clear_stale_socket_lock(socket_dir: Path, port: int, datadir: Path) -> None:
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
        for path in (lock, Path(socket_path(socket_dir, port))):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


# --------------------------------------------------------------------------- runner


def _ids(user: ServerUser | None) -> tuple[int | None, int | None, list[int] | None]:
    """``(user, group, extra_groups)`` for subprocess: switch only when running as root."""
    if user is None:
        return None, None, None
    return user.uid, user.gid, list(user.groups)


def _child_env(user: ServerUser | None) -> dict[str, str]:
    # NOTIFY_SOCKET is pgmgr's (sd_notify): a postgres built --with-systemd would answer too.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "NOTIFY_SOCKET"}
    env.setdefault("LC_ALL", "C.UTF-8" if Path("/usr/lib/locale/C.utf8").exists() else "C")
    if user is not None:
        env["HOME"] = user.home
        env["USER"] = env["LOGNAME"] = user.name
    return env


def run(
    argv: Sequence[str],
    user: ServerUser | None = None,
    timeout: float = 300.0,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program; never through a shell. ``env`` adds variables (a
    ``PGPASSWORD``: never a password on a command line, where ``ps`` shows it); ``input``
    is its standard input (else /dev/null).

    :raises CommandFailed: it exits non-zero (with its stderr kept).
    :raises OSError: it cannot be executed.
    """
    import subprocess

    uid, gid, groups = _ids(user)
    proc = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL if input is None else None,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**_child_env(user), **(env or {})},
        cwd="/",
        user=uid,
        group=gid,
        extra_groups=groups,
        check=False,
    )
    if proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stderr or proc.stdout)
    return proc


def postgres_check(
    install: Installation, datadir: Path, settings: Mapping[str, str], user: ServerUser | None
) -> CommandFailed | None:
    """Ask postgres itself whether it accepts ``settings`` (``postgres -D DATADIR -C NAME``
    applies every ``-c`` and exits, starting nothing): None when it does, else its failure
    (``stderr`` holds the FATAL and HINT lines).

    :raises OSError: postgres cannot be executed.
    """
    if not settings:
        return None
    argv = [str(install.bin("postgres")), "-D", str(datadir), "-C", next(iter(settings))]
    for name, value in settings.items():
        argv += ["-c", f"{name}={value}"]
    try:
        run(argv, user, timeout=60)
    except CommandFailed as e:
        return e
    return None


# --------------------------------------------------------------------------- initdb


def is_datadir(path: Path) -> bool:
    """Whether ``path`` holds a PG_VERSION file; False also when it cannot be read, and
    for a destroy's trash directory (``.NAME.pgmgr-trash-PID``)."""
    if path.name.startswith(".") and ".pgmgr-trash-" in path.name:
        return False
    try:
        return (path / "PG_VERSION").is_file()
    except OSError:  # EACCES: Path.is_file() only swallows "does not exist"-like errors
        return False


def datadir_major(path: Path) -> str | None:
    return (process.read_small(path / "PG_VERSION") or "").strip() or None


def initdb(
    install: Installation,
    datadir: Path,
    opts: InitOptions,
    *,
    password: str | None,
    user: ServerUser | None,
) -> None:
    """Run initdb as ``user`` to make ``datadir`` (absent; its parent is the init's private
    work directory, see :mod:`pgmgr.core.staging`, which removes it all on failure). The
    password file is written there too, by ``user``.

    :raises CommandFailed: initdb failed (its stderr is kept).
    """
    from pgmgr.core import testhook, userfs

    pwfile = None
    if password is not None:
        pwfile = datadir.parent / f".pgmgr-pw-{os.getpid()}"
        userfs.as_user(user, _write_private, str(pwfile), password + "\n")
    try:
        testhook.pause("initdb")
        run(initdb_argv(install, datadir, opts, pwfile), user)
    finally:
        if pwfile is not None:
            with contextlib.suppress(Exception):
                userfs.as_user(user, os.unlink, str(pwfile))


def remove_partial(datadir: Path, created: bool, user: ServerUser | None = None) -> None:
    """Undo an init: only what pgmgr made goes, as the server user (see
    :func:`pgmgr.core.staging.remove_cluster`)."""
    from pgmgr.core.staging import remove_cluster

    remove_cluster(datadir, created, user)


def _write_private(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


# --------------------------------------------------------------------------- sockets, ports


def port_free(host: str, port: int) -> bool:
    """Whether ``port`` can be bound on ``host`` (as postgres would, with SO_REUSEADDR)."""
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
                raise _cannot_listen(h, port, e) from None
    return True


def _cannot_listen(host: str, port: int | None, e: OSError) -> DatabaseException:
    """A bind that failed for another reason than a busy port (bad or foreign address)."""
    where = (host or "*") + (f":{port}" if port else "")
    return DatabaseException(
        f"cannot listen on {where}: {e.strerror or e}",
        hint="check --host: a local address or name, e.g. 127.0.0.1, localhost or '*'",
    )


def free_port(host: str) -> int:
    """A port the kernel says is free now on ``host`` (the caller retries on a race)."""
    import socket

    h = host.split(",")[0].strip() or "127.0.0.1"
    h = "127.0.0.1" if h in ("localhost", "*", "0.0.0.0") else h  # noqa: S104 - mapped away
    family = socket.AF_INET6 if ":" in h else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((h, 0))
        except OSError as e:
            raise _cannot_listen(h, None, e) from None
        return int(s.getsockname()[1])


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
        if _private_dir_ok(path, user) and len(socket_path(path, port)) <= SOCKET_PATH_MAX:
            return path
    chosen = sockets.default_dir(datadir, port, user) if datadir is not None else None
    sockets.sweep(user, keep=chosen)
    if chosen is not None:
        return chosen
    import tempfile

    base = tempfile.gettempdir()
    if len(socket_path(Path(base) / "pgmgr-xxxxxxxx", port)) > SOCKET_PATH_MAX:
        base = "/tmp"  # noqa: S108 - a short private dir is made inside it, mode 0700
    path = Path(tempfile.mkdtemp(prefix="pgmgr-", dir=base))
    chown(path, user)
    return path


def check_socket_dir(path: Path, user: ServerUser | None) -> None:
    """The seed's ``_check_lockdir_permissions``: the server must be able to create its
    socket and lock file in ``path``. A directory it creates is the server user's."""
    created = not path.exists()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if created:
            chown(path, user)
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


# --------------------------------------------------------------------------- spawn, ready


def _die_with(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGQUIT (postgres' immediate shutdown, which also
    ends its backends and removes its pid file and sockets) when ``parent`` dies, even by
    SIGKILL. subprocess calls it after the uid/gid switch (the kernel clears the setting on
    a credential change), and postgres is not set-uid, so it survives the exec."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork

    def preexec() -> None:  # pragma: no cover - runs in the forked child
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGQUIT), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


PR_SET_PDEATHSIG = 1


def spawn(
    argv: Sequence[str],
    log_file: Path,
    user: ServerUser | None,
    *,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start postgres in its own session (so a Ctrl-C meant for pgmgr never reaches it and
    it outlives the CLI), output appended to ``log_file``. With ``die_with_parent`` (a
    temporary server) it is stopped when the calling thread's process dies, however it dies.

    :raises OSError: the binary cannot be executed.
    """
    import subprocess

    preexec = _die_with(os.getpid()) if die_with_parent and sys.platform == "linux" else None

    fd = open_log(log_file)
    try:
        with os.fdopen(fd, "ab", closefd=False) as log:
            log.write(f"--- pgmgr: starting {' '.join(argv[:3])} at {time.ctime()}\n".encode())
        uid, gid, groups = _ids(user)
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            cwd="/",
            env=_child_env(user),
            start_new_session=True,
            umask=0o077,
            user=uid,
            group=gid,
            extra_groups=groups,
            preexec_fn=preexec,
        )
    finally:
        os.close(fd)


def open_log(log_file: Path) -> int:
    """The server log, opened for appending by pgmgr for postgres: never through a symlink,
    never blocking on a FIFO, and, as root, never in a place another user can change (they
    could swap the file for a link to one of root's between a check and the open).

    :raises DatabaseException: as root, another user can change that place; or it is not a
        regular file.
    """
    if os.geteuid() == 0:
        from pgmgr.core import userfs

        if userfs.others_can_write(log_file):
            raise DatabaseException(
                f"refusing to open the server log {log_file} as root: another user can "
                "change that place",
                hint="choose a log file in a directory only root can write, or the default "
                "(pgmgr's state directory)",
            )
    log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(log_file, flags, 0o600)
    except OSError as e:
        raise DatabaseException(f"cannot open the server log {log_file}: {e.strerror}") from None
    import stat

    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DatabaseException(f"the server log {log_file} is not a regular file")
    return fd


def log_tail(log_file: Path | None, lines: int = 5, since: int = 0) -> str:
    """The last ``lines`` lines of the log written after byte offset ``since``."""
    if log_file is None:
        return ""
    try:
        with open(log_file, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("--- pgmgr:")]
    return "\n".join(kept[-lines:])


def wait_ready(
    pid: int,
    datadir: Path,
    timeout: float,
    *,
    child: subprocess.Popen[bytes] | None = None,
    log_file: Path | None = None,
    log_offset: int = 0,
) -> process.PidFile:
    """Poll ``postmaster.pid`` until this server says ``ready``.

    :raises WorkerError: the server exited (with the end of its log) or missed the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        pf = process.PidFile.read(datadir)
        if pf is not None and pf.pid == pid and pf.status in ("ready", "standby"):
            return pf
        exited = child.poll() is not None if child is not None else not process.is_alive(pid)
        if exited:
            tail = log_tail(log_file, lines=200, since=log_offset)
            raise ServerExited(pid, tail)
        if time.monotonic() >= deadline:
            raise WorkerError(f"server (pid {pid}) was not ready within {timeout:g} s")
        time.sleep(process.POLL)


_SEVERE_RE = LazyRegex(r"\b(?:FATAL|PANIC):\s+")


def why_exited(log: str) -> str:
    """What a start-up log says went wrong: its FATAL and PANIC lines (from the severity
    on, without the timestamp), else its last line. Not "database system is shut down",
    which postgres logs after the cause."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    severe = []
    for line in lines:
        m = _SEVERE_RE.search(line)
        if m and " ".join(line[m.start() :].split()) not in severe:
            severe.append(" ".join(line[m.start() :].split()))
    if severe:
        return "; ".join(severe[-3:])
    return lines[-1] if lines else "no log output"


class ServerExited(WorkerError):
    """postgres exited while starting; the FATAL/PANIC lines of its log say why."""

    def __init__(self, pid: int, log: str) -> None:
        self.pid = pid
        self.log = log
        why = why_exited(log)
        if "contains errors" in why:  # pgmgr.conf: the LOG line before the FATAL says which
            causes = [ln for ln in log.splitlines() if re.search(r"\bLOG:\s+.*parameter", ln)]
            if causes:  # fatal because of it: said as the FATAL line of a -c would be
                cause = re.split(r"LOG:\s+", causes[-1])[-1].strip()
                m = re.search(r'configuration file "([^"]+)" contains errors', why)
                why = f"FATAL: {cause} (in {m.group(1) if m else 'a configuration file'})"
        if "Address already in use" in log:
            why = "port already in use (" + why + ")"
        super().__init__(f"postgres exited during start-up: {why}")


def stop(pid: int, datadir: Path, mode: str, timeout: float | None) -> bool:
    """Signal the postmaster and poll until it is gone; False when ``timeout`` passed.

    Never escalates to another mode by itself.
    """
    if mode not in STOP_SIGNALS:
        raise UsageError(f"invalid stop mode {mode!r}: use smart, fast or immediate")
    if not process.signal_pid(pid, STOP_SIGNALS[mode]):
        return True
    return process.wait_gone(pid, datadir, timeout)


def check_port(host: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise UsageError(f"invalid port {port}: must be between 1 and 65535")
    if host and not port_free(host, port):
        raise PortInUse(host, port)


def open_log_offset(log_file: Path) -> int:
    try:
        return log_file.stat().st_size
    except OSError:
        return 0


def check_port_option(port: str | None) -> None:
    """A ``-p`` value: a number from 1 to 65535, ``auto``, or None (checked before any work).

    :raises UsageError: anything else.
    """
    if port is None or port == "auto":
        return
    try:
        number = int(port)
    except ValueError:
        number = 0
    if not 1 <= number <= 65535:
        raise UsageError(f"invalid --port {port!r}: a number from 1 to 65535, or 'auto'")
