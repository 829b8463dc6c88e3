"""A clumsy library caller (see :mod:`pgmgr.core.managerargs`): a host that is not loopback,
values of the wrong type, relative paths and a ``chdir`` before ``start()``. Each is one
``DatabaseException`` naming the argument, with nothing made, started or registered."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgmgr import DatabaseException, Manager
from pgmgr.core import registry
from pgmgr.core.server import free_port
from tests.helpers import postmasters_under


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0", "*", "::", "192.0.2.1", "127.0.0.1,0.0.0.0", "example.com"],  # noqa: S104
)
def test_a_host_that_is_not_loopback_is_refused(work: Path, host: str) -> None:
    """A Manager's server listens on loopback only: ``0.0.0.0`` was accepted (an
    initialized, registered data directory, and a server reachable from the network)."""
    port = free_port("127.0.0.1")
    with pytest.raises(DatabaseException, match="loopback only"):
        Manager(host, port, work / "data", initialize=True, auth="trust")
    assert not (work / "data").exists()
    assert registry.names() == []


def test_an_existing_data_dir_is_not_started_on_every_interface(work: Path) -> None:
    port = free_port("127.0.0.1")
    Manager("127.0.0.1", port, work / "data", initialize=True, auth="trust")
    with pytest.raises(DatabaseException, match="loopback only"):
        Manager("0.0.0.0", port, work / "data").start()  # noqa: S104
    assert postmasters_under(work) == []
    with Manager("localhost", port, work / "data") as pg:  # loopback by name
        pg.health()


BAD: list[tuple[str, dict[str, Any]]] = [
    ("host", {"host": None}),
    ("host", {"host": 5}),
    ("host", {"host": "127.0.0.1,"}),  # was initialized, then refused by postgres
    ("port", {"port": True}),  # was port 1
    ("port", {"port": 5433.5}),  # was 5433
    ("db_dir", {"db_dir": b"/tmp/x"}),
    ("db_dir", {"db_dir": 5}),
    ("pg_version", {"pg_version": 15.4}),
    ("password", {"password": 5}),  # was a record 'pgmgr status' calls broken
    ("password", {"password": ""}),  # was a server its url could not log in to
    ("name", {"name": 5}),
    ("settings", {"settings": ["work_mem=64MB"]}),
    ("settings", {"settings": {"work_mem": None}}),  # was 'None' in pgmgr.conf, after init
    ("settings", {"settings": {"work_mem": ["64MB"]}}),
    ("settings", {"settings": {5: "64MB"}}),
    ("initdb_args", {"initdb_args": "--data-checksums"}),  # was split into characters
    ("register", {"register": "no"}),  # was registered: a non-empty string is true
    ("socket_dir", {"socket_dir": 5}),
    ("log_file", {"log_file": b"x.log"}),
    ("user", {"user": 5}),
    ("superuser", {"superuser": 5}),
    ("auth", {"auth": 1}),
    ("stop_mode", {"stop_mode": ["fast"]}),
]


@pytest.mark.parametrize(("name", "bad"), BAD, ids=[f"{n}-{v[n]!r}" for n, v in BAD])
def test_a_value_of_the_wrong_type_is_a_database_exception(
    work: Path, name: str, bad: dict[str, Any]
) -> None:
    args: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": free_port("127.0.0.1"),
        "db_dir": work / "data",
        "initialize": True,
        "auth": "trust",
        **bad,
    }
    with pytest.raises(DatabaseException, match=rf"^invalid {name} "):
        Manager(**args)
    assert not (work / "data").exists()
    assert registry.names() == []


def test_a_setting_given_as_a_path_object_is_its_path(work: Path) -> None:
    """``settings={"ssl_cert_file": Path(...)}``: paths are ``os.PathLike`` everywhere else in
    this API, and a settings value was written as ``str(value)``; the type check added for
    ``None`` refused it ("invalid settings ...: a name and a string or number")."""
    cert = work / "server.crt"
    port = free_port("127.0.0.1")
    settings: dict[str, Any] = {"ssl_cert_file": cert}
    pg = Manager("127.0.0.1", port, work / "data", initialize=True, settings=settings)
    with pg, psycopg.connect(pg.dsn, autocommit=True) as c:
        row = c.execute("SHOW ssl_cert_file").fetchone()
    assert row is not None and row[0] == str(cert)


def test_a_nul_in_a_path_is_named(work: Path) -> None:
    """It was refused as holding "a line break"."""
    with pytest.raises(DatabaseException, match="it holds a NUL byte"):
        Manager("127.0.0.1", free_port("127.0.0.1"), f"{work}/da\0ta", initialize=True)
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("timeout", [None, "10", -1, math.nan, math.inf, True])
def test_a_bad_timeout_is_refused_before_anything_runs(work: Path, timeout: object) -> None:
    """``start(timeout=None)`` was a TypeError from inside the wait, after postgres was
    spawned (and left running); ``-1`` spawned it and killed it at once."""
    pg = Manager("127.0.0.1", free_port("127.0.0.1"), work / "data", initialize=True, auth="trust")
    with pytest.raises(DatabaseException, match=r"^invalid timeout "):
        pg.start(timeout=timeout)  # type: ignore[arg-type]
    assert postmasters_under(work) == []
    assert pg.process is None
    with pytest.raises(DatabaseException, match=r"^invalid timeout "):
        pg.ready_wait(timeout=timeout)  # type: ignore[arg-type]
    with pg:
        with pytest.raises(DatabaseException, match=r"^invalid timeout "):
            pg.stop(timeout=timeout)  # type: ignore[arg-type]
        assert pg.status().state == "running"
        if timeout is not None:
            with pytest.raises(DatabaseException, match=r"^invalid timeout "):
                pg.wait(timeout=timeout)  # type: ignore[arg-type]
    assert pg.wait(timeout=None) is not None  # no limit, as Popen.wait's


def test_relative_paths_are_resolved_when_given_not_at_start(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative ``socket_dir`` was resolved by ``start()`` against the directory of the
    moment: after a ``chdir`` the socket went to another directory (``/sock`` from ``/``)."""
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    pg = Manager(
        "127.0.0.1",
        free_port("127.0.0.1"),
        "data",
        initialize=True,
        auth="trust",
        socket_dir="sock",
        log_file="server.log",
    )
    os.chdir(elsewhere)
    with pg:
        pg.health()
        assert pg.socket_dir == str(work / "sock")
        assert (work / "sock" / f".s.PGSQL.{pg.port}").is_socket()
        assert pg.status().datadir == str(work / "data")
    assert (work / "server.log").stat().st_size > 0
    assert os.listdir(elsewhere) == []


def test_pg_version_may_be_an_int_and_errors_name_it(work: Path) -> None:
    """``pg_version=15`` was an AttributeError ('int' object has no attribute 'strip'); a
    version not installed was said to come '(from --version)', a flag of the CLI."""
    with Manager(
        "127.0.0.1", free_port("127.0.0.1"), work / "data", initialize=True, pg_version=15
    ) as pg:
        assert pg.status().version.startswith("15.")
    with pytest.raises(DatabaseException, match=r"^PostgreSQL 99 \(from pg_version\) is not"):
        Manager("127.0.0.1", free_port("127.0.0.1"), work / "other", pg_version="99")
    with pytest.raises(DatabaseException, match=r"^invalid pg_version 'x1'"):
        Manager("127.0.0.1", free_port("127.0.0.1"), work / "other", pg_version="x1")


def test_a_state_dir_that_is_a_file_is_a_database_exception(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The constructor and ``stop()`` let a raw NotADirectoryError out ("[Errno 20] Not a
    directory: '.../instances'"); the CLI says the same one line as these. ``start()``
    raises OSError as the seed documents, saying the same (it said "Not a directory:
    '.../locks'", not which component is the file)."""
    port = free_port("127.0.0.1")
    with Manager("127.0.0.1", port, work / "data", initialize=True, auth="trust") as pg:
        state = os.environ["PGMGR_STATE_DIR"]
        (work / "state-file").write_text("")
        monkeypatch.setenv("PGMGR_STATE_DIR", str(work / "state-file"))
        with pytest.raises(DatabaseException, match="is a regular file, not a directory"):
            Manager("127.0.0.1", port, work / "data")
        with pytest.raises(DatabaseException, match="is a regular file, not a directory"):
            pg.stop()
        with pytest.raises(NotADirectoryError, match="state-file is a regular file, not a dir"):
            pg.start()
        monkeypatch.setenv("PGMGR_STATE_DIR", state)
        assert pg.status().state == "running"  # refused before anything was done
    assert postmasters_under(work) == []


def test_empty_paths_and_none_options_take_the_defaults(work: Path) -> None:
    with Manager(
        "127.0.0.1",
        free_port("127.0.0.1"),
        work / "data",
        initialize=True,
        socket_dir="",
        log_file="",
        superuser=None,
        settings=None,
    ) as pg:
        pg.health()
        status = pg.status()
        assert status.socket_dir and status.log_file
        assert Path(status.log_file).parent.name == "logs"
