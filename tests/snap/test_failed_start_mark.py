"""A command that stops a running server for its work (restart, snapshot, restore,
branch, upgrade) and whose start afterwards fails (a preload library that does not exist, set
with ALTER SYSTEM while the server ran; its port taken meanwhile): the command says why
and exits 1. Its stop
mark stayed in the record, so 'pgmgr status' said the server "was stopped ... by 'pgmgr
restart' ..., which ended without starting it again (killed?)": nobody was killed. Now
the mark goes with the command's end, and status says stopped, nothing more.

And a Ctrl-C while the failed start cleans up (the test-only pause ``start-undo`` holds
pgmgr there) was dropped: exit 1 with the start's error, as if nobody had pressed it.
Now the restart says why the start failed, then 'Interrupted' (130), without trying to
start the server again."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import pytest

from tests.pause import Paused
from tests.snap.conftest import Inst
from tests.snap.test_switch_killed import hooks_dir
from tests.snap.test_upgrade import up  # noqa: F401

BAD = "ALTER SYSTEM SET shared_preload_libraries = 'pgmgr_no_such_lib'"

#: command -> its instance's fixture, its test-only pause while the server is stopped, its
#: arguments
CASES = {
    "restart": ("inst", "restart-stopped", ("restart", "{}")),
    "snapshot": ("inst", "snapshot-copied", ("snapshot", "{}", "s1")),
    "restore": ("inst", "restore-staged", ("restore", "{}", "base", "--yes")),
    "branch": ("inst", "branch-copied", ("branch", "{}", "b")),
    "upgrade": ("up", "upgrade-ran", ("upgrade", "{}", "-v", "18", "--yes")),
}


def assert_stopped_unmarked(it: Inst) -> None:
    data = json.loads(it.pgmgr("status", it.name, "--json").stdout)
    assert data["state"] == "stopped" and data["stopped_by"] is None, data
    assert data["detail"] is None, data
    assert it.record()["stopped_by"] is None
    table = it.pgmgr("status", it.name)
    assert table.returncode == 3 and "killed?" not in table.stderr, table.stderr


def test_a_restart_whose_start_fails_leaves_no_stop_mark(inst: Inst) -> None:
    inst.sql(BAD)
    run = inst.pgmgr("restart", "dev")
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "pgmgr_no_such_lib" in run.stderr, run.stderr
    assert_stopped_unmarked(inst)


@pytest.mark.parametrize("command", list(CASES))
def test_a_start_that_fails_after_the_work_leaves_no_stop_mark(
    command: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The server's port taken while the command had it stopped (another program bound
    it): the start after the work fails at once. (A setting that makes postgres exit
    failed only after the first start had cleared the mark: snapshots, restores and
    branches spawn the server without waiting, and wait for it at the end.)"""
    fixture, step, argv = CASES[command]
    inst: Inst = request.getfixturevalue(fixture)
    if command == "restore":
        inst.ok("snapshot", inst.name, "base", "-q")
    port = int(inst.record()["port"])  # type: ignore[call-overload]
    args = (a.format(inst.name) for a in argv)
    run = Paused(hooks_dir(tmp_path), step, *args, env=inst.env)
    run.reached()
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = run.go()
    assert done.returncode == 1, str(done)
    assert str(port) in done.stderr, done.stderr
    assert_stopped_unmarked(inst)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_a_failed_restart_start_cleans_up_says_interrupted(
    sig: int, inst: Inst, tmp_path: Path
) -> None:
    """SIGTERM acts like Ctrl-C in a restart; neither starts the server again (it would
    fail again, and the last error would be the command's answer, exit 1)."""
    inst.sql(BAD)
    run = Paused(hooks_dir(tmp_path), "start-undo", "restart", "dev", env=inst.env)
    run.reached()
    run.proc.send_signal(sig)
    done = run.go()
    assert done.returncode == 130, str(done)
    assert done.stderr.endswith("Interrupted\n"), done.stderr
    assert "Error: postgres exited during start-up" in done.stderr, done.stderr
    assert_stopped_unmarked(inst)
