"""A port below 1024 for a server pgmgr starts: the server user may not bind it (as root,
pgmgr runs postgres as that user; as an ordinary user, pgmgr's own probe is refused the
same). It said only PostgreSQL's "FATAL: could not create any TCP/IP sockets", after a
branch had stopped its source for the copy. Now one line names the port and why, before
anything is made or stopped, and nothing is left behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pgmgr import DatabaseException, Manager
from pgmgr.core import launch, privileges
from tests.helpers import error_lines
from tests.snap.conftest import Inst

LOW = "80"


def refused(proc: subprocess.CompletedProcess[str]) -> None:
    """One error line naming the port and why, and the hint; exit 1."""
    lines = error_lines(proc.stderr)
    assert proc.returncode == 1 and len(lines) == 2, proc
    assert lines[0].startswith(f"Error: cannot listen on port {LOW} (127.0.0.1): ports below "
                               "1024 need privileges the server user '"), lines  # fmt: skip
    assert lines[1] == "Hint: use --port auto, or a port from 1024 up", lines


@pytest.fixture(autouse=True)
def _low_ports_are_privileged() -> None:
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        if int(f.read()) <= int(LOW):
            pytest.skip("this machine lets every user bind low ports")


@pytest.mark.parametrize("start", [False, True], ids=["source running", "--start"])
def test_a_branch_on_a_low_port_is_refused_before_its_source_stops(
    start: bool, inst: Inst, ops_dir: Path
) -> None:
    """A running source makes a started branch, as --start does: refused before the
    source stops for the copy, no record, no copy, no store made for it."""
    pid = inst.pid()
    proc = inst.pgmgr("branch", "dev", "b", "-p", LOW, *(["--start"] if start else []))
    refused(proc)
    assert inst.pid() == pid  # never stopped
    assert not (ops_dir / "b").exists()
    assert sorted(os.listdir(ops_dir)) == ["data", "tmp"]
    assert inst.pgmgr("status", "b").returncode == 4


def test_a_start_on_a_low_port_is_refused_and_nothing_is_recorded(
    inst: Inst, ops_dir: Path
) -> None:
    """``start -p``, ``start --init`` (nothing initialized), and the library's Manager."""
    port = inst.record()["port"]
    inst.ok("stop", "dev", "-q")
    refused(inst.pgmgr("start", "dev", "-p", LOW))
    assert inst.record()["port"] == port and inst.state() == "stopped"
    new = ops_dir / "new"
    refused(inst.pgmgr("start", "--init", "-d", str(new), "-p", LOW))
    assert not new.exists() and inst.pgmgr("status", "new").returncode == 4
    with pytest.raises(DatabaseException, match=f"cannot listen on port {LOW} "):
        Manager(port=int(LOW), db_dir=inst.datadir).start()
    assert inst.state() == "stopped" and inst.record()["port"] == port
    # a branch of the stopped source is not started: a busy port is kept (it may be free
    # by its start), but one it could never listen on is refused all the same (it was
    # made with it, and every start of it failed)
    refused(inst.pgmgr("branch", "dev", "low", "-p", LOW))
    assert not (ops_dir / "low").exists() and inst.pgmgr("status", "low").returncode == 4
    assert inst.state() == "stopped"


def test_a_start_refused_by_the_kernel_says_why(inst: Inst, ops_dir: Path) -> None:
    """Where the check could not know (a binary given capabilities by setcap, an LSM's
    rule), postgres's own refusal is explained: the log of a real postgres refused
    port 80 (run here as the server user, by hand) makes the error of a start."""
    inst.ok("stop", "dev", "-q")
    argv = [f"{inst.record()['bindir']}/postgres", "-D", str(inst.datadir), "-p", LOW,
            "-k", str(inst.datadir), "-c", "listen_addresses=127.0.0.1",
            "-c", f"config_file={inst.datadir / 'pgmgr.conf'}"]  # fmt: skip
    if privileges.is_root():
        argv = ["runuser", "-u", inst.record()["server_user"] or "postgres", "--", *argv]
    log = subprocess.run(argv, capture_output=True, text=True, timeout=60).stderr
    why = str(launch.ServerExited(1, log))
    assert "it was refused its port (Permission denied: a port below 1024 needs privileges " \
           "its user does not have; use --port auto)" in why, why  # fmt: skip
    assert why.endswith("(FATAL: could not create any TCP/IP sockets)"), why
