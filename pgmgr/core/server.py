"""Low-level server work: argv builders (pure), one runner for PostgreSQL programs, initdb.

Spawning, readiness and stopping are in :mod:`pgmgr.core.launch`; ports and socket
directories in :mod:`pgmgr.core.listen`. Their names are still reachable here (loaded on
first use, so 'pgmgr status', which imports this module, loads neither).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pgmgr.core import process
from pgmgr.core.errors import CommandFailed, DatabaseException, UsageError
from pgmgr.core.lazyre import LazyRegex
from pgmgr.core.pgtext import clip
from pgmgr.core.privileges import ServerUser
from pgmgr.core.versions import Installation

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    import subprocess

    from pgmgr.core.launch import PR_SET_PDEATHSIG as PR_SET_PDEATHSIG
    from pgmgr.core.launch import ServerExited as ServerExited
    from pgmgr.core.launch import log_tail as log_tail
    from pgmgr.core.launch import open_log as open_log
    from pgmgr.core.launch import open_log_offset as open_log_offset
    from pgmgr.core.launch import spawn as spawn
    from pgmgr.core.launch import stop as stop
    from pgmgr.core.launch import wait_ready as wait_ready
    from pgmgr.core.launch import why_exited as why_exited
    from pgmgr.core.listen import SOCKET_PATH_MAX as SOCKET_PATH_MAX
    from pgmgr.core.listen import check_port as check_port
    from pgmgr.core.listen import check_port_option as check_port_option
    from pgmgr.core.listen import check_socket_dir as check_socket_dir
    from pgmgr.core.listen import check_socket_dir_text as check_socket_dir_text
    from pgmgr.core.listen import clear_stale_socket_lock as clear_stale_socket_lock
    from pgmgr.core.listen import free_port as free_port
    from pgmgr.core.listen import port_free as port_free
    from pgmgr.core.listen import socket_dir as socket_dir
    from pgmgr.core.listen import socket_path as socket_path

SETTING_NAME_RE = LazyRegex(r"^[A-Za-z_][A-Za-z0-9_.]*$")
#: Settings pgmgr owns: they come from --host/--port/the socket dir, never from -c.
RESERVED_SETTINGS = frozenset(
    {"port", "listen_addresses", "unix_socket_directories", "config_file", "data_directory"}
)
#: Settings that name files or directories, load code or run commands on the machine they
#: were chosen on (and the config file's include directives): fine with -c, where the user
#: chose them for this machine, never taken from a bundle made elsewhere (see
#: :func:`portable_settings`); recognised by name or by suffix (``ssl_key_file``...).
MACHINE_SETTINGS = frozenset(
    {"include", "include_if_exists", "dynamic_library_path", "log_filename",
     "unix_socket_group", "unix_socket_permissions",
     "jit_provider",  # a library, $libdir/NAME.so: '../../tmp/x' loads /tmp/x.so
     "extension_control_path", "extension_destdir"}  # directories (PG 18, Debian)
)  # fmt: skip
MACHINE_SUFFIXES = (
    "_file", "_keyfile", "_dir", "_directory", "_directories", "_command", "_library",
    "_libraries",
)  # fmt: skip
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
        raise UsageError(
            f"invalid setting {clip(text)!r}: expected name=value, e.g. -c work_mem=64MB"
        )
    if name.lower() == "config_file":
        raise UsageError(
            "setting 'config_file' is managed by pgmgr: it is the data dir's pgmgr.conf"
        )
    if name.lower() == "data_directory":  # the server would run another cluster's data
        raise UsageError("setting 'data_directory' is managed by pgmgr: it is the data dir (-d)")
    if name.lower() in RESERVED_SETTINGS:
        raise UsageError(
            f"setting {name!r} is managed by pgmgr: use --host, --port or --socket-dir"
        )
    if "\n" in value or "\r" in value or "\0" in value:
        raise UsageError(f"invalid setting {clip(name)!r}: the value holds a line break")
    try:
        value.encode()  # bytes that are not UTF-8 came as surrogates; pgmgr.conf is UTF-8
    except UnicodeEncodeError:
        raise UsageError(f"invalid setting {clip(name)!r}: the value is not valid UTF-8") from None
    return name, value


def check_settings(settings: Mapping[str, object]) -> dict[str, str]:
    return dict(parse_setting(f"{k}={v}") for k, v in settings.items())


def machine_bound(name: str) -> bool:
    """Whether setting ``name`` is pgmgr's own (:data:`RESERVED_SETTINGS`) or bound to the
    machine it was set on (:data:`MACHINE_SETTINGS`, :data:`MACHINE_SUFFIXES`)."""
    low = name.lower()
    return low in RESERVED_SETTINGS or low in MACHINE_SETTINGS or low.endswith(MACHINE_SUFFIXES)


#: Settings whose value, but for the one named here, gives up crash safety or hides damage
#: (``fsync=off``: fine for a scratch instance, data loss after a crash on a server the
#: bundle moves to); an import applies them only with that value (:func:`unsafe`).
SAFE_VALUES = {
    "fsync": "on", "full_page_writes": "on", "data_sync_retry": "off",
    "zero_damaged_pages": "off", "ignore_checksum_failure": "off", "ignore_invalid_pages": "off",
}  # fmt: skip
_BOOLS = {"on": "on", "true": "on", "yes": "on", "1": "on",
          "off": "off", "false": "off", "no": "off", "0": "off"}  # fmt: skip


def unsafe(name: str, value: object) -> bool:
    """Whether ``name=value`` gives up crash safety or hides damage (:data:`SAFE_VALUES`;
    a spelling of a boolean postgres would read otherwise counts as unsafe too)."""
    safe = SAFE_VALUES.get(name.lower())
    return safe is not None and _BOOLS.get(str(value).strip().lower()) != safe


def archives_nowhere(name: str, value: object) -> bool:
    """Whether ``name=value`` turns WAL archiving on: a bundle's archive_command or
    archive_library is never applied (:func:`machine_bound`), and ``archive_mode`` kept
    without them made the new server keep every WAL file, marked ready, for ever (until
    its disk was full)."""
    return name.lower() == "archive_mode" and _BOOLS.get(str(value).strip().lower()) != "off"


def portable_settings(settings: Mapping[str, object]) -> tuple[dict[str, str], list[str]]:
    """A bundle's settings, split: the ones an import keeps (checked as ``-c`` ones are),
    and the names it drops (:func:`machine_bound`: a bundle made elsewhere, or edited by
    someone else, does not choose files, commands or listen addresses here; nor, by
    :func:`unsafe`, turn off crash safety on the machine it is imported on; nor, by
    :func:`archives_nowhere`, turn on archiving without its command).

    :raises UsageError: a kept setting is malformed.
    """
    dropped = sorted(
        k for k, v in settings.items()
        if SETTING_NAME_RE.match(k)
        and (machine_bound(k) or unsafe(k, v) or archives_nowhere(k, v))
    )  # fmt: skip
    return check_settings({k: v for k, v in settings.items() if k not in dropped}), dropped


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
    then ``settings`` as ``-c`` (which a reload cannot change).

    :raises DatabaseException: ``host`` is not loopback (see :mod:`pgmgr.core.loopback`).
    """
    from pgmgr.core import loopback

    why = loopback.message(host, "listen address")
    if why:
        raise DatabaseException(why, hint="start it with --host 127.0.0.1")
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
    input: str | bytes | None = None,
    die_with_parent: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program; never through a shell. ``env`` adds variables (a
    ``PGPASSWORD``: never a password on a command line, where ``ps`` shows it); ``input``
    is its standard input (else /dev/null): bytes go as they are (SQL in the encoding its
    ``SET client_encoding`` names, which need not be UTF-8). With ``die_with_parent`` (a
    long dump, restore or base backup) it gets SIGTERM when pgmgr dies, even by SIGKILL: it
    never goes on writing into what a retry or a destroy is removing.

    It runs in its own session: interrupted (Ctrl-C, a SIGTERM sigguard turned into one,
    the timeout), pgmgr stops its whole process group and waits for it (see
    :func:`pgmgr.core.tools.run`), not the program alone: pg_basebackup's WAL streamer,
    a child of its own, outlived it, still writing into the directory the caller's
    clean-up removes and holding the replica's slot on the primary.

    :raises CommandFailed: it exits non-zero (with its stderr kept).
    :raises OSError: it cannot be executed.
    """
    import subprocess

    from pgmgr.core import sigdefault, tools

    uid, gid, groups = _ids(user)
    preexec = None
    if die_with_parent and sys.platform == "linux":
        from pgmgr.core.launch import _die_with

        preexec = _die_with(os.getpid(), signal.SIGTERM)
    proc = None
    try:
        with tools._deferred() as held:  # a Ctrl-C inside Popen: see tools.run
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=False,  # decoded below: postgres -C echoes bytes that need not be UTF-8
                env={**_child_env(user), **(env or {})},
                cwd="/",
                user=uid,
                group=gid,
                extra_groups=groups,
                preexec_fn=sigdefault.preexec(preexec),  # default dispositions, none blocked
                start_new_session=True,
            )
        for sig in held:
            signal.raise_signal(sig)
        data = input.encode() if isinstance(input, str) else input
        raw_out, raw_err = proc.communicate(input=data, timeout=timeout)
        out, err = raw_out.decode(errors="replace"), raw_err.decode(errors="replace")
    except BaseException as e:
        if proc is not None:
            tools._stop_group(proc, 10.0)
        if isinstance(e, subprocess.TimeoutExpired):
            raise tools.timed_out(argv, timeout) from None
        raise
    if proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, err or out)
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


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


#: What initdb writes in PG_VERSION: the major version, "15" (or "9.6" before 10).
_MAJOR_RE = LazyRegex(r"(?:[1-9][0-9]{1,3}|[1-9]\.[0-9])")


class BadPgVersion(DatabaseException):
    """A data directory's PG_VERSION that names no major version: not the user's --version
    (the error named that), but a file of the directory, damaged or written by hand."""

    def __init__(self, path: Path, why: str) -> None:
        self.path = path
        self.why = why
        super().__init__(
            f"the data directory's PG_VERSION ({path}) is invalid ({why}); nothing was done",
            hint="initdb writes the major version there (such as 15): restore it, or check "
            "that this is the data directory you meant",
        )


def datadir_major(path: Path) -> str | None:
    """The major version the data directory ``path``'s PG_VERSION names; None without one.

    A PG_VERSION that is no regular file (a FIFO, a symlink to ``/dev/zero``) makes no
    data directory (see :func:`is_datadir`): None too, never read.

    :raises BadPgVersion: a regular file that names none (empty, "abc", "15.2", binary,
        too large to be one, unreadable).
    """
    import stat

    file = path / "PG_VERSION"
    text = process.read_small(file)
    if text is None:
        try:
            regular = stat.S_ISREG(os.lstat(file).st_mode)
        except OSError:
            return None
        if not regular:
            return None
        raise BadPgVersion(file, "unreadable, or too large to be one")
    major = text.strip()
    if not _MAJOR_RE.fullmatch(major):
        shown = ascii(major[:20]) if major else "empty"
        raise BadPgVersion(file, f"{shown}: not a PostgreSQL major version")
    return major


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
    from pgmgr.core import testhook, tools, userfs

    pwfile = None
    if password is not None:
        pwfile = datadir.parent / f".pgmgr-pw-{os.getpid()}"
        userfs.as_user(user, _write_private, str(pwfile), password + "\n")
    try:
        testhook.pause("initdb")
        # tools.run, not run: interrupted, it stops initdb's whole group (the postgres it
        # runs in bootstrap and single-user mode too) and waits for it before the caller
        # removes the directory they write in.
        tools.run(initdb_argv(install, datadir, opts, pwfile), user, timeout=300)
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


_MOVED = {
    "launch": {"PR_SET_PDEATHSIG", "ServerExited", "log_tail", "open_log", "open_log_offset",
               "spawn", "stop", "wait_ready", "why_exited"},
    "listen": {"SOCKET_PATH_MAX", "check_port", "check_port_option", "check_socket_dir",
               "check_socket_dir_text", "clear_stale_socket_lock", "free_port", "port_free",
               "socket_dir", "socket_path"},
}  # fmt: skip


def __getattr__(name: str) -> object:
    """The names that moved to :mod:`pgmgr.core.launch` and :mod:`pgmgr.core.listen`, for
    callers that still use them from here; imported on first use."""
    import importlib

    for module, names in _MOVED.items():
        if name in names:
            return getattr(importlib.import_module(f"pgmgr.core.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
