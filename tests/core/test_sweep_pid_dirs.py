"""Short-lived ``pgmgr-{pw,cfg,imp}-<pid>-*`` directories: swept once their pid is gone.

(An import killed by SIGKILL during pg_restore leaves its private copy of the archive, named
after its pid; the next import or temporary server removes it.)
"""

from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgmgr.core import privileges, sweep
from pgmgr.core.temporary import TemporaryInstance
from tests.helpers import dead_pid


@pytest.mark.parametrize("prefix", ["pgmgr-pw-", "pgmgr-cfg-", "pgmgr-imp-", "pgmgr-up-"])
def test_the_dir_of_a_dead_pid_goes_and_a_live_ones_stays(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # gettempdir() caches its answer
    dead = tmp_path / f"{prefix}{dead_pid()}-abc"
    live = tmp_path / f"{prefix}{os.getpid()}-abc"
    for d in (dead, live):
        (d / "archive").mkdir(parents=True)
        (d / "archive" / "toc.dat").write_text("x")
    os.symlink("/etc", dead / "archive" / "link")  # never followed
    removed = sweep.dead_runs()
    assert dead in removed and not dead.exists()
    assert live.exists() and Path("/etc/passwd").exists()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (makes an OS user)")


@pytest.fixture
def other_user() -> Iterator[int]:
    """A real OS user who is neither root nor the server user: its uid."""
    name = f"pgmsw{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "--no-create-home", "--user-group", name], check=True,
                   capture_output=True)  # fmt: skip
    try:
        yield pwd.getpwnam(name).pw_uid
    finally:
        subprocess.run(["userdel", "--force", name], capture_output=True, check=False)


def _dir_of(path: Path, uid: int) -> Path:
    (path / "archive").mkdir(parents=True)
    (path / "archive" / "toc.dat").write_text("x")
    for p in (path / "archive" / "toc.dat", path / "archive", path):
        os.chown(p, uid, uid)
    return path


@needs_root
def test_as_root_only_roots_and_the_server_users_dirs_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other_user: int
) -> None:
    """As root, a ``pgmgr-imp-<dead pid>-*`` directory of another user (who chose that
    name) was removed with everything in it; now only root's and the server user's go."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    pg = privileges.lookup("postgres")
    others = _dir_of(tmp_path / f"pgmgr-imp-{dead_pid()}-abc", other_user)
    servers = _dir_of(tmp_path / f"pgmgr-cfg-{dead_pid()}-abc", pg.uid)
    roots = _dir_of(tmp_path / f"pgmgr-up-{dead_pid()}-abc", 0)
    assert sweep.dead_runs() == [roots]  # no server user named: its directory stays
    assert sweep.dead_runs(pg) == [servers]
    assert (others / "archive" / "toc.dat").read_text() == "x"


@needs_root
def test_a_temporary_instance_leaves_another_users_dir_alone(
    monkeypatch: pytest.MonkeyPatch, other_user: int
) -> None:
    """The sweep as part of a real command: a temporary instance's start, as root."""
    base = Path(tempfile.mkdtemp(prefix="pgmgr-test-sweep-", dir="/tmp"))
    base.chmod(0o755)  # the server user reaches the instance made in it
    try:
        monkeypatch.setenv("TMPDIR", str(base))
        monkeypatch.setattr(tempfile, "tempdir", str(base))
        others = _dir_of(base / f"pgmgr-imp-{dead_pid()}-abc", other_user)
        servers = _dir_of(base / f"pgmgr-cfg-{dead_pid()}-abc", privileges.lookup("postgres").uid)
        with TemporaryInstance("15"):
            pass
        assert (others / "archive" / "toc.dat").exists()
        assert not servers.exists()
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize("digits", ["\u00b2", "\u0663", "1\u00b9"])
def test_a_name_with_digits_int_refuses_is_left_alone_without_a_crash(
    digits: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone may make ``/tmp/pgmgr-pw-²-x``: ``str.isdigit()`` takes ``²`` (and ``٣``) as a
    pid, and ``int()`` refused it with a ValueError, so every command that sweeps (init,
    import, upgrade, anything taking an instance's lock, the pytest plugin) ended in a
    traceback for every user of the machine. Not a pid: left alone."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    odd = [tmp_path / f"{prefix}{digits}-abc" for prefix in ("pgmgr-pw-", "pgmgr-up-")]
    for d in odd:
        d.mkdir()
    sweep.dead_runs(also=str(tmp_path))
    assert all(d.is_dir() for d in odd)


def test_an_export_work_dir_named_with_a_superscript_is_left_alone(tmp_path: Path) -> None:
    """The same for an export's work directories beside its destination (anyone who can
    write there may choose the name): ``int('²')`` ended the export in a traceback."""
    from pgmgr.core import bundle

    dest = tmp_path / "bundle"
    odd = tmp_path / f"{bundle._work_prefix(dest)}\u00b2"
    odd.mkdir()
    bundle._sweep_exports(dest)
    assert odd.is_dir()


@pytest.mark.parametrize("when", ["before it is held", "once it is held"])
def test_a_sweep_racing_the_maker_of_a_new_directory(
    when: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new run directory has no owner file yet, so a sweep that runs between its mkdtemp
    and its flock takes it for a killed run's and removes it: the maker must notice and
    make another, held. Once held, a sweep leaves it. The interleaving is forced by running
    a real sweep inside the maker's ``flock`` (no scheduler can be relied on to hit a
    window of a few syscalls); nothing else is replaced."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    real_flock, swept = fcntl.flock, []

    def racing_flock(fd: int, operation: int) -> None:
        if operation != fcntl.LOCK_SH or swept:  # the sweep's own locks, or done
            real_flock(fd, operation)
            return
        if when == "before it is held":
            swept.append(sweep.dead_runs())
        real_flock(fd, operation)
        if when == "once it is held":
            swept.append(sweep.dead_runs())

    monkeypatch.setattr(sweep.fcntl, "flock", racing_flock)
    path, fd = sweep.make_dir("pgmgr-run-")
    try:
        assert path.is_dir() and sweep.still_named(fd, path)
        if when == "before it is held":
            assert len(swept[0]) == 1 and swept[0][0] != path  # the first one went
        else:
            assert swept == [[]]
        assert sweep.dead_runs() == []  # held: never a dead run's
        assert [p.name for p in tmp_path.iterdir()] == [path.name]
    finally:
        sweep.release(fd)
    assert sweep.dead_runs() == [path]  # released without an owner file: gone
