"""SIGKILL of pgmgr at the worst moment, where earlier tests did not look: nothing it
started outlives it at work in the store, and what it left is removed later."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from pgmgr.core import process
from tests.helpers import killed, pgmgr_argv
from tests.pause import Paused
from tests.snap.conftest import Inst
from tests.snap.test_delta import hooks_dir
from tests.snap.test_upgrade import up  # noqa: F401


def _basebackups(store: Path) -> list[int]:
    """The pg_basebackup processes writing into ``store``."""
    found = []
    for entry in os.listdir("/proc"):
        argv = process.cmdline(int(entry)) if entry.isdigit() else []
        if argv and argv[0].endswith("pg_basebackup") and str(store) in " ".join(argv):
            found.append(int(entry))
    return found


def _sender(postmaster: int) -> int | None:
    """The server process sending a base backup, if one does."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and "sending backup" in " ".join(process.cmdline(int(entry))):
            with contextlib.suppress(OSError):
                if (
                    int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                    == postmaster
                ):
                    return int(entry)
    return None


def test_a_killed_online_snapshot_stops_its_pg_basebackup(inst: Inst) -> None:
    """pg_basebackup ran on after pgmgr was killed: for as long as the backup took, an
    orphan wrote a complete copy into the store's work entry (which the next command's
    sweep removes while it writes) and held a WAL sender. It is stopped with pgmgr now.
    The test holds the server process that sends the backup (SIGSTOP) while it kills
    pgmgr, so that pg_basebackup cannot finish first."""
    postmaster = inst.pid()
    assert postmaster is not None
    proc = subprocess.Popen(
        pgmgr_argv("snapshot", "dev", "on", "--online"), env={**os.environ, **inst.env},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while (sender := _sender(postmaster)) is None:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
    os.kill(sender, signal.SIGSTOP)
    try:
        killed(proc)
        deadline = time.monotonic() + 30
        while _basebackups(inst.store) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = _basebackups(inst.store)
    finally:
        os.kill(sender, signal.SIGCONT)
    assert not left
    inst.ok("snapshot", "dev", "after", "-q")  # sweeps under the lock
    assert sorted(os.listdir(inst.store)) == ["after"]


def test_a_killed_destroy_with_snapshots_leaves_nothing_for_good(
    inst: Inst, ops_dir: Path, tmp_path: Path
) -> None:
    """destroy --with-snapshots renames the store out of sight, then deletes it: killed
    (or interrupted) in between, the instance was gone and its snapshots stayed in
    .pgmgr-snapshots/.tmp-delete-* for ever, unlisted. The next command that writes a
    store beside it removes them."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.ok("branch", "dev", "b", "-q")  # another instance beside it
    try:
        doomed = Paused(hooks_dir(tmp_path), "destroy-snapshots-renamed", "destroy", "dev",
                        "--yes", "--with-snapshots", env=inst.env)  # fmt: skip
        doomed.reached()
        doomed.kill(signal.SIGKILL)
        top = ops_dir / ".pgmgr-snapshots"
        assert [n for n in os.listdir(top) if n.startswith(".tmp-delete-")]
        inst.ok("snapshot", "b", "s2", "-q")
        assert sorted(os.listdir(top)) == ["b"]
    finally:
        inst.ok("stop", "b", "-q")


def test_a_killed_upgrade_of_a_stopped_instance_leaves_it_stopped(
    up: Inst,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The upgrade of a stopped instance runs its server for a moment to ask its encoding
    and locales: killed then, pgmgr left running a server its user had stopped. Now that
    server stops with pgmgr, cleanly (a fast shutdown: no crash recovery next time), and
    the record is as it was."""
    up.ok("stop", "up", "-q")
    before = up.record()
    run = Paused(hooks_dir(tmp_path), "upgrade-probing", "upgrade", "up", "-v", "18", "--yes")
    run.reached()
    assert up.state() == "running"  # the question's server
    run.kill(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while up.state() != "stopped":
        assert time.monotonic() < deadline, "the probe's server outlived its pgmgr"
        time.sleep(0.05)
    assert up.record() == before
    control = subprocess.run(
        [up.bin("pg_controldata"), str(up.datadir)], capture_output=True, text=True,
        check=True, user=None if os.geteuid() else "postgres",
    )  # fmt: skip
    assert "Database cluster state:               shut down\n" in control.stdout
    up.ok("upgrade", "up", "-v", "18", "--yes", "-q")
    assert up.record()["major"] == "18" and up.state() == "stopped"
