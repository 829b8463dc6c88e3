"""A disk that fills up during the copy (a real ENOSPC from a small tmpfs; only the free-space
check before the copy is mocked, standing for another process filling the disk meanwhile):
snapshot, restore and branch fail with one clear line, the source runs with its rows, the
snapshot stays whole, and no partial copy is left behind."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import error_lines
from tests.snap.conftest import Inst, leftovers, small_tmpfs


@pytest.fixture
def small_fs(ops_dir: Path) -> Iterator[Path]:
    with small_tmpfs(ops_dir, "180m") as fs:
        yield fs


def test_disk_full_mid_copy(
    small_fs: Path,
    template: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The data directory (~66 MB), a snapshot of it and 48 MB free: each copy fails
    half-way. The snapshot's partial copy must go before the server starts again, or the
    full disk refuses its start ("could not write lock file") and leaves it stopped."""
    from typer.testing import CliRunner

    from pgmgr.cli import app

    datadir = small_fs / "data"
    subprocess.run(["cp", "-a", str(template), str(datadir)], check=True)
    inst = Inst("dev", datadir)
    try:
        inst.ok("start", "-q", "--init", "-d", str(datadir), "--name", "dev", "--port", "auto")
        inst.sql("CREATE TABLE t AS SELECT g AS x, repeat('x', 200) AS pad "
                 "FROM generate_series(1, 50000) g")  # fmt: skip
        inst.ok("snapshot", "dev", "s1", "-q")
        inst.sql("INSERT INTO t VALUES (-1)")
        real = os.fstatvfs

        def roomy(fd: int) -> os.statvfs_result:
            fields = list(real(fd))
            fields[4] = (1 << 40) // max(1, fields[1])
            return os.statvfs_result(fields)

        monkeypatch.setattr(os, "fstatvfs", roomy)
        monkeypatch.setenv("PGMGR_COPY_METHOD", "copy_file_range")
        commands = (
            ["snapshot", "dev", "s2"],
            ["branch", "dev", "b1"],
            ["restore", "dev", "s1", "--yes"],
        )
        for args in commands:
            if args[0] != "branch":
                # Without s1's index the snapshot and the restore copy everything; with
                # it, only what changed since (the one page of t), which would fit.
                (inst.store / "s1" / "index.json").unlink(missing_ok=True)
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 1, result.output
            assert "Traceback" not in result.output
            line = error_lines(result.output)[0]
            assert line.startswith("Error: not enough disk space for "), result.output
            assert "filled up during the copy; nothing was changed" in line
            assert inst.state() == "running"
            assert inst.sql("SELECT count(*) FROM t WHERE x = -1") == "1"
            assert leftovers(inst.store) == []
        assert not (small_fs / "b1").exists()
        assert leftovers(small_fs / ".pgmgr-snapshots" / "b1") == []
        assert [s["snapshot"] for s in inst.snaps()] == ["s1"]
        names = [s["name"] for s in json.loads(inst.ok("status", "--json").stdout)]
        assert names == ["dev"]
    finally:
        inst.pgmgr("stop", "--all", "-m", "immediate", "-q")
