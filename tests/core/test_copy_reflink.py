"""The copy engine on a real reflink filesystem (a loop-mounted XFS, see tests/reflink.py):
FICLONE is used, no data moves, and the copy is independent of its source."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from pgmgr.core import copy
from tests.reflink import free_bytes, xfs_dir, xfs_mount  # noqa: F401

MB = 1 << 20


def test_copy_tree_reflinks_on_xfs(xfs_dir: Path) -> None:  # noqa: F811
    src = xfs_dir / "src"
    (src / "base").mkdir(parents=True, mode=0o700)
    big = os.urandom(MB) * 48
    (src / "base" / "16384").write_bytes(big)
    (src / "PG_VERSION").write_text("15\n")
    os.symlink("base", src / "link")
    before = free_bytes(xfs_dir)
    stats = copy.copy_tree(src, xfs_dir / "dst")
    used = before - free_bytes(xfs_dir)
    assert stats.method == "reflink" and stats.by_method == {"reflink": len(big) + 3}
    assert used < 8 * MB, f"a reflink copy of 48 MB used {used} bytes"  # shared extents
    dst = xfs_dir / "dst"
    assert (dst / "base" / "16384").read_bytes() == big and os.readlink(dst / "link") == "base"
    with open(dst / "base" / "16384", "r+b") as f:  # copy on write: the source keeps its data
        f.write(b"changed")
    assert (src / "base" / "16384").read_bytes() == big


def test_a_copy_by_clones_starts_no_pool_thread(
    xfs_dir: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A clone moves no bytes: the large files of a copy by clones are cloned by the walk
    itself, with no thread of copypool to overlap (handing them over cost more)."""
    started: list[str] = []
    real = threading.Thread.start

    def start(self: threading.Thread) -> None:
        started.append(self.name)
        real(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    src = xfs_dir / "src"
    src.mkdir()
    for i in range(3):
        (src / f"seg{i}").write_bytes(os.urandom(MB) * 9)  # over copypool.OFFLOAD_MIN
    stats = copy.copy_tree(src, xfs_dir / "dst")
    assert stats.method == "reflink" and stats.files == 3
    assert started == []


def test_forced_fallback_on_xfs_moves_the_data(
    xfs_dir: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PGMGR_COPY_METHOD=copy_file_range skips FICLONE even where it works (XFS may still
    share extents under copy_file_range: only the method is checked)."""
    monkeypatch.setenv(copy.ENV_METHOD, "copy_file_range")
    src = xfs_dir / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 100_000)
    assert copy.copy_tree(src, xfs_dir / "dst").method == "copy_file_range"
    assert (xfs_dir / "dst" / "f").read_bytes() == b"x" * 100_000
