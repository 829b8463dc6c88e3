"""A command that stops a running server for its work (snapshot, restore, branch,
upgrade, restart) and is killed with -9 before it starts it again: the server stays stopped (pgmgr
starts nothing behind the user's back), and ``status``, ``--json`` and the error of a
command that needs it running say who stopped it and how to start it. A start, or a
``pgmgr stop`` (stopped on purpose now), clears that. The kills are at the test hooks
of :mod:`pgmgr.core.testhook`, where the server is stopped."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.helpers import error_lines
from tests.pause import Paused
from tests.snap.conftest import Inst
from tests.snap.test_switch_killed import hooks_dir
from tests.snap.test_switch_waiters import queued
from tests.snap.test_upgrade import up  # noqa: F401

CASES = {
    "snapshot": ("inst", "snapshot-copied", ("snapshot", "{}", "s1")),
    "restore": ("inst", "restore-staged", ("restore", "{}", "base", "--yes")),
    "branch": ("inst", "branch-copied", ("branch", "{}", "b")),
    "upgrade": ("up", "upgrade-ran", ("upgrade", "{}", "-v", "18", "--yes")),
    "restart": ("inst", "restart-stopped", ("restart", "{}")),
}


def status(it: Inst) -> dict[str, object]:
    data: dict[str, object] = json.loads(it.pgmgr("status", it.name, "--json").stdout)
    return data


@pytest.mark.parametrize("command", list(CASES))
def test_a_command_killed_while_the_server_is_stopped_says_so(
    command: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    fixture, step, argv = CASES[command]
    it: Inst = request.getfixturevalue(fixture)
    name = it.name
    if command == "restore":
        it.ok("snapshot", name, "base", "-q")
    run = Paused(hooks_dir(tmp_path), step, *(a.format(name) for a in argv), env=it.env)
    run.reached()
    during = status(it)
    mark: dict[str, object] = dict(during["stopped_by"])  # type: ignore[call-overload]
    assert during["state"] == "stopped", during
    assert mark == {"command": command, "pid": run.proc.pid, "at": mark["at"], "active": True,
                    "failed": None}  # fmt: skip
    run.kill(signal.SIGKILL)

    after = status(it)
    assert after["state"] == "stopped" and after["stopped_by"] == {**mark, "active": False}
    said = f"by 'pgmgr {command}' (pid {run.proc.pid}), which ended without starting it again"
    assert said in str(after["detail"])
    table = it.pgmgr("status", name)
    assert table.returncode == 3
    assert f"Note: '{name}' was stopped at " in table.stderr
    assert f"start it with 'pgmgr start {name}'" in table.stderr
    refused = it.pgmgr("reload", name)
    assert refused.returncode == 3 and "Traceback" not in refused.stderr
    first = error_lines(refused.stderr)[0]
    assert first.startswith(f"Error: '{name}' is not running: it was stopped at "), first
    assert first.endswith(f"{said} (killed?)"), first

    it.ok("start", name, "-q")
    assert status(it)["stopped_by"] is None
    assert it.record()["stopped_by"] is None


def test_a_stop_on_purpose_clears_the_mark(inst: Inst, tmp_path: Path) -> None:
    """After ``pgmgr stop`` the user wants it stopped: nothing says otherwise any more, and
    a command that stops and starts servers leaves it stopped."""
    run = Paused(hooks_dir(tmp_path), "snapshot-copied", "snapshot", "dev", "s1", env=inst.env)
    run.reached()
    run.kill(signal.SIGKILL)
    assert status(inst)["stopped_by"] is not None
    stopped = inst.ok("stop", "dev")
    assert "'dev' is not running" in stopped.stderr
    assert status(inst)["stopped_by"] is None and status(inst)["detail"] is None
    inst.ok("snapshot", "dev", "s2", "-q")
    assert inst.state() == "stopped" and status(inst)["stopped_by"] is None


def test_a_library_stop_clears_the_mark_and_only_it(inst: Inst, tmp_path: Path) -> None:
    """``Manager.stop()`` is a stop on purpose, as ``pgmgr stop`` is: the mark goes, and
    nothing else of the record changes (the Manager's own port is not written there) but
    the pid of the server the killed command stopped (a pause does not save the record
    between its stop and its start: the pid it forgets is never trusted)."""
    from pgmgr import Manager

    early = Manager(port=1, db_dir=inst.datadir)  # opened before the kill: an older record
    hooks = hooks_dir(tmp_path)
    run = Paused(hooks, "snapshot-copied", "snapshot", "dev", "s1", env=inst.env)
    run.reached()
    run.kill(signal.SIGKILL)
    marked = inst.record()
    assert marked["stopped_by"] is not None
    assert early.stop() is False
    assert status(inst)["stopped_by"] is None and status(inst)["detail"] is None
    assert inst.record() == {**marked, "stopped_by": None, "pid": None}

    inst.ok("start", "dev", "-q")
    run = Paused(hooks, "snapshot-copied", "snapshot", "dev", "s2", env=inst.env)
    run.reached()
    run.kill(signal.SIGKILL)
    assert status(inst)["stopped_by"] is not None
    assert Manager(port=1, db_dir=inst.datadir).stop() is False
    assert status(inst)["stopped_by"] is None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_command_interrupted_once_its_mark_is_saved_leaves_no_mark(
    sig: int, inst: Inst, tmp_path: Path
) -> None:
    """Interrupted after the mark reached the record, before the stop (a Ctrl-C, or a
    SIGTERM taken as one, during the record's fsync): the server ran on, marked as
    stopped by a snapshot that was gone; a later crash, or the attendant seeing a stop,
    blamed the snapshot ('(killed?)'). The mark is all or nothing now."""
    before = inst.pid()
    run = Paused(hooks_dir(tmp_path), "marked", "snapshot", "dev", "s1", env=inst.env)
    run.reached()
    assert inst.record()["stopped_by"] is not None  # saved: the window is real
    assert run.kill(sig) == 130
    assert inst.state() == "running" and inst.pid() == before
    assert inst.record()["stopped_by"] is None


#: Commands that would stop a running server for their work and start it again, or change
#: its settings, queued for the instance's lock behind a restore that is then killed.
QUEUED = {
    "snapshot": ("snapshot", "dev", "after"),
    "snapshot --json": ("snapshot", "dev", "after", "--json"),
    "restore": ("restore", "dev", "base", "--yes"),
    "branch": ("branch", "dev", "b"),
    "config set": ("config", "dev", "set", "work_mem=7MB"),
}


def still_stopped(name: str, command: str, pid: int) -> str:
    """The line a command that ends with ``name`` still stopped by ``command`` says."""
    return (f"by 'pgmgr {command}' (pid {pid}), which ended without starting it again "
            f"(killed?); it is still stopped: start it with 'pgmgr start {name}'")  # fmt: skip


@pytest.mark.parametrize("queued_command", list(QUEUED))
def test_a_command_queued_behind_a_killed_restore_says_it_left_the_server_stopped(
    queued_command: str, inst: Inst, tmp_path: Path
) -> None:
    """It waited for the lock, settled what the killed restore left and did its work on the
    stopped server: it starts nothing behind the user's back, but it ended with the server
    stopped and said nothing (only 'pgmgr status' told why). It says so, in the line status
    shows; a --json document stays alone on stdout."""
    inst.ok("snapshot", "dev", "base", "-q")
    run = Paused(hooks_dir(tmp_path), "restore-staged", "restore", "dev", "base", "--yes")
    with run:
        run.reached()
        with queued(inst.datadir, QUEUED[queued_command]) as (proc,):
            run.kill(signal.SIGKILL)
            out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in err, err
    last = error_lines(err)[-1]
    assert last.startswith("Note: 'dev' was stopped at "), err
    assert last.endswith(still_stopped("dev", "restore", run.proc.pid)), err
    if queued_command.endswith("--json"):
        assert json.loads(out)["snapshot"] == "after"
    assert inst.state() == "stopped"


@pytest.mark.parametrize("command", ["snapshot", "branch", "upgrade", "restart"])
def test_a_later_snapshot_says_a_killed_command_left_the_server_stopped(
    command: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The same after any command killed while it had the server stopped, and for a
    command run later, not queued (the upgrade, run again); after a stop on purpose it
    says nothing."""
    fixture, step, argv = CASES[command]
    it: Inst = request.getfixturevalue(fixture)
    run = Paused(hooks_dir(tmp_path), step, *(a.format(it.name) for a in argv), env=it.env)
    with run:
        run.reached()
        run.kill(signal.SIGKILL)
    later = ("upgrade", it.name, "-v", "18", "--yes") if command == "upgrade" else ()
    taken = it.ok(*(later or ("snapshot", it.name, "later")))
    last = error_lines(taken.stderr)[-1]
    assert last.endswith(still_stopped(it.name, command, run.proc.pid)), taken.stderr
    it.ok("stop", it.name, "-q")
    again = it.ok("snapshot", it.name, "again")
    assert "Note" not in again.stderr and it.state() == "stopped"
