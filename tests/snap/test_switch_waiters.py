"""Commands that waited for an instance's lock behind an upgrade or a restore (which switch
the record's major, binaries and pin under that lock) act on the record as the switch left
it, not as they read it before waiting: they succeed on the new major's binaries (they were
refused as "replaced", exit 4, though the instance was fine). The switch is paused at a
test hook right after its swap while the others queue on the lock."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pgmgr import Manager
from tests.helpers import killed, pgmgr_argv
from tests.pause import Paused, ok
from tests.snap.conftest import Inst
from tests.snap.test_switch_killed import hooks_dir, started
from tests.snap.test_upgrade import up  # noqa: F401


def waiting_for_lock(
    proc: subprocess.Popen[str] | None,
    datadir: Path,
    alive: Callable[[], bool] | None = None,
    why: object = None,
) -> None:
    """Until ``proc`` (else this process, while ``alive()``) holds the lock file of
    ``datadir`` open: it resolved the instance and polls for the lock (pgmgr opens the file,
    then tries ``flock`` every 10 ms)."""
    key = hashlib.sha256(os.path.realpath(datadir).encode()).hexdigest()[:20]
    pid = proc.pid if proc else os.getpid()
    deadline = time.monotonic() + 60
    while True:
        if proc is not None:
            assert proc.poll() is None, proc.communicate()
        else:
            assert alive is not None and alive(), f"it returned before waiting for the lock: {why}"
        if has_open(pid, f"/locks/{key}.lock"):
            return
        assert time.monotonic() < deadline, f"{pid} never waited for the lock"
        time.sleep(0.01)


def has_open(pid: int, suffix: str) -> bool:
    """Whether process ``pid`` has a file whose path ends in ``suffix`` open now."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile (listdir's own)
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return any(t.endswith(suffix) for t in targets)


@contextlib.contextmanager
def queued(datadir: Path, *commands: tuple[str, ...]) -> Iterator[list[subprocess.Popen[str]]]:
    """``pgmgr`` commands started now, each once it waits for ``datadir``'s lock; killed
    should the test fail before they finish."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for args in commands:
            pipe = subprocess.PIPE
            proc = subprocess.Popen(
                pgmgr_argv(*args), stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe, text=True
            )
            procs.append(proc)
            waiting_for_lock(proc, datadir)
        yield procs
    finally:
        for proc in procs:
            killed(proc)


def finished(proc: subprocess.Popen[str]) -> None:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in err, (proc.args, proc.returncode, err)


def test_commands_queued_behind_an_upgrade_act_on_the_new_major(
    up: Inst,  # noqa: F811
    tmp_path: Path,
) -> None:
    hooks = hooks_dir(tmp_path)
    run = Paused(hooks, "upgrade-swapped", "upgrade", "up", "-v", "18", "--yes", "-q")
    try:
        run.reached()
        with queued(up.datadir, ("restart", "up", "-q"),
                    ("config", "up", "set", "maintenance_work_mem=77MB", "-q")) as qs:  # fmt: skip
            ok(run.go())
            for proc in qs:
                finished(proc)
    finally:
        if run.proc.poll() is None:
            run.go()
    record = up.record()
    assert record["major"] == "18" and record.get("intent") is None, record
    settings = record["settings"]
    assert isinstance(settings, dict) and settings.get("maintenance_work_mem") == "77MB", record
    assert up.sql("SHOW maintenance_work_mem", "up") == "77MB"
    up.ok("stop", "up", "-q")
    started(up, "18")  # the record names 18's binaries, which run it


def test_commands_queued_behind_a_restore_act_on_the_restored_directory(
    inst: Inst, tmp_path: Path
) -> None:
    inst.ok("snapshot", "dev", "base", "-q")
    inst.sql("INSERT INTO t VALUES (-1)")
    hooks = hooks_dir(tmp_path)
    run = Paused(hooks, "restore-swapped", "restore", "dev", "base", "--yes", "-q")
    try:
        run.reached()
        with queued(inst.datadir, ("restart", "dev", "-q"),
                    ("config", "dev", "set", "work_mem=7MB", "-q"),
                    ("snapshot", "dev", "after", "-q")) as qs:  # fmt: skip
            ok(run.go())
            for proc in qs:
                finished(proc)
    finally:
        if run.proc.poll() is None:
            run.go()
    assert inst.state() == "running"
    assert inst.sql("SELECT count(*) FROM t WHERE x = -1") == "0"  # the restored data
    assert inst.sql("SHOW work_mem") == "7MB"
    assert {s["snapshot"] for s in inst.snaps()} == {"base", "after"}


def test_a_manager_queued_behind_a_restore_stops_and_starts_the_restored_directory(
    inst: Inst, tmp_path: Path
) -> None:
    """The library: a Manager made before the restore stops the server the restore started
    (it was refused: its record named the directory the restore replaced)."""
    inst.ok("snapshot", "dev", "base", "-q")
    inst.sql("INSERT INTO t VALUES (-1)")
    pid = inst.pid()
    assert pid is not None
    pg = Manager("127.0.0.1", int(str(inst.record()["port"])), inst.datadir)
    outcome: list[object] = []

    def stop() -> None:
        try:
            outcome.append(pg.stop())
        except Exception as e:  # the test reports it
            outcome.append(e)

    run = Paused(hooks_dir(tmp_path), "restore-swapped", "restore", "dev", "base", "--yes")
    thread = threading.Thread(target=stop, daemon=True)
    try:
        run.reached()
        thread.start()
        waiting_for_lock(None, inst.datadir, alive=thread.is_alive, why=outcome)
        ok(run.go())
        thread.join(120)
        assert outcome == [True], outcome
        assert inst.state() == "stopped"
        pg.start()
        assert inst.sql("SELECT count(*) FROM t WHERE x = -1") == "0"  # the restored data
    finally:
        if run.proc.poll() is None:
            run.go()
        thread.join(120)
        pg.stop()


def test_a_stop_queued_behind_another_command_keeps_the_lock_file_open(inst: Inst) -> None:
    """A stop waits for the lock by polling it (to take over a weaker stop in progress,
    see pgmgr.core.stopwait); it keeps the lock file open all the while, as any command's
    wait does, which is how a waiter is seen (here, and by waiting_for_lock). It opened the
    file only for each poll, and a test waiting to see it queued missed it until the stop
    had given up ('waited 0 s')."""
    from pgmgr.core import dirlock

    key = hashlib.sha256(os.path.realpath(inst.datadir).encode()).hexdigest()[:20]
    with contextlib.ExitStack() as held:
        held.enter_context(dirlock.lock(inst.datadir, timeout=5))
        with queued(inst.datadir, ("stop", "dev")) as (proc,):
            seen = 0
            for _ in range(25):
                seen += has_open(proc.pid, f"/locks/{key}.lock")
                time.sleep(0.02)
            assert seen == 25, f"the lock file was open in {seen} of 25 looks"
            assert proc.poll() is None  # still queued
            held.close()  # the lock is free: the stop goes on
            finished(proc)
    assert inst.state() == "stopped"
