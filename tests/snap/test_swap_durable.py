"""The swap of a restore or upgrade is made durable (both directories fsynced) before it
returns: the record written next may live on another filesystem, and after a power cut it
pinned the new data directory while the old one was back in place. A power cut cannot be
real here, so the fsyncs are observed (a spy around os.fsync; the renames are real)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgmgr.core import snapstore, snapswap
from tests import fsyncspy


@pytest.mark.parametrize("how", ["exchange", "rename"])
def test_the_swap_is_fsynced_in_both_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    datadir = tmp_path / "data"
    datadir.mkdir(mode=0o700)
    (datadir / "old").touch()
    if how == "rename":
        monkeypatch.setenv("PGMGR_SWAP", "rename")
    with snapstore.opened(datadir, None, exclusive=True) as store:
        staged = store.entry("staged")
        staged.mkdir(mode=0o700)
        (staged / "new").touch()
        synced: list[object] = []
        with monkeypatch.context() as m:
            fsyncspy.spy(m, synced)
            snapswap.swap_in(store, "staged")
        assert os.listdir(datadir) == ["new"] and os.listdir(store.entry("staged")) == ["old"]
        for d in (tmp_path, store.path):
            assert fsyncspy.mark(d) in synced, d
