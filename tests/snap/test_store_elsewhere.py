"""A snapshot store on another filesystem than its data directory (a mount at
``.pgmgr-snapshots``, as root; a tmpfs here): restore, upgrade and branch make their copy
there and rename it into place, which cannot cross filesystems. They copied everything (or
ran pg_upgrade), stopped the server, then failed with "Invalid cross-device link"; the
branch left its whole copy behind in the store. Now they refuse before anything."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import copy_datadir, error_lines, kill_postmasters, postmasters_under
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
    cases = [
        (("restore", "dev", "s1", "--yes"), "restore 'dev'"),
        (("upgrade", "dev", "-v", "18", "--yes"), "upgrade 'dev'"),
        (("upgrade", "dev", "-v", "18", "--check"), "upgrade 'dev'"),
        (("branch", "dev", "b1"), f"branch 'dev' into {parent / 'b1'}"),
    ]
    all_refused(elsewhere, cases, "are on another filesystem")
    assert elsewhere.pid() == pid  # never stopped
    assert elsewhere.sql("SELECT count(*) FROM t WHERE x = -1") == "1"
    assert not (parent / "b1").exists()
    assert sorted(os.listdir(parent / ".pgmgr-snapshots")) == ["data"]  # no b1 store
    assert os.listdir(elsewhere.store) == ["s1"]  # no copy left behind
    # a snapshot there still branches elsewhere, as the hint says
    elsewhere.ok("branch", "dev", "b2", "--from", "s1", "-d", str(parent.parent / "b2"), "-q")
    assert elsewhere.sql("SELECT count(*) FROM t", "b2") == "1"


def all_refused(inst: Inst, cases: list[tuple[tuple[str, ...], str]], why: str) -> None:
    """Each command refuses in one line that names the store and ``why``."""
    for args, what in cases:
        proc = inst.pgmgr(*args)
        assert proc.returncode == 1, proc.stderr
        line = error_lines(proc.stderr)[0]
        assert line.startswith(f"Error: cannot {what}: the snapshots in "), line
        assert why in line and line.endswith("nothing was changed")


def _bind(source: Path, target: Path) -> None:
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)


@pytest.mark.parametrize("at", ["top", "store"])
def test_a_bind_mount_of_the_same_filesystem_is_refused_first(
    ops_dir: Path, template: Path, at: str
) -> None:
    """A bind mount of the data directory's own filesystem at ``.pgmgr-snapshots`` (or at
    the instance's store inside it): the device numbers match, so the same-filesystem check
    passed, but rename() does not cross mount points even on one filesystem. A restore
    stopped the server, copied, then failed with "Invalid cross-device link"; a branch
    left its copy. Now refused first, in one line, as another filesystem is."""
    if os.geteuid() != 0:
        pytest.skip("needs root to bind-mount")
    datadir = copy_datadir(template, ops_dir / "w" / "data")
    top = datadir.parent / ".pgmgr-snapshots"
    real = ops_dir / "real"  # same filesystem, seen through a second mount
    real.mkdir(mode=0o755)
    if at == "top":
        top.mkdir(mode=0o755)
        mnt = top
    else:
        top.mkdir(mode=0o755)
        (top / "data").mkdir(mode=0o700)
        os.chown(top / "data", *_server_ids(template))
        os.chown(real, *_server_ids(template))
        real.chmod(0o700)
        mnt = top / "data"
    _bind(real, mnt)
    it = Inst("dev", datadir)
    try:
        assert os.stat(mnt).st_dev == os.stat(datadir.parent).st_dev
        it.ok("start", "-q", "--init", "-d", str(datadir), "--name", "dev", "--port", "auto")
        it.sql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        it.ok("snapshot", "dev", "s1", "-q")
        it.sql("INSERT INTO t VALUES (-1)")
        pid = it.pid()
        parent = datadir.parent
        cases = [
            (("restore", "dev", "s1", "--yes"), "restore 'dev'"),
            (("upgrade", "dev", "-v", "18", "--yes"), "upgrade 'dev'"),
        ]
        if at == "top":  # a branch's store is beside dev's, in the top directory
            cases.append((("branch", "dev", "b1"), f"branch 'dev' into {parent / 'b1'}"))
        all_refused(it, cases, "are on another mount")
        assert it.pid() == pid  # never stopped
        assert it.sql("SELECT count(*) FROM t WHERE x = -1") == "1"
        assert not (parent / "b1").exists()
        assert os.listdir(it.store) == ["s1"]  # no copy left behind
        if at == "store":  # the bind mount is dev's store only: a branch has its own
            it.ok("branch", "dev", "b1", "--from", "s1", "-q")
            assert it.sql("SELECT count(*) FROM t", "b1") == "1"
    finally:
        it.pgmgr("stop", "--all", "-m", "immediate", "-q")
        subprocess.run(["umount", str(mnt)], check=True)


def _server_ids(template: Path) -> tuple[int, int]:
    st = template.stat()
    return st.st_uid, st.st_gid


def test_a_data_directory_bind_mounted_is_a_mount_point(ops_dir: Path, template: Path) -> None:
    """A data directory that is a bind mount (of a directory of the same filesystem): the
    device numbers match, so it was not seen as a mount point, and a restore stopped the
    server, copied, then failed to rename it ("Device or resource busy"). Now refused
    first, as a mount point of another filesystem is."""
    if os.geteuid() != 0:
        pytest.skip("needs root to bind-mount")
    real = copy_datadir(template, ops_dir / "real" / "data")
    datadir = ops_dir / "w" / "data"
    datadir.mkdir(parents=True, mode=0o700)
    _bind(real, datadir)
    it = Inst("dev", datadir)
    try:
        it.ok("start", "-q", "--init", "-d", str(datadir), "--name", "dev", "--port", "auto")
        pid = it.pid()
        for args in (
            ("snapshot", "dev", "s1"),
            ("restore", "dev", "s1", "--yes"),
            ("upgrade", "dev", "-v", "18", "--yes"),
            ("upgrade", "dev", "-v", "18", "--check"),  # said the checks passed
        ):
            proc = it.pgmgr(*args)
            assert proc.returncode == 1, proc.stderr
            line = error_lines(proc.stderr)[0]
            assert "is a mount point" in line and line.endswith("nothing was changed"), line
        assert it.pid() == pid
        assert not (datadir.parent / ".pgmgr-snapshots").exists()
    finally:
        it.pgmgr("stop", "--all", "-m", "immediate", "-q")
        subprocess.run(["umount", str(datadir)], check=True)


@pytest.fixture
def btrfs(scratch: Path) -> Iterator[Path]:
    """A small btrfs, loop-mounted (root only), with a 0755 directory ``pg`` of root's."""
    if os.geteuid() != 0:
        pytest.skip("needs root to loop-mount a btrfs")
    if shutil.which("mkfs.btrfs") is None or "btrfs" not in Path("/proc/filesystems").read_text():
        pytest.skip("no btrfs here (mkfs.btrfs, or the kernel's)")
    image, mnt = scratch / "btrfs.img", scratch / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "400M", str(image)], check=True)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        (mnt / "pg").mkdir(mode=0o755)
        yield mnt / "pg"
    finally:
        kill_postmasters(postmasters_under(mnt))
        subprocess.run(["umount", str(mnt)], check=True)  # and the loop device with it


def test_a_data_directory_that_is_a_btrfs_subvolume_is_no_mount_point(btrfs: Path) -> None:
    """A btrfs subvolume (made to snapshot it with btrfs, say) has a device number of its
    own but is in its parent's mount: a rename moves it and puts another directory in its
    place as for any directory. snapshot, restore and upgrade refused it ("its data
    directory ... is a mount point"); they work (the mount id says it is no mount point)."""
    data = btrfs / "data"
    subprocess.run(["btrfs", "subvolume", "create", str(data)], check=True, capture_output=True)
    assert os.stat(data).st_dev != os.stat(btrfs).st_dev
    pw = pwd.getpwnam("postgres")
    os.chown(data, pw.pw_uid, pw.pw_gid)
    data.chmod(0o700)
    it = Inst("sv", data)
    try:
        it.ok("start", "-q", "--init", "-d", str(data), "--name", "sv", "--port", "auto")
        it.sql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        it.ok("snapshot", "sv", "s1", "-q")
        it.sql("INSERT INTO t VALUES (2)")
        it.ok("restore", "sv", "s1", "--yes", "-q")
        assert it.sql("SELECT count(*) FROM t") == "1"
        it.ok("destroy", "sv", "--yes", "--with-snapshots", "-q")
        assert os.listdir(btrfs) == [".pgmgr-snapshots"]
    finally:
        it.pgmgr("stop", "--all", "-m", "immediate", "-q")
