"""No server that pg_upgrade starts outlives an interrupted pg_upgrade (pgmgr.core.subreaper).

pg_upgrade's pg_ctl starts each postmaster in a session of its own: stopping pg_upgrade's
process group does not reach it, and one just forked has no postmaster.pid to be found by.
A real pg_upgrade cannot be stopped at that moment on purpose, so a stand-in script plays
it (mocked: only pg_upgrade itself): it starts a real postgres the way pg_ctl does, in its
own session (``setsid -f``), then waits to be interrupted.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from pgmgr.core import privileges, server, tools, versions
from pgmgr.core.errors import CommandFailed
from tests.helpers import postmasters_under
from tests.snap.conftest import Inst

FAKE_PG_UPGRADE = """#!/bin/sh
# $1 postgres, $2 data directory (its socket directory too), $3 port
setsid -f "$1" -D "$2" -k "$2" -c listen_addresses= -p "$3" </dev/null >/dev/null 2>&1
exec sleep 120
"""


def test_interrupted_program_leaves_no_server(scratch: Path) -> None:
    it = Inst("orphan", scratch / "orphan")
    it.ok("init", "-q", "-d", str(it.datadir), "--name", "orphan", "-v", "15")
    fake = scratch / "fake-pg-upgrade"
    fake.write_text(FAKE_PG_UPGRADE)
    fake.chmod(0o755)
    postgres = versions.select("15").installation.bin("postgres")
    user = privileges.server_user(it.datadir, None)
    argv = [str(fake), str(postgres), str(it.datadir), str(server.free_port("127.0.0.1"))]
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):  # the interrupt: any exception does
        tools.run(argv, user, timeout=4, reap=True)
    # The postmaster was up (it writes its pid file within ms), now stopped and reaped.
    assert postmasters_under(scratch) == []
    assert not (it.datadir / "postmaster.pid").exists()  # a fast shutdown, not a SIGKILL
    assert time.monotonic() - t0 < 15


def test_the_program_status_passes_through() -> None:
    assert tools.run(["sh", "-c", "echo out; echo err >&2"], None, reap=True).stdout == "out\n"
    with pytest.raises(CommandFailed) as e:
        tools.run(["sh", "-c", "echo why >&2; exit 3"], None, reap=True)
    assert e.value.returncode == 3 and e.value.stderr == "why"
