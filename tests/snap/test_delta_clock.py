"""Restore by difference against the file clock: filesystems whose timestamps are coarser
than the kernel's clock tick, and file times ahead of the clock (the clock was set back).
Real servers on a real loop-mounted ext4 (root only: 128-byte inodes keep whole seconds,
as ext2/ext3-era and small filesystems made with old defaults do); the clock itself is
never changed (other tests share it): a ctime in the future is written with debugfs."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgmgr.core import delta
from tests.helpers import kill_postmasters, postmasters_under
from tests.snap.conftest import Inst


def _mkfs(image: Path, *options: str) -> None:
    subprocess.run(["truncate", "-s", "300M", str(image)], check=True)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", *options, str(image)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot make an ext4 image: {made.stderr.strip()}")


def _mount(image: Path, mnt: Path) -> None:
    made = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot loop-mount an ext4 image: {made.stderr.strip()}")
    mnt.chmod(0o755)


@pytest.fixture(params=[("-I", "128")], ids=["whole-seconds"])
def ext4(ops_dir: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Path, Path]]:
    """(mount point, image) of a fresh ext4 made with ``request.param``."""
    if os.geteuid() != 0:
        pytest.skip("needs root to loop-mount an ext4 image")
    image, mnt = ops_dir / "ext4.img", ops_dir / "fs"
    mnt.mkdir()
    _mkfs(image, *request.param)
    _mount(image, mnt)
    try:
        yield mnt, image
    finally:
        kill_postmasters(postmasters_under(mnt))
        subprocess.run(["umount", str(mnt)], check=False)


def _second_start() -> None:
    """Sleep until just after the wall clock's next whole second."""
    time.sleep(1.02 - time.time() % 1)


def _instance(mnt: Path, template: Path) -> Inst:
    datadir = mnt / "data"
    subprocess.run(["cp", "-a", str(template), str(datadir)], check=True)
    inst = Inst("dev", datadir)
    inst.ok("start", "-q", "--init", "-d", str(datadir), "--name", "dev", "--port", "auto")
    inst.sql("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000)")
    return inst


def test_settle_on_whole_second_times(ext4: tuple[Path, Path]) -> None:
    """Once settled, a file rewritten in place (same size) no longer matches the index,
    even where the filesystem keeps whole seconds: waiting for the clock alone returns
    at once there, and a rewrite in the same second keeps inode, size, mtime and ctime."""
    top = ext4[0] / "d"
    top.mkdir()
    f = top / "f"
    _second_start()
    f.write_bytes(b"a" * 8192)  # its mtime and ctime: this second
    index = delta.take(top)
    assert delta.settle(index, top)
    with open(f, "r+b") as out:
        out.write(b"b" * 8192)
    assert not index.unchanged("f", os.lstat(f))


def test_settle_gives_up_on_a_clock_set_back(tmp_path: Path) -> None:
    """Files stamped ahead of the clock (it was set back since): settle says so at once
    instead of waiting for the clock to catch up (hours, with the server stopped)."""
    future = time.time_ns() + 3600 * 10**9
    index = delta.Index(os.stat(tmp_path).st_dev, {"f": (1, 0, future, future)})
    result: list[bool] = []
    worker = threading.Thread(target=lambda: result.append(delta.settle(index, tmp_path)),
                              daemon=True)  # fmt: skip
    worker.start()
    worker.join(10)
    assert result == [False]


def test_snapshot_and_restore_with_a_clock_set_back(
    ext4: tuple[Path, Path], template: Path
) -> None:
    """A data directory whose file times are ahead of the clock (debugfs writes one, as a
    clock set back leaves them): snapshot and restore finish, keep no index they cannot
    trust (the restore is a full copy), and the rows are right."""
    mnt, image = ext4
    inst = _instance(mnt, template)
    try:
        inst.ok("stop", "dev", "-q")
        subprocess.run(["umount", str(mnt)], check=True)
        cmd = "set_inode_field /data/PG_VERSION ctime 20370101000000"
        done = subprocess.run(["debugfs", "-w", "-R", cmd, str(image)],
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        _mount(image, mnt)
        assert os.stat(mnt / "data" / "PG_VERSION").st_ctime > time.time() + 3600
        inst.ok("start", "dev", "-q")
        inst.ok("snapshot", "dev", "s1", "-q", timeout=60)
        assert not (inst.store / "s1" / delta.INDEX).exists()
        inst.sql("DELETE FROM t")
        inst.ok("restore", "dev", "s1", "--yes", "-q", timeout=60)
        assert inst.sql("SELECT count(*) FROM t") == "1000"
    finally:
        inst.pgmgr("stop", "--all", "-m", "immediate", "-q")
