"""Commands that write into a directory on a read-only file system (a real one: a tmpfs
mounted ``ro``): one line that names what could not be made, on real servers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import error_lines
from tests.ops.conftest import Instance

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a file system needs root")


def test_export_and_replica_name_what_they_could_not_make(fresh: Instance, read_only: Path) -> None:
    """export said "Read-only file system: DIR/.b.pgmgr-export-PID" (its hidden work
    name), replica "cannot create the directory rr" (no path)."""
    subprocess.run(["mount", "-o", "remount,ro", str(read_only)], check=True)
    cases = [
        (["export", "fresh", str(read_only / "b")], f"the bundle {read_only / 'b'}"),
        (["replica", "fresh", "--name", "rr", "-d", str(read_only / "rr")],
         f"the directory {read_only / 'rr'}"),
    ]  # fmt: skip
    for args, what in cases:
        proc = fresh.pgmgr(*args)
        assert (proc.returncode, error_lines(proc.stderr)) == (
            1, [f"Error: cannot create {what}: Read-only file system"]
        ), proc.stderr  # fmt: skip
    assert "rr" not in fresh.registered()
