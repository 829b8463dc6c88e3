"""Why a server that pgmgr stopped for a moment is still stopped.

Snapshots, restores, branches and upgrades (:func:`pgmgr.core.pause.paused`) and restarts
stop a running server and start it again once their work is done. Killed in between (kill
-9, the OOM killer, a reboot of the terminal's machine) they left it stopped, and nothing
said why: the user found a database down that no one had stopped.

So before it stops the server, such a command marks the record (``stopped_by``: the
command, its pid and that process's start time, and when), saved like the rest of the
record (atomically, fsynced, in pgmgr's own state directory: nothing a server user can
write). The start that ends the command clears it; so does any start, and a stop
(``pgmgr stop``, ``Manager.stop``): the user stopped it on purpose. A command that ends by
an error or an interrupt with the server still stopped (its start failed: a port taken, a
bad setting) says so and leaves the mark with the reason (:func:`ended_on_failure`): the
server is down, and not by the user's will. A mark whose command is gone is what ``pgmgr
status`` (``stopped_by``, ``detail``), a command
refused because the instance is not running, a command that did its work on the stopped
server and ends with it still stopped (:func:`left_now`), and a ``start --foreground`` that
sees its server go (systemd's ``Restart=on-failure`` then brings it back) report. No other command
starts it again behind the user's back: they decide, with ``pgmgr start NAME``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pgmgr.core import cleanup, process, testhook

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from pgmgr.core.instance import Server
    from pgmgr.core.registry import Instance


@dataclass
class StoppedBy:
    """A mark read from a record: the command that stopped the server, and whether it is
    still at work (it starts the server again when done) or gone without starting it."""

    command: str
    pid: int
    at: float
    active: bool
    #: why the command could not start the server again, when it ended by saying so
    failed: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": self.command, "pid": self.pid, "at": self.at, "active": self.active,
            "failed": self.failed,
        }  # fmt: skip

    def sentence(self, name: str) -> str:
        """What happened, as a sentence without its final stop."""
        return f"'{name}' {self.why()}"

    def why(self) -> str:
        """What happened, without a subject: "was stopped at ... by ..."."""
        who = f"'pgmgr {self.command}' (pid {self.pid})"
        if self.active:
            return f"is stopped for {who}, which starts it again when it is done"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.at))
        if self.failed is not None:
            return f"was stopped at {when} by {who}, which could not start it again ({self.failed})"
        return f"was stopped at {when} by {who}, which ended without starting it again (killed?)"


def mark(srv: Server, command: str) -> None:
    """Mark ``srv``'s record before ``command`` stops its server (saved now).

    :raises OSError: the record cannot be written: the caller does not stop the server.

    All or nothing: interrupted once the mark was written (a Ctrl-C during the record's
    fsync), it is cleared again before the interrupt goes on; the caller, which stops the
    server only after this returns, left it running marked as stopped by a command gone.
    """
    if not srv.register:
        return
    me = os.getpid()
    srv.inst.stopped_by = {
        "command": command, "pid": me, "started": process.start_time(me), "at": time.time(),
        "ticks": process.start_ticks(me), "boot": process.boot_id(),
    }  # fmt: skip
    try:
        srv.save()
        srv.marked = srv.inst.stopped_by
        testhook.pause("marked")
    except BaseException:
        srv.marked = None
        cleanup.quietly(lambda: clear_saved(srv))
        raise


@contextlib.contextmanager
def ended_on_failure(srv: Server) -> Iterator[None]:
    """Around a command that marks ``srv`` (see :func:`mark`): ended by an error or an
    interrupt, the command has said what happened. A server that runs has its mark
    cleared; one still stopped (a start after the work that failed: its port taken, a bad
    setting) keeps it with the reason, so ``status`` says why it is down (not "killed?")
    and an attendant (``start --foreground``) exits 1 and systemd brings it back. Also
    when a start that spawned the server without waiting (:func:`pgmgr.core.pause.
    spawn_again`) cleared the record's mark before the server failed: the mark this
    command saved (:attr:`Server.marked`) is written back with the reason."""
    srv.marked = None
    try:
        yield
    except BaseException as e:
        from pgmgr.core import sigguard

        failure = e
        with sigguard.undoing(failure):
            cleanup.quietly(lambda: _ended(srv, failure))
        raise


#: The longest reason a failed mark keeps (one line of the command's error).
_REASON = 200


def _ended(srv: Server, failure: BaseException) -> None:
    if srv.running() is not None:
        clear_saved(srv)
        return
    if isinstance(failure, KeyboardInterrupt):  # during the clean-up of a failed start?
        failure = failure.__cause__ or failure
    reason = "interrupted" if isinstance(failure, KeyboardInterrupt) else str(failure)
    reason = " ".join(reason.split())[:_REASON] or type(failure).__name__
    _update_saved(srv, lambda mark: {**mark, "failed": reason}, srv.marked)


def clear(inst: Instance) -> bool:
    """Forget the mark (the caller saves the record); whether there was one."""
    had = inst.stopped_by is not None
    inst.stopped_by = None
    return had


def clear_saved(srv: Server) -> None:
    """Forget the mark of ``srv``'s saved record, and only that (the caller holds the
    lock): a library ``Manager`` keeps host, port and settings of its own in ``srv.inst``,
    which a stop must not write over the record's. A record that cannot be written is
    :attr:`Server.record_error`, as after any stop."""
    srv.inst.stopped_by = None
    _update_saved(srv, lambda _mark: None)


def _update_saved(
    srv: Server,
    change: Callable[[dict[str, Any]], dict[str, Any] | None],
    cleared: dict[str, Any] | None = None,
) -> None:
    """Replace the mark of ``srv``'s saved record (if it has one, else ``cleared``: this
    command's, which a start cleared) by ``change(mark)``, and nothing else of it (see
    :func:`clear_saved`)."""
    from pgmgr.core import registry
    from pgmgr.core.errors import InstanceNotFound

    if not srv.register or srv.new:
        return
    try:
        fresh = registry.load(srv.inst.name, settle=False)
    except InstanceNotFound:
        return
    mark = fresh.stopped_by or cleared
    if fresh.datadir != srv.inst.datadir or mark is None:
        return
    fresh.stopped_by = change(mark)
    if srv.inst.stopped_by is not None or fresh.stopped_by is not None:
        srv.inst.stopped_by = fresh.stopped_by
    try:
        registry.save(fresh)
    except OSError as e:
        srv.record_error = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")


def read(inst: Instance) -> StoppedBy | None:
    """The mark of ``inst``, if it has a valid one."""
    data = inst.stopped_by
    if not data:
        return None
    try:
        command, pid, at = str(data["command"]), int(data["pid"]), float(data["at"])
        started = data.get("started")
        started = None if started is None else float(started)
        ticks = data.get("ticks")
        ticks = None if ticks is None else int(ticks)
        boot = str(data.get("boot") or "")
        failed = data.get("failed")
        failed = None if failed is None else str(failed)[:_REASON]
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    ok = command.isalpha() and command.islower() and pid > 0 and 0 <= at < 1e11
    if not ok:  # not a mark pgmgr writes (a hand-edited record)
        return None
    if failed is not None:  # its command ended by saying so: gone, whatever the pid is now
        return StoppedBy(command, pid, at, False, failed)
    return StoppedBy(command, pid, at, _alive(pid, started, ticks, boot))


def _alive(pid: int, started: float | None, ticks: int | None, boot: str) -> bool:
    """Whether ``pid`` is still the process that wrote the mark (a reused pid is not, even
    when it is this process's: a status that got the pid of a killed snapshot). By its
    start in ticks since this boot when the mark has it: the start time from the wall
    clock moves with a step of the clock (NTP), and a command at work read as gone."""
    if not process.is_alive(pid):
        return False
    if ticks is not None and boot and boot == process.boot_id():
        return process.start_ticks(pid) == ticks
    now = process.start_time(pid)
    return now is None or started is None or abs(now - started) <= 2


def left(inst: Instance) -> StoppedBy | None:
    """The mark of a command that is gone (killed) without starting the server again."""
    found = read(inst)
    return found if found is not None and not found.active else None


def left_now(srv: Server) -> StoppedBy | None:
    """The mark of a command gone without starting ``srv``'s server again (:func:`left`),
    from its record as saved now, if the server is still stopped: what a command that did
    its work on it meanwhile (a snapshot queued behind a restore that was killed) says at
    its end, since it starts nothing behind the user's back either. None when unknown (no
    record, one that cannot be read: the command's own work is done and said)."""
    from pgmgr.core import registry
    from pgmgr.core.errors import PgmgrError

    if not srv.register:
        return None
    try:
        inst = registry.load(srv.inst.name, settle=False)
        if inst.datadir != srv.inst.datadir or srv.running() is not None:
            return None
    except (PgmgrError, OSError):
        return None
    return left(inst)


@contextlib.contextmanager
def held(srv: Server) -> Iterator[None]:
    """Hold ``flock`` (shared) on ``srv``'s data directory itself while a command has its
    server stopped for its work. The mark and the instance lock are in the state directory
    of the pgmgr that runs the command; the pgmgr of another registration of the same
    directory (the system unit's attendant runs as the server user with a state directory
    of its own) sees this lock instead (:func:`busy`). Best effort: a directory that
    cannot be opened safely is not held."""
    import fcntl

    from pgmgr.core import userfs

    try:
        fd = userfs.open_dir(srv.datadir)
    except (OSError, userfs.UnsafePath):
        yield
        return
    try:
        for _ in range(100):  # never waits long: the server user could hold it for ever
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # an attendant looking, for an instant
                time.sleep(0.01)
            except OSError:
                break
        yield
    finally:
        os.close(fd)


def busy(datadir: str | Path) -> bool:
    """Whether a pgmgr (of any registration) holds :func:`held` on ``datadir`` now."""
    import fcntl

    from pgmgr.core import userfs

    try:
        fd = userfs.open_dir(datadir)
    except (OSError, userfs.UnsafePath):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False
