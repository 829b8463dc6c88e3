"""A record created, rewritten or removed is made durable (its directory fsynced) before
the call returns: what follows depends on it (the swap of a restore or upgrade after its
intent is recorded, a branch's rename after its pending record, an init or destroy said
done), and may be on another filesystem, durable first. A power cut cannot be real here,
so the fsync is observed (a spy around os.fsync; the files are real)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pgmgr.core import registry
from pgmgr.core.registry import Instance
from tests import fsyncspy


@pytest.mark.parametrize("op", ["create", "save", "remove"])
def test_the_instances_directory_is_fsynced(monkeypatch: pytest.MonkeyPatch, op: str) -> None:
    inst = Instance(name="dur", datadir="/d/dur", major="15", version="15", bindir="/b")
    if op != "create":
        registry.create(inst)
    calls: dict[str, Callable[[], object]] = {
        "create": lambda: registry.create(inst),
        "save": lambda: registry.save(inst),
        "remove": lambda: registry.remove("dur"),
    }
    synced: list[object] = []
    with monkeypatch.context() as m:
        fsyncspy.spy(m, synced)
        calls[op]()
    assert fsyncspy.mark(registry.instances_dir()) in synced
    assert registry.record_path("dur").exists() is (op != "remove")
