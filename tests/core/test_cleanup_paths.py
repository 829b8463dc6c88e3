"""Clean-up after a failed program or start, on real processes and directories.

- A program that runs past its timeout is stopped with its whole group and said in one
  line (a WorkerError), never a raw ``TimeoutExpired`` traceback.
- The socket dir a failed start made is removed through fds: swapped for a link (its
  owner can do that in the temp dir), the link's target keeps its sockets and locks.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from pgmgr.core import process, startchild, tools
from pgmgr.core.errors import WorkerError


def test_a_program_past_its_timeout_is_stopped_with_its_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    t0 = time.monotonic()
    with pytest.raises(WorkerError) as e:
        tools.run(["sh", "-c", script], None, timeout=0.5)
    assert str(e.value) == "sh did not finish within 0.5 s and was stopped"
    assert time.monotonic() - t0 < 30
    grandchild = int(pidfile.read_text())
    assert not process.is_alive(grandchild)


def test_a_failed_starts_socket_dir_swapped_for_a_link_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "other-cluster"
    victim.mkdir()
    (victim / ".s.PGSQL.5432").touch()
    (victim / ".s.PGSQL.5432.lock").touch()
    made = tmp_path / "pgmgr-sock"
    made.symlink_to(victim)
    srv = cast(Any, SimpleNamespace(inst=SimpleNamespace(socket_dir=str(made))))
    startchild.drop_sockdir(srv, made, True, None)
    assert sorted(os.listdir(victim)) == [".s.PGSQL.5432", ".s.PGSQL.5432.lock"]
    assert made.is_symlink() and srv.inst.socket_dir is None
    # and the one it made itself goes, sockets and all
    real = tmp_path / "pgmgr-sock2"
    real.mkdir()
    (real / ".s.PGSQL.5433").touch()
    startchild.drop_sockdir(srv, real, True, "kept")
    assert not real.exists() and srv.inst.socket_dir == "kept"
