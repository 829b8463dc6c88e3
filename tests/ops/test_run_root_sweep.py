"""A temporary server made in a directory of its own (the pytest plugin's /dev/shm, or
``pgmgr_tmpdir``) whose process died with its guard (a CI job cancelled kills the whole
cgroup, the reaper too): the next temporary server swept only the temp dir, so that
directory held its memory or disk until a reboot. Real servers, real SIGKILL."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from pgmgr.core.temporary import TemporaryInstance
from tests.helpers import REPO, killed, postgres_pids_under, readline_within, wait_not_in_use

KEEP_RUNNING = """
import sys, time
from pgmgr.core.temporary import TemporaryInstance
TemporaryInstance("15", root=sys.argv[1], prefix="pgmgr-pytest-gw0-").start()
print("up", flush=True)
time.sleep(120)
"""


def test_a_dead_run_in_its_own_root_is_swept_by_the_next(ops_dir: Path) -> None:
    root = ops_dir / "shm"
    root.mkdir(mode=0o755)
    proc = subprocess.Popen(
        [sys.executable, "-c", KEEP_RUNNING, str(root)], stdout=subprocess.PIPE, text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None and readline_within(proc.stdout) == "up\n"
    finally:
        killed(proc)  # no guard: as if the reaper was killed with it
    deadline = time.monotonic() + 30
    while postgres_pids_under(root):  # its server dies with it (die_with_parent)
        assert time.monotonic() < deadline, "the server outlived its pgmgr"
        time.sleep(0.05)
    (dead,) = root.iterdir()
    assert not wait_not_in_use([dead]), why_kept(dead)
    with TemporaryInstance("15", root=str(root)) as tmp:
        assert tmp.base is not None and tmp.base.parent == root
        assert not dead.exists(), why_kept(dead)


def why_kept(base: Path) -> str:
    """What the sweep could have seen in ``base`` (it failed once, as the ordinary user
    under load, and did not say why): its entries, its owner and whether that process
    lives, whether someone holds it, and the processes that name it."""
    import fcntl
    import os

    from pgmgr.core import process, sweep

    try:
        owner = (base / sweep.OWNER_FILE).read_text().split()
        alive = process.is_alive(int(owner[0]))
    except (OSError, ValueError, IndexError) as e:
        owner, alive = [repr(e)], False
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held = False
    except BlockingIOError:
        held = True
    finally:
        os.close(fd)
    naming = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            text = " ".join([os.readlink(f"/proc/{pid}/cwd"), *process.cmdline(int(pid))])
        except OSError:
            continue
        if str(base) in text:
            naming.append((pid, text[:200]))
    entries = sorted(p.name for p in base.iterdir())
    return f"kept: entries {entries}, owner {owner} alive={alive}, held={held}, by {naming}"
