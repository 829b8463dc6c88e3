"""The server settings pgmgr keeps for an instance: list, set, unset, apply.

The settings (``-c name=value`` at start, ``pgmgr config NAME set``) are kept in the instance
record and written to ``pgmgr.conf`` in the data directory, which the server reads as its
configuration file (``-c config_file=…/pgmgr.conf``): it includes ``postgresql.conf`` first,
then sets pgmgr's settings. So a reload applies a changed setting whose context allows it
(``sighup``, ``superuser``, ``user``, …), exactly as an edit of ``postgresql.conf`` would; a
``postmaster`` setting waits for a restart, and pg_settings says so (``pending_restart``).
``ALTER SYSTEM`` (``postgresql.auto.conf``) still comes last and wins, as in PostgreSQL.
Settings on postgres's command line could not be changed by a reload: only the ones pgmgr
owns (port, listen_addresses, unix_socket_directories) stay there.

Names and values are checked by the instance's own ``postgres -C`` before anything is kept,
so a value that would make the server fail at its next start (``work_mem=``) is refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pgmgr.core import ownconn, server
from pgmgr.core.errors import UsageError, WorkerError
from pgmgr.core.lazyre import LazyRegex
from pgmgr.core.pgtext import clip, clip_in

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from typing import Any

    from pgmgr.core.instance import Server
    from pgmgr.core.privileges import ServerUser

CONF_NAME = "pgmgr.conf"
#: Contexts whose settings a reload (SIGHUP) applies; ``postmaster`` ones need a restart.
RELOADABLE = frozenset({"sighup", "superuser", "user", "backend", "superuser-backend"})


# --------------------------------------------------------------------------- the file


def quote_value(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


#: A quoted value as PostgreSQL's configuration lexer reads one (guc-file.l's STRING): a
#: quote inside is doubled ('') or escaped (\'), and a backslash escapes any character.
QUOTED = r"'(?:[^'\\\n]|\\.|'')*'"
_ESCAPED = LazyRegex(r"\\([0-7]{1,3}|.)|''", re.S)
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def unquote_value(value: str) -> str:
    """What a postgresql.conf value stands for: a quoted one (:data:`QUOTED`) read as
    PostgreSQL's DeescapeQuotedString reads it ('' and \\' a quote, \\n a newline, \\ooo
    an octal byte, a backslash before any other character that character); any other as
    it is. PostgreSQL builds bytes and ends the string at a NUL: '\\303\\251' is "\u00e9"
    (UTF-8), 'a\\000b' is "a"."""
    if len(value) < 2 or value[0] != "'" or value[-1] != "'":
        return value
    out = bytearray()
    pos, inner = 0, value[1:-1]
    for m in _ESCAPED.compiled.finditer(inner):
        out += inner[pos : m.start()].encode(errors="surrogateescape")
        pos = m.end()
        c = m.group(1)
        if c is None:
            out += b"'"
        elif c[0] in "01234567":
            out.append(int(c, 8) & 0xFF)
        else:
            out += _ESCAPES.get(c, c).encode(errors="surrogateescape")
    out += inner[pos:].encode(errors="surrogateescape")
    return bytes(out).split(b"\0", 1)[0].decode(errors="surrogateescape")


#: Read before postgresql.conf, so that file and the user's settings override them.
#: ``unix_socket_permissions``: local connections are ``trust``, and a socket file of
#: PostgreSQL's default mode 0777 in a directory others can enter (``--socket-dir /tmp``)
#: let every OS user in as the superuser; the server user's only, unless asked otherwise.
DEFAULTS = {"unix_socket_permissions": "0700"}


def render(settings: Mapping[str, str]) -> bytes:
    """The text of ``pgmgr.conf``: pgmgr's defaults, postgresql.conf, pgmgr's settings."""
    lines = [
        "# Written by pgmgr; change it with 'pgmgr config NAME set/unset', not by hand.",
        "# pgmgr's defaults, then postgresql.conf, then pgmgr's settings; postgresql.auto.conf",
        "# (ALTER SYSTEM) still wins.",
        *(f"{name} = {quote_value(value)}" for name, value in DEFAULTS.items()),
        "include_if_exists = 'postgresql.conf'",
        *(f"{name} = {quote_value(value)}" for name, value in settings.items()),
    ]
    return ("\n".join(lines) + "\n").encode()


def conf_path(datadir: Path) -> Path:
    return datadir / CONF_NAME


def _write_as_owner(datadir: str, data: bytes) -> None:
    """Runs as the data directory's owner. Through a directory fd: a FIFO or symlink put in
    place of the file is never opened (no hang, nothing followed), only replaced."""
    from pgmgr.core import userfs

    fd = os.open(datadir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            if userfs.read_file_at(fd, CONF_NAME) == data:
                return
        except (OSError, userfs.UnsafePath):
            pass  # absent, unreadable or not a regular file: replaced below
        userfs.write_file_at(fd, CONF_NAME, data, 0o600, sync=False)  # rewritten each start
    finally:
        os.close(fd)


def write(datadir: Path, settings: Mapping[str, str], user: ServerUser | None) -> Path:
    """Write ``pgmgr.conf`` (0600) unless it already says the same, as the server user.

    As root, the file is first read through an ``O_NOFOLLOW`` descriptor walk, so an
    unchanged file costs no extra process.
    """
    from pgmgr.core import userfs

    data = render(settings)
    if user is not None:
        try:
            with userfs.opened_dir(datadir) as fd:
                if userfs.read_file_at(fd, CONF_NAME, limit=1 << 20) == data:
                    return conf_path(datadir)
        except (OSError, userfs.UnsafePath):
            pass  # absent, or odd: the user's own process below deals with it
    userfs.as_user(user, _write_as_owner, str(datadir), data)
    return conf_path(datadir)


# --------------------------------------------------------------------------- checks


def parse_assignments(items: Sequence[str]) -> dict[str, str]:
    """``['work_mem=64MB', ...]`` -> ``{'work_mem': '64MB'}`` (as ``-c`` parses them)."""
    if not items:
        raise UsageError("nothing to set: give name=value, e.g. work_mem=64MB")
    return dict(server.parse_setting(item) for item in items)


def check_values(srv: Server, settings: Mapping[str, str]) -> None:
    """Ask the instance's own ``postgres -C`` whether it accepts these settings: unknown
    names, malformed values, values out of range, and empty values that would stop the
    server from starting (``work_mem=``) are refused with postgres's own words.

    :raises UsageError: one of them is refused.
    """
    install = srv.installation()
    failed = server.postgres_check(install, srv.datadir, settings, srv.user())
    if failed is None:
        return
    said: dict[str, str] = {}
    for line in failed.stderr.splitlines():
        for tag in ("FATAL", "HINT"):
            if f"{tag}:" in line:
                said.setdefault(tag, line.split(f"{tag}:", 1)[1].strip())
    given = [*settings, *settings.values()]
    from pgmgr.core import conferror

    fatal = said.get("FATAL") or str(failed)
    text = clip_in(conferror.cause(failed.stderr, fatal) or fatal, given)
    hint = clip_in(said["HINT"], given) if "HINT" in said else None
    raise UsageError(f"PostgreSQL {install.version} refuses it: {text}", hint=hint)


# --------------------------------------------------------------------------- the model


@dataclass
class Entry:
    """One kept setting and, when the server runs, what it really uses."""

    name: str
    value: str | None  # what pgmgr keeps (None: no longer kept, after unset)
    live: str | None = None  # current_setting(), when running
    context: str | None = None
    pending_restart: bool = False
    source: str | None = None  # pg_settings.source/sourcefile when another file wins


@dataclass
class Report:
    """The settings pgmgr keeps for an instance, after a change."""

    name: str
    running: bool
    settings: list[Entry]
    changed: list[str] = field(default_factory=list)
    restart_needed: list[str] = field(default_factory=list)
    reloaded: bool = False
    restarted: bool = False
    conf_file: str = ""
    #: False for a running standby with hot_standby = off: no live values, an unconfirmed
    #: reload, restarts needed unknown; None when not running
    accepts_connections: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_LIVE_SQL = (
    "SELECT name, current_setting(name), context, pending_restart, source, sourcefile"
    " FROM pg_settings WHERE name = ANY(%s)"
)


def live_values(srv: Server, names: Sequence[str]) -> dict[str, tuple[str, str, bool, str]]:
    """``name -> (value, context, pending_restart, where)`` from the running server.

    :raises WorkerError: cannot connect.
    """
    import psycopg  # only here: it costs ~120 ms to import

    from pgmgr.core.errors import WorkerError

    if not names:
        return {}
    try:
        with psycopg.connect(ownconn.dsn(srv), connect_timeout=5) as conn:
            rows = conn.execute(_LIVE_SQL, [[n.lower() for n in names]]).fetchall()
    except psycopg.Error as e:
        from pgmgr.core.readyfirst import cannot_connect

        raise WorkerError(cannot_connect(srv, e)) from None
    out = {}
    for name, value, context, pending, source, sourcefile in rows:
        where = sourcefile if sourcefile else source
        out[name] = (value, context, bool(pending), where)
    return out


def entries(srv: Server, names: Sequence[str], running: bool) -> list[Entry]:
    kept = srv.inst.settings
    live = live_values(srv, names) if running else {}
    result = []
    for name in names:
        entry = Entry(name, kept.get(name))
        found = live.get(name.lower())
        if found is not None:
            entry.live, entry.context, entry.pending_restart, where = found
            ours = where and (where.endswith("/" + CONF_NAME) or where == "command line")
            entry.source = None if ours or entry.value is None else where
        result.append(entry)
    return result


def refuses_connections(datadir: Path) -> bool:
    from pgmgr.core.roles import refuses_connections as refuses

    return refuses(datadir)


def show(srv: Server) -> Report:
    """The kept settings, with their live values when the server runs (one another
    process starts: once it is ready, see :mod:`pgmgr.core.readyfirst`)."""
    from pgmgr.core.readyfirst import ready_unlocked

    what = f"show the settings of '{srv.inst.name}'"
    running = ready_unlocked(srv, "config", what, closed_ok=True) is not None
    names = list(srv.inst.settings)
    open_ = running and not refuses_connections(srv.datadir)
    report = Report(srv.inst.name, running, entries(srv, names, open_))
    report.conf_file = str(conf_path(srv.datadir))
    report.accepts_connections = open_ if running else None
    return report


def check_unset(srv: Server, names: Sequence[str]) -> list[str]:
    """:raises UsageError: nothing named, or a name pgmgr does not keep for this instance."""
    if not names:
        raise UsageError("nothing to unset: give setting names, e.g. work_mem")
    kept = srv.inst.settings
    for name in names:
        if name not in kept:
            have = ", ".join(kept) or "none"
            raise UsageError(
                f"{clip(name)!r} is not a setting pgmgr keeps for '{srv.inst.name}' (kept: {have})"
            )
    return list(dict.fromkeys(names))


def change(
    srv: Server,
    assign: Mapping[str, str],
    remove: Sequence[str] | None = None,
    *,
    restart: bool = False,
    timeout: float = 60.0,
) -> Report:
    """Keep ``assign`` and drop ``remove``; rewrite ``pgmgr.conf``; if the server runs,
    reload it (or restart it with ``restart``) and report what it now uses and which
    settings wait for a restart.

    :raises UsageError: a bad name or value (checked by ``postgres -C``), an unknown unset.
    :raises WorkerError: the reload or restart failed.
    """
    from pgmgr.core.instance import DataDirNotFound
    from pgmgr.core.locked import locked

    if not server.is_datadir(srv.datadir):
        raise DataDirNotFound(srv.datadir, "is not a PostgreSQL data directory (or is gone)")
    dropped = check_unset(srv, remove) if remove is not None else []
    check_values(srv, assign)
    # the record as it is under the lock: another pgmgr may have changed its settings, or
    # switched its major (upgrade, restore), since srv was loaded
    with locked(srv):
        from pgmgr.core.readyfirst import ready_first

        # a server another process starts is waited for before anything is written (its
        # reload said libpq's "starting up", the settings kept); a stopping one refused
        ready_first(srv, "config", f"change the settings of '{srv.inst.name}'", closed_ok=True)
        before = dict(srv.inst.settings)
        new = {k: v for k, v in before.items() if k not in dropped}
        new.update(assign)
        write(srv.datadir, new, srv.user())
        srv.inst.settings = new
        srv.save()
        report = Report(srv.inst.name, srv.running() is not None, [], [*assign, *dropped])
        report.conf_file = str(conf_path(srv.datadir))
        if report.running:
            _apply(srv, report, restart, timeout, before)
        else:
            report.settings = entries(srv, report.changed, False)
    return report


def _apply(
    srv: Server, report: Report, restart: bool, timeout: float, before: dict[str, str]
) -> None:
    """Reload (or restart) the running server and note what waits for a restart.

    :raises WorkerError: the restart failed. One that postgres refused (it exited while
        starting: a value ``postgres -C`` accepts but the server cannot run with, e.g.
        ``shared_buffers=100GB``) is undone: the settings ``before`` are kept again and
        the server started with them, as it ran (it was left stopped, the new settings
        kept, and every later start failed the same way); if it fails even so, the new
        settings stay, and the error is the restart's.
    """
    from pgmgr.core import ops
    from pgmgr.core.launch import ServerExited

    ours = uses_pgmgr_conf(srv)
    report.accepts_connections = not refuses_connections(srv.datadir)
    if restart:
        try:
            ops.restart(srv, "fast", timeout)
        except ServerExited as e:
            if not _runs_as_before(srv, before, timeout):
                raise
            raise WorkerError(
                f"'{srv.inst.name}' did not start with {', '.join(report.changed)} "
                f"({e.message}); not kept: it runs again with its previous settings"
            ) from None
        report.restarted = True
    elif ours:
        ops.reload(srv, min(timeout, 10.0))
        report.reloaded = True
    if report.restarted:  # hot_standby may have changed
        report.accepts_connections = not refuses_connections(srv.datadir)
    report.settings = entries(srv, report.changed, bool(report.accepts_connections))
    if not report.restarted and report.accepts_connections:
        report.restart_needed = [e.name for e in report.settings if e.pending_restart or not ours]


def _runs_as_before(srv: Server, before: dict[str, str], timeout: float) -> bool:
    """Keep ``before`` again and start the server with them; if it fails too, keep the
    new settings again (they were not the cause) and say False."""
    from pgmgr.core.errors import PgmgrError

    new = dict(srv.inst.settings)
    write(srv.datadir, before, srv.user())
    srv.inst.settings = before
    srv.save()
    try:
        srv.start(timeout=timeout)
    except PgmgrError:
        write(srv.datadir, new, srv.user())
        srv.inst.settings = new
        srv.save()
        return False
    return True


def uses_pgmgr_conf(srv: Server) -> bool:
    """Whether the running server reads ``pgmgr.conf`` (a server started by an older pgmgr
    has its settings on its command line, which only a restart changes). Asked of the
    server, or, of one that accepts no connections (a standby with hot_standby = off),
    read from its postmaster's command line (``config_file`` can be set only there)."""
    import psycopg

    from pgmgr.core import process
    from pgmgr.core.errors import WorkerError

    pf = srv.running()
    if pf is not None and pf.phase == "standby":
        return any(
            a.startswith("config_file=") and a.endswith("/" + CONF_NAME)
            for a in process.cmdline(pf.pid)
        )

    try:
        with psycopg.connect(ownconn.dsn(srv), connect_timeout=5) as conn:
            row = conn.execute("SELECT current_setting('config_file')").fetchone()
    except psycopg.Error as e:
        from pgmgr.core.readyfirst import cannot_connect

        raise WorkerError(cannot_connect(srv, e)) from None
    return row is not None and str(row[0]).endswith("/" + CONF_NAME)
