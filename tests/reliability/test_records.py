"""Instance records that are valid JSON but not valid records (wrong types), through a real
``pgmgr``: one bad file is one ``Error:`` line, never a traceback, and never hides the
other instances."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from pgmgr.core import recordcheck, registry
from tests.reliability.conftest import InstFactory, pgmgr

#: One field of a valid record replaced by a value of the wrong JSON type.
BAD_FIELDS: list[tuple[str, Any]] = [
    ("datadir", None),
    ("bindir", ["/usr/lib/postgresql/15/bin"]),
    ("port", "5432"),
    ("port", True),
    ("pid", 1.5),
    ("started_at", "yesterday"),
    ("created_at", False),
    ("socket_dir", 0),
    ("password", {"secret": "x"}),
    ("settings", {"work_mem": 64}),
    ("settings", ["work_mem=64MB"]),
    ("password_pending", "yes"),
    ("intent", "upgrading"),
    # an intent naming an entry outside the snapshot store (settling it would rename that)
    ("intent", {"op": "restore", "new": {"dev": 1, "ino": 2}, "record": {}, "old": "../../x"}),
]


def corrupt(state: Path, name: str, key: str, value: Any) -> Path:
    """Rewrite one field of the record of ``name``; returns the record's path."""
    path = state / "instances" / f"{name}.json"
    data = json.loads(path.read_text())
    data[key] = value
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(("key", "value"), BAD_FIELDS, ids=[f"{k}={v!r}" for k, v in BAD_FIELDS])
def test_status_lists_the_others_and_names_the_bad_record(
    cluster: InstFactory, rel_isolation: Path, key: str, value: Any
) -> None:
    cluster("alpha"), cluster("bad"), cluster("zeta")
    record = corrupt(rel_isolation, "bad", key, value)
    for args in (["status"], ["status", "--json"]):
        run = pgmgr(*args)
        assert run.returncode == 0, str(run)
        errors = run.errors()
        assert len(errors) == 1, str(run)
        assert str(record) in errors[0] and repr(key) in errors[0], str(run)
        if "--json" in args:
            states = [(r["name"], r["state"]) for r in run.json()]
            assert states == [("alpha", "stopped"), ("bad", "broken"), ("zeta", "stopped")]
        else:
            assert "alpha" in run.stdout and "zeta" in run.stdout, str(run)
            assert "broken" in run.stdout, str(run)


def test_a_records_name_is_its_file_name(cluster: InstFactory, rel_isolation: Path) -> None:
    """A ``name`` of the wrong type (or another name) does not matter: the file names it."""
    cluster("alpha")
    corrupt(rel_isolation, "alpha", "name", 5)
    run = pgmgr("status", "--json")
    assert [r["name"] for r in run.json()] == ["alpha"] and not run.errors(), str(run)


def test_type_checks_cover_every_field() -> None:
    """Every field of the record has a type check (a new field needs one)."""
    fields = {f.name for f in dataclasses.fields(registry.Instance)}
    assert fields == set(recordcheck.FIELD_TYPES)


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: (size, mtime in ns)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("running", [False, True], ids=["stopped", "running"])
@pytest.mark.parametrize("garbage", ['{"name": "bad", "datadir": null}', "not json\n"])
def test_forget_removes_an_unreadable_record_and_nothing_else(
    cluster: InstFactory, rel_isolation: Path, garbage: str, running: bool
) -> None:
    """The CorruptRecord hint says 'pgmgr forget NAME': that must work, and must not touch
    the data directory (nor a server still running in it)."""
    good, bad = cluster("good"), cluster("bad")
    if running:
        assert bad.start("--port", "auto").returncode == 0
    pid = bad.pid()
    record = rel_isolation / "instances" / "bad.json"
    record.write_text(garbage)
    hint = pgmgr("status", "--json").stderr
    assert "pgmgr forget bad" in hint
    before = tree(bad.datadir)

    run = pgmgr("forget", "bad")
    assert run.returncode == 0, str(run)
    assert not record.exists()
    assert str(record) in run.stderr and "cannot tell" in run.stderr, str(run)
    assert tree(bad.datadir) == before
    assert bad.pid() == pid
    listing = pgmgr("status", "--json")
    assert listing.returncode == 0 and not listing.errors(), str(listing)
    assert [r["name"] for r in listing.json()] == ["good"]
    assert good.datadir.is_dir()

    # ... and the data directory can be registered again, as the hint says
    again = pgmgr("init", "-d", str(bad.datadir), "--name", "bad")
    assert again.returncode == 0, str(again)
    state = pgmgr("status", "bad", "--json")
    assert state.json()["state"] == ("running" if running else "stopped"), str(state)
    if running:
        assert pgmgr("stop", "bad").returncode == 0
