"""Fixtures for the everyday-operations tests: real servers in a directory the server user
can reach, and nothing left running afterwards.

- ``ops_dir``: a fresh 0755 directory (/dev/shm or /tmp) for this test (pytest's ``tmp_path`` is
  under a private (0700) directory, which the ``postgres`` OS user cannot enter when the suite
  runs as root). ``TMPDIR`` points inside it, so private socket dirs and temporary instances
  land there too and can be checked for leftovers. Any postmaster still serving a data dir
  under it at the end is killed and fails the test.
- ``template``: a PostgreSQL data dir initialized once per session (``--auth trust``).
- ``fresh``: a copy of it, registered and started on a free port in this test's state dir.
- ``shared``: one scram-authenticated instance for the whole session, in its own state dir,
  for the tests that only read (url, env, psql, logs, reload).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import (
    GRAVEYARD,
    kill_postmasters,
    postmasters_under,
    run_pgmgr,
    scratch_root,
)


def pytest_configure(config: pytest.Config) -> None:
    """The ``pytester`` fixture for test_plugin.py (``pytest_plugins`` may only be set in
    the top-level conftest, which this directory does not own)."""
    if not config.pluginmanager.has_plugin("pytester"):
        config.pluginmanager.import_plugin("pytester")


VERSION = "15"


def make_dir(prefix: str) -> Path:
    """A fresh 0755 directory in :func:`~tests.helpers.scratch_root` (/dev/shm when roomy:
    a data dir is copied there in ~0.1 s, against ~1 s on this VM's disk)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_root()))
    path.chmod(0o755)
    return path


@pytest.fixture
def ops_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = make_dir("pgmgr-ops-")
    tmp = path / "tmp"
    tmp.mkdir(mode=0o755)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    for name in [k for k in os.environ if k.startswith("PG") and not k.startswith("PGMGR_")]:
        monkeypatch.delenv(name)
    yield path
    left = postmasters_under(path)
    kill_postmasters(left)
    GRAVEYARD.bury(path)  # deleted in the background: ~1.5 s on this disk
    if left:
        pytest.fail(f"servers left running by this test (now killed): {left}")


@pytest.fixture
def read_only(ops_dir: Path) -> Iterator[Path]:
    """``ops_dir/ro``: a tmpfs of its own (root only), for a real read-only file system:
    the test remounts it ``ro`` once it has put in it what it needs (``mount -o
    remount,ro``); unmounted afterwards, even if the test fails."""
    top = ops_dir / "ro"
    top.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "pgmgr-test-ro", str(top)],
                   check=True)  # fmt: skip
    try:
        yield top
    finally:
        subprocess.run(["umount", str(top)], check=False)


@pytest.fixture(scope="session")
def template() -> Iterator[Path]:
    base = make_dir("pgmgr-ops-tpl-")
    env = {"PGMGR_STATE_DIR": str(base / "state"), "PGMGR_CACHE_DIR": str(base / "cache")}
    proc = run_pgmgr(
        "init", "-q", "-d", str(base / "data"), "-v", VERSION, "--auth", "trust",
        "--", "--no-sync",
        env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    yield base / "data"
    shutil.rmtree(base, ignore_errors=True)


@dataclass
class Instance:
    name: str
    datadir: Path
    env: dict[str, str] = field(default_factory=dict)

    def pgmgr(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return run_pgmgr(*args, env=self.env, **kwargs)  # type: ignore[arg-type]

    def record(self) -> dict[str, object]:
        state = Path(self.env.get("PGMGR_STATE_DIR") or os.environ["PGMGR_STATE_DIR"])
        data: dict[str, object] = json.loads(
            (state / "instances" / f"{self.name}.json").read_text()
        )
        return data

    def bin(self, program: str) -> str:
        return str(Path(str(self.record()["bindir"])) / program)

    def status(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.pgmgr("status", self.name, "--json").stdout)
        return data

    def registered(self) -> set[str]:
        """The names of every registered instance (not a search of 'status' text, where a
        random temporary path can hold any short name)."""
        proc = self.pgmgr("status", "--json")
        return {str(r["name"]) for r in json.loads(proc.stdout)}


def _stop(inst: Instance) -> None:
    inst.pgmgr("stop", "--all", "-m", "immediate", "-q")


@pytest.fixture
def fresh(ops_dir: Path, template: Path) -> Iterator[Instance]:
    """A registered, running instance (copy of the template) in this test's state dir."""
    datadir = ops_dir / "data"
    subprocess.run(["cp", "-a", str(template), str(datadir)], check=True)
    inst = Instance("fresh", datadir)
    try:
        proc = inst.pgmgr(
            "start", "-q", "--init", "-d", str(datadir), "--name", "fresh", "--port", "auto"
        )
        assert proc.returncode == 0, proc.stderr
        yield inst
    finally:
        _stop(inst)


@pytest.fixture(scope="session")
def shared() -> Iterator[Instance]:
    """One instance with a generated password (scram over TCP), for read-only tests."""
    base = make_dir("pgmgr-ops-shared-")
    (base / "tmp").mkdir(mode=0o755)
    env = {
        "PGMGR_STATE_DIR": str(base / "state"),
        "PGMGR_CACHE_DIR": str(base / "cache"),
        "TMPDIR": str(base / "tmp"),
    }
    inst = Instance("shared", base / "data dir $x 'q'", env)
    try:
        proc = inst.pgmgr(
            "start", "-q", "-d", str(inst.datadir), "--init", "--name", "shared",
            "--port", "auto", "-v", VERSION,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        yield inst
    finally:
        _stop(inst)
        left = postmasters_under(base)
        kill_postmasters(left)
        shutil.rmtree(base, ignore_errors=True)
