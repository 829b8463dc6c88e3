"""A record's hold on its data directory: the identity (device, inode, system identifier)
pinned when the instance is made, and the check before acting on it that the directory at
the recorded path is still that one (:class:`pgmgr.core.identity.IdentityChanged` if not).

``pgmgr status`` compares identities itself (:func:`pgmgr.core.state.status`) and does not
load this module.
"""

from __future__ import annotations

from pgmgr.core import identity
from pgmgr.core.errors import DatabaseException

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pgmgr.core.instance import Server


def pin(srv: Server) -> bool:
    """Record the identity of the data directory now at the path (after init, at
    registration, or to fill in an older record). False if it cannot be proved: not
    reachable without untrusted symlinks, or not a complete data directory."""
    try:
        now = identity.probe(srv.datadir)
    except (OSError, DatabaseException):
        return False
    if now.system_id is None:
        return False
    srv.inst.dev, srv.inst.ino, srv.inst.system_id = now.dev, now.ino, now.system_id
    return True


def check_identity(srv: Server, action: str) -> None:
    """Before acting on the instance: the directory at the recorded path must still be
    the recorded one. An older record without an identity gets it now, if the directory
    can be proved (not an unfinished build's: its command pins the directory it makes,
    so one it did not pin is not its own); a missing directory is left to the caller.

    :raises IdentityChanged: it was moved (the path crosses a symlink another user
        controls) or replaced (exit code 4).
    """
    pinned = srv.pinned()
    state, why = identity.compare(pinned, srv.datadir)
    if state == identity.REPLACED and srv.follow_switch():
        state = None
    if state in (identity.MOVED, identity.REPLACED):
        raise identity.IdentityChanged(srv.inst.name, srv.inst.datadir, state, why, action)
    if pinned is None and state is None and not srv.inst.pending and pin(srv) and not srv.new:
        srv.save()
