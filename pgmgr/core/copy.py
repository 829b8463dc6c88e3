"""TEMPORARY stand-in for the lead's copy engine (replaced by main's on merge)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass
class CopyStats:
    files: int = 0
    bytes: int = 0
    method: str = "copy_file_range"


def copy_tree(src: Path | int, dst: Path) -> CopyStats:
    stats = CopyStats()
    srcp = Path(f"/proc/self/fd/{src}") if isinstance(src, int) else Path(src)
    os.mkdir(dst, 0o700)
    os.chmod(dst, stat.S_IMODE(os.stat(srcp).st_mode))
    _copy(str(srcp), str(dst), stats)
    return stats


def _copy(src: str, dst: str, stats: CopyStats) -> None:
    with os.scandir(src) as it:
        for e in it:
            t = os.path.join(dst, e.name)
            st = e.stat(follow_symlinks=False)
            if e.is_symlink():
                os.symlink(os.readlink(e.path), t)
            elif e.is_dir(follow_symlinks=False):
                os.mkdir(t, 0o700)
                os.chmod(t, stat.S_IMODE(st.st_mode))
                _copy(e.path, t, stats)
            else:
                fi = os.open(e.path, os.O_RDONLY | os.O_NOFOLLOW)
                fo = os.open(t, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IMODE(st.st_mode))
                try:
                    left = st.st_size
                    while left > 0:
                        n = os.copy_file_range(fi, fo, left)
                        if n == 0:
                            break
                        left -= n
                        stats.bytes += n
                finally:
                    os.close(fi)
                    os.close(fo)
                stats.files += 1


def sync_fs(path: Path) -> None:
    import ctypes

    fd = os.open(path, os.O_RDONLY)
    try:
        ctypes.CDLL(None, use_errno=True).syncfs(fd)
    finally:
        os.close(fd)
