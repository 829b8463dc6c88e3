"""The seed API's promises on real servers: the port a ``Manager`` names is the one its
``url``/``dsn``/``health()`` use before ``start()`` (issue 11.9), and what the library raises
about a data directory is a ``DatabaseException`` (issue 11.14)."""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path

import pytest

from pgmgr import DatabaseException, Manager, WorkerError
from pgmgr.core.server import free_port
from tests.helpers import postmasters_under


def _listener() -> tuple[socket.socket, int, list[int]]:
    """A plain TCP listener on a free loopback port that counts the connections it gets."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    hits: list[int] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            hits.append(1)
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    return sock, int(sock.getsockname()[1]), hits


def test_url_and_health_use_the_given_port_before_start(work: Path) -> None:
    port = free_port("127.0.0.1")
    pg = Manager("127.0.0.1", port, work / "data", initialize=True, pg_version="15")
    try:
        assert f"@127.0.0.1:{port}/" in pg.url
        assert f"port={port}" in pg.dsn.split()
        with pytest.raises(WorkerError) as caught:
            pg.health()  # nothing listens there yet: refused on *that* port
        assert str(port) in str(caught.value)
        pg.start()
        assert f"@127.0.0.1:{port}/" in pg.url
        pg.health()
    finally:
        pg.stop()
    assert postmasters_under(work) == []


def test_health_before_start_never_reaches_another_port(work: Path) -> None:
    """Something listens on the port this Manager names: health() before start() goes
    there (and fails: it is not PostgreSQL), not to 5432 or any recorded port."""
    sock, port, hits = _listener()
    try:
        pg = Manager("127.0.0.1", port, work / "data", initialize=True, pg_version="15")
        with pytest.raises(WorkerError):
            pg.health()
        assert hits, "health() did not connect to the Manager's own port"
    finally:
        sock.close()


def test_missing_data_dir_is_a_database_exception(work: Path) -> None:
    pg = Manager("127.0.0.1", free_port("127.0.0.1"), work / "nothing-here")
    with pytest.raises(DatabaseException) as caught:
        pg.start()
    assert "does not exist" in str(caught.value)
    caught_it = False
    try:
        pg.start()
    except DatabaseException:  # the seed's documented way to catch it
        caught_it = True
    assert caught_it
    assert not (work / "nothing-here").exists()


def test_not_a_data_dir_and_bad_port_are_database_exceptions(work: Path) -> None:
    (work / "plain").mkdir()
    (work / "plain" / "notes.txt").write_text("mine")
    with pytest.raises(DatabaseException):
        Manager("127.0.0.1", free_port("127.0.0.1"), work / "plain").start()
    with pytest.raises(DatabaseException):
        Manager("127.0.0.1", 70000, work / "plain").start()
    for bad in ("fifty", None, "5432x"):  # a ValueError or TypeError from int() before
        with pytest.raises(DatabaseException, match="invalid port"):
            Manager("127.0.0.1", bad, work / "plain")  # type: ignore[arg-type]
    assert (work / "plain" / "notes.txt").read_text() == "mine"


def test_a_bad_stop_mode_is_a_database_exception_whatever_the_state(work: Path) -> None:
    """``stop(mode=...)`` is checked before anything is done: a bad mode without ``wait``
    was a KeyError, and with the server stopped it was no error at all."""
    pg = Manager("127.0.0.1", free_port("127.0.0.1"), work / "data", initialize=True, auth="trust")
    with pytest.raises(DatabaseException, match="invalid stop mode"):
        pg.stop(mode="bogus")  # not running
    with pg:
        for wait in (True, False):
            with pytest.raises(DatabaseException, match="invalid stop mode"):
                pg.stop(wait=wait, mode="bogus")
            assert pg.status().state == "running"


@pytest.mark.parametrize("wait", [True, False])
def test_stop_right_after_start_without_wait_stops_it(work: Path, wait: bool) -> None:
    """``start(wait=False)`` then ``stop()`` before postgres has written postmaster.pid:
    the server this object spawned is stopped. stop() waited 5 s for the child to exit by
    itself, said False ("not running") and left it running. The child is frozen until
    postmaster.pid is known to be absent, so the stop comes in that window every time
    (an immediate stop continues a frozen server)."""
    pg = Manager("127.0.0.1", free_port("127.0.0.1"), work / "data", initialize=True, auth="trust")
    for _ in range(20):
        pg.start(wait=False)
        os.kill(pg.process.pid, signal.SIGSTOP)
        if not (work / "data" / "postmaster.pid").exists():
            break
        os.kill(pg.process.pid, signal.SIGCONT)
        pg.stop()
    else:
        pytest.skip("postgres wrote postmaster.pid before it could be frozen, 20 times")
    assert pg.stop(mode="immediate", wait=wait) is True
    assert pg.process.wait(timeout=30) is not None
    assert postmasters_under(work) == []


def test_start_again_before_postmaster_pid_is_a_no_op(work: Path) -> None:
    """``start(wait=False)`` then ``start()`` again before postgres wrote postmaster.pid: the
    second is a no-op (the seed's start of a running server), not a second postgres for the
    same data directory: one of the two then failed ("lock file already exists"), and
    ``process`` named the failed one, so ``wait()`` returned at once while the server ran.
    The first child is frozen until postmaster.pid is known to be absent (the window)."""
    pg = Manager("127.0.0.1", free_port("127.0.0.1"), work / "data", initialize=True, auth="trust")
    try:
        for _ in range(20):
            pg.start(wait=False)
            first = pg.process
            os.kill(first.pid, signal.SIGSTOP)
            if not (work / "data" / "postmaster.pid").exists():
                break
            os.kill(first.pid, signal.SIGCONT)
            pg.stop()
        else:
            pytest.skip("postgres wrote postmaster.pid before it could be frozen, 20 times")
        again = pg.start(wait=False)
        assert again.already_running and again.pid == first.pid
        assert pg.process is first
        os.kill(first.pid, signal.SIGCONT)
        assert pg.start().already_running
        pg.health()
        assert postmasters_under(work) == [first.pid]
    finally:
        pg.stop(mode="immediate")
    assert postmasters_under(work) == []


def test_a_nested_with_block_on_the_same_manager_leaves_the_server_to_the_outer_one(
    work: Path,
) -> None:
    """``with pg:`` inside ``with pg:`` (a helper that opens the Manager it was given): the
    inner block's exit stopped the server the outer block was still using; now only the
    outermost exit stops it."""
    pg = Manager("127.0.0.1", free_port("127.0.0.1"), work / "data", initialize=True, auth="trust")
    try:
        with pg:
            with pg:
                pg.health()
            pg.health()  # WorkerError: the inner exit had stopped it
            assert pg.status().state == "running"
        assert pg.status().state == "stopped"
    finally:
        pg.stop()
    assert postmasters_under(work) == []


@pytest.mark.parametrize("spawned", [False, True], ids=["ready", "just-spawned"])
def test_start_after_stop_without_wait_starts_a_new_server(work: Path, spawned: bool) -> None:
    """``stop(wait=False)`` then ``start()`` (a quick restart): the start found the server
    still shutting down and said ``already_running`` (it was gone a moment later), or, for
    one just spawned by ``start(wait=False)``, waited for it to be ready and raised
    "postgres exited during start-up". It now waits for the stopped one to exit first."""
    pg = Manager("127.0.0.1", free_port("127.0.0.1"), work / "data", initialize=True, auth="trust")
    try:
        for _ in range(3):
            pg.start(wait=not spawned)
            assert pg.stop(wait=False) is True
            result = pg.start()
            assert result.already_running is False
            pg.health()
            assert pg.status().state == "running"
    finally:
        pg.stop()
    assert postmasters_under(work) == []
