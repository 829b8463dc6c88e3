"""A second OS user who gets to a name first in a shared directory (sticky /tmp) never gets
an ordinary user's pgmgr to put an instance where they can change it. Real OS users."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.conftest import wait_no_processes
from tests.reliability.users import os_user, pgmgr_as, run_as

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: throwaway OS users")


@pytest.mark.parametrize("command", ["init", "start --init --port auto"])
def test_init_into_another_users_empty_directory_is_refused(work: Path, command: str) -> None:
    """User B makes the (empty, 0777) directory user A is about to initialize: A's pgmgr
    built A's cluster inside B's directory and registered it, where B could replace any
    of its files (and postgres refused to start on it). Refused in one line, nothing
    written there, nothing registered."""
    shared = work / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    target = shared / "adb"
    with os_user("sda", home=True) as a, os_user("sdb") as b:
        env = {"HOME": a.home}
        made = run_as(b.name, "mkdir", "-m", "777", str(target))
        assert made.returncode == 0, made
        try:
            proc = pgmgr_as(a.name, *command.split(), "-d", str(target), env=env)
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
            assert proc.returncode != 0 and len(errors) == 1, proc
            assert "belongs to uid" in errors[0], proc
            assert list(target.iterdir()) == []
            listed = pgmgr_as(a.name, "status", "--json", env=env)
            assert str(target) not in listed.stdout, listed
        finally:
            pgmgr_as(a.name, "stop", "-d", str(target), "-m", "immediate", env=env)
            wait_no_processes(Path(a.home))
            wait_no_processes(target)
