"""Run a PostgreSQL client program (pg_basebackup, pg_upgrade, vacuumdb ...) as the server
user, in a given working directory, and stop it when pgmgr is interrupted.

Not :func:`pgmgr.core.server.run`: that one always runs in ``/`` and cannot be cancelled;
pg_upgrade writes its logs and sockets in its working directory and may run for minutes.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pgmgr.core import server
from pgmgr.core.errors import CommandFailed
from pgmgr.core.privileges import ServerUser

if TYPE_CHECKING:
    import subprocess


def run(
    argv: Sequence[str],
    user: ServerUser | None,
    *,
    cwd: Path | str = "/",
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    reap: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (never through a shell) as ``user`` in ``cwd``, in its own session.

    On any exception while waiting (Ctrl-C, SIGTERM turned into one, a timeout) the
    program's whole process group gets SIGTERM, then SIGKILL after 10 s.

    ``reap``: run it under :mod:`pgmgr.core.subreaper`, so that no process it starts
    survives it, even one in a session of its own (pg_upgrade's servers): stopped, the
    wrapper stops them all (a fast shutdown first) before it exits.

    :raises CommandFailed: it exits non-zero (stdout and stderr kept).
    """
    import subprocess

    uid, gid, groups = server._ids(user)
    child_env = server._child_env(user)
    child_env.update(env or {})
    command = list(argv)
    if user is not None and str(cwd) != "/":
        # Popen changes directory before it drops to the user: as root, that would resolve
        # a path inside the user's directories. env(1) changes it after, as the user.
        command, cwd = ["env", "-C", str(cwd), *command], "/"
    grace = 10.0
    if reap:
        from pgmgr.core import subreaper

        # The wrapper runs as pgmgr (root can signal the user's processes); it drops to
        # the user for the program only, and bounds its own clean-up.
        command = subreaper.argv(command, uid, gid, groups)
        uid = gid = groups = None
        grace = subreaper.GRACE + 10
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(cwd),
        env=child_env,
        start_new_session=True,
        umask=0o077,
        user=uid,
        group=gid,
        extra_groups=groups,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        _stop_group(proc, grace)
        raise
    if proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, err.strip() or out)
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def _stop_group(proc: subprocess.Popen[str], grace: float) -> None:
    import subprocess

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.communicate(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
