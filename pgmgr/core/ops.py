"""Everyday operations over one instance: restart, reload, logs, env, psql.

Each function takes a :class:`~pgmgr.core.instance.Server` and does the work the matching
``pgmgr`` command only renders. Temporary instances (``pgmgr run`` and the pytest plugin)
live in :mod:`pgmgr.core.temporary`; destroy and forget in :mod:`pgmgr.core.teardown`.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from pgmgr.core import confproblems, ownconn, paths, process, server, testhook
from pgmgr.core.errors import DatabaseException, NotRunning, UsageError, WorkerError
from pgmgr.core.instance import Server, StartResult

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pgmgr.core.stopwait import Note

#: How often ``reload`` asks the server whether it re-read its configuration, and ``logs -f``
#: looks for new lines. 10 ms: fast enough to feel instant, cheap enough to be invisible.
POLL = 0.01
#: ``--shell`` values: bash and zsh take the sh syntax.
SHELLS = ("sh", "bash", "zsh", "fish")


def require_running(srv: Server) -> process.PidFile:
    """The verified postmaster of ``srv``.

    :raises NotRunning: no live postmaster serves the data directory (exit code 3).
    """
    pf = srv.running()
    if pf is None:
        from pgmgr.core import stopmark

        mark = stopmark.read(srv.inst)
        why = f": it {mark.why()}" if mark else ""
        raise NotRunning(
            f"'{srv.inst.name}' is not running{why}",
            hint=f"start it with 'pgmgr start {srv.inst.name}'",
        )
    return pf


# --------------------------------------------------------------------------- restart, reload


@dataclass
class RestartResult:
    """What ``pgmgr restart`` did."""

    was_running: bool
    start: StartResult
    #: the stronger stop that ended this restart's stop, if one did (pgmgr.core.stopwait)
    stop_ended_by: Note | None = None


def restart(srv: Server, mode: str = "fast", timeout: float = 60.0) -> RestartResult:
    """Stop (if running) and start again with the recorded host, port and settings.

    :raises UsageError: an unknown mode.
    :raises DatabaseException: its PG_VERSION names no major version, or no installation
        of it is found (nothing was done: it was not stopped).
    :raises WorkerError: it did not stop in time, or did not come back.
    :raises KeyboardInterrupt: interrupted (also SIGTERM/SIGHUP), from its stop mark to
        its start: a server that ran is started again first (the restart is done, fast),
        unless the start had failed by itself (the interrupt came during its clean-up).
        Ended by an error or an interrupt, the stop mark goes if the server runs, and
        says why it could not start it otherwise (see :func:`stopmark.ended_on_failure`).
    """
    if mode not in server.STOP_SIGNALS:
        raise UsageError(f"invalid --mode {mode!r}: use smart, fast or immediate")
    srv.check_identity("restart")
    # what the start needs of the data directory (a PG_VERSION naming a major) and of the
    # system (its binaries): refused before the stop, not with the server stopped
    srv.installation()
    from pgmgr.core import sigguard, stopmark

    running = srv.running() is not None
    with (
        sigguard.interruptible(),
        stopmark.held(srv) if running else contextlib.nullcontext(),
        stopmark.ended_on_failure(srv) if running else contextlib.nullcontext(),
    ):
        try:
            if running:  # killed before the start: status says why it stopped
                stopmark.mark(srv, "restart")  # in here: a signal once it is saved clears it
            testhook.pause("restart-marked")
            was_running = srv.stop(mode, timeout)
            ended_by = srv.ended_by  # (the start's wait sets it anew)
            testhook.pause("restart-stopped")
        except WorkerError:  # still running: nothing to explain
            stopmark.clear(srv.inst)
            srv.save()
            raise
        except KeyboardInterrupt:  # and SIGTERM, SIGHUP: never left stopped by a signal
            if running:
                _start_anyway(srv)
            raise
        try:
            return RestartResult(was_running, srv.start(timeout=timeout), ended_by)
        except KeyboardInterrupt as e:  # the start cancelled itself: it runs all the same
            if running and sigguard.cause(e) is None:  # (not one that failed by itself)
                _start_anyway(srv)
            raise


def _start_anyway(srv: Server) -> None:
    """Start ``srv`` again (fast: an interrupted stop is finished first), whatever signal
    arrives meanwhile, as :func:`pgmgr.core.pause.paused` does for the commands it serves."""
    from pgmgr.core import pause, sigguard

    with sigguard.shielded():
        pause.start_again(srv)


@dataclass
class ReloadResult:
    """What ``pgmgr reload`` saw: the configuration load times."""

    pid: int
    before: float | None  # None: not confirmed (a standby that accepts no connections)
    after: float | None
    elapsed: float
    #: changed values of the files that only a restart applies (file and line, name, value)
    restart_needed: list[confproblems.Rejected] = field(default_factory=list)
    #: changed values of settings pgmgr sets on the server's command line: never applied
    overridden: list[confproblems.Rejected] = field(default_factory=list)

    @property
    def confirmed(self) -> bool:
        return self.after is not None


def conf_load_time(srv: Server, timeout: int = 5) -> float:
    """``pg_conf_load_time()`` of a new session, as a Unix timestamp.

    A session started after the postmaster re-read its files reports the postmaster's time.

    :raises WorkerError: cannot connect.
    """
    import psycopg  # only here: it costs ~120 ms to import

    try:
        with psycopg.connect(ownconn.dsn(srv), connect_timeout=timeout) as conn:
            row = conn.execute("SELECT extract(epoch FROM pg_conf_load_time())").fetchone()
    except psycopg.Error as e:
        from pgmgr.core.readyfirst import cannot_connect

        raise WorkerError(cannot_connect(srv, e)) from None
    assert row is not None
    return float(row[0])


def reload(srv: Server, timeout: float = 10.0) -> ReloadResult:
    """SIGHUP the verified postmaster, then wait until ``pg_conf_load_time()`` advances
    (not on a standby with ``hot_standby = off``: nothing can ask it; the result says
    unconfirmed).

    :raises NotRunning: not running.
    :raises WorkerError: the server did not confirm the reload within ``timeout``; the
        configuration files hold an error that makes PostgreSQL apply none of them (sent:
        pg_hba.conf and pg_ident.conf are read again), or a setting it rejects (sent: the
        rest is applied).
    """
    from pgmgr.core.roles import refuses_connections

    pf = require_running(srv)
    t0 = time.monotonic()
    if refuses_connections(srv.datadir):
        if not process.signal_pid(pf.pid, signal.SIGHUP):
            raise NotRunning(f"'{srv.inst.name}' exited before it could be reloaded")
        return ReloadResult(pf.pid, None, None, time.monotonic() - t0)
    problems = confproblems.find(srv)
    if problems.whole:  # postgres applies none of the files, and confirms nothing either
        # Sent all the same: pg_hba.conf and pg_ident.conf are read again whatever the
        # other files hold (an edit that locks a role out applies now, as with pg_ctl).
        if not process.signal_pid(pf.pid, signal.SIGHUP):
            raise NotRunning(f"'{srv.inst.name}' exited before it could be reloaded")
        raise WorkerError(
            f"'{srv.inst.name}' read pg_hba.conf and pg_ident.conf again, but none of the "
            f"configuration files' changes: {problems.whole[0]}",
            hint="fix it, then reload again (the server runs on with its current settings)",
        )
    before = conf_load_time(srv)
    if not process.signal_pid(pf.pid, signal.SIGHUP):
        raise NotRunning(f"'{srv.inst.name}' exited before it could be reloaded")
    deadline = t0 + timeout
    while True:
        after = conf_load_time(srv)
        if after > before:
            return _reloaded(srv, problems, ReloadResult(pf.pid, before, after, 0.0), t0)
        if time.monotonic() >= deadline:
            raise WorkerError(
                f"'{srv.inst.name}' did not confirm the reload within {timeout:g} s",
                hint=f"see 'pgmgr logs {srv.inst.name}'",
            )
        time.sleep(POLL)


def _reloaded(
    srv: Server, problems: confproblems.Problems, result: ReloadResult, t0: float
) -> ReloadResult:
    """``result`` of a confirmed reload, with the changes only a restart applies.

    :raises WorkerError: PostgreSQL rejected a value of the files (it keeps the current one).
    """
    left: list[confproblems.Rejected] = []
    if problems.rejected:
        left = confproblems.not_in_effect(srv, problems.rejected)
    if problems.restart_only:
        invalid, pending = confproblems.sort_restart(srv, problems.restart_only)
        left += invalid
        result.restart_needed = [r for r in pending if not r.pgmgrs]
        result.overridden = [r for r in pending if r.pgmgrs]
    if left:
        raise WorkerError(
            f"reloaded '{srv.inst.name}', but PostgreSQL rejected "
            f"{'; '.join(map(str, left))} (it keeps the current value)",
            hint=f"fix it, then reload again; 'pgmgr logs {srv.inst.name}' shows more",
        )
    result.elapsed = time.monotonic() - t0
    return result


# --------------------------------------------------------------------------- logs


def tail(log_file: Path, lines: int) -> tuple[list[str], int]:
    """The last ``lines`` lines of ``log_file`` and the byte offset of its end.

    :raises DatabaseException: there is no log file yet, or it is not a regular file.
    """
    from pgmgr.core import logfile

    try:
        with logfile.open_read(log_file) as f:
            data = f.read()
    except FileNotFoundError:
        raise DatabaseException(
            f"no log file yet: {log_file}", hint="the log is written once the server starts"
        ) from None
    # Lines end at "\n" only, as in follow(): str.splitlines() also ends them at \r, \v,
    # \f, \x1c-\x1e, U+0085, U+2028/9, which a role name in a FATAL line may hold.
    text = data.decode(errors="replace").split("\n")
    if text[-1] == "":
        text.pop()
    return (text[-lines:] if lines > 0 else []), len(data)


def follow(
    log_file: Path, offset: int, poll: float = 0.1, done: Callable[[], bool] | None = None
) -> Iterator[str]:
    """Yield text appended to ``log_file`` after ``offset``, forever (until interrupted,
    or ``done()``), across rotations (see :func:`pgmgr.core.logfile.follow`)."""
    from pgmgr.core import logfile

    return logfile.follow(log_file, offset, poll, done)


# --------------------------------------------------------------------------- env, url


def passfile_path(name: str) -> Path:
    return paths.state_dir() / "pgpass" / f"{name}.pgpass"


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def write_passfile(srv: Server, params: Mapping[str, str]) -> Path:
    """A ``.pgpass`` file (mode 0600, in the state dir) holding this instance's password."""
    fields = [params["host"], params["port"], "*", params["user"], params["password"]]
    line = ":".join(_pgpass_escape(f) for f in fields) + "\n"
    path = passfile_path(srv.inst.name)
    paths.write_atomic(path, line.encode(), mode=0o600)
    return path


def check_reachable(srv: Server, tcp: bool) -> None:
    """:raises UsageError: a URL/env is asked for that the instance cannot serve."""
    pf = srv.running()
    if pf is not None:  # where it really listens: started by hand (pg_ctl) too
        srv._adopt(pf)
    if srv.inst.port is None:
        raise UsageError(
            f"'{srv.inst.name}' has never been started, so it has no port yet",
            hint=f"start it with 'pgmgr start {srv.inst.name}'",
        )
    if tcp and not srv.inst.host:
        raise UsageError(f"'{srv.inst.name}' listens on no TCP address (only its socket)")
    if not tcp and not srv.inst.socket_dir:
        raise UsageError(f"'{srv.inst.name}' has no unix socket recorded; use --tcp")


def environment(srv: Server, tcp: bool = False) -> dict[str, str]:
    """``PG*`` variables for the instance; over TCP the password goes to a PGPASSFILE."""
    check_reachable(srv, tcp)
    params = srv.conninfo(tcp)
    env = {
        "PGHOST": params["host"],
        "PGPORT": params["port"],
        "PGUSER": params["user"],
        "PGDATABASE": params["dbname"],
        "PGDATA": srv.inst.datadir,
    }
    if "password" in params:
        env["PGPASSFILE"] = str(write_passfile(srv, params))
    return env


def fish_quote(value: str) -> str:
    """A fish single-quoted word: inside, only ``\\`` and ``'`` are special."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def shell_exports(env: Mapping[str, str], shell: str = "sh", unset: Sequence[str] = ()) -> str:
    """``export NAME='value'`` lines (sh, bash, zsh) or ``set -gx NAME 'value'`` (fish) for
    ``eval``, after ``unset NAME`` (``set -e NAME``) lines for ``unset``."""
    if shell == "fish":
        drop = [f"set -e {k};" for k in unset]
        return "\n".join(drop + [f"set -gx {k} {fish_quote(v)};" for k, v in env.items()])
    if shell in ("sh", "bash", "zsh"):
        drop = [f"unset {k}" for k in unset]
        return "\n".join(drop + [f"export {k}={shlex.quote(v)}" for k, v in env.items()])
    raise UsageError(f"invalid --shell {shell!r}: use {', '.join(SHELLS)}")


def url(srv: Server, tcp: bool = False) -> str:
    check_reachable(srv, tcp)
    return srv.url(tcp)


# --------------------------------------------------------------------------- psql


def psql_command(srv: Server, args: list[str]) -> tuple[list[str], dict[str, str]]:
    """argv and environment for the instance's own ``psql`` (user args may override); a
    server another process starts is waited for (psql said "starting up")."""
    from pgmgr.core.readyfirst import ready_unlocked

    ready_unlocked(srv, "psql", f"open psql on '{srv.inst.name}'")
    require_running(srv)
    install = srv.installation()
    psql = install.bin("psql")
    if not psql.is_file():
        found = shutil.which("psql")
        if found is None:
            raise DatabaseException(f"no psql next to {install.bin('postgres')} nor on PATH")
        psql = Path(found)
    env = ownconn.user_environ()  # less PGSERVICE, PGHOSTADDR, PGPASSWORD ...
    env.update(environment(srv, tcp=not srv.inst.socket_dir))
    return [str(psql), *args], env


def exec_psql(srv: Server, args: list[str]) -> NoReturn:
    """Replace this process with psql, so its exit code and the terminal pass through.

    :raises NotRunning: not running.
    :raises OSError: psql cannot be executed.
    """
    argv, env = psql_command(srv, args)
    os.execvpe(argv[0], argv, env)  # noqa: S606 - argv, never a shell
