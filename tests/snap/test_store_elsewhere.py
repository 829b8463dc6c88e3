"""A snapshot store on another filesystem than its data directory (a mount at
``.pgmgr-snapshots``, as root; a tmpfs here): restore, upgrade and branch make their copy
there and rename it into place, which cannot cross filesystems. They copied everything (or
ran pg_upgrade), stopped the server, then failed with "Invalid cross-device link"; the
branch left its whole copy behind in the store. Now they refuse before anything."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import copy_datadir, error_lines
from tests.snap.conftest import Inst


@pytest.fixture
def elsewhere(ops_dir: Path, template: Path) -> Iterator[Inst]:
    """A running instance whose store is a tmpfs, with a snapshot s1 taken there."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a filesystem at .pgmgr-snapshots")
    datadir = copy_datadir(template, ops_dir / "w" / "data")
    top = datadir.parent / ".pgmgr-snapshots"
    top.mkdir(mode=0o755)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m,mode=755", "tmpfs", str(top)],
                   check=True)  # fmt: skip
    it = Inst("dev", datadir)
    try:
        it.ok("start", "-q", "--init", "-d", str(datadir), "--name", "dev", "--port", "auto")
        it.sql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        it.ok("snapshot", "dev", "s1", "-q")  # a snapshot there is fine (a plain copy)
        it.sql("INSERT INTO t VALUES (-1)")
        yield it
    finally:
        it.pgmgr("stop", "--all", "-m", "immediate", "-q")
        subprocess.run(["umount", str(top)], check=True)


def test_restore_upgrade_and_branch_refuse_a_store_on_another_filesystem(
    elsewhere: Inst,
) -> None:
    parent = elsewhere.datadir.parent
    pid = elsewhere.pid()
    for args, what in (
        (("restore", "dev", "s1", "--yes"), "restore 'dev'"),
        (("upgrade", "dev", "-v", "18", "--yes"), "upgrade 'dev'"),
        (("upgrade", "dev", "-v", "18", "--check"), "upgrade 'dev'"),
        (("branch", "dev", "b1"), f"branch 'dev' into {parent / 'b1'}"),
    ):
        proc = elsewhere.pgmgr(*args)
        assert proc.returncode == 1, proc.stderr
        line = error_lines(proc.stderr)[0]
        assert line.startswith(f"Error: cannot {what}: the snapshots in "), line
        assert "are on another filesystem" in line and line.endswith("nothing was changed")
    assert elsewhere.pid() == pid  # never stopped
    assert elsewhere.sql("SELECT count(*) FROM t WHERE x = -1") == "1"
    assert not (parent / "b1").exists()
    assert sorted(os.listdir(parent / ".pgmgr-snapshots")) == ["data"]  # no b1 store
    assert os.listdir(elsewhere.store) == ["s1"]  # no copy left behind
    # a snapshot there still branches elsewhere, as the hint says
    elsewhere.ok("branch", "dev", "b2", "--from", "s1", "-d", str(parent.parent / "b2"), "-q")
    assert elsewhere.sql("SELECT count(*) FROM t", "b2") == "1"
