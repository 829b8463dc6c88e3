"""A pgmgr in another PID namespace that shares the temp dir (a container given the host's
/tmp) sees none of this one's processes: to its sweep (:func:`pgmgr.core.sweep.dead_runs`)
every run here looked dead, and it removed their directories while they worked in them.
Each run now holds its directory (``flock``, which the kernel sees across namespaces).
Real runs here, a real sweep in a new PID namespace (``unshare``, root only)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgmgr.core import process
from tests.helpers import REPO, pgmgr_argv
from tests.pause import Paused
from tests.snap.conftest import Inst
from tests.snap.test_delta import hooks_dir
from tests.snap.test_upgrade import up  # noqa: F401

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unshare --pid needs root")


def sweep_elsewhere(tmpdir: Path, user: str | None = None) -> str:
    """:func:`sweep.dead_runs` of ``tmpdir`` (only: TMPDIR) from a new PID namespace,
    where no process of this one is seen."""
    who = f"privileges.lookup({user!r})" if user else "None"
    code = f"from pgmgr.core import privileges, sweep; print(sweep.dead_runs({who}))"
    proc = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code],
        env={**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temp dir of the test's own (1777, as /tmp: the server user makes its dirs there)."""
    path = Path(tempfile.mkdtemp(prefix="pgmgr-test-ns-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    subprocess.run(["rm", "-rf", "--", str(path)], check=False)


def test_a_live_run_is_not_swept_from_another_namespace(shared_tmp: Path) -> None:
    """``pgmgr run`` at work: its directory (data directory, socket, log) stays."""
    run = subprocess.Popen(
        pgmgr_argv("run", "-q", "--", "sleep", "60"),
        env={**os.environ, "TMPDIR": str(shared_tmp)},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            dirs = [d for d in shared_tmp.iterdir() if d.name.startswith("pgmgr-run-")]
            pf = process.PidFile.read(dirs[0] / "data") if dirs else None
            if pf is not None and pf.status == "ready":
                break
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.02)
        out = sweep_elsewhere(shared_tmp)
        assert "pgmgr-run-" not in out
        assert (dirs[0] / "data" / "PG_VERSION").exists()
    finally:
        os.killpg(run.pid, signal.SIGTERM)
        run.communicate(timeout=60)
    assert not dirs[0].exists()  # removed by its run as it ended


def test_a_live_upgrade_socket_dir_is_not_swept_from_another_namespace(
    up: Inst,  # noqa: F811
    shared_tmp: Path,
    tmp_path: Path,
) -> None:
    """An upgrade at work: the socket dir of its servers (``pgmgr-up-<pid>-*``) stays
    (here while it asks a stopped instance's server its encoding and locales)."""
    up.ok("stop", "up", "-q")
    with Paused(hooks_dir(tmp_path), "upgrade-probing", "upgrade", "up", "-v", "18", "--yes",
                env={"TMPDIR": str(shared_tmp)}) as run:  # fmt: skip
        run.reached()
        socks = [d for d in shared_tmp.iterdir() if d.name.startswith("pgmgr-up-")]
        assert len(socks) == 1
        sweep_elsewhere(shared_tmp, "postgres")
        assert socks[0].is_dir()
        done = run.go()
    assert done.returncode == 0, done.stderr
    assert up.record()["major"] == "18"
    assert not socks[0].exists()
