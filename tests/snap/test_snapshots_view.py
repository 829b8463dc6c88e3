"""``pgmgr snapshots`` as a user sees it (review): on an 80-column terminal, and with an
instance whose directory is gone."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.cli.test_terminal import run_in_pty
from tests.helpers import error_lines
from tests.snap.conftest import Inst

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_snapshot_names_are_never_wrapped_on_80_columns(inst: Inst, ops_dir: Path) -> None:
    """A 30-character name (as long as the 'pre-upgrade-15-20261126-142439' pgmgr makes
    itself after a second upgrade) is what 'restore' takes: it stays whole on 80 columns
    (Rich folded it, and the time of every row, over two lines); the kind moves below."""
    name = "before-migration-20261126-1424"
    inst.ok("snapshot", "dev", name, "-q")
    code, out = run_in_pty(["snapshots", "dev"], ops_dir, env={"COLUMNS": "80"})
    text = ANSI.sub("", out)
    assert code == 0, text
    rows = [ln for ln in text.splitlines() if ln.startswith("dev ")]
    assert len(rows) == 2 and all(name in r for r in rows), text
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", rows[0]), text
    assert rows[1].split() == ["dev", name, "snapshot"]
    assert max(len(ln) for ln in text.splitlines()) <= 80


def test_an_instance_whose_directory_is_gone_does_not_hide_the_others(
    inst: Inst, ops_dir: Path
) -> None:
    """Its volume unmounted, or moved away: one error line for it, the others listed (it
    was one 'Error: No such file or directory' and no listing at all)."""
    inst.ok("snapshot", "dev", "s1", "-q")
    (ops_dir / "vol").mkdir(mode=0o755)
    inst.ok("init", "-q", "-d", str(ops_dir / "vol" / "x"), "--name", "x", "-v", "15")
    (ops_dir / "vol").rename(ops_dir / "unmounted")
    try:
        proc = inst.pgmgr("snapshots")
        assert proc.returncode == 1, proc.stderr
        assert error_lines(proc.stderr) == [
            f"Error: 'x': No such file or directory: {ops_dir / 'vol'}"
        ]
        assert [ln.split()[:2] for ln in proc.stdout.splitlines()[1:]] == [["dev", "s1"]]
        assert [r["snapshot"] for r in inst.snaps("dev")] == ["s1"]
    finally:
        (ops_dir / "unmounted").rename(ops_dir / "vol")


def test_an_unreadable_record_is_said_not_skipped(inst: Inst, ops_dir: Path) -> None:
    """A record truncated by hand: 'pgmgr snapshots' left that instance out without a word
    (status says it is broken), so its snapshots looked gone. One error line for it (with
    the hint status gives), the others listed."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.ok("init", "-q", "-d", str(ops_dir / "x"), "--name", "x", "-v", "15")
    inst.ok("snapshot", "x", "k1", "-q")
    state = Path(inst.env.get("PGMGR_STATE_DIR") or os.environ["PGMGR_STATE_DIR"])
    record = state / "instances" / "x.json"
    record.write_text(record.read_text()[:50])
    for args in (("snapshots",), ("snapshots", "--json")):
        proc = inst.pgmgr(*args)
        assert proc.returncode == 1, proc.stderr
        lines = error_lines(proc.stderr)
        assert len(lines) == 2 and lines[0].startswith(f"Error: instance record {record}"), lines
        assert lines[1].startswith("Hint: remove it with 'pgmgr forget x'"), lines
        assert "dev" in proc.stdout and "s1" in proc.stdout, proc.stdout


def test_destroy_with_snapshots_keeps_another_clusters_kept_ones(inst: Inst) -> None:
    """A destroy keeps the instance's snapshots by default; an instance made again at the
    same path shares that store. 'destroy --with-snapshots' of the new one deleted the old
    cluster's kept snapshot too ("Deleted its 2 snapshot(s)"): the only copy of data the
    first destroy had promised to keep. Now only the instance's own go."""
    inst.ok("snapshot", "dev", "old1", "-q")
    inst.ok("destroy", "dev", "--yes", "-q")
    inst.ok("init", "-q", "-d", str(inst.datadir), "--name", "dev", "-v", "15")
    inst.ok("snapshot", "dev", "new1", "-q")
    out = json.loads(inst.ok("destroy", "dev", "--yes", "--with-snapshots", "--json").stdout)
    assert out["snapshots_removed"] == 1 and out["snapshots_kept"] == 1, out
    assert (inst.store / "old1" / "data" / "PG_VERSION").is_file()
    assert not (inst.store / "new1").exists()
    # Without --json, it says so; and the kept one is still usable ('branch --from').
    inst.ok("init", "-q", "-d", str(inst.datadir), "--name", "dev", "-v", "15")
    inst.ok("branch", "dev", "back", "--from", "old1", "-q")
    text = inst.ok("destroy", "dev", "--yes", "--with-snapshots").stderr
    assert "Kept 1 snapshot(s) of another cluster" in text, text
    assert (inst.store / "old1" / "data").is_dir()


@pytest.mark.parametrize("how", ["a file", "unreadable"])
def test_a_store_that_cannot_be_read_is_an_error_not_an_empty_listing(
    how: str, inst: Inst, ops_dir: Path
) -> None:
    """A file where the store should be, or a store its owner cannot read: 'snapshots
    --json' printed '[]' (or the others' snapshots) and exited 0, and the text said "No
    snapshots". Now: one error line naming the store, exit 1, and --json still prints the
    (valid) list of what could be read."""
    inst.ok("branch", "dev", "other", "-q")
    inst.ok("snapshot", "other", "o1", "-q")
    inst.ok("snapshot", "dev", "s1", "-q")
    store = inst.store
    if how == "a file":
        shutil.rmtree(store)
        store.write_text("not a store\n")
    else:
        store.chmod(0)
    try:
        for args, listed in ((("snapshots", "dev", "--json"), []),
                             (("snapshots", "--json"), ["o1"])):  # fmt: skip
            proc = inst.pgmgr(*args)
            assert proc.returncode == 1, proc
            assert str(store) in error_lines(proc.stderr)[0], proc.stderr
            assert [r["snapshot"] for r in json.loads(proc.stdout)] == listed
        proc = inst.pgmgr("snapshots", "dev")
        assert proc.returncode == 1 and proc.stdout == "", proc
        assert error_lines(proc.stderr)[0].startswith("Error: "), proc.stderr
        assert "No snapshots" not in proc.stderr
        proc = inst.pgmgr("snapshots")
        assert proc.returncode == 1 and "No snapshots" not in proc.stderr, proc
        assert error_lines(proc.stderr)[0].startswith("Error: 'dev': "), proc.stderr
        assert [ln.split()[:2] for ln in proc.stdout.splitlines()[1:]] == [["other", "o1"]]
    finally:
        if how == "a file":
            store.unlink()
        else:
            store.chmod(0o700)
