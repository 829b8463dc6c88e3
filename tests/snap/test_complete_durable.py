"""When a restore completes, the replaced directory's rename from its held name to a work
name is fsynced (the store, by the fd held) before the record forgets the intent: after a
power cut it was back under the held name, which only an intent naming it removes (a
whole data directory's blocks, never freed). A power cut cannot be real here, so the
fsync is observed (a spy around os.fsync; the restore of a real PostgreSQL 15 instance,
in-process, and its renames are real)."""

from __future__ import annotations

import os

import pytest

from pgmgr import snapactions
from pgmgr.core import registry, snapstore
from tests import fsyncspy
from tests.snap.conftest import Inst


def test_the_drop_rename_is_fsynced_before_the_intent_is_forgotten(
    inst: Inst, monkeypatch: pytest.MonkeyPatch
) -> None:
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.ok("stop", "dev", "-q")
    events: list[object] = []
    real_rename, real_save = snapstore.Store.rename, registry.save

    def rename(self: snapstore.Store, src: str, dst: str) -> None:
        real_rename(self, src, dst)
        events.append(("rename", dst.startswith(snapstore.TMP + "drop-")))

    def save(inst: registry.Instance) -> None:
        events.append(("save", inst.intent is None))
        real_save(inst)

    with monkeypatch.context() as m:
        fsyncspy.spy(m, events)
        m.setattr(snapstore.Store, "rename", rename)
        m.setattr(registry, "save", save)
        assert snapactions.restore("dev", "s1", quiet=True) == 0
    begun = events.index(("save", False))  # the intent recorded
    dropped = events.index(("rename", True), begun)
    done = events.index(("save", True), dropped)  # the intent forgotten
    st = os.stat(inst.store)
    assert ("fsync", st.st_dev, st.st_ino) in events[dropped:done]
