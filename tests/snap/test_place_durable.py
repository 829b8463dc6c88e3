"""A branch's rename into place is fsynced in both directories (the store it leaves, the
parent it enters) before its record's pending mark is cleared: the record may live on
another filesystem, and after a power cut it named a branch complete whose copy was
still staged in the store (where the next sweep deleted it). A power cut cannot be real
here, so the fsyncs are observed (a spy around os.fsync; the branch, its copy and its
renames are real, in-process on a real PostgreSQL 15 data directory)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgmgr import snapactions
from pgmgr.core import branchplace, registry
from tests import fsyncspy
from tests.snap.conftest import Inst


def test_the_rename_into_place_is_fsynced_before_the_record_says_done(
    inst: Inst, ops_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inst.ok("stop", "dev", "-q")
    events: list[object] = []
    real_rename, real_save = branchplace.rename_noreplace, registry.save

    def rename(*args: object) -> None:
        real_rename(*args)  # type: ignore[arg-type]
        events.append(("rename",))

    def save(inst: registry.Instance) -> None:
        events.append(("save", inst.name, inst.pending))
        real_save(inst)

    with monkeypatch.context() as m:
        fsyncspy.spy(m, events)
        m.setattr(branchplace, "rename_noreplace", rename)
        m.setattr(registry, "save", save)
        assert snapactions.branch("dev", "feat", quiet=True) == 0
    done = events.index(("save", "feat", None))
    after = events[events.index(("rename",)) : done]
    for d in (ops_dir, ops_dir / ".pgmgr-snapshots" / "feat"):
        st = os.stat(d)
        assert ("fsync", st.st_dev, st.st_ino) in after, d
    inst.ok("forget", "feat", "-q")
