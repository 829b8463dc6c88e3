"""``stop()`` and ``wait()`` of a server this user cannot see (another user's data
directory): an error, not "it was not running" while it runs on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pgmgr import Manager
from pgmgr.core.server import free_port
from tests.reliability.conftest import is_root
from tests.reliability.users import os_user, python_for_others, run_as

SCRIPT = """
import sys
from pgmgr import DatabaseException, Manager

pg = Manager("127.0.0.1", int(sys.argv[2]), sys.argv[1])
for name, call in (("stop", pg.stop), ("wait", lambda: pg.wait(1))):
    try:
        print(name, call())
    except DatabaseException as e:
        print(name, "DatabaseException:", e)
"""
UNSEEN = "cannot be read (permission denied): whether a server runs there is unknown"


def _run_unseen(datadir: Path, port: int, state: Path) -> subprocess.CompletedProcess[str]:
    """SCRIPT as a user who cannot read ``datadir``: a throwaway one (as root), else this
    one with the directory closed to it for the moment."""
    env = {"PGMGR_STATE_DIR": str(state / "s"), "PGMGR_CACHE_DIR": str(state / "c")}
    if is_root():
        with os_user("stopper") as user:
            shutil.chown(state, user.name)
            exe, pyenv = python_for_others()
            return run_as(user.name, exe, "-c", SCRIPT, str(datadir), str(port),
                          env={**pyenv, **env, "HOME": str(state)})  # fmt: skip
    datadir.chmod(0)
    try:
        argv = [sys.executable, "-c", SCRIPT, str(datadir), str(port)]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=60, env={**os.environ, **env}
        )
    finally:
        datadir.chmod(0o700)


def test_stop_of_a_server_this_user_cannot_see_is_an_error(work: Path) -> None:
    port = free_port("127.0.0.1")
    with Manager("127.0.0.1", port, work / "data", initialize=True, auth="trust") as pg:
        state = work / "other"
        state.mkdir(mode=0o700)
        proc = _run_unseen(work / "data", port, state)
        lines = proc.stdout.splitlines()
        assert lines == [f"stop DatabaseException: data directory {work / 'data'} {UNSEEN}",
                         f"wait DatabaseException: data directory {work / 'data'} {UNSEEN}"], (
            proc.stderr)  # fmt: skip
        assert pg.status().state == "running"
