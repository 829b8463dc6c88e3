"""Work that needs the server to accept connections (an online snapshot's pg_basebackup,
an upgrade's questions and its ``pg_upgrade --check``; a reload, an export, a config
change or listing, the extensions' listing, psql, a promote) on a server another process
is still starting (a long crash recovery: postmaster.pid without its ``ready`` line) or
stopping: they failed with pg_basebackup's, pg_upgrade's or libpq's own text ("the
database system is starting up"). :func:`ready_first` waits for a starting one as
'pgmgr start' does (up to its default 30 s, never killing it; a stop run meanwhile ends
the wait, as it ends a start's: see :mod:`pgmgr.core.stopwait`), and refuses a stopping
one, each with one line that names the state and what to do, nothing changed.
"""

from __future__ import annotations

from pgmgr.core import process
from pgmgr.core.errors import NotRunning, WorkerError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pgmgr.core.instance import Server

#: As long as 'pgmgr start' waits by default (and a command's start again after its work).
READY_TIMEOUT = 30.0


def ready_first(
    srv: Server,
    command: str,
    what: str,
    timeout: float = READY_TIMEOUT,
    *,
    closed_ok: bool = False,
) -> process.PidFile | None:
    """The running server's pid file, once it accepts connections; None when it does not
    run. The caller holds ``srv``'s lock. ``command``: the pgmgr command ("snapshot"),
    ``what``: its work, as in "cannot take an online snapshot of 'dev'". A standby with
    ``hot_standby = off``, which never accepts connections, is refused unless
    ``closed_ok`` (work that does without: a promote, a config change, a reload).

    :raises NotRunning: it is shutting down, or a stop ended the wait (exit 3).
    :raises WorkerError: it exited while starting, or still starts after ``timeout``; a
        standby that accepts no connections.
    """
    from pgmgr.core import startup

    pf = srv.running()
    name = srv.inst.name
    if pf is not None and pf.phase == "standby" and not closed_ok:
        raise WorkerError(
            f"cannot {what}: '{name}' is a standby with hot_standby = off, which accepts no "
            "connections; nothing was changed",
            hint=f"'pgmgr config {name} unset hot_standby --restart' (or set hot_standby=on)",
        )
    if pf is None or pf.phase not in ("starting", "stopping"):
        return pf
    if pf.phase == "stopping":
        raise NotRunning(
            f"cannot {what}: '{name}' (pid {pf.pid}) is shutting down; nothing was changed",
            hint=f"wait until 'pgmgr status {name}' says stopped, then run 'pgmgr {command}' "
            f"again (or end its client sessions now with 'pgmgr stop {name} -m fast')",
        )
    try:
        return startup.settle(srv, pf, timeout, waiter=command)
    except startup.StoppedWhileStarting:
        by = srv.ended_by
        assert by is not None
        raise NotRunning(
            f"cannot {what}: '{name}' was starting (pid {pf.pid}), and {by.ender()} (pgmgr "
            f"pid {by.by}) stopped it while this command waited for it to be ready; nothing "
            "was changed"
        ) from None
    except WorkerError as e:
        if process.is_alive(pf.pid):  # still starting: settle left it running
            raise WorkerError(
                f"cannot {what}: '{name}' (pid {pf.pid}) is still starting after "
                f"{timeout:g} s (crash recovery, or a standby catching up), started by "
                "another process; nothing was changed",
                hint=f"wait until 'pgmgr status {name}' says running ('pgmgr start {name} "
                f"--timeout 600' waits for it), then run 'pgmgr {command}' again",
            ) from None
        raise WorkerError(  # "postgres exited during start-up: FATAL: ..."
            f"cannot {what}: '{name}' was starting (pid {pf.pid}), and {e.message}; "
            "nothing was changed",
            hint=e.hint or f"see 'pgmgr logs {name}'",
        ) from None


def cannot_connect(srv: Server, error: Exception, doing: str = "connect to") -> str:
    """One line for a failed connection to ``srv`` (or query: ``doing`` "read"): the state
    of a server that refuses connections (starting, shutting down: it changed since
    the command looked, or the command does not wait: a replica's clean-up on its primary),
    not libpq's text ("connection to server on socket ... failed: FATAL: the database
    system is starting up"); else libpq's first line (a hint may follow on its own)."""
    name = srv.inst.name
    pf = srv.running()
    if pf is not None and pf.phase == "starting":
        why = f"it (pid {pf.pid}) is still starting and accepts no connections yet"
    elif pf is not None and pf.phase == "stopping":
        why = f"it (pid {pf.pid}) is shutting down"
    elif pf is not None and pf.phase == "standby":
        why = "it is a standby with hot_standby = off, which accepts no connections"
    else:  # libpq's: it names where it looked (a Manager's port before its start)
        why = (str(error).strip().splitlines() or ["?"])[0]
    return f"cannot {doing} {name}: {why}"


def ready_unlocked(
    srv: Server,
    command: str,
    what: str,
    timeout: float = READY_TIMEOUT,
    *,
    closed_ok: bool = False,
) -> process.PidFile | None:
    """:func:`ready_first` for work that does not hold ``srv``'s lock (a reload, an
    export, a psql session): the lock is taken only for the wait, when the server is
    starting, so that a stop meanwhile ends it as it ends a start's (unlocked, that stop
    went ahead and the wait said postgres "exited during start-up"). Behind a 'pgmgr
    start' that holds it, that is a wait for the start. Never called with the lock held
    (a second flock of it would wait for itself).

    :raises NotRunning, WorkerError: see :func:`ready_first`.
    :raises Busy: a start (or other work) held the lock for ``timeout``.
    """
    pf = srv.running()
    if pf is None or pf.phase not in ("starting", "stopping", "standby"):
        return pf
    if pf.phase != "starting":  # refused (or not) at once: no wait, no lock
        return ready_first(srv, command, what, closed_ok=closed_ok)
    from pgmgr.core.locked import locked

    with locked(srv, timeout, sweep=False):
        return ready_first(srv, command, what, timeout, closed_ok=closed_ok)
