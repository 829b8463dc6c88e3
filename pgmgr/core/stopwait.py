"""A stop behind a stop: a stronger one takes over the shutdown in progress.

A stop holds the instance's lock while it waits for the server to go, and a smart one
waits for every client to disconnect: for ever, if one stays. Its error then says to
stop with ``-m fast``; but that stop (another terminal, ``Manager.stop(mode="fast")``)
waited for the lock and failed after 30 s, with the server still up.

So a stop that waits longer than a blink leaves a note beside the lock (:func:`announced`:
its pid, its mode, the postmaster's pid). A stop that finds the lock taken and such a note
(:func:`locked`) sends its own signal when its mode is stronger: PostgreSQL takes a fast
(SIGINT) or immediate (SIGQUIT) shutdown request during a smart or fast one, and ignores a
weaker one. It writes its mode and pid into the note; the stop in progress sees the server
go, reads the note, and says who ended it (:attr:`Server.ended_by`). A stop as strong or
weaker waits for that stop as it would for the server, up to its own timeout.

A start that waits for its server to be ready (a long crash recovery, up to its
``--timeout``) holds the lock too: it leaves the same note (mode ``start``), and any stop
behind it stops the server at once (PostgreSQL ends a recovery on a shutdown request); the
start then ends saying that stop stopped it (exit code 3, not running), not that postgres
"exited during start-up". So does the wait of an online snapshot or an upgrade for a server
another process starts (:mod:`pgmgr.core.readyfirst`: ``waiter`` in the note).

A restart's stop takes over as a stop does (``pgmgr restart -m fast`` behind a smart stop);
the stop it ended says so ("a fast stop of 'pgmgr restart'"), as the server runs again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pgmgr.core import dirlock, paths, process
from pgmgr.core.errors import Busy, WorkerError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pathlib import Path

    from pgmgr.core.instance import Server

#: The stop modes, weakest first: PostgreSQL moves up this scale, never down. A start
#: waiting for its server (:data:`START`) is ended by any stop.
START = "start"
RANK = {START: -1, "smart": 0, "fast": 1, "immediate": 2}
#: The commands whose wait a stop takes over (None: 'pgmgr stop', 'pgmgr start', the
#: library's). Not a snapshot's, restore's, branch's or upgrade's: its copy of a server
#: stopped in immediate mode instead of fast would not be of a clean shutdown.
TAKEN_OVER = (None, "restart")
#: How long a stop waits before it leaves its note: most are over by then (a fast stop
#: takes ~16 ms), and they cost no write.
QUIET = 0.25
#: How often a stop waiting for the lock looks at the note.
POLL = 0.02


@dataclass(frozen=True)
class Note:
    """A stop in progress: the pgmgr process ``pid`` waits for ``postmaster`` to go, in
    ``mode`` (or to be ready: :data:`START`); ``by``: the pid of the stronger stop that
    escalated it to ``mode``, ``by_command`` its command when it is not a stop (a restart,
    which starts the server again); ``command``: the pgmgr command at work (a restart's or
    a snapshot's stop, say), when it is not a stop; ``waiter``: the command (an online
    snapshot, an upgrade) that waits, before its work, for a server another process
    starts to be ready (:func:`starting`): a stop ends that wait as a start's."""

    pid: int
    ticks: int | None
    postmaster: int
    mode: str
    by: int | None = None
    command: str | None = None
    by_command: str | None = None
    waiter: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"mode": self.mode, "pid": self.by, "command": self.by_command}

    def ender(self) -> str:
        """What ended this wait: "a fast stop", "a fast stop of 'pgmgr restart'"."""
        of = f" of 'pgmgr {self.by_command}'" if self.by_command else ""
        return f"{article(self.mode)} {self.mode} stop{of}"

    def holder(self) -> str:
        if self.waiter:
            return f"'pgmgr {self.waiter}' (pgmgr pid {self.pid})"
        what = "start" if self.mode == START else f"{self.mode} stop"
        of = f" of 'pgmgr {self.command}'" if self.command else ""
        return f"{article(what)} {what}{of} (pgmgr pid {self.pid})"

    def waits_for(self) -> str:
        return "to be ready" if self.mode == START else "to go"


def article(word: str) -> str:
    """ "a" or "an" before ``word`` (an immediate stop)."""
    return "an" if word[:1] in "aeiou" else "a"


def _path(datadir: Path) -> Path:
    return dirlock.lock_file(datadir, ".waits")


def _write(datadir: Path, note: Note) -> None:
    data = {"pid": note.pid, "ticks": note.ticks, "postmaster": note.postmaster,
            "mode": note.mode, "by": note.by, "command": note.command,
            "by_command": note.by_command, "waiter": note.waiter}  # fmt: skip
    paths.write_atomic(_path(datadir), json.dumps(data).encode())


def _load(datadir: Path) -> Note | None:
    text = process.read_small(_path(datadir))
    try:
        data = json.loads(text or "")
        note = Note(int(data["pid"]), data.get("ticks"), int(data["postmaster"]),
                    str(data["mode"]), data.get("by"), data.get("command"),
                    data.get("by_command"), data.get("waiter"))  # fmt: skip
    except (ValueError, TypeError, KeyError):
        return None
    return note if note.mode in RANK else None


def read(datadir: Path) -> Note | None:
    """The note of a stop (or start) still at work on ``datadir``'s server, if any: its
    pgmgr and the server it waits for both still there (a note left behind by a take-over
    that came as the stop ended names a server gone)."""
    note = _load(datadir)
    if note is None or not process.is_alive(note.pid) or not process.is_alive(note.postmaster):
        return None
    if note.ticks is not None and process.start_ticks(note.pid) != note.ticks:
        return None  # its pid reused
    return note


@contextlib.contextmanager
def announced(
    srv: Server, postmaster: int, mode: str, *, waiter: str | None = None
) -> Iterator[None]:
    """Around the wait of a stop that holds ``srv``'s lock (see the module's doc); once it
    ends, :attr:`Server.ended_by` says which stronger stop ended it, if one did. Best
    effort: a note that cannot be written leaves the stop as it was (no take-over)."""
    me = os.getpid()
    srv.ended_by = None
    # a command that stops the server for its work marked the record (pgmgr.core.stopmark)
    command = str((srv.marked or {}).get("command") or "") or None
    note = Note(me, process.start_ticks(me), postmaster, mode, command=command, waiter=waiter)
    with contextlib.suppress(OSError):
        _write(srv.datadir, note)
    try:
        yield
    finally:
        now = _load(srv.datadir)  # (the server it waited for is gone now)
        if now is not None and now.pid == me and now.by is not None:
            srv.ended_by = now
        with contextlib.suppress(OSError):
            _path(srv.datadir).unlink()


def quick(datadir: Path, pid: int, seconds: float) -> bool:
    """Whether the server ``pid`` a start waits for is ready, or gone, within ``seconds``:
    most are (~35 ms), and leave no note."""
    deadline = time.monotonic() + seconds
    while True:
        pf = process.PidFile.read(datadir)
        if pf is not None and pf.pid == pid and pf.phase in ("ready", "standby"):
            return True
        if not process.is_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(process.POLL)


@contextlib.contextmanager
def starting(
    srv: Server, pid: int, timeout: float, *, waiter: str | None = None
) -> Iterator[float]:
    """Around the wait of a start (holding ``srv``'s lock) for the server ``pid``: a note
    once it takes longer than a blink, so that a stop behind it stops the server (see the
    module's doc). Yields what is left of ``timeout``; :attr:`Server.ended_by` says which
    stop ended the wait, if one did. ``waiter``: the command whose work waits (see
    :class:`Note`), when it is not a start."""
    t0 = time.monotonic()
    srv.ended_by = None
    if quick(srv.datadir, pid, min(timeout, QUIET)):
        yield max(0.0, timeout - (time.monotonic() - t0))
        return
    with announced(srv, pid, START, waiter=waiter):
        yield max(0.0, timeout - (time.monotonic() - t0))


def _spawned(pid: int, datadir: Path) -> bool:
    """``pid`` (from a start's note: pgmgr's own state directory) is the postgres it
    spawned for ``datadir``: serving it, or started for it (``-D``) and not in it yet."""
    if process.serves(pid, datadir):
        return True
    argv = process.cmdline(pid) if process.is_alive(pid) else []
    dirs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-D"]
    named = bool(argv) and os.path.basename(argv[0]) in ("postgres", "postmaster")
    return named and any(process._same_path(d, datadir) for d in dirs)


def take_over(srv: Server, mode: str, command: str | None = None) -> Note | None:
    """If a weaker stop (or a start) holds the lock and waits for the server: escalate it
    to ``mode`` (see the module's doc); the note it had, or None. ``command``: this stop's
    pgmgr command, when it is not a stop (a restart)."""
    note = read(srv.datadir)
    if note is None or RANK[mode] <= RANK[note.mode] or note.command not in TAKEN_OVER:
        return None
    pf = srv.running()
    if pf is None and note.mode == START:  # the start's own spawn, without its pid file yet
        if not _spawned(note.postmaster, srv.datadir):
            return None
    else:
        phase = "starting" if note.mode == START else "stopping"
        if pf is None or pf.pid != note.postmaster or pf.phase != phase:
            return None
    from pgmgr.core import launch

    with contextlib.suppress(OSError):  # the stop in progress says who ended it
        new = dataclasses.replace(note, mode=mode, by=os.getpid(), by_command=command)
        _write(srv.datadir, new)
    launch.send_stop(note.postmaster, mode)
    return note


@contextlib.contextmanager
def locked(
    srv: Server, mode: str, timeout: float | None, *, only: tuple[str, ...] | None = None,
    lock_timeout: float | None = None, command: str | None = None,
) -> Iterator[Note | None]:  # fmt: skip
    """:func:`pgmgr.core.locked.locked` for a stop in ``mode``: while another stop holds
    the lock and waits for the server, escalate it if ``mode`` is stronger
    (:func:`take_over`), and wait for it up to this stop's ``timeout``; else wait for the
    lock up to ``lock_timeout`` (default :data:`dirlock.WAIT`), as any command. Yields the
    note of the stop this one ended, or None. ``command``: the pgmgr command whose stop
    this is, when it is not 'pgmgr stop' (a restart: the stop it ends says so).

    :raises WorkerError: the stop in progress still waits after ``timeout``.
    :raises Busy: another command held the lock for ``lock_timeout``.
    """
    from pgmgr.core import locked as lock

    if lock_timeout is None:
        lock_timeout = dirlock.WAIT
    t0 = time.monotonic()
    ended: Note | None = None
    seen: Note | None = None
    with dirlock.queued(srv.datadir):
        while dirlock.is_locked(srv.datadir):
            note = read(srv.datadir)
            if note is not None:
                seen = note
                ended = take_over(srv, mode, command) or ended
            waited = time.monotonic() - t0
            if seen is None and waited >= lock_timeout:
                raise Busy(f"another pgmgr is working on {srv.datadir} (waited "
                           f"{lock_timeout:.0f} s)")  # fmt: skip
            if seen is not None and timeout is not None and waited >= timeout:
                raise _timed_out(srv, seen, timeout, command)
            time.sleep(POLL)
    left = lock_timeout if seen is not None else lock_timeout - (time.monotonic() - t0)
    with lock.locked(srv, max(left, POLL), only=only):
        yield ended


def _timed_out(srv: Server, seen: Note, timeout: float, command: str | None) -> WorkerError:
    """The error of a stop whose wait behind ``seen`` ran out, saying the state as it is
    now. That stop (or start) may be over while its command still holds the instance: a
    snapshot stops the server briefly, copies, starts it again, and names its copy; the
    error said it was "still being stopped" by it, with the server running again."""
    now = read(srv.datadir)
    pf = srv.running()
    at_it = "starting" if now is not None and now.mode == START else "stopping"
    if now is not None and pf is not None and pf.pid == now.postmaster and pf.phase == at_it:
        return _still_stopping(srv, now, timeout)  # as it was: still at it
    name = srv.inst.name
    if pf is None:
        state = "stopped"
    else:
        words = {"starting": "starting", "stopping": "shutting down"}
        state = f"{words.get(pf.phase, 'running')} (pid {pf.pid})"
    alive = process.is_alive(seen.pid) and (
        seen.ticks is None or process.start_ticks(seen.pid) == seen.ticks
    )
    who = f"'pgmgr {seen.waiter or seen.command}'" if seen.waiter or seen.command else "it"
    held = f"{who} still holds the instance" if alive else "another pgmgr holds it now"
    if seen.waiter:
        was = f"the wait of {seen.holder()} for it to be ready"
    else:
        was = "the " + seen.holder().split(" ", 1)[1]  # "a fast stop of ..." -> "the ..."
    again = f"'pgmgr {command or 'stop'} {name}'"
    return WorkerError(
        f"'{name}' is {state} after {timeout:g} s: {was} is over, and {held}",
        hint=f"wait for {who} to finish, then run {again} again"
        if alive and who != "it"
        else f"run {again} again",
    )


def _still_stopping(srv: Server, seen: Note, timeout: float) -> WorkerError:
    name = srv.inst.name
    if seen.mode == START:  # not taken over: it no longer waits for the server
        return WorkerError(f"'{name}' is still held by {seen.holder()} after {timeout:g} s",
                           hint=way_out(seen, name))  # fmt: skip
    smart = seen.mode == "smart"
    return WorkerError(
        f"'{name}' is still being stopped by {seen.holder()} after {timeout:g} s"
        + ("; it waits for its clients to disconnect" if smart else ""),
        hint=way_out(seen, name),
    )


def way_out(note: Note, name: str) -> str:
    """The hint of a command that waited for ``note``'s stop (or start): what ends it.
    Not a stop, behind a snapshot's (restore's...) stop, which no stop takes over; a
    restart, behind a restart's stop (a stop would end it, then stop the server the
    restart started again)."""
    if note.command not in TAKEN_OVER:
        return f"wait for 'pgmgr {note.command}' to finish (no stop cuts its work short)"
    if note.mode == "immediate":
        return "wait for it"
    verb = "restart" if note.command == "restart" and note.mode != START else "stop"
    stronger = {START: "", "smart": " -m fast"}.get(note.mode, " -m immediate")
    how = f"'pgmgr {verb} {name}{stronger}'"
    if note.mode == "smart":
        return f"wait for its clients to disconnect, or end them with {how}"
    return f"wait, or end it with {how}"
