"""Helpers shared by the core tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pgmgr import Manager
from pgmgr.core import process

VERSIONS = ("15", "18")
TEMPLATE_PASSWORD = "template-secret"
ISOLATED_ENV = ("POSTGRES_VERSION", "PGMGR_PG_ROOT", "PGMGR_PG_PATHS", "PGMGR_SOURCES")


def is_root() -> bool:
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(not is_root(), reason="needs root (privilege drop)")
needs_non_root = pytest.mark.skipif(is_root(), reason="only meaningful when not root")


# --------------------------------------------------------------------------- leftovers


def postmasters_under(*roots: Path) -> list[tuple[int, str]]:
    """``(pid, datadir)`` of live postmasters whose ``-D`` lies under one of ``roots``.

    Backends rewrite their command line ("postgres: checkpointer"), so only postmasters
    keep a ``.../postgres -D DIR`` argv.
    """
    prefixes = [os.path.realpath(r) + os.sep for r in roots]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        argv = process.cmdline(pid)
        if not argv or os.path.basename(argv[0]) not in ("postgres", "postmaster"):
            continue
        for i, arg in enumerate(argv[:-1]):
            if arg == "-D":
                datadir = os.path.realpath(argv[i + 1]) + os.sep
                if any(datadir.startswith(p) for p in prefixes) and process.is_alive(pid):
                    found.append((pid, argv[i + 1]))
    return found


def kill_postmasters(found: list[tuple[int, str]]) -> None:
    """SIGQUIT (immediate shutdown, which also ends the backends), SIGKILL if need be."""
    for pid, _ in found:
        process.signal_pid(pid, signal.SIGQUIT)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(process.is_alive(pid) for pid, _ in found):
        time.sleep(0.01)
    for pid, _ in found:
        if process.is_alive(pid):
            process.signal_pid(pid, signal.SIGKILL)


def copy_datadir(src: Path, dst: Path) -> Path:
    """``cp -a``: keeps modes and, as root, the server user's ownership."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


ManagerFactory = Callable[..., Manager]
