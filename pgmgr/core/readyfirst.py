"""Work that needs the server to accept connections (an online snapshot's pg_basebackup,
an upgrade's questions and its ``pg_upgrade --check``) on a server another process is
still starting (a long crash recovery: postmaster.pid without its ``ready`` line) or
stopping: they failed with pg_basebackup's or pg_upgrade's own text ("the database system
is starting up"). :func:`ready_first` waits for a starting one as 'pgmgr start' does
(up to its default 30 s, never killing it; a stop run meanwhile ends the wait, as it ends
a start's: see :mod:`pgmgr.core.stopwait`), and refuses a stopping one, each with one line
that names the state and what to do, nothing changed.
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
    srv: Server, command: str, what: str, timeout: float = READY_TIMEOUT
) -> process.PidFile | None:
    """The running server's pid file, once it accepts connections; None when it does not
    run. The caller holds ``srv``'s lock. ``command``: the pgmgr command ("snapshot"),
    ``what``: its work, as in "cannot take an online snapshot of 'dev'".

    :raises NotRunning: it is shutting down, or a stop ended the wait (exit 3).
    :raises WorkerError: it exited while starting, or still starts after ``timeout``.
    """
    from pgmgr.core import startup

    pf = srv.running()
    if pf is None or pf.phase not in ("starting", "stopping"):
        return pf
    name = srv.inst.name
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
