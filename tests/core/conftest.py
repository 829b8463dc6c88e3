"""Fixtures for the core lifecycle tests: real PostgreSQL servers on 15 and 18.

- ``base_dir``: one directory per session under /dev/shm or /tmp, mode 0755, so the
  ``postgres`` OS user (who runs the servers when the suite runs as root) can reach the data
  directories in it.
  pytest's own ``tmp_path`` lives under a 0700 directory and cannot be used for that.
- Templates: one initialized data directory per version per session, copied (``cp -a``) into
  each test that does not care about initdb itself.
- ``managers``: a factory of :class:`pgmgr.Manager` objects on free ports; every server it
  made is stopped when the test ends, whatever happened.
- At session end, any postmaster still serving a data directory under the test dirs is killed
  and the session fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pgmgr import Manager
from pgmgr.core.server import free_port
from tests.core.support import (
    ISOLATED_ENV,
    TEMPLATE_PASSWORD,
    VERSIONS,
    ManagerFactory,
)
from tests.helpers import copy_datadir, kill_postmasters, postgres_processes, scratch_root

# --------------------------------------------------------------------------- dirs, isolation


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A per-session directory the server user can traverse (mode 0755), removed at the end.

    At teardown, a postmaster left running under it (or under pytest's temp dirs) is killed
    and the session fails: every test must stop what it started.
    """
    base = Path(tempfile.mkdtemp(prefix="pgmgr-test-", dir=scratch_root()))
    base.chmod(0o755)
    (base / "tmp").mkdir(mode=0o755)
    yield base
    leftovers = postgres_processes(base, tmp_path_factory.getbasetemp())
    kill_postmasters(leftovers)
    shutil.rmtree(base, ignore_errors=True)
    if leftovers:
        pytest.fail(f"servers left running after the suite (now killed): {leftovers}")


@pytest.fixture(autouse=True)
def core_isolation(
    tmp_path: Path, base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Per-test state and cache dirs, no inherited PostgreSQL or pgmgr settings, and the
    temp dir (where pgmgr makes private socket dirs) inside ``base_dir`` so nothing leaks
    into /tmp. Subprocesses inherit all of it."""
    test_tmp = Path(tempfile.mkdtemp(dir=base_dir / "tmp"))
    test_tmp.chmod(0o755)
    # State (records, logs: small, worth keeping for a failed test) in pytest's tmp_path;
    # the cache (data-dir templates, ~40 MB each) with the data dirs, removed afterwards.
    monkeypatch.setenv("PGMGR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("PGMGR_CACHE_DIR", str(test_tmp / "cache"))
    for name in ISOLATED_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in [k for k in os.environ if k.startswith("PG") and not k.startswith("PGMGR_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    monkeypatch.setenv("TMPDIR", str(test_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(test_tmp))
    yield
    shutil.rmtree(test_tmp, ignore_errors=True)


@pytest.fixture
def work_dir(base_dir: Path) -> Iterator[Path]:
    """A fresh directory for this test under ``base_dir`` (reachable by the server user),
    removed afterwards (each holds a ~40 MB data directory)."""
    path = Path(tempfile.mkdtemp(prefix="t-", dir=base_dir))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- templates


@pytest.fixture(scope="session")
def templates(base_dir: Path) -> Callable[[str], Path]:
    """``templates(version)``: an initialized data dir for that version, made once."""
    made: dict[str, Path] = {}

    def get(version: str) -> Path:
        if version not in made:
            datadir = base_dir / "templates" / version
            with pytest.MonkeyPatch.context() as mp:  # never the real home, even here
                mp.setenv("PGMGR_STATE_DIR", str(base_dir / "template-state"))
                mp.setenv("PGMGR_CACHE_DIR", str(base_dir / "template-cache"))
                mp.delenv("POSTGRES_VERSION", raising=False)
                m = Manager(
                    "127.0.0.1",
                    free_port("127.0.0.1"),
                    datadir,
                    initialize=True,
                    pg_version=version,
                    password=TEMPLATE_PASSWORD,
                    register=False,
                    initdb_args=["--no-sync"],
                )
                # One start and clean stop: pgmgr may set the password on the first start
                # (a data dir copied from its own template cache), and copies then begin
                # from a cleanly shut down cluster.
                with m:
                    pass
            made[version] = datadir
        return made[version]

    return get


@pytest.fixture(params=VERSIONS, ids=[f"pg{v}" for v in VERSIONS])
def pg_version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def datadir(pg_version: str, templates: Callable[[str], Path], work_dir: Path) -> Path:
    """A copy of this version's template, not yet registered and not running."""
    return copy_datadir(templates(pg_version), work_dir / "data")


# --------------------------------------------------------------------------- managers


@pytest.fixture
def managers(work_dir: Path) -> Iterator[ManagerFactory]:
    """``managers(db_dir, **kwargs)``: a Manager on a free port (unless ``port`` is given),
    with the template's password unless told otherwise. Each one made here is stopped at
    the end of the test, and any postmaster left under the test's dir is killed."""
    made: list[Manager] = []

    def make(db_dir: Path, **kwargs: Any) -> Manager:
        host = kwargs.pop("host", "127.0.0.1")
        port = kwargs.pop("port", None) or free_port("127.0.0.1")
        if not kwargs.get("initialize"):
            kwargs.setdefault("password", TEMPLATE_PASSWORD)
        m = Manager(host, port, db_dir, **kwargs)
        made.append(m)
        return m

    yield make
    for m in made:
        with contextlib.suppress(Exception):
            m.stop(mode="immediate", timeout=60)
        if m.process is not None:
            with contextlib.suppress(Exception):
                m.process.wait(timeout=30)
    leftovers = postgres_processes(work_dir)
    kill_postmasters(leftovers)
    if leftovers:  # started behind the managers' back (another process) and not stopped
        pytest.fail(f"servers left running by this test (now killed): {leftovers}")
