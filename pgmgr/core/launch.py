"""Run a postgres: spawn it (own session, output to its log), wait until it is ready,
stop it; the server log it writes to.

Measured on a 2-core machine with PostgreSQL 15 (DESIGN.md): postgres is ready ~35 ms after
spawn while ``pg_ctl start -w`` takes ~114 ms (it polls every 100 ms), and a signal plus a
fast poll stops it in ~16 ms against ~102 ms for ``pg_ctl stop -w``. So pgmgr spawns
``postgres`` itself and watches ``postmaster.pid``.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pgmgr.core import conferror, process, sigdefault, testhook
from pgmgr.core.errors import DatabaseException, UsageError, WorkerError, doing
from pgmgr.core.lazyre import LazyRegex
from pgmgr.core.privileges import ServerUser
from pgmgr.core.server import STOP_SIGNALS, _child_env, _ids

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    import subprocess
    from typing import Any

    #: a call for :class:`_Lasting`'s thread: the function, its result's box, done
    _Job = tuple[Callable[[], Any], list[Any], threading.Event]


def _die_with(parent: int, sig: int = signal.SIGQUIT) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` (by default SIGQUIT, postgres' immediate
    shutdown, which also ends its backends and removes its pid file and sockets) when
    ``parent`` dies, even by SIGKILL. subprocess calls it after the uid/gid switch (the
    kernel clears the setting on a credential change), and postgres is not set-uid, so it
    survives the exec."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork

    def preexec() -> None:  # pragma: no cover - runs in the forked child
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


PR_SET_PDEATHSIG = 1


class _Lasting:
    """One daemon thread that spawns the children that must die with this process, for
    callers off the main thread: the kernel sends ``PR_SET_PDEATHSIG`` when the *thread*
    that forked the child ends, not the process. A temporary server started from a worker
    thread (a thread pool, a test runner's thread) was stopped as soon as that thread
    finished, under the process still using it. This thread ends only with the process."""

    lock = threading.Lock()
    jobs: queue.SimpleQueue[_Job] | None = None

    @classmethod
    def run(cls, call: Callable[[], Any]) -> Any:
        with cls.lock:
            if cls.jobs is None:
                cls.jobs = queue.SimpleQueue()
                threading.Thread(
                    target=cls._serve, args=(cls.jobs,), name="pgmgr-spawner", daemon=True
                ).start()
            jobs = cls.jobs
        box: list[Any] = []
        done = threading.Event()
        jobs.put((call, box, done))
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    @staticmethod
    def _serve(jobs: queue.SimpleQueue[_Job]) -> None:
        while True:
            call, box, done = jobs.get()
            try:
                box.append(call())
            except BaseException as e:  # the caller's thread raises it
                box.append(e)
            finally:
                done.set()

    @classmethod
    def forget(cls) -> None:
        """In a forked child: the thread is not there (a new one is made when needed)."""
        cls.lock = threading.Lock()
        cls.jobs = None


os.register_at_fork(after_in_child=_Lasting.forget)


def _pausing(preexec: Callable[[], None] | None) -> Callable[[], None]:
    """Tests only: ``preexec``, then the test-only pause ``start-exec`` in the forked
    child, before its exec (its parent waits inside ``Popen`` meanwhile)."""

    def pausing() -> None:  # pragma: no cover - runs in the forked child
        if preexec is not None:
            preexec()
        testhook.pause("start-exec")

    return pausing


def spawn(
    argv: Sequence[str],
    log_file: Path,
    user: ServerUser | None,
    *,
    die_with_parent: bool = False,
    death: int = signal.SIGQUIT,
) -> subprocess.Popen[bytes]:
    """Start postgres in its own session (so a Ctrl-C meant for pgmgr never reaches it and
    it outlives the CLI), output appended to ``log_file``. With ``die_with_parent`` (a
    temporary server) it is stopped when the calling thread's process dies, however it dies,
    by the signal ``death`` (an immediate shutdown unless told).

    :raises OSError: the binary cannot be executed.
    """
    import subprocess

    linux = sys.platform == "linux"
    dies = die_with_parent and linux
    preexec = _die_with(os.getpid(), death) if dies else None
    if testhook.armed("start-exec"):  # tests: the child waits, pgmgr is inside Popen
        preexec = _pausing(preexec)

    fd = open_log(log_file)
    try:
        with doing("write", log_file), os.fdopen(fd, "ab", closefd=False) as log:
            log.write(f"--- pgmgr: starting {' '.join(argv[:3])} at {time.ctime()}\n".encode())
        uid, gid, groups = _ids(user)

        def popen() -> subprocess.Popen[bytes]:
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
                # default dispositions, no signal blocked: read in the spawning thread
                preexec_fn=sigdefault.preexec(preexec),
            )

        if dies and threading.current_thread() is not threading.main_thread():
            child: subprocess.Popen[bytes] = _Lasting.run(popen)
            return child
        return popen()
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

    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise DatabaseException(f"the server log {log_file} is not a regular file")
    if st.st_uid != os.geteuid():
        # another user's (made first in a shared directory): they would read the log, and
        # could write lines into it that pgmgr reads as postgres's
        os.close(fd)
        raise DatabaseException(
            f"refusing the server log {log_file}: it belongs to uid {st.st_uid}, not to you",
            hint="choose a log file in a directory only you can write, or the default "
            "(pgmgr's state directory)",
        )
    return fd


def log_tail(log_file: Path | None, lines: int = 5, since: int = 0) -> str:
    """The last ``lines`` lines of the log written after byte offset ``since``."""
    if log_file is None:
        return ""
    from pgmgr.core import logfile

    try:
        with logfile.open_read(log_file) as f:  # never blocks (a FIFO put there)
            f.seek(since)
            text = f.read().decode(errors="replace")
    except (OSError, DatabaseException):
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
        cause = conferror.cause(log, why)  # the LOG line before the FATAL says which
        if cause is not None:  # fatal because of it: said as the FATAL line of a -c would be
            why = f"FATAL: {cause}"
        if "Address already in use" in log:
            why = "port already in use (" + why + ")"
        elif re.search(r"could not bind IPv[46] address .*: Permission denied", log):
            # a low port its user may not bind, found out only now (check_port tells
            # before, unless privileges did not show: a setcap binary, an LSM)
            why = ("it was refused its port (Permission denied: a port below 1024 needs "
                   f"privileges its user does not have; use --port auto) ({why})")  # fmt: skip
        super().__init__(f"postgres exited during start-up: {why}")


def stop(pid: int, datadir: Path, mode: str, timeout: float | None) -> bool:
    """Signal the postmaster and poll until it is gone; False when ``timeout`` passed.

    Never escalates to another mode by itself.
    """
    if mode not in STOP_SIGNALS:
        raise UsageError(f"invalid stop mode {mode!r}: use smart, fast or immediate")
    if not send_stop(pid, mode):
        return True
    return process.wait_gone(pid, datadir, timeout)


def send_stop(pid: int, mode: str) -> bool:
    """Send ``mode``'s signal to the postmaster ``pid``; False when it is gone already.
    An immediate stop also continues it: a frozen one (SIGSTOP, a test of a client's
    timeouts against a hung server) acts on nothing else, and an immediate stop is the
    one that must end it (a temporary server's removal, the context manager's fallback)."""
    if not process.signal_pid(pid, STOP_SIGNALS[mode]):
        return False
    if mode == "immediate":
        process.signal_pid(pid, signal.SIGCONT)
    return True


def open_log_offset(log_file: Path) -> int:
    try:
        return log_file.stat().st_size
    except OSError:
        return 0
