"""Process truth: ``postmaster.pid`` read into named fields, and pids that are checked.

A pid from ``postmaster.pid`` or from a record counts only when that process is alive
(not a zombie), looks like a postgres postmaster, and serves this data directory. On Linux this
is read from ``/proc``; elsewhere only liveness can be checked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pgmgr.core import numtext
from pgmgr.core.lazyre import LazyRegex

PIDFILE = "postmaster.pid"

#: Poll interval while waiting for a server to become ready or to exit. postgres itself is
#: ready ~35 ms after spawn, so a 2 ms poll adds at most 2 ms and costs nothing measurable.
POLL = 0.002


#: How long :func:`wait_gone` waits for the process to exit once its postmaster.pid is gone
#: (a few ms; more only if the pid now belongs to another process).
EXIT_GRACE = 0.5

#: postmaster.pid and socket lock files are a few hundred bytes.
SMALL_FILE = 64 << 10


def read_small(path: Path, limit: int = SMALL_FILE) -> str | None:
    """The text of a small regular file that the server user controls (``postmaster.pid``,
    a socket lock, ``PG_VERSION``); None when it is missing, unreadable, not a regular file
    (a FIFO would block the reader forever, ``/dev/zero`` never ends), a symlink, or larger
    than ``limit``. Never follows the last component and never blocks."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        data = os.read(fd, limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return None if len(data) > limit else data.decode(errors="replace")


@dataclass(frozen=True)
class PidFile:
    """The fields of ``postmaster.pid`` (see PostgreSQL's ``pidfile.h``)."""

    pid: int
    datadir: str
    start_time: int | None
    port: int | None
    socket_dir: str | None
    listen_addr: str | None
    status: str | None  # "starting" | "stopping" | "ready" | "standby" (PostgreSQL >= 10)

    @property
    def phase(self) -> str:
        """The status line, or ``starting`` while postgres has not written it yet: for its
        first tens of ms (sockets, shared memory) the file has its first lines only, and
        connections are refused. (PostgreSQL before 10 writes none; pgmgr's own start waits
        for it, so it does not start those either.)"""
        return self.status or "starting"

    @classmethod
    def read(cls, datadir: Path) -> PidFile | None:
        """Parse ``datadir/postmaster.pid``; None when absent, unreadable or half-written."""
        text = read_small(datadir / PIDFILE)
        return None if text is None else cls.parse(text)

    @classmethod
    def parse(cls, text: str) -> PidFile | None:
        lines = text.split("\n")
        try:
            pid = int(lines[0])
        except (ValueError, IndexError):
            return None

        def field(i: int) -> str | None:
            return lines[i].strip() if len(lines) > i and lines[i].strip() else None

        def number(i: int) -> int | None:
            value = field(i)
            return numtext.whole(value)

        return cls(
            pid=pid,
            datadir=field(1) or "",
            start_time=number(2),
            port=number(3),
            socket_dir=field(4),
            listen_addr=field(5),
            status=field(7),
        )


def _proc(pid: int, name: str) -> Path:
    return Path("/proc") / str(pid) / name


def is_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (an exited child nobody reaped yet)."""
    if pid <= 0:
        return False
    try:
        stat = _proc(pid, "stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        stat = ""
    if stat:
        # The state follows the parenthesised command name, which may itself hold ')'.
        state = stat[stat.rfind(")") + 2 : stat.rfind(")") + 3]
        return state not in ("Z", "X", "x")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def start_time(pid: int) -> float | None:
    """The process's start time as a Unix timestamp (Linux), or None."""
    ticks = start_ticks(pid)
    boot = _boot_time()
    if boot is None or ticks is None:
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), or None. Unlike
    :func:`start_time` (boot time, from the wall clock), no step of the clock (NTP,
    settimeofday) moves it: with :func:`boot_id`, it names one process for good."""
    try:
        stat = _proc(pid, "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def boot_id() -> str:
    """This boot's id (Linux), or "" where there is none."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def cmdline(pid: int) -> list[str]:
    try:
        raw = _proc(pid, "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="surrogateescape") for a in raw.split(b"\0") if a]


def _same_path(a: str, b: Path) -> bool:
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except OSError:
        return False


def serves(pid: int, datadir: Path, pidfile_start: int | None = None) -> bool:
    """True only if ``pid`` is a live postgres postmaster for ``datadir``.

    Checks: not a zombie; the executable is ``postgres``/``postmaster`` (a backend's title
    is ``postgres: ...``); and its working directory (postgres chdirs into its data dir) is
    ``datadir``. That is conclusive, so the start time is not compared then: the kernel
    recomputes boot time when the wall clock is stepped (NTP, a restored VM), which would
    make a live server look dead. Only when the working directory cannot be read (another
    user's process) does pgmgr fall back to the ``-D`` argument plus the start time.
    """
    if not is_alive(pid):
        return False
    if not Path("/proc").is_dir():  # pragma: no cover - non-Linux: liveness is all we have
        return True
    argv = cmdline(pid)
    if not argv or Path(argv[0]).name not in ("postgres", "postmaster"):
        return False
    try:
        cwd = os.readlink(_proc(pid, "cwd"))
    except OSError:
        cwd = None
    if cwd is not None:
        return _same_path(cwd, datadir)
    d_args = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-D"]
    if not any(_same_path(d, datadir) for d in d_args):
        return False
    if pidfile_start is not None:
        started = start_time(pid)
        if started is not None and abs(started - pidfile_start) > 2:
            return False
    return True


def stale_pidfile_reason(pf: PidFile) -> str | None:
    """Why ``pf`` (not served by a postmaster of this data dir) is provably stale, or None.

    Stale: its pid is gone; it was written before this boot; or its pid belongs to a process
    that started after the file was written (the pid was reused). A live process that
    predates the file may be a postmaster pgmgr cannot see (in a container's pid namespace,
    on another host over NFS): then the file is the only lock keeping a second postmaster
    out, and it is not stale as far as pgmgr can tell.
    """
    if not is_alive(pf.pid):
        return f"pid {pf.pid} is gone"
    boot = _boot_time()
    if pf.start_time is not None and boot is not None and pf.start_time < boot - 5:
        return "it was written before the machine last booted"
    started = start_time(pf.pid)
    if pf.start_time is not None and started is not None and started > pf.start_time + 2:
        return f"pid {pf.pid} was reused by a process started after the file was written"
    return None


def running_postmaster(datadir: Path) -> PidFile | None:
    """The pid file of the postmaster that really serves ``datadir``, or None."""
    pf = PidFile.read(datadir)
    if pf is None:
        return None
    return pf if serves(pf.pid, datadir, pf.start_time) else None


def gone(pid: int, datadir: Path) -> bool:
    """The server has exited: no such pid, a zombie, or its postmaster.pid removed."""
    if not is_alive(pid):
        return True
    pf = PidFile.read(datadir)
    return pf is None or pf.pid != pid


def wait_gone(pid: int, datadir: Path, timeout: float | None) -> bool:
    """Poll until :func:`gone`; False on timeout. Between checks it sleeps :data:`POLL`,
    or less: until ``pid`` exits, when a pidfd (Linux 5.3+) can tell."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with exit_waiter(pid) as nap:
        while not gone(pid, datadir):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            nap(POLL)
        # postgres removes postmaster.pid a moment before it exits: a caller that checks
        # the process, or starts another server on its port, must not find it yet.
        tail = time.monotonic() + EXIT_GRACE
        while is_alive(pid) and time.monotonic() < tail:
            nap(POLL)
    return True


@contextlib.contextmanager
def exit_waiter(pid: int) -> Iterator[Callable[[float], object]]:
    """A ``nap(seconds)`` that returns early when ``pid`` exits (becomes a zombie or
    disappears): poll(2) on a pidfd; plain sleep where there is none (not Linux, a kernel
    before 5.3, the pid gone already). Only a wake-up: callers still check what they wait for,
    so a pidfd of a reused pid costs at most the sleep."""
    try:
        import select  # a C module, loaded already with subprocess

        fd = os.pidfd_open(pid)
    except (AttributeError, ImportError, OSError):
        yield time.sleep
        return
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        yield lambda seconds: poller.poll(seconds * 1000)
    finally:
        os.close(fd)


def signal_pid(pid: int, sig: signal.Signals) -> bool:
    """Send ``sig``; False when the process is already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux)."""
    try:
        text = _proc(pid, "task/" + str(pid) + "/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


#: A client backend's title after ``postgres: ``: an optional ``cluster_name: ``, then
#: ``user db host state`` where host is ``[local]`` or ``address(port)``. Auxiliary processes
#: never have that shape ("checkpointer", "autovacuum launcher", PostgreSQL 18's "io worker 0").
_CLIENT_TITLE_RE = LazyRegex(r"^(?:[^:]*: )?\S+ \S+ (?:\[local\]|\S*\(\d+\))(?: |$)")


def client_sessions(postmaster: int) -> list[str]:
    """Titles of the client backends of a postmaster (``postgres: user db [local] idle``)."""
    titles = []
    for child in children(postmaster):
        title = " ".join(cmdline(child))
        with contextlib.suppress(ValueError):
            rest = title.split("postgres: ", 1)[1].strip()
            if _CLIENT_TITLE_RE.match(rest):
                titles.append(rest)
    return titles


def processes_in(datadir: Path) -> list[int]:
    """Pids of live postgres processes whose working directory is ``datadir`` (Linux).

    Used before removing a stale ``postmaster.pid``: orphaned backends of a killed
    postmaster still use the data directory and keep this list non-empty.
    """
    real = os.path.realpath(datadir)
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if cwd == real and is_alive(pid):
            argv = cmdline(pid)
            if argv and argv[0].split()[0].split("/")[-1].rstrip(":") in ("postgres", "postmaster"):
                found.append(pid)
    return found
