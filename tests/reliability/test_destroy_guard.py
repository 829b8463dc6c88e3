"""destroy never deletes a data directory that a postgres process still uses, even one
pgmgr failed to recognise as the instance's server (defence in depth)."""

from __future__ import annotations

import pytest

from pgmgr.core import process, teardown
from pgmgr.core.errors import DatabaseException
from pgmgr.core.instance import Server
from tests.reliability.conftest import InstFactory, pgmgr


def test_destroy_refuses_a_datadir_in_use_by_an_unrecognised_server(
    cluster: InstFactory, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    inst = cluster("db")
    assert inst.start("--port", "auto").returncode == 0
    request.addfinalizer(lambda: pgmgr("stop", "db"))
    pid = inst.pid()
    assert pid is not None
    files = sorted(p.name for p in inst.datadir.iterdir())

    # A recognition failure (a live postmaster that pgmgr does not take for this instance's
    # server) cannot be produced for real on purpose, so it is mocked: ``serves`` says no.
    # ``processes_in`` (what destroy must check last) still sees the real processes.
    with monkeypatch.context() as m:
        m.setattr(process, "serves", lambda *a, **k: False)
        srv = Server.load("db")
        assert srv.running() is None, "the mock makes pgmgr miss the server"
        with pytest.raises(DatabaseException, match="still use it") as err:
            teardown.destroy(srv, timeout=5)
    assert str(pid) in str(err.value)
    assert err.value.exit_code == 1

    assert sorted(p.name for p in inst.datadir.iterdir()) == files, "nothing deleted"
    assert "db" in pgmgr("status", "--json").stdout, "the record stays"
    assert process.serves(pid, inst.datadir) and inst.has_canary(inst.commit_canary())
