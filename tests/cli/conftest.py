"""Fixtures for the CLI tests: work dirs the server user can reach, and no server left behind.

As root, pgmgr runs postgres as the ``postgres`` OS user, which cannot traverse pytest's
``tmp_path`` (under a 0700 directory); so every test that starts a server works in its own
``/tmp/pgmgr-cli-*`` directory (mode 0755). Private socket directories go there too (TMPDIR),
so nothing is left in /tmp. When the test ends, whatever happened: ``pgmgr stop --all`` for the
test's state dir, then SIGQUIT/SIGKILL for any postmaster still serving a data dir under the
work dir, and the test fails if one had to be killed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import GRAVEYARD, kill_postmasters, postmasters_under, run_pgmgr


@dataclass
class Work:
    """One test's work directory (cwd for ``pgmgr``) and how to run pgmgr there."""

    path: Path

    def run(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("cwd", self.path)
        return run_pgmgr(*args, **kwargs)  # type: ignore[arg-type]

    def ok(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run and insist on exit code 0."""
        proc = self.run(*args, **kwargs)
        assert proc.returncode == 0, (args, proc.returncode, proc.stderr)
        return proc


@pytest.fixture(scope="session")
def template_dir() -> Iterator[Path]:
    """A PostgreSQL 15 data dir initialized once (auth trust), copied by ``datadir``."""
    base = Path(tempfile.mkdtemp(prefix="pgmgr-cli-tpl-", dir="/tmp"))
    base.chmod(0o755)
    env: dict[str, str | None] = {
        "PGMGR_STATE_DIR": str(base / "state"),
        "PGMGR_CACHE_DIR": str(base / "cache"),
        "TMPDIR": str(base),
        **dict.fromkeys(("POSTGRES_VERSION", "PGMGR_PG_ROOT", "PGMGR_PG_PATHS", "PGMGR_SOURCES")),
    }
    proc = run_pgmgr(
        "init", "-q", "-d", str(base / "tpl"), "-v", "15", "--auth", "trust", "--", "--no-sync",
        env=env,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    yield base / "tpl"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> Iterator[Work]:
    """A fresh 0755 work dir under /tmp; every server started in it is stopped at the end."""
    path = Path(tempfile.mkdtemp(prefix="pgmgr-cli-", dir="/tmp"))
    path.chmod(0o755)
    (path / "tmp").mkdir(mode=0o755)
    monkeypatch.setenv("TMPDIR", str(path / "tmp"))  # private socket dirs land here
    for key in [k for k in os.environ if k.startswith("PG") and not k.startswith("PGMGR_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PGPASSFILE", str(path / "no-pgpass"))
    try:
        yield Work(path)
    finally:
        subprocess.run(
            [sys.executable, "-m", "pgmgr", "stop", "--all", "-q", "-m", "immediate"],
            cwd=path,
            capture_output=True,
            timeout=60,
            check=False,
        )
        leftovers = postmasters_under(path)
        kill_postmasters(leftovers)
        GRAVEYARD.bury(path)  # deleted in the background: ~1.5 s on this disk
        if leftovers:
            pytest.fail(f"servers left running by this test (now killed): {leftovers}")


@pytest.fixture
def datadir(work: Work, template_dir: Path) -> Path:
    """``<work>/data``: a copy of the template (``cp -a`` keeps the server user's ownership),
    not registered and not running."""
    dst = work.path / "data"
    subprocess.run(["cp", "-a", str(template_dir), str(dst)], check=True)
    return dst
