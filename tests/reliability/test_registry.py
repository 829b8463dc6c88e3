"""The instance registry under stress, through a real ``pgmgr`` and real servers: corrupt
record files (issue 11.7). Names allocated atomically by concurrent inits (11.2): see
test_conflicts.test_ten_concurrent_start_init."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability.conftest import InstFactory, pgmgr

#: Record files no JSON parser or type check should survive without help.
GARBAGE: dict[str, bytes] = {
    "not-utf8": b'{"name": "bad", "datadir": "/tmp/\xff\xfe"}',
    "deep": b"[" * 100_000,
    "nul-in-datadir": json.dumps({"datadir": "/tmp/a\u0000b"}).encode(),
    "wrong-types": json.dumps({"datadir": 7, "port": "x", "settings": []}).encode(),
    "relative-datadir": json.dumps({"datadir": "data"}).encode(),
    "empty": b"",
}


def break_record(state: Path, name: str, garbage: bytes) -> Path:
    """Replace the record of ``name`` with ``garbage`` (merged into the real record when
    it is a JSON object, so that only the bad fields are bad)."""
    path = state / "instances" / f"{name}.json"
    try:
        extra = json.loads(garbage)
    except (ValueError, RecursionError):
        extra = None
    if isinstance(extra, dict):
        data = json.loads(path.read_text())
        data.update(extra)
        garbage = json.dumps(data).encode()
    path.write_bytes(garbage)
    return path


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_corrupt_record_never_tracebacks(
    cluster: InstFactory, rel_isolation: Path, kind: str
) -> None:
    good, bad = cluster("good"), cluster("bad")
    assert good.start("--port", "auto").returncode == 0
    record = break_record(rel_isolation, "bad", GARBAGE[kind])
    try:
        listing = pgmgr("status", "--json")  # pgmgr() fails the test on any traceback
        assert listing.returncode == 0, str(listing)
        rows = {r["name"]: r for r in listing.json()}
        assert rows["good"]["state"] == "running", str(listing)
        assert rows["bad"]["state"] == "broken" and rows["bad"]["detail"], str(listing)
        assert rows["bad"]["datadir"] is None
        table = pgmgr("status")
        assert table.returncode == 0 and "broken" in table.stdout, str(table)
        assert "good" in table.stdout and "running" in table.stdout, str(table)

        destroy = pgmgr("destroy", "bad", "--yes")
        assert destroy.returncode != 0 and len(destroy.errors()) == 1, str(destroy)
        assert bad.datadir.is_dir() and record.exists()

        stop = pgmgr("stop", "--all")
        assert stop.returncode == 0, str(stop)
        assert "'bad': skipped" in stop.stderr, str(stop)
        assert good.pid() is None

        forget = pgmgr("forget", "bad")
        assert forget.returncode == 0, str(forget)
        assert not record.exists() and bad.datadir.is_dir()
        after = pgmgr("status", "--json")
        assert [r["name"] for r in after.json()] == ["good"], str(after)
    finally:
        pgmgr("stop", "good")


def test_a_record_is_named_by_its_file(cluster: InstFactory, rel_isolation: Path) -> None:
    """A record ``a.json`` whose ``name`` field says ``b`` is ``a``: ``destroy a`` removes
    a's data and a.json, and leaves b (record and data) alone."""
    a, b = cluster("a"), cluster("b")
    rec_a = rel_isolation / "instances" / "a.json"
    data = json.loads(rec_a.read_text())
    data["name"] = "b"
    rec_a.write_text(json.dumps(data))
    listing = pgmgr("status", "--json")
    assert sorted(r["name"] for r in listing.json()) == ["a", "b"], str(listing)
    run = pgmgr("destroy", "a", "--yes")
    assert run.returncode == 0, str(run)
    assert not rec_a.exists() and not a.datadir.exists()
    assert (rel_isolation / "instances" / "b.json").exists() and b.datadir.is_dir()
    assert json.loads((rel_isolation / "instances" / "b.json").read_text())["name"] == "b"
