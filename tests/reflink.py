"""A real reflink filesystem for tests: a small XFS (``mkfs.xfs -m reflink=1``) in a sparse
image file, loop-mounted under /tmp. Only root can mount; elsewhere (an ordinary user, a
container without loop devices, no xfsprogs) the fixtures skip and say why.

``xfs_mount`` (one per session and xdist worker: mkfs + mount cost ~0.1 s and write ~65 MB
of log) is unmounted and its loop device detached in ``finally``; ``xfs_dir`` gives each test
a fresh 0755 directory on it and removes it (and any server left under it) afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import kill_postmasters, postmasters_under

#: mkfs.xfs refuses less than 300 MiB; the image is sparse.
SIZE = "320M"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


def why_no_reflink_fs() -> str | None:
    """Why this process cannot make a loop-mounted XFS, or None (it may still fail)."""
    if os.geteuid() != 0:
        return "needs root to loop-mount an XFS reflink filesystem"
    if shutil.which("mkfs.xfs") is None:
        return "mkfs.xfs is not installed (apt-get install xfsprogs)"
    if shutil.which("losetup") is None:
        return "losetup is not installed"
    return None


#: What names this fixture's directories under /tmp, and the file naming the process that owns
#: one (pid and start time, as in /proc/PID/stat).
PREFIX, OWNER = "pgmgr-xfs-", "owner"


def _process_id(pid: int) -> str | None:
    """``pid`` with its start time, or None if no such process runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{pid} {stat.rsplit(')', 1)[1].split()[19]}"


def _abandoned(base: Path) -> bool:
    """Whether ``base`` is a directory of this fixture whose session is gone (killed before
    its ``finally``: kill -9, a CI timeout, SIGTERM, which pytest does not catch)."""
    try:
        owner = (base / OWNER).read_text().split()
    except FileNotFoundError:  # made before the owner was written: not for long
        return time.time() - base.stat().st_mtime > 60
    except OSError:
        return False
    return len(owner) != 2 or _process_id(int(owner[0])) != " ".join(owner)


def sweep_leftovers(tmp: Path = Path("/tmp")) -> list[Path]:
    """Unmount, detach and remove what killed sessions of this fixture left (its own
    names only, and only those whose owning process is gone); the ones removed."""
    swept = []
    for base in tmp.glob(PREFIX + "*"):
        if base.is_symlink() or not base.is_dir() or base.stat().st_uid != os.geteuid():
            continue
        if not _abandoned(base):
            continue
        kill_postmasters(postmasters_under(base / "mnt"))
        found = _run("losetup", "-j", str(base / "image"), "-O", "NAME", "-n")
        _unmount(base / "mnt", None)
        for dev in found.stdout.split():
            _run("losetup", "-d", dev)
        shutil.rmtree(base, ignore_errors=True)
        swept.append(base)
    return swept


def _unmount(mnt: Path, dev: str | None) -> None:
    for i in range(20):
        if _run("umount", str(mnt)).returncode == 0 or not os.path.ismount(mnt):
            break
        time.sleep(0.1 * (i + 1))  # a server still exiting holds it a moment
    else:
        _run("umount", "-l", str(mnt))
    if dev:
        _run("losetup", "-d", dev)


@pytest.fixture(scope="session")
def xfs_mount() -> Iterator[Path]:
    why = why_no_reflink_fs()
    if why:
        pytest.skip(why)
    sweep_leftovers()
    base = Path(tempfile.mkdtemp(prefix=PREFIX, dir="/tmp"))
    base.chmod(0o755)
    (base / OWNER).write_text(_process_id(os.getpid()) or "")
    image, mnt = base / "image", base / "mnt"
    mnt.mkdir()
    dev = None
    try:
        _run("truncate", "-s", SIZE, str(image)).check_returncode()
        made = _run("mkfs.xfs", "-q", "-m", "reflink=1", str(image))
        if made.returncode != 0:
            pytest.skip(f"mkfs.xfs failed: {made.stderr.strip()}")
        loop = _run("losetup", "--find", "--show", str(image))
        if loop.returncode != 0:
            pytest.skip(f"no loop device: {loop.stderr.strip()}")
        dev = loop.stdout.strip()
        mounted = _run("mount", "-t", "xfs", dev, str(mnt))
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a loop device here: {mounted.stderr.strip()}")
        mnt.chmod(0o755)
        yield mnt
    finally:
        _unmount(mnt, dev)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def xfs_dir(xfs_mount: Path) -> Iterator[Path]:
    """A fresh 0755 directory on the reflink filesystem (removed afterwards)."""
    path = Path(tempfile.mkdtemp(prefix="t-", dir=xfs_mount))
    path.chmod(0o755)
    try:
        yield path
    finally:
        left = postmasters_under(path)
        kill_postmasters(left)
        shutil.rmtree(path, ignore_errors=True)
        if left:
            pytest.fail(f"servers left running by this test (now killed): {left}")


def free_bytes(path: Path) -> int:
    os.sync()
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
