"""A server that still runs from its data directory moved away from the recorded path.

``mv data data.old`` while the server runs: the postmaster keeps running in the moved
directory (it works relative to it), the recorded path leads nowhere (``missing``) or to
another directory (``replaced``), and :meth:`Server.running` finds no ``postmaster.pid``
there. Forgetting or destroying the instance then left that server running with no record
naming it: no ``pgmgr status`` showed it again.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from pgmgr.core import identity, process, registry

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pgmgr.core.instance import Server


@dataclass(frozen=True)
class Moved:
    """The recorded postmaster, alive in the pinned directory, which is now at ``where``,
    or ``deleted`` (``rm -rf``, or a ``mv`` to another filesystem: it runs on until its
    next check of postmaster.pid, a minute at most, then stops itself)."""

    pid: int
    where: str
    deleted: bool = False


def find(srv: Server, *, unseen: bool = True) -> Moved | None:
    """The instance's postmaster when it still runs from its pinned data directory, now
    elsewhere than the recorded path; None when the path still leads to that directory, or
    nothing proves it (no pid or pin recorded, another process has that pid now, its
    working directory cannot be read). With ``unseen``, None too when another record names
    the directory it runs from (registered again there: that one shows it); a new cluster
    at the old path is refused either way (that server writes its pg_control there).

    Proof: the recorded pid is a live ``postgres`` whose working directory (a postmaster
    chdirs into its data directory) is the pinned directory (device and inode).
    """
    pid, pinned = srv.inst.pid, srv.pinned()
    if pid is None or pinned is None or not process.is_alive(pid):
        return None
    if identity.compare(pinned, srv.datadir)[0] is None:
        return None  # not moved: Server.running() sees it where it is recorded
    argv = process.cmdline(pid)
    if not argv or Path(argv[0]).name not in ("postgres", "postmaster"):
        return None
    cwd = f"/proc/{pid}/cwd"
    try:
        st = os.stat(cwd)
        where = os.readlink(cwd)
    except OSError:
        return None
    if (st.st_dev, st.st_ino) != (pinned.dev, pinned.ino):
        return None
    if st.st_nlink == 0:  # readlink says "DIR (deleted)": nowhere to move it back from
        return Moved(pid, where.removesuffix(" (deleted)"), deleted=True)
    other = registry.find_by_datadir(Path(where)) if unseen else None
    if other is not None and other.name != srv.inst.name:
        return None  # registered there (pgmgr init -d NEWDIR): status shows it under that name
    return Moved(pid, where)


def sentence(srv: Server, moved: Moved) -> str:
    """Says where the server runs, for an error or a status detail."""
    if moved.deleted:
        return f"its server still runs (pid {moved.pid}) in its deleted data directory"
    return (
        f"its server still runs (pid {moved.pid}) from {moved.where}, where its data "
        f"directory was moved from {srv.datadir}"
    )


def hint(srv: Server, moved: Moved) -> str:
    """Move it back first: PostgreSQL writes global/pg_control under the path it was started
    with, so a server stopped away from it panics at its shutdown checkpoint (crash recovery
    at the next start), and one stopped while a new cluster stands at the old path writes
    its pg_control into that cluster."""
    if moved.deleted:  # nothing to keep: no checkpoint (it would write pg_control there)
        return (
            f"stop it with 'kill -QUIT {moved.pid}' (an immediate shutdown), or wait: it "
            "stops itself within a minute once its postmaster.pid is gone"
        )
    back = f"mv {shlex.quote(moved.where)} {shlex.quote(str(srv.datadir))}"
    return (
        f"move the directory back ({back}, once nothing else stands there), then 'pgmgr "
        f"stop {srv.inst.name}': the server writes its global/pg_control under the path it "
        "was started with"
    )


def started_as(pid: int, datadir: Path) -> str | None:
    """The data directory path the postmaster ``pid`` (serving ``datadir``) was started with,
    when that path no longer leads to ``datadir`` (the directory was moved since); None when
    it does, or its command line does not say (no absolute ``-D``, or ``-D`` names a
    configuration directory whose postgresql.conf names the data directory).

    Its shutdown checkpoint writes global/pg_control under that path: nothing there makes
    it panic (crash recovery at its next start); another cluster there gets its pg_control
    overwritten.
    """
    argv = process.cmdline(pid)
    given = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-D"]
    if len(given) != 1 or not given[0].startswith("/"):
        return None
    try:
        here = os.stat(datadir)
    except OSError:
        return None
    try:
        there = os.stat(given[0])
    except OSError:
        return given[0]
    if (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino):
        return None
    if _config_dir(given[0]):  # its postgresql.conf names the data directory: not said here
        return None
    return given[0]


def _config_dir(path: str) -> bool:
    """Whether ``path`` is a configuration directory (``postgres -D CONFDIR`` whose
    postgresql.conf sets ``data_directory``): a postgresql.conf, and no cluster."""
    return os.path.isfile(os.path.join(path, "postgresql.conf")) and not os.path.lexists(
        os.path.join(path, "PG_VERSION")
    )
