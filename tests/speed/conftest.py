"""Fixtures for the template-cache and lean-path tests: real PostgreSQL 15 servers.

Data directories live under a per-session directory in /tmp (mode 0755) because, when the
suite runs as root, the ``postgres`` user runs the servers and cannot reach pytest's
``tmp_path`` (under a 0700 directory). Every server a test starts is stopped at the end of
the test, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    GRAVEYARD,
    kill_postmasters,
    postmasters_under,
    run_pgmgr,
    scratch_root,
)

PG15 = Path("/usr/lib/postgresql/15/bin")

pytestmark = pytest.mark.skipif(not (PG15 / "postgres").exists(), reason="needs PostgreSQL 15")


def pgmgr(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pgmgr ARGS`` in the test's environment."""
    proc = run_pgmgr(*args, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"pgmgr {' '.join(args)}: {proc.stderr}"
    return proc


def pgmgr_json(*args: str) -> Any:
    return json.loads(pgmgr(*args, "--json").stdout)


def init_concurrently(dirs: list[Path]) -> None:
    """``pgmgr init -d DIR --json`` for every dir at once; each must initialize its dir."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pgmgr", "init", "-d", str(d), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for d in dirs
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert json.loads(out)["initialized"]


@pytest.fixture
def base(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh 0755 directory (/dev/shm when roomy, else /tmp: ``scratch_root``) for data
    dirs, socket dirs and the test's cache (``<base>/cache``: a spare serves only a data dir
    on the cache's filesystem); at the end every server under it is stopped (immediate),
    and the test fails if one was left running.

    The background refills the test started are not waited for here: they work in the
    test's own cache, which the suite ends (SIGKILL, tests/conftest.py) before this
    teardown; waiting for each to finish cost 1-3 s per test."""
    path = Path(tempfile.mkdtemp(prefix="pgmgr-speed-", dir=scratch_root()))
    path.chmod(0o755)
    (path / "tmp").mkdir(mode=0o755)
    monkeypatch.setenv("PGMGR_CACHE_DIR", str(path / "cache"))
    monkeypatch.setenv("TMPDIR", str(path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(path / "tmp"))
    monkeypatch.setenv("POSTGRES_VERSION", "15")
    for name in [k for k in os.environ if k.startswith("PG") and not k.startswith("PGMGR_")]:
        monkeypatch.delenv(name)
    try:
        yield path
    finally:
        left = postmasters_under(path)
        kill_postmasters(left, grace=10)
        GRAVEYARD.bury(path)  # deleted in the background: ~1.5 s on this disk
        assert not left, f"servers left running by the test (now stopped): {left}"


@pytest.fixture
def started(base: Path) -> Iterator[Callable[..., dict[str, Any]]]:
    """``started(datadir, *extra_args)``: ``pgmgr start -d DIR --port auto --json``; every
    instance started this way is stopped (fast) at the end of the test."""
    dirs: list[Path] = []

    def start(datadir: Path, *extra: str) -> dict[str, Any]:
        dirs.append(datadir)
        return dict(pgmgr_json("start", "-d", str(datadir), "--port", "auto", *extra))

    yield start
    for d in dirs:
        with contextlib.suppress(Exception):
            pgmgr("stop", "-d", str(d), check=False)


def user_templates(cache: Path | None = None) -> Path:
    """The part of the template cache of this test's server user (``postgres`` as root)."""
    uid = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
    return (cache or Path(os.environ["PGMGR_CACHE_DIR"])) / "templates" / f"u{uid}"


def templates(cache: Path | None = None) -> list[str]:
    """The template keys in the cache (not their spares), of every server user."""
    root = (cache or Path(os.environ["PGMGR_CACHE_DIR"])) / "templates"
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for u in root.glob("u*")
        for p in u.iterdir()
        if p.is_dir() and not p.name.startswith(".") and not p.name.endswith(".spare")
    )


def wait_refills() -> None:
    """Wait for the background refills of spare copies (none is left running by a test)."""
    from pgmgr.core import spare

    spare.wait_refills(timeout=120)


@pytest.fixture(scope="session")
def fake_install() -> Iterator[Path]:
    """A copy of the PostgreSQL 15 install laid out as Debian does (``<r>/usr/lib/postgresql/15``
    and ``<r>/usr/share/postgresql/15``, so postgres finds its share dir relative to itself).
    Yields the root to use as ``PGMGR_PG_ROOT``."""
    root = Path(tempfile.mkdtemp(prefix="pgmgr-speed-fake-", dir="/tmp"))
    root.chmod(0o755)
    lib = root / "usr/lib/postgresql"
    share = root / "usr/share/postgresql"
    lib.mkdir(parents=True)
    share.mkdir(parents=True)
    for d in (root / "usr", root / "usr/lib", root / "usr/share", lib, share):
        d.chmod(0o755)
    subprocess.run(["cp", "-a", "/usr/lib/postgresql/15", str(lib / "15")], check=True)
    subprocess.run(["cp", "-a", "/usr/share/postgresql/15", str(share / "15")], check=True)
    try:
        yield lib
    finally:
        shutil.rmtree(root, ignore_errors=True)
