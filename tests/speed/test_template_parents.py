"""A template copy into a data directory whose parents do not exist yet (as initdb allows):
the parents are made, and a failed copy removes only the directories it made."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pgmgr.core import registry, template
from pgmgr.core.instance import Server
from pgmgr.core.server import InitOptions
from tests.helpers import run_pgmgr

from .conftest import pgmgr_json, templates


def warm(base: Path) -> list[str]:
    """Build the template (the first init of this version and options)."""
    assert pgmgr_json("init", "-d", str(base / "first"))["initialized"]
    keys = templates()
    assert len(keys) == 1
    return keys


def test_init_creates_missing_parents_with_a_warm_template(
    base: Path, started: Callable[..., dict[str, Any]]
) -> None:
    keys = warm(base)
    proc = run_pgmgr("init", "-d", "./a/b/data", "--json", cwd=base)
    assert proc.returncode == 0, proc.stderr
    datadir = base / "a" / "b" / "data"
    assert (datadir / "PG_VERSION").is_file()
    assert templates() == keys
    assert registry.load("data").password_pending, "a template copy, not an initdb"
    assert started(datadir)["state"] == "running"


def test_a_failed_copy_removes_only_the_parents_it_made(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm(base)
    (base / "keep").mkdir()
    (base / "keep" / "mine.txt").write_text("not pgmgr's")
    datadir = base / "keep" / "x" / "y" / "data"
    real_copy = template.copy_tree

    def interrupted(src: Path, dst: Path, **kw: Any) -> None:
        real_copy(src, dst, **kw)
        raise KeyboardInterrupt  # Ctrl-C as the copy ends

    monkeypatch.setattr(template, "copy_tree", interrupted)
    srv = Server.for_datadir(datadir)
    with pytest.raises(KeyboardInterrupt):
        srv.initialize(InitOptions(no_sync=True))
    assert not (base / "keep" / "x").exists()
    assert sorted(p.name for p in (base / "keep").iterdir()) == ["mine.txt"]
    assert "data" not in registry.names()
