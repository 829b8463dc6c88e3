"""A replica's new data directory is fsynced into its parent (through the fd that made it)
before the record pins it: pg_basebackup syncs what it writes inside, not the parent's
entry, and the record (on another filesystem) named a standby that a power cut took away.
A power cut cannot be real here, so the fsync is observed (a spy around os.fsync; the
replica of a real PostgreSQL 15 server, made in-process, is real)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgmgr.core import registry, replica
from pgmgr.core.instance import Server
from tests import fsyncspy
from tests.ops.conftest import Instance


def test_the_new_directory_is_fsynced_before_the_record_pins_it(
    fresh: Instance, ops_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[object] = []
    real_save = registry.save

    def save(inst: registry.Instance) -> None:
        events.append(("save", inst.name, inst.ino is not None))
        real_save(inst)

    with monkeypatch.context() as m:
        fsyncspy.spy(m, events)
        m.setattr(registry, "save", save)
        rep = replica.create(Server(registry.load("fresh")), name="rep")
    assert rep.datadir == ops_dir / "rep"
    st = os.stat(ops_dir)
    assert ("fsync", st.st_dev, st.st_ino) in events[: events.index(("save", "rep", True))]
