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
from tests.helpers import REPO, killed, postgres_pids_under, readline_within

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
    with TemporaryInstance("15", root=str(root)) as tmp:
        assert tmp.base is not None and tmp.base.parent == root
        assert not dead.exists()
