"""SIGKILL at the moments an upgrade or a restore puts another directory in place of the
data directory (before the swap, right after it, before the record is saved): the next
command sees a consistent instance, the old major with its data or the new one with its
data, started with the right binaries, and the snapshot it promised is there. A SIGKILL
cannot be cleaned up after: these pause the command at a named step (the test hook) and
kill it there."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from tests.pause import Paused
from tests.snap.conftest import Inst, leftovers, run_pgmgr
from tests.snap.test_upgrade import facts, up  # noqa: F401


def hooks_dir(tmp_path: Path) -> Path:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    hooks.chmod(0o777)  # the server user's work pauses here too
    return hooks


def kill_at(hooks: Path, step: str, *args: str) -> None:
    run = Paused(hooks, step, *args)
    run.reached()
    run.kill(signal.SIGKILL)  # and disarmed: the next command goes through


def held(store: Path, wait: float = 30.0) -> list[str]:
    """The entries an intent holds in ``store``, once a background removal had ``wait``
    seconds to finish (the work entries of a killed command wait for the next sweep)."""
    deadline = time.monotonic() + wait
    while True:
        found = sorted(n for n in os.listdir(store) if n.startswith(".held-"))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def started(it: Inst, major: str) -> None:
    """``pgmgr start`` runs the instance on ``major``'s binaries, which its record names."""
    it.ok("start", it.name, "-q")
    record = it.record()
    assert record["major"] == major and record.get("intent") is None, record
    assert it.sql("SHOW server_version_num", it.name).startswith(major)
    pid = json.loads(it.pgmgr("status", it.name, "--json").stdout)["pid"]
    exe = os.path.realpath(f"/proc/{pid}/exe")
    assert os.path.dirname(exe) == os.path.realpath(str(record["bindir"])), (exe, record)


def test_upgrade_and_its_rollback_killed_around_the_swap(up: Inst, tmp_path: Path) -> None:  # noqa: F811
    before = facts(up)
    hooks = hooks_dir(tmp_path)
    argv = ("upgrade", "up", "-v", "18", "--yes")

    # Before the swap (the intent written, the new cluster beside): nothing happened.
    kill_at(hooks, "upgrade-switching", *argv)
    assert json.loads(up.pgmgr("status", "up", "--json").stdout)["state"] == "stopped"
    started(up, "15")
    assert facts(up) == before
    assert [s["snapshot"] for s in up.snaps()] == []
    assert held(up.store) == []  # the new cluster made for the switch is gone

    # Right after the swap (the record still says 15, pinned to the old directory): the
    # next command finds 18 standing there and finishes the switch and its snapshot.
    kill_at(hooks, "upgrade-swapped", *argv)
    started(up, "18")
    assert facts(up) == before
    assert [s["snapshot"] for s in up.snaps()] == ["pre-upgrade-15"]
    assert held(up.store) == []

    # The rollback, killed right after its swap: 15 again, with 15's binaries.
    kill_at(hooks, "restore-swapped", "restore", "up", "pre-upgrade-15", "--yes")
    started(up, "15")
    assert facts(up) == before
    up.ok("snapshot", "up", "after", "-q")  # sweeps under the lock
    assert leftovers(up.store) == []


def test_restore_save_current_killed_after_the_swap(inst: Inst, tmp_path: Path) -> None:
    """The replaced state was to be kept as a snapshot: it is, after the kill too (it
    waited under a work name the next command swept)."""
    inst.ok("snapshot", "dev", "base", "-q")
    inst.sql("INSERT INTO t VALUES (-1)")
    kill_at(hooks_dir(tmp_path), "restore-swapped", "restore", "dev", "base", "--yes",
            "--save-current")  # fmt: skip
    inst.ok("start", "dev", "-q")
    assert inst.sql("SELECT count(*) FROM t") == "1000"
    saved = [s["snapshot"] for s in inst.snaps() if s["snapshot"] != "base"]
    assert len(saved) == 1, inst.snaps()
    inst.ok("restore", "dev", str(saved[0]), "--yes", "-q")
    assert inst.sql("SELECT count(*) FROM t WHERE x = -1") == "1"
    assert leftovers(inst.store) == []


def test_restore_killed_half_way_through_a_swap_without_exchange(
    inst: Inst, tmp_path: Path
) -> None:
    """On a filesystem without RENAME_EXCHANGE (ZFS before 2.2, NFS; forced here with
    PGMGR_SWAP=rename) the swap is three renames, and between the first two there is no
    data directory at all: it waits in the store. Killed there, the next command puts it
    back (it was left under a work name the next snapshot or restore swept: the whole
    instance lost)."""
    inst.ok("snapshot", "dev", "base", "-q")
    inst.sql("INSERT INTO t VALUES (-1)")
    hooks = hooks_dir(tmp_path)
    run = Paused(hooks, "swap-held", "restore", "dev", "base", "--yes",
                 env={"PGMGR_SWAP": "rename"})  # fmt: skip
    run.reached()
    run.kill(signal.SIGKILL)
    assert not inst.datadir.exists()
    inst.ok("start", "dev", "-q")
    assert inst.sql("SELECT count(*) FROM t WHERE x = -1") == "1"  # as before the restore
    again = run_pgmgr("restore", "dev", "base", "--yes", "-q", env={"PGMGR_SWAP": "rename"})
    assert again.returncode == 0, again.stderr
    assert inst.sql("SELECT count(*) FROM t WHERE x = -1") == "0"
    assert held(inst.store) == []


def test_link_upgrade_killed_before_the_swap_leaves_the_old_cluster_startable(
    up: Inst,  # noqa: F811
    tmp_path: Path,
) -> None:
    """``pg_upgrade --link`` renames the old cluster's global/pg_control to pg_control.old
    once it starts linking; a failed upgrade renamed it back, a killed one did not: the next
    start failed with 'could not open file global/pg_control' until the user found it."""
    before = facts(up)
    hooks = hooks_dir(tmp_path)
    argv = ("upgrade", "up", "-v", "18", "--method", "link", "--yes")
    for step in ("upgrade-ran", "upgrade-switching"):  # pg_upgrade done; the intent written
        kill_at(hooks, step, *argv)
        assert up.state() == "stopped"
        started(up, "15")
        assert facts(up) == before
        assert held(up.store) == []
    assert up.snaps() == []
    up.ok("snapshot", "up", "after", "-q")  # sweeps under the lock
    assert leftovers(up.store) == []
