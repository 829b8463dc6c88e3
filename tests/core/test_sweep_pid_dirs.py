"""Short-lived ``pgmgr-{pw,cfg,imp}-<pid>-*`` directories: swept once their pid is gone.

(An import killed by SIGKILL during pg_restore leaves its private copy of the archive, named
after its pid; the next import or temporary server removes it.)
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from pgmgr.core import sweep


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("prefix", ["pgmgr-pw-", "pgmgr-cfg-", "pgmgr-imp-", "pgmgr-up-"])
def test_the_dir_of_a_dead_pid_goes_and_a_live_ones_stays(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # gettempdir() caches its answer
    dead = tmp_path / f"{prefix}{dead_pid()}-abc"
    live = tmp_path / f"{prefix}{os.getpid()}-abc"
    for d in (dead, live):
        (d / "archive").mkdir(parents=True)
        (d / "archive" / "toc.dat").write_text("x")
    os.symlink("/etc", dead / "archive" / "link")  # never followed
    removed = sweep.dead_runs()
    assert dead in removed and not dead.exists()
    assert live.exists() and Path("/etc/passwd").exists()
