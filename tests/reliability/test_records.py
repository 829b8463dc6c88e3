"""Instance records that are valid JSON but not valid records (wrong types), through a real
``pgmgr``: one bad file is one ``Error:`` line, never a traceback, and never hides the
other instances."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from pgmgr.core import registry
from tests.reliability.conftest import InstFactory, pgmgr

#: One field of a valid record replaced by a value of the wrong JSON type.
BAD_FIELDS: list[tuple[str, Any]] = [
    ("datadir", None),
    ("name", 5),
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
            assert [r["name"] for r in run.json()] == ["alpha", "zeta"]
        else:
            assert "alpha" in run.stdout and "zeta" in run.stdout, str(run)


def test_type_checks_cover_every_field() -> None:
    """Every field of the record has a type check (a new field needs one)."""
    fields = {f.name for f in dataclasses.fields(registry.Instance)}
    assert fields == set(registry._FIELD_TYPES)
