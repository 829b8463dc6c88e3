"""Fixtures for the reliability and security suite: real servers, real faults.

- ``rel_base``: one directory per session (per xdist worker) in /dev/shm when roomy, else
  /tmp (``tests.helpers.scratch_root``), mode 0755, so the ``postgres`` OS user (who runs the
  servers when the suite runs as root) can reach it. pytest's ``tmp_path`` lives under a 0700
  directory and cannot be used for data dirs.
- ``template``: a PostgreSQL 15 data directory initialized once per session and copied
  (``cp -a``) into each test that does not test initdb itself.
- ``cluster``: a factory of registered instances (copies of the template); whatever a test
  started is stopped at the end of the test, and any postgres process still using one of its
  directories is killed and fails the test.
- At session end, a postgres process still using a directory of this suite fails the run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pgmgr.core import process
from tests.helpers import (
    GRAVEYARD,
    Run,
    copy_datadir,
    kill_postmasters,
    pgmgr_argv,
    postgres_pids_under,
    run_pgmgr,
    scratch_root,
)
from tests.pause import Paused

PG15 = "15"
TEMPLATE_PASSWORD = "rel-template-secret"
_BASES: list[Path] = []
_OUTLIVED: list[int] = []


def is_root() -> bool:
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(not is_root(), reason="needs root")


# --------------------------------------------------------------------------- processes


def wait_no_processes(root: Path, timeout: float = 5.0) -> list[int]:
    """Wait until no postgres process uses ``root``; the ones left after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = postgres_pids_under(root)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.01)


# --------------------------------------------------------------------------- running pgmgr


def pgmgr(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> Run:
    """Run ``pgmgr ARGS`` as a real process; a traceback fails the test whatever the exit."""
    proc = run_pgmgr(*args, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    return Run(pgmgr_argv(*args), proc.returncode, proc.stdout, proc.stderr)


def one_error(run: Run) -> str:
    """The run failed with exactly one ``Error:`` line (a ``Hint:`` may follow), no traceback."""
    assert run.returncode != 0, str(run)
    errs = run.errors()
    assert len(errs) == 1, str(run)
    others = [
        ln
        for ln in run.stderr.splitlines()
        if ln.strip() and not ln.startswith(("Error:", "Hint:"))
    ]
    assert not others, str(run)
    return errs[0]


# --------------------------------------------------------------------------- dirs, isolation


@pytest.fixture(scope="session")
def rel_base() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="pgmgr-rel-", dir=scratch_root()))
    base.chmod(0o755)
    (base / "tmp").mkdir(mode=0o755)
    _BASES.append(base)
    yield base
    GRAVEYARD.close()
    left = postgres_pids_under(base)
    _OUTLIVED.extend(left)
    kill_postmasters(left)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def work(rel_base: Path) -> Iterator[Path]:
    """A fresh directory for this test, reachable by the server user; at the end, any
    postgres process still using it is killed and fails the test."""
    path = Path(tempfile.mkdtemp(prefix="t-", dir=rel_base))
    path.chmod(0o755)
    yield path
    left = wait_no_processes(path, timeout=30)
    kill_postmasters(left)
    GRAVEYARD.bury(path, rel_base / ".graveyard")
    assert not left, f"postgres processes left running by this test (now killed): {left}"


@pytest.fixture(autouse=True)
def rel_isolation(
    tmp_path: Path, rel_base: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Per-test state and cache dirs, no inherited PostgreSQL settings, and the temp dir
    (where pgmgr makes private socket dirs) inside ``rel_base``. Subprocesses inherit it.
    The cache (templates, spares: ~40 MB each) goes with the data dirs, as a spare serves
    only a data dir on its filesystem, and is removed afterwards; the state (records, logs:
    small, worth keeping for a failed test) stays in pytest's ``tmp_path``."""
    state = tmp_path / "state"
    monkeypatch.setenv("PGMGR_STATE_DIR", str(state))
    for name in [k for k in os.environ if k.startswith("PG") and not k.startswith("PGMGR_")]:
        monkeypatch.delenv(name)
    for name in ("POSTGRES_VERSION", "PGMGR_PG_ROOT", "PGMGR_PG_PATHS", "PGMGR_SOURCES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    monkeypatch.setenv("NO_COLOR", "1")
    test_tmp = Path(tempfile.mkdtemp(dir=rel_base / "tmp"))
    test_tmp.chmod(0o755)
    monkeypatch.setenv("PGMGR_CACHE_DIR", str(test_tmp / "cache"))
    monkeypatch.setenv("TMPDIR", str(test_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(test_tmp))
    yield state
    shutil.rmtree(test_tmp, ignore_errors=True)


# --------------------------------------------------------------------------- template


@pytest.fixture(scope="session")
def template(rel_base: Path) -> Path:
    """An initialized PostgreSQL 15 data directory (superuser ``postgres``, password
    :data:`TEMPLATE_PASSWORD` over TCP, trust on the socket), made once per session."""
    datadir = rel_base / "template"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PG")},
        "PGMGR_STATE_DIR": str(rel_base / "template-state"),
        "PGMGR_CACHE_DIR": str(rel_base / "template-cache"),
    }
    env.pop("POSTGRES_VERSION", None)
    code = (
        "from pathlib import Path; import sys\n"
        "from pgmgr.core.instance import Server\n"
        "from pgmgr.core.server import InitOptions\n"
        "srv = Server.for_datadir(Path(sys.argv[1]), version='15', register=False)\n"
        "srv.initialize(InitOptions(no_sync=True), password=sys.argv[2])\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(datadir), TEMPLATE_PASSWORD], env=env, check=True
    )
    return datadir


# --------------------------------------------------------------------------- instances


@dataclass
class Inst:
    """A registered test instance; ``start``/``stop``/``status`` go through a real pgmgr."""

    name: str
    datadir: Path

    def start(self, *args: str) -> Run:
        return pgmgr("start", self.name, *args)

    def stop(self, *args: str) -> Run:
        return pgmgr("stop", self.name, *args)

    def status(self) -> Run:
        return pgmgr("status", self.name, "--json")

    def record(self) -> dict[str, Any]:
        from pgmgr.core import registry

        return registry.load(self.name).to_dict()

    def pid(self) -> int | None:
        pf = process.PidFile.read(self.datadir)
        return pf.pid if pf else None

    def conninfo(self) -> dict[str, Any]:
        """Where the server really listens, from postmaster.pid (not from pgmgr)."""
        pf = process.PidFile.read(self.datadir)
        assert pf is not None and pf.socket_dir and pf.port
        return {"host": pf.socket_dir, "port": pf.port, "user": "postgres", "dbname": "postgres"}

    def connect(self, **kw: Any) -> Any:
        import psycopg

        return psycopg.connect(**{**self.conninfo(), "connect_timeout": 5, **kw})

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.connect(autocommit=True) as conn:
            cur = conn.execute(query, params or None)
            return cur.fetchall() if cur.description else []

    def commit_canary(self) -> str:
        """Commit one row that must survive whatever the test does next."""
        token = f"canary-{time.time_ns()}"
        self.sql("CREATE TABLE IF NOT EXISTS canary (token text PRIMARY KEY)")
        self.sql("INSERT INTO canary VALUES (%s)", token)
        return token

    def has_canary(self, token: str) -> bool:
        return self.sql("SELECT count(*) FROM canary WHERE token = %s", token) == [(1,)]


InstFactory = Callable[..., Inst]


def _give_a_free_port(name: str) -> None:
    """A free port in ``name``'s new record, which has none: its first 'pgmgr start NAME'
    would take 5432, and two tests of a parallel run doing so at once failed one of them
    with "port 5432 on 127.0.0.1 is already in use"."""
    from pgmgr.core import listen, registry

    rec = registry.load(name)
    rec.port = listen.free_port("127.0.0.1")
    registry.save(rec)


@pytest.fixture
def cluster(template: Path, work: Path) -> Iterator[InstFactory]:
    """``cluster(name)``: a registered copy of the template under this test's dir (not
    running). Every instance made here is stopped (immediate) when the test ends."""
    made: list[Inst] = []

    def make(name: str = "db", register: bool = True) -> Inst:
        datadir = copy_datadir(template, work / name)
        if register:
            run = pgmgr("init", "-d", str(datadir), "--name", name, "-q")
            assert run.returncode == 0, str(run)
            _give_a_free_port(name)
        inst = Inst(name, datadir)
        made.append(inst)
        return inst

    yield make
    for inst in made:
        pf = process.PidFile.read(inst.datadir)
        if pf is not None and process.serves(pf.pid, inst.datadir, pf.start_time):
            process.signal_pid(pf.pid, signal.SIGQUIT)
            process.wait_gone(pf.pid, inst.datadir, 5)


def assert_truthful(inst: Inst) -> str:
    """``pgmgr status`` agrees with the process table; returns the state."""
    run = inst.status()
    state = str(run.json()["state"])
    pf = process.PidFile.read(inst.datadir)
    live = pf is not None and process.serves(pf.pid, inst.datadir, pf.start_time)
    if live:
        assert state in ("running", "starting", "stopping"), str(run)
        assert run.returncode == 0, str(run)
        assert run.json()["pid"] == pf.pid
    else:
        assert state in ("stopped", "crashed"), str(run)
        assert run.returncode == 3, str(run)
    return state


def no_orphans(inst: Inst) -> None:
    """No postgres process uses the data dir except the live postmaster and its children."""
    time.sleep(0)  # children of a stopped postmaster are gone once it is
    pf = process.PidFile.read(inst.datadir)
    keep: set[int] = set()
    if pf is not None and process.serves(pf.pid, inst.datadir, pf.start_time):
        keep = {pf.pid, *process.children(pf.pid)}
    deadline = time.monotonic() + 30
    while True:
        extra = [p for p in postgres_pids_under(inst.datadir) if p not in keep]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.02)
        if keep:
            keep |= set(process.children(pf.pid)) if pf else set()
    assert not extra, f"orphaned postgres processes on {inst.datadir}: {extra}"


def start_frozen_before_ready(inst: Inst, hooks: Path, *args: str) -> tuple[Paused, int]:
    """``pgmgr start NAME ARGS`` held at its pause right after the spawn, and its postmaster
    frozen (SIGSTOP) before it said it was ready; tried again if a test late at that moment
    froze a ready one. Spotting the spawn by polling and freezing it then lost to a start
    (~150 ms) whenever the test was descheduled that long in between."""
    for _ in range(5):
        paused = Paused(hooks, "start-spawned", "start", inst.name, *args)
        paused.reached()
        (child,) = [p for p in process.children(paused.proc.pid) if "-D" in process.cmdline(p)]
        os.kill(child, signal.SIGSTOP)
        pf = process.PidFile.read(inst.datadir)
        if pf is None or pf.status != "ready":
            return paused, child
        os.kill(child, signal.SIGCONT)  # ready already: let that start finish, and again
        assert paused.go().returncode == 0
        assert inst.stop().returncode == 0
    raise AssertionError("the postmaster was ready before the test could freeze it, 5 times")


# --------------------------------------------------------------------------- session end


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No postgres process started by this suite may outlive it."""
    left = postgres_pids_under(*_BASES) if _BASES else []
    kill_postmasters(left)
    left = sorted(set(left) | set(_OUTLIVED))
    if left:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        sys.stderr.write(f"\nERROR: postgres processes outlived the suite (killed): {left}\n")


# --------------------------------------------------------------------------- races


@pytest.fixture
def hooks() -> Iterator[Path]:
    """The pause directory (writable by the server user, who pauses too)."""
    path = Path(tempfile.mkdtemp(prefix="pgmgr-hook-", dir="/tmp"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
