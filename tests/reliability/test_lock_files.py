"""``state/locks/``: a lock file exists only while its lock is used (a suite that made
thousands of temporary instances left thousands of files there), and deleting it never
lets two processes hold one data directory's lock (pgmgr.core.dirlock)."""

from __future__ import annotations

import fcntl
import os
import signal
import time
from pathlib import Path

import pytest

from tests.pause import Paused, ok
from tests.reliability.conftest import InstFactory, pgmgr


def lock_files(state: Path) -> list[str]:
    return sorted(p.name for p in (state / "locks").iterdir() if p.name != "registry.lock")


def test_lock_files_are_gone_once_commands_are_done(
    cluster: InstFactory, rel_isolation: Path, work: Path, hooks: Path
) -> None:
    """Every data directory ever started, snapshotted, stopped, destroyed or run as a
    temporary instance kept its lock file for ever. A holder killed (-9) leaves its file:
    the next command on that directory uses it and deletes it; the next temporary instance
    deletes those of directories never used again."""
    inst = cluster("db")
    ok(inst.start("-p", "auto", "-q"))
    ok(pgmgr("snapshot", "db", "s1", "-q"))
    ok(pgmgr("status", "db"))
    for i in range(3):
        tmp = str(work / f"tmp{i}")
        ok(pgmgr("start", "--init", "-d", tmp, "--name", f"tmp{i}", "-p", "auto", "-q"))
        ok(pgmgr("destroy", f"tmp{i}", "--yes", "-q"))
    assert lock_files(rel_isolation) == []
    # An older pgmgr's files, or a killed run's: the next temporary instance deletes the
    # free ones, not one another process holds.
    for name in ("0" * 20 + ".lock", "1" * 20 + ".attend", "2" * 20 + ".lock"):
        (rel_isolation / "locks" / name).touch(mode=0o600)
    held = os.open(rel_isolation / "locks" / ("2" * 20 + ".lock"), os.O_RDWR)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        ok(pgmgr("run", "--", "true"))
        assert lock_files(rel_isolation) == ["2" * 20 + ".lock"]
    finally:
        os.close(held)
    ok(pgmgr("run", "--", "true"))
    assert lock_files(rel_isolation) == []
    with Paused(hooks, "dirlock-held", "snapshot", "db", "s2") as snap:
        snap.reached()
        assert len(lock_files(rel_isolation)) == 1
        assert snap.kill(signal.SIGKILL) == -signal.SIGKILL
    assert len(lock_files(rel_isolation)) == 1
    ok(inst.stop("-q"))
    assert lock_files(rel_isolation) == []


def test_a_lock_file_deleted_while_waited_on_is_never_held_twice(
    cluster: InstFactory, rel_isolation: Path, tmp_path: Path
) -> None:
    """A holds the instance lock; B waits on that file; A is done and deletes it; B gets
    the lock on the deleted file just as C creates a new one and locks it. B must see that
    its file is no longer the one at the path and wait for C: never both hold it."""
    inst = cluster("db")
    ok(inst.start("-p", "auto", "-q"))
    hooks = {}
    for who in "abc":  # one pause directory each: the same steps, paused separately
        hooks[who] = tmp_path / f"hooks-{who}"
        hooks[who].mkdir(mode=0o777)
        hooks[who].chmod(0o1777)
    with Paused(hooks["a"], "dirlock-held", "snapshot", "db", "a") as a:
        a.reached()
        (held,) = lock_files(rel_isolation)
        with Paused(hooks["b"], "dirlock-locked", "snapshot", "db", "b") as b:
            (hooks["b"] / "dirlock-held").touch()  # armed too: B pauses once it holds
            time.sleep(0.5)  # B waits on A's file
            assert not (hooks["b"] / "dirlock-locked.reached").exists()
            assert ok(a.go()).returncode == 0  # A deletes its file as it lets go
            b.reached()  # B got flock on A's file, deleted meanwhile
            assert lock_files(rel_isolation) == []
            with Paused(hooks["c"], "dirlock-held", "snapshot", "db", "c") as c:
                c.reached()  # C made a new file at the path and holds it
                assert lock_files(rel_isolation) == [held]
                (hooks["b"] / "dirlock-locked.go").touch()
                time.sleep(1.0)
                assert not (hooks["b"] / "dirlock-held.reached").exists(), (
                    "B holds the lock while C holds it"
                )
                assert b.proc.poll() is None
                ok(c.go())
            b.reached_also("dirlock-held")  # once C let go
            (hooks["b"] / "dirlock-held.go").touch()
            _, err = b.proc.communicate(timeout=120)
            assert b.proc.returncode == 0, err
    snaps = ok(pgmgr("snapshots", "db", "--json")).stdout
    assert all(f'"snapshot": "{s}"' in snaps for s in "abc"), snaps
    assert lock_files(rel_isolation) == []
    ok(inst.stop("-q"))


def test_a_read_only_locks_directory_serves_two_locks_of_one_process(
    cluster: InstFactory, rel_isolation: Path
) -> None:
    """With no lock file to be made (``locks/`` read-only or full), the locks directory is
    flocked instead. A command that holds two locks (a branch: its source's and its
    target's) then waited for itself for the whole 30 s and said "another pgmgr is working
    on DIR". One process's locks now share that flock; another process is still kept out,
    and a second hold of the same data directory (another thread) still waits."""
    import subprocess
    import sys
    import threading

    from pgmgr.core import dirlock
    from pgmgr.core.errors import Busy
    from tests.reliability.test_storage import read_only

    inst = cluster("db")
    ok(inst.start("-p", "auto", "-q"))
    locks = rel_isolation / "locks"
    probe = (
        "import sys; from pathlib import Path; from pgmgr.core import dirlock\n"
        "for d in sys.argv[1:]:\n"
        "    with dirlock.try_lock(Path(d)) as got: print(got)\n"
    )

    def others_get(*dirs: Path) -> list[str]:
        run = subprocess.run(
            [sys.executable, "-c", probe, *map(str, dirs)], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.split()

    a, b, c = (rel_isolation / n for n in ("a", "b", "c"))
    with read_only(locks):
        with dirlock.lock(a, timeout=2), dirlock.lock(b, timeout=2):
            assert lock_files(rel_isolation) == []  # the directory stands for both
            assert others_get(a, c) == ["False", "False"]
            caught: list[BaseException] = []

            def again() -> None:
                try:
                    with dirlock.lock(a, timeout=0.3):
                        pass
                except BaseException as e:  # reported below
                    caught.append(e)

            thread = threading.Thread(target=again)
            thread.start()
            thread.join()
            assert len(caught) == 1 and isinstance(caught[0], Busy), caught
            with dirlock.try_lock(b) as got:
                assert not got
        assert others_get(a, b) == ["True", "True"]  # all let go: the flock with them
        run = pgmgr("branch", "db", "db2", "-p", "auto", "-q", timeout=120)
        assert run.returncode == 0, str(run)
    ok(pgmgr("stop", "db2", "-q"))
    ok(pgmgr("destroy", "db2", "--yes", "-q"))
    ok(inst.stop("-q"))


def test_two_threads_share_the_read_only_fallback(
    rel_isolation: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads of one process locking two data directories with ``locks/`` read-only:
    the second, looking before the first had recorded its flock, flocked the directory
    through its own descriptor and waited for the first until its timeout (Busy). It now
    waits for the first thread's flock and shares it. The gap between a flock and its
    record is made wide by a wrapper of ``flock_fd`` that sleeps after it (mocked: thread
    scheduling cannot be forced otherwise); the flocks themselves are real."""
    import threading

    from pgmgr.core import dirlock, paths
    from tests.reliability.test_storage import read_only

    real_flock = paths.flock_fd
    flocking = threading.Event()

    def slow_flock(fd: int, **kw: object) -> bool:
        flocking.set()
        got = real_flock(fd, **kw)  # type: ignore[arg-type]
        time.sleep(0.5)
        return got

    monkeypatch.setattr(paths, "flock_fd", slow_flock)
    (rel_isolation / "locks").mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {}

    def hold(name: str, dwell: float) -> None:
        try:
            with dirlock.lock(rel_isolation / name, timeout=1.5):
                results[name] = "held"
                time.sleep(dwell)  # the first holds longer than the second waits
        except Exception as e:  # reported below
            results[name] = e

    with read_only(rel_isolation / "locks"):
        first = threading.Thread(target=hold, args=("a", 3.0))
        first.start()
        assert flocking.wait(10)
        second = threading.Thread(target=hold, args=("b", 0.1))
        second.start()
        first.join()
        second.join()
    assert results == {"a": "held", "b": "held"}, results
    assert dirlock._wholes == {}
