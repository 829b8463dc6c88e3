"""A ``--socket-dir`` that pgmgr creates as root is given to the server user through an
``O_NOFOLLOW`` fd (fchown): a user who can write its parent and swaps it for a symlink or
another directory between the mkdir and the chown never gets root to chown something else.

The race window is held open with the test-only pause (:mod:`pgmgr.core.testhook`), turned on
in this process; the swap is done here, as the racing user would."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pgmgr.core import listen, privileges, sockets, testhook, userfs
from pgmgr.core.errors import DatabaseException

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="root chowns to the server user")
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

    worker = threading.Thread(target=run, daemon=True)
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


@as_root
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


@as_root
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


@as_root
def test_made_for_the_server_user(tmp_path: Path) -> None:
    sock = tmp_path / "a" / "b" / "sock"
    listen.check_socket_dir(sock, privileges.lookup("postgres"))
    st = sock.lstat()
    assert st.st_uid == privileges.lookup("postgres").uid and st.st_mode & 0o777 == 0o700


@as_root
def test_missing_parents_are_not_made_through_another_users_symlink(tmp_path: Path) -> None:
    """``--socket-dir ATTACKER/a/b/sock``: root made ``b`` where the user's symlink ``a``
    pointed (``mkdir -p``) before it refused the path."""
    nobody = privileges.lookup("nobody")
    theirs, victim = tmp_path / "theirs", tmp_path / "victim"
    theirs.mkdir()
    victim.mkdir()
    os.chown(theirs, nobody.uid, nobody.gid)
    (theirs / "a").symlink_to(victim)
    os.chown(theirs / "a", nobody.uid, nobody.gid, follow_symlinks=False)
    # refused before anything is made: the place is theirs (before that check: the symlink)
    with pytest.raises(DatabaseException, match=r"symlink|can change it"):
        listen.check_socket_dir(theirs / "a" / "b" / "sock", privileges.lookup("postgres"))
    assert list(victim.iterdir()) == []


def _made_under_own_symlink(base: str) -> list[str]:
    os.mkdir(f"{base}/real")
    os.symlink(f"{base}/real", f"{base}/link")
    listen.check_socket_dir(Path(base) / "link" / "a" / "sock", None)
    return sorted(os.listdir(f"{base}/real/a"))


def test_a_user_may_make_a_socket_dir_through_their_own_symlink() -> None:
    """Not root: nobody else is guarded against, so ``--socket-dir ~/link/sock`` works as
    it did before the O_NOFOLLOW walk (which refused 'link' on its way)."""
    base = tempfile.mkdtemp()
    try:
        user = None
        if os.geteuid() == 0:  # the same, as the user postgres
            user = privileges.lookup("postgres")
            os.chown(base, user.uid, user.gid)
        assert userfs.as_user(user, _made_under_own_symlink, base) == ["sock"]
    finally:
        shutil.rmtree(base)


@as_root
def test_a_fresh_socket_dir_swapped_for_a_symlink_chowns_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback, a fresh ``pgmgr-XXXXXXXX`` in the temp dir (the data directory too
    deep for a socket path, the runtime directory not private): it was chowned by path,
    and root gave the server user whatever a symlink swapped in for it pointed to."""
    shared = Path(tempfile.mkdtemp(prefix="pgs-", dir="/tmp"))  # short: socket paths fit
    try:
        _fresh_race(tmp_path, shared, monkeypatch)
    finally:
        shutil.rmtree(shared)


def _fresh_race(tmp_path: Path, shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared.chmod(0o777)  # another user can write it, and it is not sticky
    monkeypatch.setenv("TMPDIR", str(shared))
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    user = privileges.lookup("postgres")
    (shared / f"pgmgr-{user.uid}").write_text("")  # the runtime directory: not usable
    datadir = tmp_path / ("d" * 100)
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "socket-dir-fresh").touch()
    monkeypatch.setattr(testhook, "_DIR", str(hooks))
    failed: list[BaseException] = []

    def run() -> None:
        try:
            listen.socket_dir(None, None, 5432, user, datadir)
        except BaseException as e:  # handed to the test below
            failed.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    deadline = time.monotonic() + 30
    while not (hooks / "socket-dir-fresh.reached").exists():
        assert worker.is_alive() and time.monotonic() < deadline, failed
        time.sleep(0.005)
    (fresh,) = [p for p in shared.iterdir() if p.name != f"pgmgr-{user.uid}"]
    fresh.rmdir()
    fresh.symlink_to(victim)
    (hooks / "socket-dir-fresh.go").touch()
    worker.join(60)
    assert victim.stat().st_uid == 0  # not given to postgres
    assert len(failed) == 1 and isinstance(failed[0], DatabaseException), failed


@as_root
def test_the_runtime_dir_swapped_for_a_symlink_chowns_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-user runtime directory (``<temp dir>/pgmgr-<uid>``), made by root, was
    chmodded and chowned by path: a symlink swapped in for it got root to give its target
    to the server user."""
    shared = Path(tempfile.mkdtemp(prefix="pgs-", dir="/tmp"))  # short: socket paths fit
    try:
        shared.chmod(0o777)  # another user can write it, and it is not sticky
        monkeypatch.setenv("TMPDIR", str(shared))
        monkeypatch.setattr(tempfile, "tempdir", str(shared))
        user = privileges.lookup("postgres")
        victim = tmp_path / "victim"
        victim.mkdir(mode=0o755)
        hooks = tmp_path / "hooks"
        hooks.mkdir()
        (hooks / "runtime-dir-made").touch()
        monkeypatch.setattr(testhook, "_DIR", str(hooks))
        found: list[object] = []
        worker = threading.Thread(
            target=lambda: found.append(sockets.default_dir(tmp_path / ("d" * 100), 5432, user)),
            daemon=True,
        )
        worker.start()
        deadline = time.monotonic() + 30
        while not (hooks / "runtime-dir-made.reached").exists():
            assert worker.is_alive() and time.monotonic() < deadline, found
            time.sleep(0.005)
        base = shared / f"pgmgr-{user.uid}"
        base.rmdir()
        base.symlink_to(victim)
        (hooks / "runtime-dir-made.go").touch()
        worker.join(60)
        assert found == [None]
        st = victim.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o755)  # not given to postgres
    finally:
        shutil.rmtree(shared)
