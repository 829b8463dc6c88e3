"""Promotion of a standby that accepts no connections (``hot_standby = off``), the way
``pg_ctl promote`` does it: a ``promote`` file in its data directory (written as
the server user) and SIGUSR1 to its postmaster, then a wait until its ``postmaster.pid``
says ``ready`` (the status PostgreSQL writes once recovery has ended and it accepts
connections). A standby that accepts connections is promoted with ``pg_promote()``."""

from __future__ import annotations

import os
import signal
import time

from pgmgr.core import process, userfs
from pgmgr.core.errors import DatabaseException, WorkerError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pgmgr.core.instance import Server

SIGNAL_FILE = "promote"  # PROMOTE_SIGNAL_FILE: not a .signal name


def promote(srv: Server, timeout: float) -> None:
    """Promote the running standby ``srv`` that accepts no connections.

    :raises WorkerError: it stopped meanwhile, or was not promoted within ``timeout`` (it
        goes on: PostgreSQL promotes it once it reads the file).
    """
    pf = process.running_postmaster(srv.datadir)
    if pf is None:
        raise WorkerError(f"'{srv.inst.name}' stopped before it could be promoted")
    userfs.as_user(srv.user(), _write_signal_file, str(srv.datadir))
    if not process.signal_pid(pf.pid, signal.SIGUSR1):
        raise WorkerError(f"'{srv.inst.name}' stopped before it could be promoted")
    deadline = time.monotonic() + timeout
    while True:
        now = process.PidFile.read(srv.datadir)
        if now is None or now.pid != pf.pid or not process.is_alive(pf.pid):
            raise WorkerError(f"'{srv.inst.name}' stopped while it was being promoted")
        if now.status == "ready":
            return
        if time.monotonic() >= deadline:
            raise WorkerError(
                f"'{srv.inst.name}' did not finish promotion within {timeout:g} s "
                "(it goes on: run 'pgmgr promote' again to finish)"
            )
        time.sleep(process.POLL)


def _write_signal_file(datadir: str) -> None:
    """``promote`` in ``datadir``, empty, never through a symlink. As the server
    user."""
    try:
        fd = os.open(
            os.path.join(datadir, SIGNAL_FILE),
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            0o600,
        )
    except OSError as e:
        raise DatabaseException(
            f"cannot write {os.path.join(datadir, SIGNAL_FILE)}: {e.strerror}"
        ) from None
    os.close(fd)
