"""The snapshot a restore's --save-current (or an upgrade) keeps of the replaced directory
is durable once named: its holder directory (entries data/ and snapshot.json) is fsynced
before it is renamed to the snapshot's name, and the store after. A power cut cannot be
real here, so the fsyncs are observed (a spy around os.fsync; the files are real)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgmgr.core import intent
from tests import fsyncspy


def test_the_kept_snapshot_is_fsynced_before_and_after_it_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    (store / "src" / "base").mkdir(parents=True)
    meta = {"name": "s1", "instance": "dev", "datadir": "/d", "system_identifier": "1",
            "major": "15", "version": "15.1", "bindir": "/b", "created": 0.0}  # fmt: skip
    synced: list[object] = []
    with monkeypatch.context() as m:
        fsyncspy.spy(m, synced)
        intent._keep(store, "src", "s1", meta)
    assert sorted(os.listdir(store / "s1")) == ["data", "snapshot.json"]
    for d in (store / "s1", store):
        assert fsyncspy.mark(d) in synced, d
