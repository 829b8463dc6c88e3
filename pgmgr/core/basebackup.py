"""An online snapshot: ``pg_basebackup`` of a running instance, no downtime.

The copy holds ``backup_label`` and the WAL it needs (``-X stream``), so a server started on
it (after a restore or a branch) recovers to the moment the backup ended.
"""

from __future__ import annotations

import os
from pathlib import Path

from pgmgr.core import copy, snapstore, tools, userfs
from pgmgr.core.instance import Server
from pgmgr.core.privileges import ServerUser


def argv(bindir: Path, socket_dir: str, port: int, superuser: str, target: Path) -> list[str]:
    """The ``pg_basebackup`` command line (pure)."""
    return [
        str(bindir / "pg_basebackup"),
        "-D", str(target),
        "-h", socket_dir,
        "-p", str(port),
        "-U", superuser,
        "-X", "stream",
        "-c", "fast",
        "--no-sync",  # one syncfs afterwards instead of an fsync per file
        "-w",
    ]  # fmt: skip


def _mkdir(path: Path) -> None:
    os.mkdir(path, 0o700)


def take(srv: Server, staging: Path, user: ServerUser | None) -> copy.CopyStats:
    """``staging/data`` := a base backup of the running ``srv``.

    :raises CommandFailed: pg_basebackup failed.
    """
    install = srv.installation()
    pf = srv.running()
    socket_dir = (pf.socket_dir if pf else None) or srv.inst.socket_dir or "/tmp"  # noqa: S108
    port = (pf.port if pf else None) or srv.inst.port or 5432
    target = staging / snapstore.DATA
    userfs.as_user(user, _mkdir, staging)
    # Under the subreaper: killed with pgmgr (its death signal), not an orphan that goes
    # on writing a whole copy into the store's work entry while the next command sweeps it.
    tools.run(argv(install.bindir, socket_dir, port, srv.inst.superuser, target), user, reap=True)
    size = userfs.as_user(user, copy.tree_size, target)
    return copy.CopyStats(bytes=size, by_method={"pg_basebackup": size})
