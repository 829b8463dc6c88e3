"""Helpers for tests that run ``pgmgr`` as a real process, and find or kill the servers
a test left behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
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
