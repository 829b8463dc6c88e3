"""A snapshot's deletion renames it out of sight and fsyncs the store before anything in
it is deleted: after a power cut a half-deleted snapshot came back under its own name,
where a restore took it for whole. The same for a whole store (``destroy
--with-snapshots``). A power cut cannot be real here, so the fsync is observed (a spy
around os.fsync; the renames and deletions are real)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgmgr.core import ownerrm, snapcatalog, snapstore
from tests import fsyncspy


def _spied(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[object]:
    events: list[object] = []
    real_remove = getattr(module, name)

    def remove(*args: object, **kwargs: object) -> None:
        events.append("remove")
        real_remove(*args, **kwargs)

    fsyncspy.spy(monkeypatch, events)
    monkeypatch.setattr(module, name, remove)
    return events


def _store(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)
    datadir = tmp_path / "data"
    datadir.mkdir(mode=0o700)
    with snapstore.opened(datadir, None):
        pass
    (snapstore.store_path(datadir) / "s1" / "data" / "base").mkdir(parents=True)
    return datadir


def test_a_deleted_snapshot_is_renamed_durably_before_it_is_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = snapstore.store_path(_store(tmp_path))
    store_mark = fsyncspy.mark(store)
    events = _spied(monkeypatch, snapstore, "remove_tree")
    snapcatalog._delete(store, "s1")
    assert os.listdir(store) == []
    assert store_mark in events[: events.index("remove")]


def test_a_deleted_store_is_renamed_durably_before_it_is_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datadir = _store(tmp_path)
    top = snapstore.store_path(datadir).parent
    top_mark = fsyncspy.mark(top)
    events = _spied(monkeypatch, ownerrm, "remove_at")
    snapcatalog.delete_all(datadir, None)
    assert os.listdir(top) == []
    assert top_mark in events[: events.index("remove")]
