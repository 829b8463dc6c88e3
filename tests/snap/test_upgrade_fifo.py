"""A FIFO the server user puts where an upgrade reads a configuration file of the data
directory: refused in one line, never waited on."""

from __future__ import annotations

import os

import pytest

from tests.helpers import error_lines
from tests.snap.conftest import Inst, leftovers
from tests.snap.test_upgrade import facts, up  # noqa: F401


@pytest.mark.parametrize("name", ["postgresql.auto.conf", "postgresql.conf"])
def test_a_fifo_for_a_config_file_is_refused_not_waited_on(up: Inst, name: str) -> None:  # noqa: F811
    """The upgrade reads postgresql.auto.conf (the settings it carries over) and
    postgresql.conf (to say what it does not carry); a FIFO in their place, which no one
    ever writes to, made it wait for ever, holding the instance's lock (as root, in its
    child working as the server user). The running server read its files at its start."""
    before = facts(up)
    conf = up.datadir / name
    saved, owner = conf.read_bytes(), conf.stat()
    conf.unlink()
    os.mkfifo(conf, 0o600)
    os.chown(conf, owner.st_uid, owner.st_gid)  # the server user's
    try:
        run = up.pgmgr("upgrade", "up", "-v", "18", "--yes", timeout=90)
    finally:
        conf.unlink()
        conf.write_bytes(saved)
        os.chown(conf, owner.st_uid, owner.st_gid)
    assert run.returncode == 1, run.stderr
    assert error_lines(run.stderr)[0] == (
        f"Error: cannot upgrade 'up': {conf} is not a regular file; nothing was changed"
    ), run.stderr
    assert "Traceback" not in run.stderr
    assert up.state() == "running" and up.record()["major"] == "15"
    assert facts(up) == before
    assert leftovers(up.store) == []
