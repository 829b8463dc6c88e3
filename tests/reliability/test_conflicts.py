"""Faults 4, 7 and 12: ports taken, concurrent starts, a version mismatch."""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pgmgr.core import process
from pgmgr.core.server import free_port
from tests.reliability.conftest import (
    Inst,
    InstFactory,
    assert_truthful,
    no_orphans,
    one_error,
    pgmgr,
    postgres_pids_under,
)

# --------------------------------------------------------------------------- 4: ports


def test_port_taken_by_another_program(cluster: InstFactory) -> None:
    inst = cluster()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        err = one_error(inst.start("--port", str(port)))
        assert f"port {port}" in err and "in use" in err
        assert assert_truthful(inst) == "stopped"
        assert not postgres_pids_under(inst.datadir)
        run = inst.start("--port", "auto")
        assert run.returncode == 0, str(run)
        assert inst.conninfo()["port"] != port
    token = inst.commit_canary()
    assert inst.stop().returncode == 0
    assert inst.start().returncode == 0
    assert inst.has_canary(token)
    assert inst.stop().returncode == 0


def test_two_instances_asked_for_one_port(cluster: InstFactory) -> None:
    a, b = cluster("a"), cluster("b")
    port = free_port("127.0.0.1")
    assert a.start("--port", str(port)).returncode == 0
    token = a.commit_canary()
    err = one_error(b.start("--port", str(port)))
    assert "in use" in err
    assert assert_truthful(b) == "stopped"
    assert a.has_canary(token) and assert_truthful(a) == "running"
    assert a.stop().returncode == 0
    no_orphans(a)
    no_orphans(b)


def test_two_instances_race_for_one_port(cluster: InstFactory) -> None:
    """Both pass the free-port check at once; postgres's bind decides, and the loser
    reports the port clearly and leaves nothing behind."""
    a, b = cluster("a"), cluster("b")
    port = free_port("127.0.0.1")
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda i: i.start("--port", str(port)), (a, b)))
    codes = sorted(r.returncode for r in runs)
    assert codes[0] == 0 and codes[1] != 0, [str(r) for r in runs]
    loser = runs[1] if runs[0].returncode == 0 else runs[0]
    assert "in use" in one_error(loser) or "already" in one_error(loser)
    states = sorted(assert_truthful(i) for i in (a, b))
    assert states == ["running", "stopped"]
    for i in (a, b):
        no_orphans(i)
        i.stop()


# --------------------------------------------------------------------------- 7: concurrency


def test_two_starts_on_one_datadir(cluster: InstFactory) -> None:
    inst = cluster()
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: inst.start("--port", "auto"), range(2)))
    assert [r.returncode for r in runs] == [0, 0], [str(r) for r in runs]
    said = sorted("already running" in r.stderr for r in runs)
    assert said == [False, True], [str(r) for r in runs]
    assert len([p for p in postgres_pids_under(inst.datadir) if _is_postmaster(p)]) == 1
    token = inst.commit_canary()
    assert assert_truthful(inst) == "running"
    assert inst.stop().returncode == 0
    no_orphans(inst)
    assert inst.start().returncode == 0 and inst.has_canary(token)
    assert inst.stop().returncode == 0


def _is_postmaster(pid: int) -> bool:
    argv = process.cmdline(pid)
    return bool(argv) and "-D" in argv


def test_ten_concurrent_start_init(work: Path, rel_isolation: Path) -> None:
    """Ten ``pgmgr start --init -d <work>/pN/data -p auto`` at once: ten ports, ten names
    (all directories are named 'data'; before: all named 'data', one record), ten records,
    ten servers answering, and ``stop --all`` stops all ten."""
    dirs = [work / f"p{i}" / "data" for i in range(10)]
    with ThreadPoolExecutor(10) as pool:
        runs = list(
            pool.map(
                lambda d: pgmgr("start", "--init", "-d", str(d), "--port", "auto", "--json"), dirs
            )
        )
    try:
        assert all(r.returncode == 0 for r in runs), [str(r) for r in runs if r.returncode]
        ports = [r.json()["port"] for r in runs]
        assert len(set(ports)) == 10, ports
        names = [r.json()["name"] for r in runs]
        assert len(set(names)) == 10, names
        records = sorted(f.stem for f in (rel_isolation / "instances").glob("*.json"))
        assert records == sorted(names)
        by_dir = {
            json.loads(f.read_text())["datadir"]
            for f in (rel_isolation / "instances").glob("*.json")
        }
        assert by_dir == {str(d) for d in dirs}
        status = pgmgr("status", "--json")
        assert sorted(s["port"] for s in status.json()) == sorted(ports)
        assert all(s["state"] == "running" for s in status.json())
        for d in dirs:
            inst = Inst(d.name, d)
            assert inst.sql("SELECT 1") == [(1,)]
    finally:
        run = pgmgr("stop", "--all", "--json")
    assert run.returncode == 0, str(run)
    assert sum(r["was_running"] for r in run.json()) == 10, str(run)
    assert not postgres_pids_under(work)


# --------------------------------------------------------------------------- 12: versions


def test_pg15_datadir_refused_with_v18_before_spawning(cluster: InstFactory) -> None:
    inst = cluster()
    token_inst = inst
    assert token_inst.start("--port", "auto").returncode == 0
    token = inst.commit_canary()
    assert inst.stop().returncode == 0
    log = Path(inst.record()["log_file"])
    size = log.stat().st_size
    for args in (("start", inst.name, "-v", "18"), ("start", "-d", str(inst.datadir), "-v", "18")):
        err = one_error(pgmgr(*args, "--port", "auto"))
        assert "PostgreSQL 15" in err and "18" in err, err
        assert not (inst.datadir / "postmaster.pid").exists()
        assert log.stat().st_size == size  # nothing was spawned
        assert not postgres_pids_under(inst.datadir)
    # An unregistered copy, too.
    other = Path(tempfile.mkdtemp(dir=inst.datadir.parent)) / "copy"
    subprocess.run(["cp", "-a", str(inst.datadir), str(other)], check=True)
    err = one_error(pgmgr("start", "-d", str(other), "-v", "18", "--port", "auto"))
    assert "PostgreSQL 15" in err
    err = one_error(pgmgr("init", "-d", str(other), "-v", "18"))
    assert "PostgreSQL 15" in err
    assert not postgres_pids_under(other)
    assert pgmgr("status", "--json").json()[0]["name"] == inst.name  # nothing registered
    assert len(pgmgr("status", "--json").json()) == 1
    assert inst.start().returncode == 0 and inst.has_canary(token)
    assert inst.stop().returncode == 0
