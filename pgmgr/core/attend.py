"""Staying attached to a server: ``pgmgr start --foreground``, the main process of the
systemd unit of ``pgmgr service`` (``Restart=on-failure``).

The attendant holds the instance's lock only while it starts the server. It then watches;
what it saw as "the server exited on its own" (exit 1, so systemd started it again) was
often another pgmgr command at work:

- a snapshot, restore, branch, upgrade or restart stops the server under the instance's
  lock and starts it again. systemd's restart raced that command (waiting for the lock,
  then starting a server the command starts too). Now, while a command holds the lock the
  attendant waits, then reads the record as the command left it (a restore or an upgrade
  switched the data directory, its pin, the binaries) and goes on attending the server
  that runs again. Killed with -9 before it could start it (see
  :mod:`pgmgr.core.stopmark`), the command left it stopped: that is a failure (exit 1).
  The pgmgr of another registration of the data directory (root's, while the system
  unit's attendant runs as the server user with a state directory of its own) has
  another lock and record: its commands are waited for by the locks all registrations
  share, on the snapshot store (:func:`store_busy`: a snapshot, restore or upgrade) and
  on the data directory itself (:func:`pgmgr.core.stopmark.held`: any of them);
- ``pgmgr stop`` (or ``pg_ctl stop``, a signal) shut it down cleanly (``global/pg_control``
  says so): the user's stop, not a failure (exit 0): systemd does not undo it;
- ``pgmgr destroy`` (or ``forget``) removed the record: nothing is left to attend or to
  start again (exit 0: a restart by systemd could only fail, again and again);
- a second attendant on the same data directory (a second unit, a terminal) is refused
  (:func:`attending`): the stop of one made the other fail, and systemd restart it.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pgmgr.core import dirlock, snapstore, stopmark, userfs
from pgmgr.core.errors import InstanceNotFound, PgmgrError
from pgmgr.core.locked import refresh
from pgmgr.core.sdnotify import notify

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pgmgr.core.instance import Server

#: How often the attendant looks whether the command that holds the lock is done.
POLL = 0.1
#: The status line (sd_notify ``STATUS=``) while another pgmgr command has the server stopped.
WAITING = "'{}' is stopped for another pgmgr command at work on it; waiting for that command"
#: ``DBState`` of a cluster shut down cleanly: ``DB_SHUTDOWNED``, ``..._IN_RECOVERY``.
_CLEAN_STATES = (1, 2)


class AlreadyAttended(PgmgrError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"'{name}' is already attended by another 'pgmgr start --foreground' (a systemd "
            "unit, or a terminal); nothing was started",
            hint=f"stop that one first (systemctl stop pgmgr-{name}, or Ctrl-C), or use "
            f"'pgmgr start {name}' without --foreground",
        )


@contextlib.contextmanager
def attending(srv: Server) -> Iterator[None]:
    """Hold the attendant's lock of ``srv``'s data directory (beside its instance lock).

    :raises AlreadyAttended: another attendant holds it.
    """
    lock = dirlock.lock_file(srv.datadir, ".attend")
    with dirlock.held(lock, timeout=0, busy="") as got:
        if not got:
            raise AlreadyAttended(srv.inst.name)
        yield


@dataclass
class Gone:
    """Why the attended server is gone: ``code`` 0 stopped cleanly by someone else, 1 not."""

    code: int
    message: str


def server_gone(srv: Server, stop_requested: list[int]) -> Gone | None:
    """The attended server is not running: wait while another pgmgr command holds the
    instance's lock (it may be at work with the server stopped), then read the record
    again. None when the server runs again (attending goes on) or a stop was requested
    meanwhile (the caller stops what that command starts), else why it is gone. While it
    waits, systemd's status line (``STATUS=``, see :data:`WAITING`) says so.

    :raises InstanceNotFound: the record was removed meanwhile (``pgmgr destroy``).
    """
    other = False  # a pgmgr of another registry held the store while the server was down
    said = False  # systemd's status line says why the unit waits (``systemctl status``)
    try:
        while not stop_requested:
            with dirlock.try_lock(srv.datadir) as free:
                if free and not store_busy(srv) and not stopmark.busy(srv.datadir):
                    try:
                        refresh(srv)
                    except InstanceNotFound:
                        return removed(srv)
                    if srv.running() is not None:
                        return None
                    return _why(srv, other)
                other = other or free
            said = said or notify(f"STATUS={WAITING.format(srv.inst.name)}")
            time.sleep(POLL)
        return None
    finally:
        if said:
            notify("STATUS=")


def store_busy(srv: Server) -> bool:
    """Whether a pgmgr holds the snapshot store of ``srv``'s data directory (``flock`` on
    the store itself, which every registry of the directory shares). A snapshot, restore
    or upgrade holds it from before it stops the server until it has started it again,
    also one run by the pgmgr of another registry: root's, whose instance lock and stop
    mark are in root's state directory, while the system unit's attendant runs as the
    server user with a state directory of its own."""
    try:
        with (
            snapstore.opened(srv.datadir, srv.user(), create=False) as store,
            snapstore.held_if_free(store.top_fd, srv.datadir.name) as idle,
        ):
            return not idle
    except (OSError, PgmgrError):  # no store: no such command at work
        return False


def removed(srv: Server) -> Gone:
    """The record of the attended instance is gone (or names another data directory now):
    the user destroyed or forgot it. Not a failure (see the module doc)."""
    name = srv.inst.name
    if os.path.lexists(srv.datadir):
        how = f"was forgotten by someone else ('pgmgr forget'; {srv.datadir} stays)"
    else:
        how = "was destroyed by someone else ('pgmgr destroy')"
    return Gone(0, f"'{name}' {how}; no longer attending it")


def _why(srv: Server, other: bool = False) -> Gone:
    name = srv.inst.name
    mark = stopmark.read(srv.inst)
    if mark is not None:
        # Its lock is free: the command is gone, though its process may not be quite yet
        # (a process killed with -9 closes its files, the lock's too, before it is a zombie).
        mark.active = False
        return Gone(1, mark.sentence(name))
    if other:  # its mark is in another registry's record
        return Gone(1, f"'{name}' was stopped by a pgmgr command of another registration "
                       f"of {srv.datadir} (root's?), which ended without starting it again "
                       "(killed?)")  # fmt: skip
    if shut_down_cleanly(srv):
        return Gone(0, f"'{name}' was shut down by someone else ('pgmgr stop', pg_ctl or a "
                       "signal); no longer attending it")  # fmt: skip
    return Gone(1, f"'{name}' exited on its own; see 'pgmgr logs {name}'")


def shut_down_cleanly(srv: Server) -> bool:
    """Whether ``global/pg_control`` says the cluster was shut down cleanly (``state`` at
    byte 16, in every supported major); False when it cannot be read. Through fds."""
    try:
        fd = userfs.open_dir(srv.datadir)
        try:
            gfd = os.open("global", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        finally:
            os.close(fd)
        try:
            head = userfs.read_file_at(gfd, "pg_control", limit=1 << 16)
        finally:
            os.close(gfd)
    except (OSError, userfs.UnsafePath):
        return False
    return len(head) >= 20 and struct.unpack("=I", head[16:20])[0] in _CLEAN_STATES
