"""pgmgr.core.regular: what is not a regular file is refused by name, never waited on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgmgr.core.regular import NotRegular, open_regular


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_directory_is_not_a_regular_file(tmp_path: Path) -> None:
    """A configuration file replaced by a directory: the upgrade said "Is a directory: 9"
    (fdopen's error, naming the descriptor), and the descriptor was left open."""
    conf = tmp_path / "pg_hba.conf"
    conf.mkdir()
    before = _open_fds()
    with pytest.raises(NotRegular) as e:
        open_regular(conf)
    assert str(e.value) == f"{conf} is not a regular file"
    assert _open_fds() == before


def test_a_fifo_and_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(NotRegular, match=r"the server log .* is not a regular file"):
        open_regular(fifo, "the server log")
    (tmp_path / "f").write_bytes(b"x")
    with open_regular(tmp_path / "f") as f:
        assert f.read() == b"x"
