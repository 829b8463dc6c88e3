"""Fixtures shared by every test: an isolated state/cache dir, and fake PostgreSQL installs."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

#: Every process the suite starts inherits this marker (pgmgr passes its environment to
#: postgres, less PG* variables), so the session end can find any postmaster that outlived it.
SESSION_MARK = "TEST_PGMGR_SESSION"
#: Set by pytest-xdist in each worker (``gw0``...), inherited by what its tests start.
_WORKER = "PYTEST_XDIST_WORKER"


_SESSION_TMP = pytest.StashKey[Path]()


@pytest.hookimpl(tryfirst=True)  # before pytest's tmpdir plugin reads --basetemp
def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault(SESSION_MARK, uuid.uuid4().hex)  # xdist workers inherit it
    # Session fixtures run before the per-test isolation: never let them read (or write)
    # the user's own settings, such as a default version set with --set-default.
    os.environ.setdefault("PGMGR_CONFIG_DIR", "/nonexistent/pgmgr-test-config")
    if not hasattr(config, "workerinput"):
        from tests import leftovers

        swept = leftovers.hold_and_sweep()  # what killed runs left (none alive now)
        if swept:
            sys.stderr.write(f"removed {len(swept)} directories of killed test runs\n")
        if config.option.basetemp is None:
            _private_basetemp(config)
    worker, count = os.environ.get(_WORKER, ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and count.isdigit():
        # Each xdist worker (and what its tests start) picks free ports of its own
        # (pgmgr.core.listen.free_port): the other's could take one between a pick and
        # the server's bind (PortInUse).
        os.environ["PGMGR_PORT_SLICE"] = f"{int(worker[2:]) % int(count)}/{count}"


def _private_basetemp(config: pytest.Config) -> None:
    """This run's temporary directories under a private directory of its own, removed at
    its end (:func:`pytest_unconfigure`), a failed test's too. Not pytest's numbered
    ``pytest-of-USER/pytest-N``: with ``tmp_path_retention_policy = "none"`` pytest locks
    none of them, and every run deletes, as it ends, the ``pytest-N`` of every other run
    of the same user still at work (tests of a parallel run failed by the hundred with
    FileNotFoundError under it, servers lost their data directories)."""
    import getpass
    import tempfile

    base = Path(tempfile.mkdtemp(prefix=f"pytest-of-{getpass.getuser()}-"))
    config.stash[_SESSION_TMP] = base
    config.option.basetemp = str(base / "run")  # xdist gives each worker a part of it


def session_processes(
    wanted: Callable[[list[bytes]], bool], *, this_worker: bool = False
) -> list[int]:
    """Live (not zombie) processes whose environment carries this session's marker and
    whose argv (``/proc/PID/cmdline`` split on NULs) is ``wanted``. With ``this_worker``
    (under pytest-xdist), only those started by this worker's tests: they inherit its
    ``PYTEST_XDIST_WORKER``."""
    want = f"{SESSION_MARK}={os.environ[SESSION_MARK]}".encode()
    worker = os.environ.get(_WORKER) if this_worker else None
    mark = f"{_WORKER}={worker}".encode() if worker else None
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if not wanted(argv):
                continue
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if want in env and (mark is None or mark in env) and state != "Z":
            found.append(int(entry))
    return found


def suite_postmasters() -> list[int]:
    """Live postgres/initdb processes whose environment carries this session's marker."""
    return session_processes(
        lambda argv: os.path.basename(argv[0]) in (b"postgres", b"postmaster", b"initdb")
    )


def suite_refills() -> list[int]:
    """Live template refill processes (``python -m pgmgr.core.template refill``) of this
    session: pgmgr starts them in the background after an init."""
    return session_processes(_is_refill)


_CACHE_OF_TEST = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """The test's own cache directory, noted before its fixtures (and monkeypatch) undo;
    the refills working in it are ended now (see :func:`_refills_done`), before fixtures
    that keep the cache inside their directories remove them."""
    cache = os.environ.get("PGMGR_CACHE_DIR", "")
    item.stash[_CACHE_OF_TEST] = cache
    _kill_refills_of(cache)


def _kill_refills_of(cache: str, live: list[int] | None = None) -> list[int]:
    """SIGKILL this worker's refills (among ``live``, default: all) working in ``cache``;
    their pids."""
    if not cache:
        return []
    if live is None:
        live = session_processes(_is_refill, this_worker=True)
    mine = (cache.rstrip("/") + "/").encode()
    ours = [pid for pid in live if _refill_root(pid).startswith(mine)]
    for pid in ours:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return ours


@pytest.fixture(scope="session", autouse=True)
def _graveyard() -> Iterator[None]:
    """The directories tests buried (:class:`tests.helpers.Graveyard`) are all deleted
    before this process's session ends."""
    from tests.helpers import GRAVEYARD

    yield
    GRAVEYARD.close()


@pytest.fixture(autouse=True)
def _refills_done(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, no background refill it caused outlives it, so that its directories
    are removed whole. Refills of the test's own cache directory serve no later test: they
    are ended (SIGKILL; a half-made spare is one pgmgr ignores, in a directory about to go)
    rather than waited for (1-3 s each, most of many tests' teardown). Others (of a cache
    a session fixture or a test's explicit environment made) are waited for. Under xdist,
    only this worker's: the other worker's tests wait for their own (waiting for them here
    only stalled this worker, up to 30 s in a unit test's teardown)."""
    yield
    cache = request.node.stash.get(_CACHE_OF_TEST, "")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        live = session_processes(_is_refill, this_worker=True)
        if not live:
            return
        ours = _kill_refills_of(cache, live)
        time.sleep(0.02 if ours else 0.05)


def _is_refill(argv: list[bytes]) -> bool:
    return b"pgmgr.core.template" in argv and b"refill" in argv


def _refill_root(pid: int) -> bytes:
    """The templates directory a refill works in (``... refill ROOT KEY UID GID FD``)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return argv[argv.index(b"refill") + 1] + b"/"
    except (OSError, ValueError, IndexError):
        return b""


#: PostgreSQL's dynamic shared memory segments (``dynamic_shared_memory_type = posix``).
_DSM = Path("/dev/shm")
_dsm_before: set[str] = set()


def _dsm_segments() -> set[str]:
    try:
        return {n for n in os.listdir(_DSM) if n.startswith("PostgreSQL.")}
    except OSError:
        return set()


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):
        _dsm_before.update(_dsm_segments())


def _mapped_segments() -> set[str]:
    """The segments some process still maps (a server of someone else, say)."""
    found: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                if "/dev/shm/PostgreSQL." in line:
                    found.add(line.rsplit("/", 1)[1].split()[0])
    return found


def _oldest_postgres_start() -> float:
    """When the oldest running ``postgres`` process started (epoch seconds; now if none)."""
    ticks = os.sysconf("SC_CLK_TCK")
    boot = next(
        float(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    oldest = time.time()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat_line = Path(f"/proc/{pid}/stat").read_text()
            if stat_line[stat_line.index("(") + 1 : stat_line.rindex(")")] != "postgres":
                continue
            started = boot + int(stat_line[stat_line.rindex(")") + 2 :].split()[19]) / ticks
            oldest = min(oldest, started)
    return oldest


def _drop_orphaned_segments() -> None:
    """Remove the segments servers this run killed left behind (a killed postmaster cannot
    remove them, and the next start on its data directory, which would, never comes: the
    test deleted it). Only those made during the run that no process maps any more, and
    made before every running postgres started: a live server's pinned segments (a
    standby's statistics area, say) are mapped by no process, and deleting them made its
    next connections fail ("could not open shared memory segment"), in other sessions too."""
    deadline = time.monotonic() + 3
    while _drop_segments_once() and time.monotonic() < deadline:
        # A killed server's backends may still be exiting (they map its segments, and
        # count as running postgres): those segments can go once they are gone.
        time.sleep(0.2)


def _drop_segments_once() -> set[str]:
    """One pass of :func:`_drop_orphaned_segments`; the run's segments it had to keep."""
    new = _dsm_segments() - _dsm_before
    oldest = _oldest_postgres_start()
    for name in new - _mapped_segments():
        with contextlib.suppress(OSError):
            if os.stat(_DSM / name).st_mtime < oldest - 1:
                os.unlink(_DSM / name)
    return _dsm_segments() - _dsm_before


def pytest_unconfigure(config: pytest.Config) -> None:
    """This run's private temporary directory (see :func:`_private_basetemp`), whole: every
    server under it was stopped when the session finished."""
    base = config.stash.get(_SESSION_TMP, None)
    if base is not None:
        _rmtree(base)


def _rmtree(path: Path) -> None:
    """Remove ``path`` whole, as pytest removes its own temporary directories (also those
    a test left without read, write or search permission for its owner)."""
    try:
        from _pytest.pathlib import rm_rf
    except ImportError:  # pytest's own helper moved: the standard library's, best effort
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    else:
        rm_rf(path)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any server started by the suite is still running (and kill it);
    remove the shared memory segments of the servers it killed."""
    if hasattr(session.config, "workerinput"):
        return  # only the controller, after every worker is done
    try:
        _suite_leftovers(session)
    finally:
        _drop_orphaned_segments()


def _suite_leftovers(session: pytest.Session) -> None:
    left = suite_postmasters() + suite_refills()
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        for pid in suite_postmasters() + suite_refills():
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        time.sleep(1 if sig == signal.SIGQUIT and left else 0)
    if left:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        sys.stderr.write(f"\nERROR: postgres processes outlived the test suite (killed): {left}\n")


@pytest.fixture(autouse=True)
def _ui_defaults() -> Iterator[None]:
    """pgmgr's process-wide output settings as a new process has them, after each test
    (one that ran a command in-process with -q silenced the messages of the next ones)."""
    yield
    ui = sys.modules.get("pgmgr.ui")
    if ui is not None:
        ui.settings.quiet = False


#: Environment variables that change what pgmgr finds or where it writes; no test inherits them.
PGMGR_ENV = ("POSTGRES_VERSION", "PGMGR_PG_ROOT", "PGMGR_PG_PATHS", "PGMGR_SOURCES", "COLUMNS")


@pytest.fixture(autouse=True)
def isolation(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Per-test state and cache directories, and none of the user's pgmgr settings.

    Subprocesses started by a test inherit this environment, so the CLI is isolated too.
    """
    home = tmp_path_factory.mktemp("pgmgr-home")
    monkeypatch.setenv("PGMGR_STATE_DIR", str(home / "state"))
    monkeypatch.setenv("PGMGR_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("PGMGR_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("PGMGR_SYSTEMD_SYSTEM_DIR", str(home / "system-units"))  # never /etc
    for name in PGMGR_ENV:
        monkeypatch.delenv(name, raising=False)
    return home


@dataclass
class FakeRoot:
    """A directory laid out like ``/usr/lib/postgresql``: ``<root>/<name>/bin/postgres``.

    Each fake ``postgres`` is a shell script that prints ``postgres (PostgreSQL) <version>``
    and appends one line to :attr:`calls` each time it runs, so tests can count subprocesses.
    """

    path: Path
    calls: Path

    def add(
        self,
        name: str,
        version: str | None = None,
        *,
        exit_code: int = 0,
        executable: bool = True,
        output: str | None = None,
    ) -> Path:
        """Create ``<root>/<name>/bin/postgres`` and return its bin dir.

        ``version`` defaults to ``<name>.1`` (``15 -> 15.1``); ``output`` replaces the whole
        version line; ``exit_code`` != 0 or ``executable=False`` make a broken binary.
        """
        bindir = self.path / name / "bin"
        write_fake_postgres(
            bindir / "postgres",
            output if output is not None else f"postgres (PostgreSQL) {version or name + '.1'}",
            calls=self.calls,
            exit_code=exit_code,
            executable=executable,
        )
        return bindir

    def call_count(self) -> int:
        """How many times any fake binary of this root has run."""
        return len(self.calls.read_text().splitlines()) if self.calls.exists() else 0


def write_fake_postgres(
    exe: Path, line: str, *, calls: Path, exit_code: int = 0, executable: bool = True
) -> None:
    """Write a tiny ``postgres`` stand-in that logs each run to ``calls`` and prints ``line``."""
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text(f'#!/bin/sh\necho "$0 $*" >> "{calls}"\necho "{line}"\nexit {exit_code}\n')
    mode = 0o644 | (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH if executable else 0)
    os.chmod(exe, mode)


@pytest.fixture
def fake_pg_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRoot:
    """An empty fake root; ``PGMGR_PG_ROOT`` points at it and only the Debian source is on.

    Tests add installs with ``fake_pg_root.add("15")``; they may widen ``PGMGR_SOURCES``.
    """
    root = FakeRoot(tmp_path / "pgroot", tmp_path / "calls.log")
    root.path.mkdir()
    monkeypatch.setenv("PGMGR_PG_ROOT", str(root.path))
    monkeypatch.setenv("PGMGR_SOURCES", "debian")
    return root


@pytest.fixture
def make_fake_root(tmp_path: Path) -> Callable[[str], FakeRoot]:
    """Build further fake roots (for ``PGMGR_PG_PATHS``), sharing nothing with the main one."""

    def make(name: str) -> FakeRoot:
        root = FakeRoot(tmp_path / name, tmp_path / f"{name}-calls.log")
        root.path.mkdir()
        return root

    return make
