"""Socket directories cannot pile up (issue 11.11), on real servers: the socket lives in the
data directory when its path fits, else in the instance's own directory under a verified
per-user runtime directory (reused by every start); stale ones are swept; a hijacked runtime
directory is never used."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from pgmgr.core import sockets
from tests.reliability.conftest import InstFactory, is_root, pgmgr


def _pgmgr_entries(tmp: Path) -> list[str]:
    return sorted(n for n in os.listdir(tmp) if n.startswith("pgmgr-"))


def _server_uid(datadir: Path) -> int:
    return datadir.stat().st_uid


def test_socket_in_the_data_dir_and_nothing_in_tmp(cluster: InstFactory) -> None:
    inst = cluster()
    tmp = Path(os.environ["TMPDIR"])
    before = _pgmgr_entries(tmp)
    for _ in range(3):
        run = inst.start("-p", "auto", "--json")
        assert run.returncode == 0, str(run)
        assert run.json()["socket_dir"] == str(inst.datadir)
        assert inst.sql("select 1") == [(1,)]  # through that socket
        assert inst.stop().returncode == 0
    assert _pgmgr_entries(tmp) == before
    assert not [n for n in os.listdir(inst.datadir) if n.startswith(".s.PGSQL")]


def test_long_data_dir_uses_one_private_runtime_dir(template: Path, work: Path) -> None:
    from tests.helpers import copy_datadir

    datadir = copy_datadir(template, work / ("d" * 100) / "data")
    assert pgmgr("init", "-q", "-d", str(datadir), "--name", "long").returncode == 0
    tmp = Path(os.environ["TMPDIR"])
    seen = set()
    for _ in range(3):
        run = pgmgr("start", "long", "-p", "auto", "--json")
        assert run.returncode == 0, str(run)
        sock = Path(run.json()["socket_dir"])
        seen.add(sock)
        st = sock.lstat()
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
        assert st.st_uid == _server_uid(datadir)
        base = sock.parent
        assert base == tmp / f"pgmgr-{_server_uid(datadir)}" or base.name == "pgmgr"
        assert stat.S_IMODE(base.lstat().st_mode) == 0o700 and not base.is_symlink()
        assert pgmgr("stop", "long").returncode == 0
    assert len(seen) == 1  # reused, not one per start
    assert _pgmgr_entries(tmp) in ([], [sock.parent.name])


@pytest.mark.parametrize("how", ["symlink", "wide", "other-owner"])
def test_hijacked_runtime_dir_is_not_used(template: Path, work: Path, how: str) -> None:
    from tests.helpers import copy_datadir

    datadir = copy_datadir(template, work / ("d" * 100) / "data")
    assert pgmgr("init", "-q", "-d", str(datadir), "--name", "long").returncode == 0
    tmp = Path(os.environ["TMPDIR"])
    base = tmp / f"pgmgr-{_server_uid(datadir)}"
    elsewhere = work / "elsewhere"
    elsewhere.mkdir(mode=0o777)
    elsewhere.chmod(0o777)
    if how == "symlink":
        base.symlink_to(elsewhere)
    else:
        base.mkdir()
        base.chmod(0o777 if how == "wide" else 0o700)
        if how == "other-owner":
            if not is_root():
                pytest.skip("needs root to give the directory to another user")
            os.chown(base, 0 if _server_uid(datadir) != 0 else 1, 0)
    run = pgmgr("start", "long", "-p", "auto", "--json")
    assert run.returncode == 0, str(run)
    sock = Path(run.json()["socket_dir"])
    assert not str(sock).startswith(str(base) + "/")
    assert stat.S_IMODE(sock.lstat().st_mode) == 0o700 and not sock.is_symlink()
    assert os.listdir(elsewhere) == []
    assert pgmgr("stop", "long").returncode == 0


def _legacy(tmp: Path, name: str, uid: int, lock_pid: int | None, age: float) -> Path:
    path = tmp / name
    path.mkdir(mode=0o700)
    if lock_pid is not None:
        (path / ".s.PGSQL.5999.lock").write_text(f"{lock_pid}\n/nowhere\n")
    os.chown(path, uid, -1) if is_root() else None
    when = time.time() - age
    os.utime(path, (when, when))
    return path


def test_stale_socket_dirs_are_swept(cluster: InstFactory) -> None:
    inst = cluster()
    tmp = Path(os.environ["TMPDIR"])
    uid = _server_uid(inst.datadir)
    dead = 2**22 + 12345  # above the default pid_max: never a live process
    stale = [
        _legacy(tmp, "pgmgr-aaaa1111", uid, None, 3600),
        _legacy(tmp, "pgmgr-bbbb2222", uid, dead, 3600),
    ]
    kept = [
        _legacy(tmp, "pgmgr-cccc3333", uid, os.getpid(), 3600),  # a live lock
        _legacy(tmp, "pgmgr-dddd4444", uid, None, 0),  # too young: a start under way
    ]
    (tmp / "pgmgr-eeee5555").mkdir()
    (tmp / "pgmgr-eeee5555" / "notes.txt").write_text("not a socket dir")
    kept.append(tmp / "pgmgr-eeee5555")
    os.utime(kept[-1], (time.time() - 3600, time.time() - 3600))
    assert inst.start("-p", "auto").returncode == 0
    assert inst.stop().returncode == 0
    assert [p.exists() for p in stale] == [False, False]
    assert [p.exists() for p in kept] == [True, True, True]


def test_removable_never_names_the_data_dir(work: Path) -> None:
    datadir = work / "data"
    assert sockets.removable(str(datadir), datadir) is None
    assert sockets.removable("/var/run/postgresql", datadir) is None
    own = Path("/tmp/pgmgr-0") / sockets.instance_dir_name(datadir)
    assert sockets.removable(str(own), datadir) == own
