"""Why a server that pgmgr stopped for a moment is still stopped.

Snapshots, restores, branches and upgrades (:func:`pgmgr.core.pause.paused`) and restarts
stop a running server and start it again once their work is done. Killed in between (kill
-9, the OOM killer, a reboot of the terminal's machine) they left it stopped, and nothing
said why: the user found a database down that no one had stopped.

So before it stops the server, such a command marks the record (``stopped_by``: the
command, its pid and that process's start time, and when), saved like the rest of the
record (atomically, fsynced, in pgmgr's own state directory: nothing a server user can
write). The start that ends the command clears it, and so does an end by an error or an
interrupt (:func:`cleared_on_failure`: the command said what happened); so does any
start, and a stop (``pgmgr stop``, ``Manager.stop``): the user stopped it on purpose. A mark
whose command is gone is what ``pgmgr status`` (``stopped_by``, ``detail``), a command
refused because the instance is not running, and a ``start --foreground`` that sees its
server go (systemd's ``Restart=on-failure`` then brings it back) report. No other command
starts it again behind the user's back: they decide, with ``pgmgr start NAME``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
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

    def to_dict(self) -> dict[str, Any]:
        return {"command": self.command, "pid": self.pid, "at": self.at, "active": self.active}

    def sentence(self, name: str) -> str:
        """What happened, as a sentence without its final stop."""
        return f"'{name}' {self.why()}"

    def why(self) -> str:
        """What happened, without a subject: "was stopped at ... by ..."."""
        who = f"'pgmgr {self.command}' (pid {self.pid})"
        if self.active:
            return f"is stopped for {who}, which starts it again when it is done"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.at))
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
        testhook.pause("marked")
    except BaseException:
        cleanup.quietly(lambda: clear_saved(srv))
        raise


@contextlib.contextmanager
def cleared_on_failure(srv: Server) -> Iterator[None]:
    """Around a command that marks ``srv`` (see :func:`mark`): ended by an error or an
    interrupt, the command says what happened (a start after its work that failed: a bad
    setting, not ready in time), so its mark goes, whether the server runs or not. Kept,
    it made ``status`` say the command "ended without starting it again (killed?)"."""
    try:
        yield
    except BaseException as e:
        from pgmgr.core import sigguard

        with sigguard.undoing(e):
            cleanup.quietly(lambda: clear_saved(srv))
        raise


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
    from pgmgr.core import registry
    from pgmgr.core.errors import InstanceNotFound

    srv.inst.stopped_by = None
    if not srv.register or srv.new:
        return
    try:
        fresh = registry.load(srv.inst.name, settle=False)
    except InstanceNotFound:
        return
    if fresh.datadir != srv.inst.datadir or not clear(fresh):
        return
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
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    ok = command.isalpha() and command.islower() and pid > 0 and 0 <= at < 1e11
    if not ok:  # not a mark pgmgr writes (a hand-edited record)
        return None
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
