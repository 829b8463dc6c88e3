"""Running PostgreSQL when pgmgr itself runs as root.

postgres and initdb refuse to run as root, so pgmgr runs them as another OS user: the owner of
an existing data directory, else the user asked for, else ``postgres``. Before spawning
anything it checks that this user can reach the data directory and the binaries, and says
which directory blocks it; it never changes the mode of a user's directories by itself.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from pgmgr.core.errors import DatabaseException

DEFAULT_SERVER_USER = "postgres"


@dataclass(frozen=True)
class ServerUser:
    """The OS user PostgreSQL runs as (from the password database)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def is_root() -> bool:
    return os.geteuid() == 0


def lookup(name: str) -> ServerUser:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise DatabaseException(
            f"no OS user named {name!r} to run PostgreSQL as",
            hint="pgmgr runs as root, and PostgreSQL refuses to; create an unprivileged "
            "user (e.g. 'useradd --system postgres') or pass --user NAME",
        ) from None
    if pw.pw_uid == 0:
        raise DatabaseException(
            f"PostgreSQL refuses to run as root (user {name!r} has uid 0)",
            hint="pass --user with an unprivileged OS user",
        )
    groups = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
    return ServerUser(pw.pw_name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir)


def server_user(datadir: Path, requested: str | None) -> ServerUser | None:
    """The user to run postgres as, or None to run as ourselves (we are not root): as
    root, the one asked for, else the owner of the data directory (or of its nearest
    existing ancestor) unless that is root, else ``postgres``.

    :raises DatabaseException: root and no suitable user, or asked to run as root.
    """
    if not is_root():
        if requested and requested != pwd.getpwuid(os.geteuid()).pw_name:
            raise DatabaseException(
                f"cannot run PostgreSQL as {requested!r}: only root can switch users",
                hint="leave out --user, or run pgmgr as root",
            )
        return None
    if requested:
        return lookup(requested)
    owner = _nearest_owner(datadir)
    if owner != 0:
        try:
            return lookup(pwd.getpwuid(owner).pw_name)
        except KeyError:
            pass
    return lookup(DEFAULT_SERVER_USER)


def _nearest_owner(path: Path) -> int:
    """The owner of ``path``, or of its nearest existing ancestor (a data directory to be
    made in a user's home is that user's); 0 when none can be read."""
    for p in (path, *Path(os.path.abspath(path)).parents):
        try:
            return p.stat().st_uid
        except FileNotFoundError:
            continue
        except OSError:
            return 0
    return 0


def _can(st: os.stat_result, user: ServerUser, bit: int) -> bool:
    """Whether ``user`` has permission ``bit`` (4 r, 2 w, 1 x) on a file with stat ``st``."""
    if st.st_uid == user.uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid in user.groups:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


def blocking_dir(path: Path, user: ServerUser) -> Path | None:
    """The first existing ancestor of ``path`` that ``user`` cannot traverse, or None."""
    path = Path(os.path.abspath(path))
    for ancestor in reversed(path.parents):
        try:
            st = ancestor.stat()
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(st.st_mode) and not _can(st, user, 1):
            return ancestor
    return None


def check_reachable(path: Path, user: ServerUser, what: str) -> None:
    """:raises DatabaseException: ``user`` cannot reach ``path``, naming the blocking dir."""
    blocked = blocking_dir(path, user)
    if blocked is not None:
        mode = stat.S_IMODE(blocked.stat().st_mode)
        raise DatabaseException(
            f"the server user {user.name!r} cannot reach the {what} {path}: "
            f"{blocked} (mode {mode:o}) does not let it through",
            hint=f"put the {what} elsewhere (e.g. under /srv or /var/lib), or allow "
            f"traversal with 'chmod o+x {blocked}'",
        )


def chown(path: Path, user: ServerUser | None) -> None:
    if user is not None:
        os.chown(path, user.uid, user.gid)
