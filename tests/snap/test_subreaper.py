"""No server that pg_upgrade starts outlives an interrupted pg_upgrade (pgmgr.core.subreaper).

pg_upgrade's pg_ctl starts each postmaster in a session of its own: stopping pg_upgrade's
process group does not reach it, and one just forked has no postmaster.pid to be found by.
A real pg_upgrade cannot be stopped at that moment on purpose, so a stand-in script plays
it (mocked: only pg_upgrade itself, and the timing): it starts real postgres servers the way
pg_ctl does, in sessions of their own (``setsid -f``), then waits to be interrupted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgmgr.core import privileges, server, tools, versions
from pgmgr.core.errors import CommandFailed, WorkerError
from tests.helpers import postmasters_under
from tests.snap.conftest import Inst, leftovers
from tests.snap.test_interrupt import wait_for_lock
from tests.snap.test_upgrade import facts, make

FAKE_PG_UPGRADE = """#!/bin/sh
# $1 postgres, $2 data directory (its socket directory too), $3 port
setsid -f "$1" -D "$2" -k "$2" -c listen_addresses= -p "$3" </dev/null >/dev/null 2>&1
exec sleep 120
"""


def orphan_maker(scratch: Path) -> tuple[Path, list[str]]:
    """A stopped cluster's data directory, and the stand-in's command line for it."""
    it = Inst("orphan", scratch / "orphan")
    it.ok("init", "-q", "-d", str(it.datadir), "--name", "orphan", "-v", "15")
    fake = scratch / "fake-pg-upgrade"
    fake.write_text(FAKE_PG_UPGRADE)
    fake.chmod(0o755)
    postgres = versions.select("15").installation.bin("postgres")
    port = str(server.free_port("127.0.0.1"))
    return it.datadir, [str(fake), str(postgres), str(it.datadir), port]


def test_interrupted_program_leaves_no_server(scratch: Path) -> None:
    datadir, argv = orphan_maker(scratch)
    user = privileges.server_user(datadir, None)
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="did not finish within 4 s"):  # any exception does
        tools.run(argv, user, timeout=4, reap=True)
    # The postmaster was up (it writes its pid file within ms), now stopped and reaped.
    assert postmasters_under(scratch) == []
    assert not (datadir / "postmaster.pid").exists()  # a fast shutdown, not a SIGKILL
    assert time.monotonic() - t0 < 15


def test_killed_caller_leaves_no_server(scratch: Path) -> None:
    """pgmgr killed with SIGKILL: the wrapper's death signal stops what the program started."""
    datadir, argv = orphan_maker(scratch)
    code = (
        "import sys; from pathlib import Path; from pgmgr.core import privileges, tools; "
        "tools.run(sys.argv[2:], privileges.server_user(Path(sys.argv[1]), None), reap=True)"
    )
    caller = subprocess.Popen([sys.executable, "-c", code, str(datadir), *argv])
    try:
        deadline = time.monotonic() + 30
        while not postmasters_under(scratch):
            assert caller.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        caller.kill()
        caller.wait()
    deadline = time.monotonic() + 15
    while postmasters_under(scratch) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert postmasters_under(scratch) == []


def test_the_program_status_passes_through() -> None:
    assert tools.run(["sh", "-c", "echo out; echo err >&2"], None, reap=True).stdout == "out\n"
    with pytest.raises(CommandFailed) as e:
        tools.run(["sh", "-c", "echo why >&2; exit 3"], None, reap=True)
    assert e.value.returncode == 3 and e.value.stderr == "why"


# pg_upgrade's servers: the old cluster's on the instance's own (stopped) data directory,
# the new one's on the work directory, both on pg_upgrade's ports and socket directory. The
# new one's postmaster.pid is moved away: the moment before a postmaster writes it.
FAKE_UPGRADE_SERVERS = """#!/bin/sh
# $1 old postgres, $2 old data, $3 old port, $4 new postgres, $5 new data, $6 new port,
# $7 socket directory, $8 the test's hook directory
setsid -f "$1" -D "$2" -p "$3" -k "$7" -c listen_addresses= </dev/null >/dev/null 2>&1
setsid -f "$4" -D "$5" -p "$6" -k "$7" -c listen_addresses= </dev/null >/dev/null 2>&1
until [ -f "$2/postmaster.pid" ] && [ -f "$5/postmaster.pid" ]; do sleep 0.02; done
mv "$5/postmaster.pid" "$5/moved-postmaster.pid"
touch "$8/reached"
exec sleep 120
"""

# ``pgmgr ARGS`` with pg_upgrade's command line replaced by the stand-in's.
DRIVER = """
import sys
from pgmgr.core import upgradeplan

fake, hooks = sys.argv[1:3]
def argv(a, **kw):
    return [fake, str(a.old.bin("postgres")), str(a.old_datadir), str(a.old_port),
            str(a.new.bin("postgres")), str(a.new_datadir), str(a.new_port), a.socket_dir, hooks]
upgradeplan.pg_upgrade_argv = argv
sys.argv = ["pgmgr", *sys.argv[3:]]
from pgmgr.entry import main
main()
"""


def interrupted_upgrade(up: Inst, scratch: Path, script: str, sig: int, *args: str) -> None:
    """``pgmgr upgrade`` with ``script`` for pg_upgrade, interrupted once it has done its
    part; then nothing changed and only the instance's own server runs (started again)."""
    before, port = facts(up), up.record()["port"]
    hooks = scratch / "hooks"
    hooks.mkdir(mode=0o777)
    hooks.chmod(0o777)
    fake = scratch / "fake-pg-upgrade"
    fake.write_text(script)
    fake.chmod(0o755)
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(fake), str(hooks), "upgrade", "up", "-v", "18",
         "--yes", *args],
        env={**os.environ, **up.env}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # xdist's SIG_IGN
    )  # fmt: skip
    wait_for_lock(proc)
    deadline = time.monotonic() + 60
    while not (hooks / "reached").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, (out, err)
    assert postmasters_under(scratch) == [up.pid()]
    assert up.state() == "running" and up.record()["major"] == "15"
    assert up.record()["port"] == port and facts(up) == before
    assert leftovers(up.store) == []


@pytest.fixture
def up(scratch: Path) -> Iterator[Inst]:
    it = make(scratch)
    try:
        yield it
    finally:
        it.pgmgr("stop", "--all", "-m", "immediate", "-q")


def test_interrupted_upgrade_stops_the_servers_pg_upgrade_started(up: Inst, scratch: Path) -> None:
    interrupted_upgrade(up, scratch, FAKE_UPGRADE_SERVERS, signal.SIGINT)  # a Ctrl-C


# What pg_upgrade --link does before it links the files: disable the old cluster.
FAKE_LINK = """#!/bin/sh
mv "$2/global/pg_control" "$2/global/pg_control.old"
touch "$8/reached"
exec sleep 120
"""


def test_interrupted_link_upgrade_enables_the_old_cluster_again(up: Inst, scratch: Path) -> None:
    interrupted_upgrade(up, scratch, FAKE_LINK, signal.SIGTERM, "--method", "link")
