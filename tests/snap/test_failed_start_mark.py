"""A command that stops a running server for its work (restart, snapshot, restore,
branch, upgrade) and whose start afterwards fails (a preload library that does not exist, set
with ALTER SYSTEM while the server ran; its port taken meanwhile): the command says why
and exits 1. Its stop mark stayed as it was, so 'pgmgr status' said the server "was
stopped ... by 'pgmgr restart' ..., which ended without starting it again (killed?)":
nobody was killed. Now the mark keeps the reason the command gave ("could not start it
again (...)"): the server is still down not by the user's will, so an attendant still
exits 1 (systemd starts it again), and status says why without guessing.

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


def assert_stopped_failed(it: Inst, command: str, reason: str) -> None:
    """Stopped, and the mark says ``command`` could not start it again, for ``reason``."""
    data = json.loads(it.pgmgr("status", it.name, "--json").stdout)
    assert data["state"] == "stopped", data
    mark = data["stopped_by"]
    assert mark["command"] == command and mark["active"] is False, data
    assert reason in mark["failed"], data
    assert "could not start it again" in data["detail"], data
    table = it.pgmgr("status", it.name)
    assert table.returncode == 3 and "killed?" not in table.stderr, table.stderr
    assert "could not start it again" in table.stderr, table.stderr
    it.ok("stop", it.name, "-q")  # stopped on purpose now: the mark goes
    assert it.record()["stopped_by"] is None


def test_a_restart_whose_start_fails_leaves_no_stop_mark(inst: Inst) -> None:
    inst.sql(BAD)
    run = inst.pgmgr("restart", "dev")
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "pgmgr_no_such_lib" in run.stderr, run.stderr
    assert_stopped_failed(inst, "restart", "pgmgr_no_such_lib")


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
    assert_stopped_failed(inst, command, str(port))


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
    assert_stopped_failed(inst, "restart", "postgres exited during start-up")


def test_the_attendant_of_a_server_whose_restart_failed_exits_1(inst: Inst, tmp_path: Path) -> None:
    """``start --foreground`` (a systemd unit) while a snapshot has the server stopped and
    its start after the copy fails: the attendant exits 1 with the snapshot's reason, so
    ``Restart=on-failure`` brings the server back. (Had the command's failure cleared its
    mark, the attendant took the clean shutdown for the user's: exit 0, down for good.)"""
    from tests.snap.test_foreground import attend, done_with, ended

    proc = attend(inst)
    try:
        port = int(inst.record()["port"])  # type: ignore[call-overload]
        run = Paused(hooks_dir(tmp_path), "snapshot-copied", "snapshot", "dev", "s1",
                     env=inst.env)  # fmt: skip
        run.reached()
        with socket.socket() as taken:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            taken.bind(("127.0.0.1", port))
            taken.listen()
            assert run.go().returncode == 1
            code, err = ended(proc)
    finally:
        done_with(proc)
    assert code == 1, err
    assert "could not start it again" in err and str(port) in err, err


@pytest.mark.parametrize("command", ["snapshot", "branch"])
def test_a_spawned_start_that_fails_after_the_work_keeps_the_mark(command: str, inst: Inst) -> None:
    """Snapshots and branches (restores too) spawn the server again without waiting (its record
    saved, the mark cleared, at the spawn) and wait for it at the end: a setting that
    makes postgres exit (a preload library that does not exist) failed only then, with
    the mark gone. Status said nothing of why the server was down, and an attendant took
    the snapshot's clean shutdown for the user's (exit 0: systemd left it down)."""
    _, _, argv = CASES[command]
    inst.sql(BAD)
    run = inst.pgmgr(*(a.format(inst.name) for a in argv))
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert_stopped_failed(inst, command, "postgres exited during start-up")


def test_the_attendant_of_a_server_whose_spawned_start_failed_exits_1(inst: Inst) -> None:
    """As above under ``start --foreground``: the snapshot's start after the copy fails
    once spawned; the attendant exits 1 (it exited 0: a clean shutdown, no mark)."""
    from tests.snap.test_foreground import attend, done_with, ended

    inst.sql(BAD)
    proc = attend(inst)
    try:
        assert inst.pgmgr("snapshot", "dev", "s1").returncode == 1
        code, err = ended(proc)
    finally:
        done_with(proc)
    assert code == 1, err
    assert "could not start it again" in err, err
