"""The copies of the user's files an upgrade makes for its check (server running) are kept
and moved into place at the switch (server stopped) when nothing changed since; a file
changed meanwhile is copied again, never carried stale. Real servers (15 to the wheel's
18); the test pauses the upgrade after pg_upgrade ran (pgmgr.core.testhook) and edits
the files there, as their owner would during the downtime."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pgmgr.core import testhook, upgradefiles, upgradekept
from tests.snap.conftest import Inst
from tests.snap.test_upgrade_files import _put, uf  # noqa: F401


def _held_upgrade(it: Inst, hooks: Path) -> subprocess.Popen[str]:
    """``pgmgr upgrade NAME -v 18 --yes`` stopped at the hook after pg_upgrade ran."""
    (hooks / "upgrade-ran").touch()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgmgr", "upgrade", it.name, "-v", "18", "--yes", "-q"],
        env={**os.environ, **it.env, testhook.ENV: str(hooks)}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (hooks / "upgrade-ran.reached").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    return proc


def test_unchanged_entries_are_moved_into_place_changed_ones_copied_again(
    uf: Inst,  # noqa: F811
    tmp_path: Path,
) -> None:
    big = _put(uf, "big.bin", "")
    with open(big, "wb") as f:
        f.write(os.urandom(16 << 20))
    _put(uf, "notes.txt", "old notes\n")
    _put(uf, "same.d/b.conf", "# b\n")
    _put(uf, "conf.d/a.conf", "# a\n")
    _put(uf, "gone.txt", "bye\n")
    time.sleep(upgradekept.RACY_NS / 1e9 + 0.2)  # not changed within the stamp's tick
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    hooks.chmod(0o777)
    proc = _held_upgrade(uf, hooks)
    try:
        (kept,) = uf.store.glob(f".tmp-*/{upgradekept.KEPT}")
        assert sorted(os.listdir(kept)) == ["big.bin", "conf.d", "gone.txt", "notes.txt",
                                            "same.d"]  # fmt: skip
        inodes = {n: os.lstat(kept / n).st_ino for n in ("big.bin", "same.d")}
        # During the downtime, as the owner would: same sizes, so only the times tell.
        (uf.datadir / "notes.txt").write_text("new notes\n")
        (uf.datadir / "conf.d" / "a.conf").write_text("# A\n")
        os.unlink(uf.datadir / "gone.txt")
        _put(uf, "late.txt", "added\n")
    finally:
        (hooks / "upgrade-ran.go").touch()
        _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert uf.record()["major"] == "18"
    data = uf.datadir
    assert {n: os.lstat(data / n).st_ino for n in inodes} == inodes  # moved, not copied
    assert (data / "same.d" / "b.conf").read_text() == "# b\n"
    assert (data / "notes.txt").read_text() == "new notes\n"  # not the check's copy
    assert (data / "conf.d" / "a.conf").read_text() == "# A\n"
    assert (data / "late.txt").read_text() == "added\n"
    assert not (data / "gone.txt").exists()
    assert not list(uf.store.glob(".tmp-*"))


def test_a_stamp_within_the_clock_tick_is_not_trusted(tmp_path: Path) -> None:
    """A file changed just before its stamp may change again within the same tick with
    every field the same: not reused. Older, unchanged: reused; then any write: not."""
    (tmp_path / "f").write_text("x")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        since = upgradekept.now()
        before = upgradekept.stamp(fd, "f")
        assert not upgradekept.unchanged(fd, "f", before, since)
        later = since + 2 * upgradekept.RACY_NS  # as if the stamp were taken later
        assert upgradekept.unchanged(fd, "f", before, later)
        os.chmod(tmp_path / "f", 0o640)
        assert not upgradekept.unchanged(fd, "f", before, later)
    finally:
        os.close(fd)


def test_a_kept_copy_not_reused_is_removed_before_the_copy_made_again(tmp_path: Path) -> None:
    """The check's copy of a file changed since is removed before the file is copied
    again: held until the end of the upgrade, a changed big file took twice its room
    during the downtime, where the checks had counted it once (the disk filled with the
    server stopped). The copies compared byte for byte. Fails before the fix (the stale
    copy stayed in the kept directory)."""
    old, work = tmp_path / "old", tmp_path / "work"
    old.mkdir()
    work.mkdir()
    (old / "big.bin").write_bytes(b"a" * 100_000)
    (old / "same.bin").write_bytes(b"s" * 1000)
    (old / "dir").mkdir()
    (old / "dir" / "f").write_bytes(b"d" * 1000)
    time.sleep(1.1 * upgradekept.RACY_NS / 1e9)  # older than a clock tick: trusted
    (work / "data").mkdir()
    before = upgradefiles.copy_entries(old, work / "data")
    assert upgradekept.set_aside(work / "data", before.files)
    (old / "big.bin").write_bytes(b"b" * 100_000)  # same size, new bytes
    (old / "dir" / "f").write_bytes(b"e" * 1000)
    after = upgradefiles.copy_entries(old, work / "data", before)
    assert sorted(after.files) == ["big.bin", "dir/", "same.bin"]
    assert os.listdir(work / upgradekept.KEPT) == []  # moved into place, or removed
    for rel in ("big.bin", "same.bin", "dir/f"):
        assert (work / "data" / rel).read_bytes() == (old / rel).read_bytes(), rel


def test_an_upgrade_killed_with_its_copies_kept_leaves_none_and_a_retry_carries_the_new(
    uf: Inst,  # noqa: F811
    tmp_path: Path,
) -> None:
    """kill -9 once the check's copies are kept (pg_upgrade ran): the next upgrade sweeps
    the killed one's work directory, kept copies and all, takes its own stamps, and
    carries a file edited in between, not the killed run's copy."""
    _put(uf, "notes.txt", "old notes\n")
    _put(uf, "d/f.txt", "old f\n")
    time.sleep(upgradekept.RACY_NS / 1e9 + 0.2)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    hooks.chmod(0o777)
    proc = _held_upgrade(uf, hooks)
    try:
        assert list(uf.store.glob(f".tmp-*/{upgradekept.KEPT}/notes.txt"))
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    (uf.datadir / "notes.txt").write_text("new notes\n")
    (uf.datadir / "d" / "f.txt").write_text("new f\n")
    time.sleep(upgradekept.RACY_NS / 1e9 + 0.2)  # else copied again anyway: racy
    uf.ok("upgrade", uf.name, "-v", "18", "--yes", "-q")
    assert uf.record()["major"] == "18"
    assert (uf.datadir / "notes.txt").read_text() == "new notes\n"
    assert (uf.datadir / "d" / "f.txt").read_text() == "new f\n"
    assert not list(uf.store.glob(".tmp-*"))
