"""The sweep of a snapshot store's top directory (``.pgmgr-snapshots``) removes only the
stores ``destroy --with-snapshots`` doomed, never an entry that merely has such a name: the
store of a data directory named ``.tmp-delete-<pid>-<hex>`` (its basename), or a data
directory put there. Each ran with the command of a neighbouring instance."""

from __future__ import annotations

from pathlib import Path

from tests.core.test_sweep_pid_dirs import dead_pid
from tests.snap.conftest import Inst


def test_entries_named_like_a_doomed_store_are_kept(inst: Inst, ops_dir: Path) -> None:
    inst.ok("snapshot", "dev", "s1", "-q")  # makes the top directory
    top = ops_dir / ".pgmgr-snapshots"
    store = top / f".tmp-delete-{dead_pid()}-deadbeef"  # a store of that basename
    (store / "s1" / "data").mkdir(parents=True)
    (store / "s1" / "snapshot.json").write_text("{}")
    datadir = top / f".tmp-delete-{dead_pid()}-0badf00d"  # a data directory there
    datadir.mkdir()
    (datadir / "PG_VERSION").write_text("15\n")
    (datadir / "base").mkdir()
    forged = top / f".tmp-delete-{dead_pid()}-c0ffee00"  # a mark naming another entry
    forged.mkdir()
    (forged / ".tmp-doomed").write_text(store.name)
    inst.ok("snapshot", "dev", "s2", "-q")  # sweeps the top directory
    assert (store / "s1" / "snapshot.json").exists()
    assert (datadir / "PG_VERSION").exists() and (datadir / "base").is_dir()
    assert forged.is_dir()
