"""Fixtures for snapshot, branch and upgrade tests: real servers in a directory the server
user can reach (see tests/ops/conftest.py, whose ``ops_dir`` and ``template`` these reuse),
and helpers to run SQL through the instance's own psql."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgmgr.core import privileges, sweep
from tests.helpers import GRAVEYARD, kill_postmasters, postmasters_under, run_pgmgr
from tests.ops.conftest import Instance, make_dir, ops_dir, template  # noqa: F401


class Inst(Instance):
    """An instance of the test, with SQL and state helpers."""

    def ok(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        proc = self.pgmgr(*args, **kwargs)
        assert proc.returncode == 0, proc.stderr
        return proc

    def sql(self, query: str, name: str | None = None) -> str:
        """``query``'s result as ``psql -XAtq`` prints it, run by the psql ``pgmgr psql
        NAME`` runs, with its arguments and environment. Both found in this process by
        pgmgr's own code (the instance resolved from its record, as the command does):
        ``python -m pgmgr psql`` cost a Python start-up per query, ~0.2 s, hundreds of
        times in this directory's tests."""
        argv, env = _psql_command(name or self.name, self.env)
        argv += ["-XAtq", "-v", "ON_ERROR_STOP=1", "-c", query]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def state(self, name: str | None = None) -> str:
        data = json.loads(self.pgmgr("status", name or self.name, "--json").stdout)
        return str(data["state"])

    def pid(self, name: str | None = None) -> int | None:
        data = json.loads(self.pgmgr("status", name or self.name, "--json").stdout)
        return data["pid"]  # type: ignore[no-any-return]

    def snaps(self, name: str | None = None) -> list[dict[str, object]]:
        proc = self.ok("snapshots", name or self.name, "--json")
        data: list[dict[str, object]] = json.loads(proc.stdout)
        return data

    @property
    def store(self) -> Path:
        return self.datadir.parent / ".pgmgr-snapshots" / self.datadir.name


def _psql_command(name: str, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """What ``pgmgr psql NAME`` would exec, with ``env`` (the instance's variables, such
    as another state directory) set in this process meanwhile. The environment psql gets
    is this process's (as the command's, whose own is the test's): not one a CLI test run
    in-process earlier froze (:func:`pgmgr.core.ownconn.detach_process`)."""
    from pgmgr.actions import resolve
    from pgmgr.core import ops, ownconn

    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.setattr(ownconn, "_user_env", None)
        return ops.psql_command(resolve(name, None), [])


@pytest.fixture
def inst(ops_dir: Path, template: Path) -> Iterator[Inst]:  # noqa: F811
    """A registered, running PostgreSQL 15 instance (copy of the template) with a table."""
    datadir = ops_dir / "data"
    subprocess.run(["cp", "-a", str(template), str(datadir)], check=True)
    it = Inst("dev", datadir)
    try:
        it.ok("start", "-q", "--init", "-d", str(datadir), "--name", "dev", "--port", "auto")
        it.sql("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000)")
        yield it
    finally:
        it.pgmgr("stop", "--all", "-m", "immediate", "-q")


@contextlib.contextmanager
def running15(scratch: Path, name: str) -> Iterator[Inst]:
    """A new, registered, running PostgreSQL 15 instance ``name`` in ``scratch``, its
    servers stopped at the end."""
    it = Inst(name, scratch / name)
    try:
        it.ok("init", "-q", "-d", str(it.datadir), "--name", name, "-v", "15")
        it.ok("start", name, "-q", "-p", "auto")
        yield it
    finally:
        it.pgmgr("stop", "--all", "-m", "immediate", "-q")


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where/fs`` (root only: the test is skipped
    otherwise), for a disk that fills up; its servers killed and it unmounted at the end
    (a killed run's is unmounted by the next run: tests/leftovers.py)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    fs = where / "fs"
    fs.mkdir()
    options = f"size={size},mode=0755"
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(fs)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {made.stderr.strip()}")
    try:
        yield fs
    finally:
        kill_postmasters(postmasters_under(fs))
        if subprocess.run(["umount", str(fs)], check=False).returncode:
            subprocess.run(["umount", "-l", str(fs)], check=False)


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A 0755 directory (/dev/shm or /tmp) for a test that builds its own instances."""
    path = make_dir("pgmgr-snap-")
    yield path
    left = postmasters_under(path)
    kill_postmasters(left)
    GRAVEYARD.bury(path)  # deleted in the background: ~1.5 s on this disk
    # The socket dirs (pgmgr-up-<pid>-*, in the server user's temp dir) of upgrades the
    # test killed: the next upgrade sweeps them; the suite leaves none.
    sweep.dead_runs(privileges.lookup("postgres") if privileges.is_root() else None)
    if left:
        pytest.fail(f"servers left running by this test (now killed): {left}")


def leftovers(store: Path, wait: float = 30.0) -> list[str]:
    """Work-in-progress entries in a store (as root the test may read it), once the
    background removal of a restore's old state had ``wait`` seconds to finish."""
    deadline = time.monotonic() + wait
    while True:
        try:
            found = sorted(n for n in os.listdir(store) if n.startswith("."))
        except FileNotFoundError:
            return []
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def plant_undeletable(work: Path) -> Path:
    """Something a clean-up cannot remove from ``work`` (something still writing in it,
    as once seen): a directory, owned like ``work``, that its user cannot write (chmod
    the returned path 0700 to let it go)."""
    stuck = work / "stuck"
    owner = work.stat()
    stuck.mkdir()
    (stuck / "file").touch()
    for path in (stuck, stuck / "file"):
        os.chown(path, owner.st_uid, owner.st_gid)
    stuck.chmod(0o500)
    return stuck


__all__ = ["Inst", "leftovers", "plant_undeletable", "run_pgmgr"]
