"""The stop mark (pgmgr.core.stopmark) is written before a command stops a running server
for its work: with the state directory read-only it cannot be, and the server must then not
be stopped (a kill -9 later would leave it stopped unexplained, and the start afterwards
could not record it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability.conftest import InstFactory, one_error, pgmgr
from tests.reliability.test_storage import needs_mount, read_only


@needs_mount
@pytest.mark.parametrize(
    "command", [("restart", "db"), ("snapshot", "db", "s1")], ids=["restart", "snapshot"]
)
def test_a_command_that_cannot_mark_the_record_does_not_stop_the_server(
    cluster: InstFactory, rel_isolation: Path, command: tuple[str, ...]
) -> None:
    inst = cluster()
    assert inst.start("--port", "auto").returncode == 0
    try:
        before = json.loads(inst.status().stdout)["pid"]
        with read_only(rel_isolation):
            err = one_error(pgmgr(*command))
            assert "cannot" in err, err
            st = json.loads(inst.status().stdout)
            assert st["state"] == "running" and st["pid"] == before, st
            assert st["stopped_by"] is None, st
    finally:
        inst.stop("-m", "immediate")
