"""A ``--socket-dir`` that pgmgr creates as root is given to the server user through an
``O_NOFOLLOW`` fd (fchown): a user who can write its parent and swaps it for a symlink or
another directory between the mkdir and the chown never gets root to chown something else.

The race window is held open with the test-only pause (:mod:`pgmgr.core.testhook`), turned on
in this process; the swap is done here, as the racing user would."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pgmgr.core import listen, privileges, testhook
from pgmgr.core.errors import DatabaseException

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="root chowns to the server user")
STEP = "socket-dir-made"


def _race(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: Callable[[Path], None]) -> Path:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / STEP).touch()
    monkeypatch.setattr(testhook, "_DIR", str(hooks))
    sock = tmp_path / "parent" / "sock"
    user = privileges.lookup("postgres")
    failed: list[BaseException] = []

    def run() -> None:
        try:
            listen.check_socket_dir(sock, user)
        except BaseException as e:  # handed to the test below
            failed.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 30
    while not (hooks / f"{STEP}.reached").exists():
        assert worker.is_alive() and time.monotonic() < deadline, failed
        time.sleep(0.005)
    swap(sock)
    (hooks / f"{STEP}.go").touch()
    worker.join(60)
    assert len(failed) == 1 and isinstance(failed[0], DatabaseException), failed
    assert "was replaced while pgmgr created it" in str(failed[0])
    return sock


def test_swapped_for_a_symlink_chowns_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)

    def to_symlink(sock: Path) -> None:
        sock.rmdir()
        sock.symlink_to(victim)

    _race(tmp_path, monkeypatch, to_symlink)
    assert victim.stat().st_uid == 0  # not given to postgres


def test_swapped_for_another_users_directory_is_not_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nobody = privileges.lookup("nobody")

    def to_other(sock: Path) -> None:
        sock.rmdir()
        sock.mkdir(mode=0o700)
        os.chown(sock, nobody.uid, nobody.gid)

    sock = _race(tmp_path, monkeypatch, to_other)
    assert sock.stat().st_uid == nobody.uid


def test_made_for_the_server_user(tmp_path: Path) -> None:
    sock = tmp_path / "a" / "b" / "sock"
    listen.check_socket_dir(sock, privileges.lookup("postgres"))
    st = sock.lstat()
    assert st.st_uid == privileges.lookup("postgres").uid and st.st_mode & 0o777 == 0o700
