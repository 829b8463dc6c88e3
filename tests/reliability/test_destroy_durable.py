"""A destroy's rename of the data directory to its trash name is fsynced (the parent,
through the fd it holds) before anything in it is deleted, and so before the record is
removed: after a power cut the half-deleted directory came back at its own name, where
the record (on another filesystem, or back too) took it for the instance. A power cut
cannot be real here, so the fsync is observed (a spy around os.fsync; the rename and the
deletion are real)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgmgr.core import removal
from tests import fsyncspy


def test_the_trash_rename_is_fsynced_before_the_deletion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp_path.chmod(0o755)
    datadir = tmp_path / "data"
    (datadir / "base").mkdir(parents=True)
    (datadir / "PG_VERSION").write_text("15\n")
    parent = fsyncspy.mark(tmp_path)
    events: list[object] = []
    real_delete = removal._delete_trash

    def delete(parent_fd: int, trash: str) -> None:
        events.append("delete")
        real_delete(parent_fd, trash)

    fsyncspy.spy(monkeypatch, events)
    monkeypatch.setattr(removal, "_delete_trash", delete)
    assert removal.remove_datadir(datadir)
    assert os.listdir(tmp_path) == []
    assert parent in events[: events.index("delete")]
