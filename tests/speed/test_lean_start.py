"""What a real ``pgmgr start`` and ``pgmgr stop`` import (python -X importtime): no Typer, no
typing, no inspect (deferred, see pgmgr.entry.defer_inspect), and on start none of the
template and copy code a plain start does not use."""

from __future__ import annotations

from pathlib import Path

from .conftest import pgmgr
from .test_lean import imported

NEVER = {"typer", "click", "rich", "psycopg", "typing", "inspect"}


def test_start_and_stop_import_only_what_they_use(base: Path) -> None:
    data = str(base / "d")
    pgmgr("init", "-d", data)
    try:
        # the first start sets the password a template copy still needs: initdir's work
        pgmgr("start", "-d", data, "-p", "auto")
        pgmgr("stop", "-d", data)
        started = imported("start", "-d", data)
        assert "pgmgr.core.startup" in started  # it did start
        unused = {"pgmgr.core.initdir", "pgmgr.core.template", "pgmgr.core.copy"}
        assert not started & (NEVER | unused), started & (NEVER | unused)
        stopped = imported("stop", "-d", data)
        assert pgmgr("status", "-d", data, check=False).returncode == 3  # it did stop
        assert not stopped & (NEVER | {"tempfile"}), stopped & (NEVER | {"tempfile"})
    finally:
        pgmgr("stop", "-d", data, check=False)
