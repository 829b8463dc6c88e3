"""Clean up after a temporary instance whose owner died: the pytest plugin's guard.

A test run can end without its finalizers: a test that calls ``os._exit``, a segfault in
an extension, the OOM killer, ``kill -9``, a crashed pytest-xdist worker. The server it
started would run on and its directory stay. So the plugin starts this small process
(``python -m pgmgr.core.reaper BASE DATADIR``, its own session, no shell) with the read end
of a pipe as stdin, and keeps the write end. The kernel closes that end when the owner exits,
however it exits; the reaper then reads EOF and, if ``BASE`` still exists (a normal close has
removed it already), stops the postmaster that really serves ``DATADIR`` (checked through
``/proc``, never a bare pid) with SIGQUIT and removes ``BASE``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from pgmgr.core import ownconn, ownerrm, process, userfs
from pgmgr.core.errors import PgmgrError


def spawn(base: Path, datadir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start a reaper for ``base``; returns it and the write end of its pipe, which the
    caller keeps open for as long as the instance lives (it is not inherited by children)."""
    r, w = os.pipe()
    env = ownconn.own_environ()
    here = str(Path(__file__).resolve().parents[2])  # the same pgmgr in the child
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    try:
        child = subprocess.Popen(  # our own interpreter and module, no shell
            [sys.executable, "-m", "pgmgr.core.reaper", str(base), str(datadir)],
            stdin=r,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # no Ctrl-C or hang-up from the owner's terminal
            cwd="/",
            env=env,
        )
    except BaseException:
        os.close(w)
        raise
    finally:
        os.close(r)
    return child, w


def reap(base: Path, datadir: Path) -> None:
    """Stop the server of ``datadir`` and remove ``base``, if ``base`` is still there."""
    if not base.exists():
        return
    pf = process.running_postmaster(datadir)
    if pf is not None:
        process.signal_pid(pf.pid, signal.SIGQUIT)
        process.wait_gone(pf.pid, datadir, 30)
    with contextlib.suppress(OSError, PgmgrError):
        fd = userfs.open_dir(base.parent)
        try:
            # through fds, never following a symlink; as root, the server user's data
            # and socket dirs in it are emptied as that user
            ownerrm.remove_at(fd, base.name)
        finally:
            os.close(fd)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m pgmgr.core.reaper BASE DATADIR", file=sys.stderr)
        return 2
    with contextlib.suppress(OSError):
        while os.read(0, 4096):
            pass
    reap(Path(argv[0]), Path(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
