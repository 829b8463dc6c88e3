"""What a library ``Manager`` owns: the server it started (and no other), and a record that
goes away with its throw-away data directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pgmgr.core import registry
from pgmgr.core.instance import Server
from tests.core.support import ManagerFactory
from tests.helpers import copy_datadir, run_pgmgr


def test_context_manager_leaves_running_a_server_it_did_not_start(
    templates: Callable[[str], Path], work_dir: Path, managers: ManagerFactory
) -> None:
    datadir = copy_datadir(templates("15"), work_dir / "data")
    owner = managers(datadir)
    owner.start()
    pid = owner.status().pid
    guest = managers(datadir)
    with guest as pg:
        assert pg.started is False
        pg.health()
    assert owner.status().state == "running" and owner.status().pid == pid
    assert owner.started is True
    with owner:  # the one that started it stops it
        pass
    assert owner.status().state == "stopped"


def test_context_manager_stops_what_it_started(
    templates: Callable[[str], Path], work_dir: Path, managers: ManagerFactory
) -> None:
    datadir = copy_datadir(templates("15"), work_dir / "data")
    m = managers(datadir)
    with m:
        assert m.started is True
    assert m.status().state == "stopped" and m.started is False


def test_context_manager_leaves_a_server_started_again_by_someone_else(
    templates: Callable[[str], Path], work_dir: Path, managers: ManagerFactory
) -> None:
    """An object that started the server and stopped it (or saw it stopped and started by
    another) no longer started what runs there: its ``with`` block stopped the server of
    the other Manager (or of 'pgmgr start') all the same, and ``started`` said True."""
    datadir = copy_datadir(templates("15"), work_dir / "data")
    m, other = managers(datadir), managers(datadir)
    m.start()
    assert m.stop() is True and m.started is False
    other.start()
    pid = other.status().pid
    with m:
        assert m.started is False
    assert other.status().state == "running" and other.status().pid == pid
    other.stop()
    m.start()
    other.stop()  # stopped behind m's back, then started again by the other one
    other.start()
    with m:
        assert m.started is False
    assert other.status().state == "running"
    assert other.stop() is True


def status_names() -> dict[str, str]:
    proc = run_pgmgr("status", "--json")
    assert proc.returncode == 0, proc.stderr
    return {r["name"]: r["state"] for r in json.loads(proc.stdout)}


def test_library_records_go_with_their_data_directory(
    templates: Callable[[str], Path], work_dir: Path, managers: ManagerFactory
) -> None:
    """A Manager's record (marked "library") is pruned by ``pgmgr status`` once its data
    directory is gone; a CLI-made one stays, as ``missing``; a library one whose directory
    is still there stays too."""
    scratch = copy_datadir(templates("15"), work_dir / "scratch" / "data")
    with managers(scratch) as m:
        name = m.name
    assert registry.load(name).origin == "library"
    log = Path(registry.load(name).log_file or "")
    assert log.is_file()
    kept = copy_datadir(templates("15"), work_dir / "kept")
    with managers(kept) as k:
        kept_name = k.name
    made = copy_datadir(templates("15"), work_dir / "made")
    Server.for_datadir(made).save()  # what 'pgmgr init -d made' records
    assert registry.load("made").origin == "cli"

    shutil.rmtree(work_dir / "scratch")
    shutil.rmtree(made)
    assert status_names() == {kept_name: "stopped", "made": "missing"}
    assert name not in registry.names() and not log.exists()
    assert os.path.isdir(kept)


def test_a_manager_on_a_cli_instance_keeps_it_a_cli_instance(
    templates: Callable[[str], Path], work_dir: Path, managers: ManagerFactory
) -> None:
    datadir = copy_datadir(templates("15"), work_dir / "data")
    Server.for_datadir(datadir).save()
    with managers(datadir):
        pass
    assert registry.load("data").origin == "cli"
    shutil.rmtree(datadir)
    assert status_names() == {"data": "missing"}


def test_no_zombie_is_left_by_an_initialization(work_dir: Path) -> None:
    """An init from the template cache starts a background refill (the next spare); once
    it ends it is reaped at once, not kept as a zombie until the next init of the
    process, or its exit (a long-lived program that initializes one directory)."""
    from pgmgr import Manager
    from pgmgr.core import spare
    from pgmgr.core.server import free_port

    for name in ("first", "second"):  # the first builds the template, the second copies it
        Manager("127.0.0.1", free_port("127.0.0.1"), work_dir / name, initialize=True)
    refill = spare._refills[-1]  # this test's (an earlier test's may still run)
    deadline = time.monotonic() + 60
    while _state(refill.pid) not in ("Z", None) and time.monotonic() < deadline:
        time.sleep(0.05)  # the refill's copy runs
    time.sleep(0.5)
    assert _state(refill.pid) is None, "the ended refill is a zombie"


def _state(pid: int) -> str | None:
    """The state letter of ``pid`` (Z: a zombie), None once it is gone (reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


FORKED = """
import os, sys
from pgmgr import Manager

with Manager("127.0.0.1", int(sys.argv[2]), sys.argv[1]) as pg:
    pid = os.fork()
    if pid == 0:
        print("child started:", pg.started, flush=True)
        sys.exit(0)  # the child leaves the block too
    os.waitpid(pid, 0)
    print("parent sees:", pg.status().state, pg.started, flush=True)
    pg.health()
print("after:", pg.status().state, flush=True)
"""


def test_a_child_forked_inside_the_block_leaves_the_server_to_its_parent(
    templates: Callable[[str], Path], work_dir: Path, managers: ManagerFactory
) -> None:
    """The child's ``sys.exit()`` left the inherited ``with`` block and stopped the server
    under the parent (its health() then failed)."""
    datadir = copy_datadir(templates("15"), work_dir / "data")
    port = managers(datadir).port  # stopped at the end, whatever the script did
    proc = subprocess.run(
        [sys.executable, "-c", FORKED, str(datadir), str(port)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.stdout.splitlines() == [
        "child started: False",
        "parent sees: running True",
        "after: stopped",
    ], proc.stderr


def test_ready_wait_after_a_stop_waits_for_what_runs_now(
    templates: Callable[[str], Path], work_dir: Path, managers: ManagerFactory
) -> None:
    """``ready_wait()`` of an object that had stopped its server waited for that exited
    child: "postgres exited during start-up" with nothing running, and the same error with
    a server another Manager had started since, ready all along."""
    from pgmgr import WorkerError

    datadir = copy_datadir(templates("15"), work_dir / "data")
    m, other = managers(datadir), managers(datadir)
    m.start()
    m.stop()
    with pytest.raises(WorkerError, match=r"^no server process to wait for"):
        m.ready_wait(timeout=1)
    other.start()
    m.ready_wait(timeout=5)
    assert m.process is not None and m.process.returncode is not None  # still its own
    assert other.stop() is True


def test_leaving_the_block_stops_its_server_past_a_held_lock(
    templates: Callable[[str], Path],
    work_dir: Path,
    managers: ManagerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another pgmgr holds the instance's lock for longer than a stop waits for it (30 s:
    an export, say) when the block ends: the stop's Busy left the server this object had
    started running, and the block raised it. (The wait is shortened to 2 s here: the
    suite waited out the whole 30 s.)"""
    import contextlib

    from pgmgr.core import dirlock

    monkeypatch.setattr(dirlock, "WAIT", 2.0)
    datadir = copy_datadir(templates("15"), work_dir / "data")
    m = managers(datadir)
    with contextlib.ExitStack() as held:
        with m:
            held.enter_context(dirlock.lock(datadir, timeout=5))
        assert m.status().state == "stopped" and m.started is False
        assert m.process is not None and m.process.poll() is not None
