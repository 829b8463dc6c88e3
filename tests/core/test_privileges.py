"""Who runs the server, and modes. As root (as CI runs) postgres runs as the data dir's owner
or ``postgres``; as an ordinary user it runs as that user."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from pgmgr import DatabaseException, Manager
from pgmgr.core import registry
from tests.core.support import ManagerFactory, is_root, needs_root
from tests.helpers import copy_datadir


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # effective uid
    raise AssertionError("no Uid line")


def _expected_uid() -> int:
    return pwd.getpwnam("postgres").pw_uid if is_root() else os.geteuid()


def test_modes_and_owners(work_dir: Path, pg_version: str, managers: ManagerFactory) -> None:
    datadir = work_dir / "data"
    m = managers(datadir, initialize=True, pg_version=pg_version, initdb_args=["-N"])
    uid = _expected_uid()
    assert stat.S_IMODE(datadir.stat().st_mode) == 0o700
    bad = [p for p in [datadir, *datadir.rglob("*")] if p.lstat().st_uid != uid]
    assert bad == []
    record = registry.record_path(m.name)
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    with m:
        pid = m.process.pid
        assert _uid_of(pid) == uid
        sock = Path(m.socket_dir or "")
        assert stat.S_IMODE(sock.stat().st_mode) == 0o700
        assert sock.stat().st_uid == uid
        log = Path(m.status().log_file or "")
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
    data = registry.load(m.name)
    assert data.server_user == (pwd.getpwuid(uid).pw_name if is_root() else None)


@needs_root
def test_data_dir_under_pytest_tmp_path_is_refused(tmp_path: Path, pg_version: str) -> None:
    """pytest's tmp_path lives under a private (0700) directory: postgres cannot reach it."""
    target = tmp_path / "data"
    with pytest.raises(DatabaseException) as info:
        Manager("127.0.0.1", 5999, target, initialize=True, pg_version=pg_version)
    msg = str(info.value)
    assert "the server user 'postgres' cannot reach the data directory" in msg
    assert "(mode 700) does not let it through" in msg
    assert info.value.hint and "chmod o+x" in info.value.hint
    assert not target.exists()


@needs_root
def test_init_under_a_private_root_dir_names_it(work_dir: Path, pg_version: str) -> None:
    private = work_dir / "private"
    private.mkdir(mode=0o700)
    target = private / "deeper" / "data"
    with pytest.raises(DatabaseException, match=f"{private} \\(mode 700\\) does not let it"):
        Manager("127.0.0.1", 5999, target, initialize=True, pg_version=pg_version)
    assert list(private.iterdir()) == []


@needs_root
def test_start_under_a_private_root_dir_names_it(
    work_dir: Path, datadir: Path, managers: ManagerFactory
) -> None:
    private = work_dir / "private"
    private.mkdir(mode=0o700)
    target = copy_datadir(datadir, private / "data")
    m = managers(target)
    with pytest.raises(DatabaseException, match=f"{private} \\(mode 700\\) does not let it"):
        m.start()
    assert m.process is None


@needs_root
@pytest.mark.parametrize(
    ("user", "message"),
    [
        ("root", "PostgreSQL refuses to run as root"),
        ("nosuchuser", "no OS user named 'nosuchuser'"),
    ],
)
def test_bad_server_user_is_refused(
    datadir: Path, managers: ManagerFactory, work_dir: Path, user: str, message: str
) -> None:
    m = managers(datadir, user=user)
    with pytest.raises(DatabaseException, match=message):
        m.start()
    assert m.process is None
    with pytest.raises(DatabaseException, match=message):
        Manager("127.0.0.1", 5999, work_dir / "new", initialize=True, pg_version="15", user=user)
    assert not (work_dir / "new").exists()


@needs_root
def test_runs_as_the_data_dir_owner(datadir: Path, managers: ManagerFactory) -> None:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user")
    for p in [datadir, *datadir.rglob("*")]:
        os.lchown(p, nobody.pw_uid, nobody.pw_gid)
    m = managers(datadir)
    with m:
        assert _uid_of(m.process.pid) == nobody.pw_uid
        assert Path(m.socket_dir or "").stat().st_uid == nobody.pw_uid
        m.health()
    assert registry.load(m.name).server_user == "nobody"


@needs_root
def test_explicit_user_for_a_new_data_dir(work_dir: Path, managers: ManagerFactory) -> None:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user")
    datadir = work_dir / "data"
    m = managers(datadir, initialize=True, pg_version="18", user="nobody", initdb_args=["-N"])
    assert datadir.stat().st_uid == nobody.pw_uid
    with m:
        assert _uid_of(m.process.pid) == nobody.pw_uid
