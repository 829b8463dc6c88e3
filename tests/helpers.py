"""Helpers for tests that run ``pgmgr`` as a real process, and find or kill the servers
a test left behind."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pgmgr.core import process

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    """A finished ``pgmgr`` process: its argv, exit code and output."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def errors(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.startswith("Error:")]

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return f"{self.argv} -> {self.returncode}\nstdout: {self.stdout}\nstderr: {self.stderr}"


def pgmgr_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "pgmgr", *args]


def run_pgmgr(
    *args: str,
    env: Mapping[str, str | None] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 60,
    input: str | None = None,
    stdin: int | IO[Any] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pgmgr ARGS`` and return the finished process (text, output captured).

    The child gets the test's environment (already isolated by the ``isolation`` fixture)
    updated with ``env``; a value of None removes that variable. ``stdin`` (e.g.
    ``subprocess.DEVNULL``) is the child's standard input when no ``input`` is given. Whatever
    the exit code,
    a Python traceback on stderr fails the test: pgmgr promises never to print one.
    """
    child_env = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = value
    proc = subprocess.run(
        [sys.executable, "-m", "pgmgr", *args],
        env=child_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=stdin,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def killed(proc: subprocess.Popen[Any], timeout: float = 30) -> tuple[Any, Any]:
    """SIGKILL ``proc`` (a no-op once it has exited) and return what it printed, read for
    ``timeout`` seconds at most: a process it started may hold its output pipes open after
    it is gone (the command of a ``pgmgr run``, a child still at work), and reading them to
    their end waited for that one too, without bound. The test then fails naming it."""
    proc.kill()
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        holders = pipe_holders(proc)
        proc.wait()  # killed: it goes, whoever holds its pipes
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        raise AssertionError(
            f"{proc.args} was killed, but its output was still open after {timeout:g} s, "
            f"held by: {holders}"
        ) from None


def pipe_holders(proc: subprocess.Popen[Any]) -> list[str]:
    """The processes (``pid: argv``) other than this one holding ``proc``'s output pipes."""
    inodes = {f"pipe:[{os.fstat(p.fileno()).st_ino}]" for p in (proc.stdout, proc.stderr) if p}
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            if inodes & set(fds):
                found.append(f"{pid}: {' '.join(process.cmdline(int(pid)))}")
    return found


def readline_within(stream: IO[str], timeout: float = 60) -> str:
    """The next line of ``stream`` (a child's output pipe), or the test fails after
    ``timeout`` seconds: a child that hangs before it prints it would otherwise keep the
    test waiting without bound. (Read in a thread: a pipe's buffered reader may hold the
    line already, where select() sees nothing.)"""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert box, f"no line within {timeout:g} s"
    return box[0]


def wait_for_note(datadir: Path, proc: subprocess.Popen[Any], timeout: float = 60) -> None:
    """Return once pgmgr ``proc`` has left its note beside ``datadir``'s lock: it waits
    there for the server (to be ready, or to stop; see :mod:`pgmgr.core.stopwait`) and a
    stop behind it will see that. A fixed sleep "past stopwait.QUIET" was not enough: on a
    loaded machine pgmgr had not started its wait yet (its start-up alone took seconds),
    and the stop behind it found no note."""
    from pgmgr.core import stopwait

    deadline = time.monotonic() + timeout
    while (note := stopwait.read(datadir)) is None or note.pid != proc.pid:
        assert proc.poll() is None, f"pgmgr exited before its note: {proc.communicate()}"
        assert time.monotonic() < deadline, f"pgmgr left no note within {timeout:g} s"
        time.sleep(0.01)


def dead_pid() -> int:
    """The pid of a process that has exited (a run's owner that died)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def run_as_server_user(
    script: str, box: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (``python -c``, argv: ``box`` and the repository) after giving ``box``
    and all in it to ``postgres`` when root: for a script that calls ``userfs.as_user``."""
    if os.geteuid() == 0:
        for p in [box, *box.rglob("*")]:
            shutil.chown(p, "postgres", "postgres")
    return subprocess.run(
        [sys.executable, "-c", script, str(box), str(Path(__file__).parents[1])],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(stderr: str) -> list[str]:
    """The non-empty lines of ``stderr``."""
    return [line for line in stderr.splitlines() if line.strip()]


def copy_datadir(src: Path, dst: Path) -> Path:
    """``cp -a``: keeps modes and, as root, the server user's ownership."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


# --------------------------------------------------------------------------- leftover servers


def postgres_processes(*roots: str | os.PathLike[str], backends: bool = False) -> dict[int, str]:
    """Live postgres processes using a directory under one of ``roots``: pid -> that directory.

    By default, postmasters only: a ``postgres`` (or ``postmaster``) whose ``-D`` lies under a
    root. Backends rewrite their command line ("postgres: checkpointer"), so they do not match.

    With ``backends``, also ``initdb -D``/``--pgdata``, and any postgres process whose working
    directory is under a root: backends keep the data directory as their working directory, so
    the orphaned backends of a killed postmaster are found too.
    """
    prefixes = [os.path.realpath(r) + os.sep for r in roots]
    names = ("postgres", "postmaster", "initdb") if backends else ("postgres", "postmaster")
    flags = ("-D", "--pgdata") if backends else ("-D",)
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        argv = process.cmdline(pid)
        if not argv and backends:
            # An exiting process has dropped its memory, so its command line reads empty,
            # while its working directory is still held until the kernel releases it later
            # in the exit (it unmaps the shared buffers in between: milliseconds). The
            # sweep sees it working there, and rightly leaves the directory: a wait that
            # skipped it was over too soon (CI failed so). Its kernel name stays.
            with contextlib.suppress(OSError):
                cwd = os.path.realpath(os.readlink(f"/proc/{pid}/cwd")) + os.sep
                if any(cwd.startswith(p) for p in prefixes):
                    argv = [Path(f"/proc/{pid}/comm").read_text().strip()]
        if not argv:
            continue
        # A backend's whole title is its argv[0] ("postgres: checkpointer").
        exe = os.path.basename(argv[0].split()[0]).rstrip(":") if backends else argv[0]
        if os.path.basename(exe) not in names:
            continue
        places = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in flags]
        if backends:
            with contextlib.suppress(OSError):
                places.append(os.readlink(f"/proc/{pid}/cwd"))
        for place in places:
            real = os.path.realpath(place) + os.sep
            if any(real.startswith(p) for p in prefixes) and process.is_alive(pid):
                found[pid] = place
                break
    return found


def wait_not_in_use(dirs: Iterable[Path], timeout: float = 30) -> list[Path]:
    """Wait until no process works in any of ``dirs`` as pgmgr's sweep sees it
    (:func:`pgmgr.core.sweep._in_use`: its working directory or an argument there, whatever
    the process: a backend still exiting, a reaper); those still in use after ``timeout``.
    A test that then expects a sweep to remove them waits for what the sweep checks."""
    from pgmgr.core import sweep

    dirs = list(dirs)  # looked at again on each round
    deadline = time.monotonic() + timeout
    while True:
        busy = [d for d in dirs if d.exists() and sweep._in_use(d)]
        if not busy or time.monotonic() > deadline:
            return busy
        time.sleep(0.02)


def postmasters_under(*roots: str | os.PathLike[str]) -> list[int]:
    """Pids of live postmasters whose ``-D`` lies under one of ``roots``."""
    return list(postgres_processes(*roots))


def postgres_pids_under(*roots: str | os.PathLike[str]) -> list[int]:
    """Pids of live postgres/initdb processes (backends included, orphans too) whose ``-D``
    or working directory is under one of ``roots``."""
    return list(postgres_processes(*roots, backends=True))


def kill_postmasters(pids: Iterable[int], grace: float = 5) -> None:
    """SIGCONT (a stopped process acts on no other signal) and SIGQUIT (immediate shutdown,
    which also ends a postmaster's backends), then SIGKILL whatever is left after ``grace`` s."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGCONT)
        process.signal_pid(pid, signal.SIGQUIT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(process.is_alive(p) for p in pids):
        time.sleep(0.01)
    for pid in pids:
        if process.is_alive(pid):
            process.signal_pid(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- places


def scratch_root() -> str:
    """Where the test data directories go: ``PGMGR_TEST_TMP``, else /dev/shm when it is
    roomy (copying a data dir there takes ~0.1 s against ~0.6-1 s on this machine's disk),
    else /tmp. All are world-traversable, as the server user needs."""
    forced = os.environ.get("PGMGR_TEST_TMP")
    if forced:
        return forced
    shm = "/dev/shm"
    with contextlib.suppress(OSError):
        if os.access(shm, os.W_OK | os.X_OK) and shutil.disk_usage(shm).free >= 2 << 30:
            return shm
    return "/tmp"


# --------------------------------------------------------------------------- removal


def remove_tree(path: Path) -> None:
    """``rm -rf``, even of what a test made unreadable or immutable."""
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True, check=False)
        for sub in [path, *path.rglob("*")]:
            with contextlib.suppress(OSError):
                if sub.is_dir() and not sub.is_symlink():
                    sub.chmod(0o700)
        shutil.rmtree(path, ignore_errors=True)


class Graveyard:
    """Test directories deleted by a background thread. On this VM's disk (ext4 with online
    discard) a data directory that reached the disk takes ~1.5 s to delete, all of it spent
    waiting on the device: most of many tests' teardown. :meth:`bury` renames the directory
    away at once (nothing of it is left where the test had it) into a private directory
    beside it, and it is deleted while the next test runs. :meth:`close` (end of the
    session, see tests/conftest.py) waits for the last ones and removes those directories."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Path | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._graves: dict[Path, Path] = {}  # parent -> its private grave directory

    def bury(self, path: Path, graves: Path | None = None) -> None:
        """Remove ``path`` (in the background); ``graves``: where to move it first (same
        filesystem), by default a private ``.pgmgr-test-graves-*`` directory beside it."""
        try:
            if graves is None:
                graves = self._graves.get(path.parent)
                if graves is None:
                    graves = Path(tempfile.mkdtemp(prefix=".pgmgr-test-graves-", dir=path.parent))
                    self._graves[path.parent] = graves
            grave = graves / f"{path.name}-{time.monotonic_ns()}"
            graves.mkdir(exist_ok=True)
            path.rename(grave)
        except OSError:
            remove_tree(path)  # in place, as without a graveyard
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        self._queue.put(grave)

    def _run(self) -> None:
        while (path := self._queue.get()) is not None:
            remove_tree(path)

    def close(self, timeout: float = 600) -> None:
        """Wait until everything buried is deleted (the session fails after ``timeout``
        seconds: a removal never ends by itself); remove the default grave directories."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            assert not self._thread.is_alive(), f"test directories not deleted in {timeout:g} s"
            self._thread = None
        for graves in self._graves.values():
            remove_tree(graves)
        self._graves.clear()


#: The one graveyard of this process (an xdist worker, or the whole run without xdist).
GRAVEYARD = Graveyard()


class LogFollower:
    """``pgmgr logs NAME -n 0 -f`` in the background; a thread collects what it prints."""

    MARK = "pgmgr-test: following"

    def __init__(self, name: str, env: Mapping[str, str]) -> None:
        self.proc = subprocess.Popen(
            pgmgr_argv("logs", name, "-n", "0", "-f"), env={**os.environ, **env},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        self.lines.extend(self.proc.stdout)

    def close(self) -> None:
        """Ctrl-C, as a user ends it; killed if it is not gone within 10 s (it was left
        following for ever when its wait for the exit raised)."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            killed(self.proc)
            raise AssertionError("'pgmgr logs -f' did not exit on Ctrl-C (killed)") from None

    def wait_for(self, text: str, count: int = 1, timeout: float = 60) -> str:
        """What it printed so far, once ``text`` is in it ``count`` times."""
        deadline = time.monotonic() + timeout
        while (printed := "".join(self.lines)).count(text) < count:
            assert self.proc.poll() is None, killed(self.proc)
            assert time.monotonic() < deadline, f"{text!r} not printed {count} time(s):\n{printed}"
            time.sleep(0.02)
        return printed

    def following(self, log: Path, timeout: float = 60) -> None:
        """Return once it prints what is appended to ``log``: a marker line is appended
        every 0.2 s until one comes back. A fixed sleep was not enough: started on a loaded
        machine, ``pgmgr logs`` had not yet found the end of the file when the test wrote
        the lines it expected, and never printed them (``-n 0``)."""
        deadline = time.monotonic() + timeout
        while self.MARK not in "".join(self.lines):
            assert time.monotonic() < deadline, "pgmgr logs -f never printed a new line"
            with open(log, "a") as f:
                f.write(f"{self.MARK}\n")
            with contextlib.suppress(AssertionError):
                self.wait_for(self.MARK, timeout=0.2)
