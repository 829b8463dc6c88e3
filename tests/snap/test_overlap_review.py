"""Review of the start overlapping the end of a snapshot or restore (spawn_again): a start
that fails once the work is complete, signals in the overlap."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import killed
from tests.snap.conftest import Inst, leftovers
from tests.snap.test_signal_after_commit import paused_run as held
from tests.snap.test_upgrade import make


def go(proc: subprocess.Popen[str], hooks: Path, step: str) -> tuple[int, str]:
    (hooks / f"{step}.go").touch()
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    return proc.returncode, out + err


WHAT_SNAP = "Error: snapshot 's1' of 'dev' was taken, but 'dev' did not start again: "
WHAT_RESTORE = "Error: 'dev' was restored to 'base', but 'dev' did not start again: "


def hooks_dir(inst: Inst) -> Path:
    """Next to the data directory: reachable by the server user (pauses as_user)."""
    hooks = inst.datadir.parent / "hooks"
    hooks.mkdir()
    hooks.chmod(0o777)
    return hooks


def go_with_broken_conf(
    conf: Path, proc: subprocess.Popen[str], hooks: Path, step: str
) -> tuple[int, str]:
    """:func:`go` with a ``postgresql.conf`` that stops the server's start (put back after)."""
    good = conf.read_text()
    try:
        conf.write_text(good + "\nshared_buffers = 'bogus'\n")
        return go(proc, hooks, step)
    finally:
        conf.write_text(good)


def test_snapshot_start_fails_after_copy(inst: Inst, tmp_path: Path) -> None:
    """The server cannot start again once the snapshot is copied (postgresql.conf broken
    meanwhile): the snapshot is named while postgres starts, so the error says it was
    taken (it said only "postgres exited during start-up", as if nothing had been done)."""
    hooks = hooks_dir(inst)
    conf = inst.datadir / "postgresql.conf"
    proc = held(inst, hooks, "snapshot-copied", "snapshot", "dev", "s1")
    code, said = go_with_broken_conf(conf, proc, hooks, "snapshot-copied")
    assert code == 1, said
    assert said.startswith(WHAT_SNAP), said
    assert "shared_buffers" in said and "pgmgr start dev" in said, said
    assert [s["snapshot"] for s in inst.snaps()] == ["s1"]
    assert inst.state() == "stopped"
    assert leftovers(inst.store) == []
    inst.ok("start", "dev", "-q")


def test_restore_start_fails_after_swap(inst: Inst, tmp_path: Path) -> None:
    """Likewise once a restore has swapped the directories: it says it restored."""
    inst.ok("snapshot", "dev", "base", "-q")
    inst.sql("TRUNCATE t")
    hooks = hooks_dir(inst)
    conf = inst.datadir / "postgresql.conf"
    proc = held(inst, hooks, "restore-completed", "restore", "dev", "base", "--yes")
    code, said = go_with_broken_conf(conf, proc, hooks, "restore-completed")
    assert code == 1, said
    assert said.startswith(WHAT_RESTORE), said
    assert "shared_buffers" in said and "pgmgr start dev" in said, said
    assert [s["snapshot"] for s in inst.snaps()] == ["base"]
    assert inst.state() == "stopped"
    assert leftovers(inst.store) == []
    inst.ok("start", "dev", "-q")
    assert inst.sql("SELECT count(*) FROM t") == "1000"


@pytest.mark.parametrize(
    ("step", "sig", "code", "said"),
    [
        ("spawned", signal.SIGINT, 130, "Interrupted"),
        ("snapshot-naming", signal.SIGTERM, 0, "Snapshot 's1' of 'dev' taken"),
        ("awaiting-spawned", signal.SIGINT, 0, "Snapshot 's1' of 'dev' taken"),
    ],
)
def test_snapshot_signal_in_overlap(
    inst: Inst, tmp_path: Path, step: str, sig: int, code: int, said: str
) -> None:
    hooks = hooks_dir(inst)
    proc = held(inst, hooks, step, "snapshot", "dev", "s1")
    proc.send_signal(sig)
    time.sleep(0.2)
    got, out = go(proc, hooks, step)
    assert (got, out.splitlines()[0][: len(said)]) == (code, said), out
    assert [s["snapshot"] for s in inst.snaps()] == (["s1"] if code == 0 else [])
    assert inst.state() == "running"
    assert leftovers(inst.store) == []


@pytest.mark.parametrize(
    ("step", "sig"), [("spawned", signal.SIGINT), ("restore-spreading", signal.SIGTERM)]
)
def test_restore_signal_in_overlap(inst: Inst, tmp_path: Path, step: str, sig: int) -> None:
    inst.ok("snapshot", "dev", "base", "-q")
    inst.sql("TRUNCATE t")
    hooks = hooks_dir(inst)
    proc = held(inst, hooks, step, "restore", "dev", "base", "--yes")
    proc.send_signal(sig)
    time.sleep(0.2)
    got, out = go(proc, hooks, step)
    assert got == 0 and out.startswith("Restored 'dev' to 'base'"), out
    assert inst.state() == "running"
    assert inst.sql("SELECT count(*) FROM t") == "1000"
    assert leftovers(inst.store) == []


def test_restore_killed_in_overlap(inst: Inst, tmp_path: Path) -> None:
    """SIGKILL while postgres starts after a restore's swap: the server runs on the
    restored state, and the next command sweeps the replaced directory."""
    inst.ok("snapshot", "dev", "base", "-q")
    inst.sql("TRUNCATE t")
    hooks = hooks_dir(inst)
    proc = held(inst, hooks, "restore-spreading", "restore", "dev", "base", "--yes")
    killed(proc)
    inst.ok("start", "dev", "-q")
    assert inst.sql("SELECT count(*) FROM t") == "1000"
    inst.ok("snapshot", "dev", "after", "-q")
    assert leftovers(inst.store) == []


def test_snapshot_port_taken_after_copy(inst: Inst) -> None:
    """The port taken while the copy runs: the start is refused before postgres runs, the
    snapshot is complete all the same. It was thrown away then, while a port taken a
    moment later (postgres exits: "already in use") left it taken: now both keep it and
    say so."""
    hooks = hooks_dir(inst)
    port = int(inst.record()["port"])
    proc = held(inst, hooks, "snapshot-copied", "snapshot", "dev", "s1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        code, said = go(proc, hooks, "snapshot-copied")
    assert code == 1, said
    assert said.startswith(WHAT_SNAP) and f"port {port} " in said, said
    assert [s["snapshot"] for s in inst.snaps()] == ["s1"]
    assert inst.state() == "stopped"
    assert leftovers(inst.store) == []
    inst.ok("start", "dev", "-q")


def test_upgrade_start_fails_after_swap(scratch: Path) -> None:
    """An upgrade whose server cannot start once swapped (postgresql.conf broken at that
    moment) says it upgraded: it said only "postgres exited during start-up"."""
    up = make(scratch)
    try:
        hooks = scratch / "hooks"
        hooks.mkdir()
        hooks.chmod(0o777)
        step = "upgrade-swapped"
        proc = held(up, hooks, step, "upgrade", "up", "-v", "18", "--yes")
        conf = up.datadir / "postgresql.conf"
        conf.write_text(conf.read_text() + "\nshared_buffers = 'bogus'\n")
        code, said = go(proc, hooks, step)
        assert code == 1, said
        what = "Error: 'up' was upgraded to PostgreSQL 18, but 'up' did not start again: "
        assert said.startswith(what) and "shared_buffers" in said, said
        assert up.record()["major"] == "18"
        assert up.state() == "stopped"
        assert leftovers(up.store) == []
    finally:
        up.pgmgr("stop", "up", "-m", "immediate", "-q")


@pytest.mark.parametrize(
    ("op", "step"),
    [("snapshot", "awaiting-spawned"), ("restore", "awaiting-spawned"),
     ("snapshot", "snapshot-naming")],
)  # fmt: skip
def test_library_signal_while_the_server_starts(
    inst: Inst, monkeypatch: pytest.MonkeyPatch, op: str, step: str
) -> None:
    """In-process (a library caller): a SIGTERM while the server starts again after the
    snapshot was named / the restore swapped reaches the caller's handler once the work
    is complete, as create and restore document. It was recorded by the shielded wait
    for the spawned start, and dropped: the caller's Ctrl-C did nothing. The same while
    the snapshot is named (shielded, before its commit: ``snapshot-naming``, as the
    server user), which was dropped too once the snapshot was taken."""
    import threading

    from pgmgr.actions import resolve
    from pgmgr.core import restore, snapshot, testhook

    if op == "restore":
        inst.ok("snapshot", "dev", "base", "-q")
        inst.sql("TRUNCATE t")
    hooks = hooks_dir(inst)  # reachable by the server user
    monkeypatch.setattr(testhook, "_DIR", str(hooks))
    (hooks / step).touch()

    def signal_then_go() -> None:
        deadline = time.monotonic() + 60
        while not (hooks / f"{step}.reached").exists():
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        (hooks / f"{step}.go").touch()

    old = signal.signal(signal.SIGTERM, signal.default_int_handler)
    helper = threading.Thread(target=signal_then_go)
    helper.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            if op == "restore":
                restore.restore(resolve("dev", None), "base")
            else:
                snapshot.create(resolve("dev", None), "s1")
    finally:
        (hooks / f"{step}.go").touch()
        helper.join()
        signal.signal(signal.SIGTERM, old)
    assert signal.getsignal(signal.SIGTERM) is old
    assert inst.state() == "running"
    if op == "restore":
        assert inst.sql("SELECT count(*) FROM t") == "1000"
    else:
        assert [s["snapshot"] for s in inst.snaps()] == ["s1"]
    assert leftovers(inst.store) == []


def test_snapshot_killed_in_overlap(inst: Inst) -> None:
    """SIGKILL while the snapshot is named and postgres starts: the server runs (its
    record saved at the spawn), no snapshot, and the next command sweeps the copy."""
    hooks = hooks_dir(inst)
    proc = held(inst, hooks, "snapshot-naming", "snapshot", "dev", "s1")
    killed(proc)
    deadline = time.monotonic() + 60
    while inst.state() != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert inst.state() == "running"
    assert inst.sql("SELECT count(*) FROM t") == "1000"
    assert [s["snapshot"] for s in inst.snaps()] == []
    inst.ok("snapshot", "dev", "s2", "-q")
    assert [s["snapshot"] for s in inst.snaps()] == ["s2"]
    assert leftovers(inst.store) == []


def test_branch_source_start_fails_after_copy(inst: Inst) -> None:
    """The source cannot start again after the branch's copy (its postgresql.conf broken
    meanwhile) while the branch is made and started: the error says the branch was made."""
    hooks = hooks_dir(inst)
    conf = inst.datadir / "postgresql.conf"
    good = conf.read_text()
    target = str(inst.datadir.parent / "feat")
    proc = held(inst, hooks, "branch-copied", "branch", "dev", "feat", "-d", target, "-p", "auto")
    try:
        conf.write_text(good + "\nshared_buffers = 'bogus'\n")
        code, said = go(proc, hooks, "branch-copied")
    finally:
        conf.write_text(good)
    try:
        assert code == 1, said
        what = "Error: branch 'feat' of 'dev' was made, but 'dev' did not start again: "
        assert said.startswith(what) and "shared_buffers" in said, said
        assert inst.state("feat") == "running"
        assert inst.state() == "stopped"
    finally:
        inst.pgmgr("stop", "feat", "-m", "immediate", "-q")
    inst.ok("start", "dev", "-q")


@pytest.mark.skipif(os.geteuid() != 0, reason="as an ordinary user that work runs in pgmgr's "
                    "own process: there is no separate process to die")  # fmt: skip
@pytest.mark.parametrize("step", ["restore-reindexing", "restore-spreading"])
def test_restore_reindex_process_dies(inst: Inst, step: str) -> None:
    """The process (as the server user) that indexes the restored directory after the swap,
    or hands its stamps to the snapshots sharing files while the server starts, dies (here
    killed): the restore was complete, but the command failed with "a pgmgr
    process working as 'postgres' died without answer" and never said it was restored.
    Now it says so, the server runs, and the next restore, without that index, copies and
    is right."""
    inst.ok("snapshot", "dev", "base", "-q")
    inst.sql("TRUNCATE t")
    hooks = hooks_dir(inst)
    if step == "restore-spreading":  # a snapshot sharing files with 'base': its index
        inst.ok("snapshot", "dev", "other", "-q")
    proc = held(inst, hooks, step, "restore", "dev", "base", "--yes")
    os.kill(int((hooks / f"{step}.reached").read_text()), signal.SIGKILL)
    code, out = go(proc, hooks, step)
    assert code == 0 and "Restored 'dev' to 'base'" in out, out
    assert inst.state() == "running" and inst.sql("SELECT count(*) FROM t") == "1000"
    inst.sql("DELETE FROM t WHERE x > 10")
    inst.ok("restore", "dev", "base", "--yes", "-q")
    assert inst.sql("SELECT count(*) FROM t") == "1000"
    assert leftovers(inst.store) == []
