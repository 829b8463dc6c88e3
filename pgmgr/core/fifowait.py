"""A process that waits in ``open(2)`` for the other end of a FIFO, which may never come.

The server user can put a FIFO where postgres reads a configuration file (postgresql.conf,
postgresql.auto.conf, pg_hba.conf, pg_ident.conf, an included file): postgres opens it
with a plain ``open`` and waits there, for ever, with its signals blocked (PostgreSQL 15
reads its configuration before it unblocks them) or only noted by its handlers (18). pgmgr
checks those files before an upgrade, but one swapped in after the check hung pg_upgrade
(its ``postgres -C``, or the server its pg_ctl starts) for ever, holding the instance's
lock; a ``start`` waited 30 s past its timeout for a fast stop the server could not act
on. Linux tells where a process waits (``/proc/PID/wchan``, to root and to its own user)
and which file it opens (its ``syscall`` arguments, read from its memory); elsewhere
nothing is found, and the callers' own bounds apply.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
from collections.abc import Callable

from pgmgr.core import process

#: Where the kernel holds an ``open`` of a FIFO until its other end is opened.
_WAITS = frozenset({"wait_for_partner", "fifo_open"})
#: ``open`` and ``openat`` by machine: (number, index of the path argument).
_OPENS = {
    "x86_64": {2: 0, 257: 1},
    "aarch64": {56: 1},
}


def blocked(pid: int) -> bool:
    """Whether ``pid`` waits in ``open`` for the other end of a FIFO."""
    try:
        with open(f"/proc/{pid}/wchan", "rb") as f:
            return f.read().decode(errors="replace").strip() in _WAITS
    except OSError:
        return False


def opening(pid: int) -> str | None:
    """The path ``pid`` is opening (absolute when it gave one), if it can be read."""
    try:
        with open(f"/proc/{pid}/syscall", "rb") as f:
            fields = f.read().split()
        args = _OPENS.get(platform.machine(), {})
        index = args.get(int(fields[0]))
        if index is None:
            return None
        address = int(fields[1 + index], 16)
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            mem.seek(address)
            raw = mem.read(4096).split(b"\0", 1)[0]
    except (OSError, ValueError, IndexError, OverflowError):
        return None
    path = os.fsdecode(raw)
    if path and not path.startswith("/"):
        with contextlib.suppress(OSError):
            path = os.path.join(os.readlink(f"/proc/{pid}/cwd"), path)
    return path or None


def find(root: int) -> tuple[int, str | None] | None:
    """The first of ``root`` and its descendants that waits to open a FIFO, with the
    path it opens (None when that cannot be read); None when none does."""
    seen: set[int] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        if blocked(pid):
            return pid, opening(pid)
        todo.extend(_children(pid))
    return None


def _children(pid: int) -> list[int]:
    """Children of every thread of ``pid`` (orphans re-parented to a subreaper too)."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return process.children(pid)
    for task in tasks:
        with (
            contextlib.suppress(OSError, ValueError),
            open(f"/proc/{pid}/task/{task}/children") as f,
        ):
            found += [int(p) for p in f.read().split()]
    return found


def describe(found: tuple[int, str | None]) -> str:
    """``found`` (see :func:`find`) said in words, for an error message."""
    pid, path = found
    what = f"{path}, a FIFO" if path else "a FIFO"
    return f"process {pid} waits for ever to open {what} (a configuration file replaced by one?)"


def watchdog() -> Callable[[int], str | None]:
    """A watch for :func:`pgmgr.core.tools.run`: called about once a second with the
    program's pid, it SIGKILLs a process of its tree seen waiting to open a FIFO twice in
    a row (nothing else reaches it: its signals are blocked, and a wait for its exit,
    pg_upgrade's or the subreaper's, would be for ever or for the whole grace) and
    returns what it found, said in words; None while there is nothing to say."""
    last: list[tuple[int, str | None]] = []

    def watch(root: int) -> str | None:
        found = find(root)
        seen, last[:] = last[:], [found] if found else []
        if found is None or seen != [found]:
            return None
        process.signal_pid(found[0], signal.SIGKILL)
        return describe(found)

    return watch
