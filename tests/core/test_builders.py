"""Pure functions of the core: argv builders, setting parsing, postmaster.pid, names, quoting.

No server runs here.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgmgr.core import registry
from pgmgr.core.errors import CommandFailed, UsageError
from pgmgr.core.instance import Server
from pgmgr.core.process import PidFile
from pgmgr.core.registry import Instance
from pgmgr.core.server import (
    InitOptions,
    initdb_argv,
    parse_setting,
    postgres_argv,
    socket_path,
)
from pgmgr.core.versions import Installation

INSTALL = Installation("15", "15.18", Path("/usr/lib/postgresql/15/bin"), "debian")
BIN = "/usr/lib/postgresql/15/bin"


# --------------------------------------------------------------------------- initdb_argv


def test_initdb_argv_defaults_trust_local_scram_host_with_pwfile() -> None:
    argv = initdb_argv(INSTALL, Path("/d"), InitOptions(), Path("/t/pw"))
    assert argv == [
        f"{BIN}/initdb",
        "-D",
        "/d",
        "-U",
        "postgres",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "--pwfile=/t/pw",
        "-E",
        "UTF8",
        "--locale=C",
    ]


def test_initdb_argv_trust_no_sync_extra_args_last() -> None:
    opts = InitOptions(
        superuser="admin", auth="trust", encoding="", locale="", no_sync=True, extra=("-k",)
    )
    argv = initdb_argv(INSTALL, Path("/d"), opts, None)
    assert argv == [f"{BIN}/initdb", "-D", "/d", "-U", "admin", "--auth=trust", "--no-sync", "-k"]


# --------------------------------------------------------------------------- postgres_argv


def test_postgres_argv_own_settings_first_then_users() -> None:
    argv = postgres_argv(
        INSTALL,
        Path("/d"),
        host="127.0.0.1",
        port=5433,
        socket_dir=Path("/run/s"),
        settings={"work_mem": "64MB", "fsync": "off"},
    )
    assert argv == [
        f"{BIN}/postgres",
        "-D",
        "/d",
        "-p",
        "5433",
        "-k",
        "/run/s",
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "work_mem=64MB",
        "-c",
        "fsync=off",
    ]


@pytest.mark.parametrize(
    ("sockdir", "expected"),
    [("/a b", '"/a b"'), ("/a,b", '"/a,b"'), ("/plain", "/plain")],
)
def test_postgres_argv_quotes_socket_dir_for_the_list_syntax(sockdir: str, expected: str) -> None:
    argv = postgres_argv(
        INSTALL, Path("/d"), host="", port=1, socket_dir=Path(sockdir), settings={}
    )
    assert argv[argv.index("-k") + 1] == expected
    assert "listen_addresses=" in argv


def test_postgres_argv_refuses_double_quote_in_socket_dir() -> None:
    with pytest.raises(UsageError, match="double quote"):
        postgres_argv(INSTALL, Path("/d"), host="", port=1, socket_dir=Path('/a"b'), settings={})


def test_socket_path() -> None:
    assert socket_path(Path("/tmp/x"), 5432) == "/tmp/x/.s.PGSQL.5432"


# --------------------------------------------------------------------------- parse_setting


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("work_mem=64MB", ("work_mem", "64MB")),
        (" shared_buffers =128MB", ("shared_buffers", "128MB")),
        ("search_path=a,b", ("search_path", "a,b")),
        ("x.custom=1=2", ("x.custom", "1=2")),
        ("log_line_prefix=", ("log_line_prefix", "")),
    ],
)
def test_parse_setting_accepts(text: str, expected: tuple[str, str]) -> None:
    assert parse_setting(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("work_mem", "expected name=value"),
        ("=1", "expected name=value"),
        ("1abc=2", "expected name=value"),
        ("a-b=2", "expected name=value"),
        ("port=5", "managed by pgmgr"),
        ("PORT=5", "managed by pgmgr"),
        ("listen_addresses=*", "managed by pgmgr"),
        ("unix_socket_directories=/x", "managed by pgmgr"),
        ("work_mem=1\nfsync=off", "line break"),
        ("work_mem=1\rx", "line break"),
    ],
)
def test_parse_setting_refuses(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        parse_setting(text)


# --------------------------------------------------------------------------- PidFile.parse

PIDFILE_15 = (
    "4242\n/srv/pg/data\n1795565371\n5433\n/tmp/pgmgr-abc\n127.0.0.1\n"
    "  5432001    163840\nready   \n"
)


def test_pidfile_parse_full() -> None:
    pf = PidFile.parse(PIDFILE_15)
    assert pf == PidFile(
        pid=4242,
        datadir="/srv/pg/data",
        start_time=1795565371,
        port=5433,
        socket_dir="/tmp/pgmgr-abc",
        listen_addr="127.0.0.1",
        status="ready",
    )


def test_pidfile_parse_half_written_and_socket_only() -> None:
    pf = PidFile.parse("4242\n/srv/pg/data\n")
    assert pf is not None
    assert (pf.pid, pf.port, pf.status, pf.socket_dir) == (4242, None, None, None)
    pf = PidFile.parse("7\n/d\n1\n5432\n\n\n  0 0\nstarting\n")
    assert pf is not None
    assert (pf.socket_dir, pf.listen_addr, pf.status) == (None, None, "starting")


@pytest.mark.parametrize("text", ["", "\n", "abc\n/d\n", "-\n"])
def test_pidfile_parse_garbage_is_none(text: str) -> None:
    assert PidFile.parse(text) is None


@given(st.text())
def test_pidfile_parse_never_raises(text: str) -> None:
    PidFile.parse(text)


# --------------------------------------------------------------------------- registry names


@pytest.mark.parametrize("name", ["a", "main", "pg-15_test.1", "9", "x" * 63])
def test_check_name_accepts(name: str) -> None:
    assert registry.check_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", ".a", "_a", "a/b", "a b", "x" * 64, "é", "../x"])
def test_check_name_refuses(name: str) -> None:
    with pytest.raises(UsageError, match="invalid instance name"):
        registry.check_name(name)


def _record(name: str) -> None:
    registry.save(Instance(name=name, datadir=f"/d/{name}", major="15", version="15", bindir="/b"))


def test_unique_name_cleans_and_avoids_taken_names() -> None:
    assert registry.unique_name("data") == "data"
    _record("data")
    _record("data-2")
    assert registry.unique_name("data") == "data-3"
    assert registry.unique_name("my data!") == "my-data"
    assert registry.unique_name("...") == "pg"
    assert registry.unique_name("_x") == "pg_x"
    long = registry.unique_name("y" * 200)
    assert long == "y" * 56
    assert registry.names() == ["data", "data-2"]


@given(st.text(max_size=300))
def test_unique_name_is_always_a_valid_name(base: str) -> None:
    registry.check_name(registry.unique_name(base))


def test_record_written_0600_and_loaded_back() -> None:
    _record("rec")
    path = registry.record_path("rec")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert registry.load("rec").datadir == "/d/rec"


# --------------------------------------------------------------------------- url / dsn

NASTY = "p@ss w'o:r/d\\%?#&="


def _server(**fields: object) -> Server:
    base: dict[str, object] = {
        "name": "x",
        "datadir": "/d",
        "major": "15",
        "version": "15.18",
        "bindir": BIN,
        "port": 5433,
        "socket_dir": "/tmp/pgmgr-s ,x",
        "password": NASTY,
        "superuser": "admin user",
    }
    base.update(fields)
    return Server(Instance(**base), register=False)  # type: ignore[arg-type]


def test_url_and_dsn_over_tcp_carry_the_quoted_password() -> None:
    srv = _server()
    expected = {
        "user": "admin user",
        "password": NASTY,
        "host": "127.0.0.1",
        "port": "5433",
        "dbname": "postgres",
    }
    assert psycopg.conninfo.conninfo_to_dict(srv.url(tcp=True)) == expected
    assert psycopg.conninfo.conninfo_to_dict(srv.dsn(tcp=True)) == expected


def test_url_and_dsn_over_the_socket_have_no_password() -> None:
    srv = _server()
    expected = {
        "user": "admin user",
        "host": "/tmp/pgmgr-s ,x",
        "port": "5433",
        "dbname": "postgres",
    }
    assert psycopg.conninfo.conninfo_to_dict(srv.url(tcp=False)) == expected
    assert psycopg.conninfo.conninfo_to_dict(srv.dsn(tcp=False)) == expected
    assert psycopg.conninfo.conninfo_to_dict(srv.dsn()) == expected  # a socket is known


def test_url_ipv6_host_in_brackets_and_first_of_a_list() -> None:
    assert "@[::1]:5433/" in _server(host="::1").url(tcp=True)
    assert "@10.0.0.1:5433/" in _server(host="10.0.0.1, 10.0.0.2").url(tcp=True)
    assert _server(host="").conninfo(tcp=True)["host"] == "127.0.0.1"


def test_trust_instance_has_no_password_in_dsn() -> None:
    assert "password" not in _server(password=None).dsn(tcp=True)


@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\0")))
def test_dsn_quoting_round_trips_any_password(password: str) -> None:
    srv = _server(password=password or "x")
    assert psycopg.conninfo.conninfo_to_dict(srv.dsn(tcp=True))["password"] == (password or "x")
    assert psycopg.conninfo.conninfo_to_dict(srv.url(tcp=True))["password"] == (password or "x")


# --------------------------------------------------------------------------- errors


def test_command_failed_states_the_error_not_the_hint() -> None:
    stderr = (
        'initdb: error: invalid locale name "xx"\n'
        "initdb: hint: If the locale name is specific to ICU, use --icu-locale.\n"
    )
    e = CommandFailed(["/usr/bin/initdb", "-D", "/d"], 1, stderr)
    assert str(e) == 'initdb failed with exit code 1: initdb: error: invalid locale name "xx"'
    assert e.stderr == stderr
    assert e.returncode == 1


# --------------------------------------------------------------------------- process titles


@pytest.mark.parametrize(
    ("title", "client"),
    [
        ("postgres postgres 127.0.0.1(49196) idle", True),
        ("app db [local] SELECT", True),
        ("main: app db ::1(33) idle in transaction", True),
        ("checkpointer", False),
        ("autovacuum launcher", False),
        ("logical replication launcher", False),
        ("io worker 0", False),  # PostgreSQL 18
        ("main: io worker 1", False),
        ("parallel worker for PID 12", False),
    ],
)
def test_client_session_titles(title: str, client: bool) -> None:
    from pgmgr.core.process import _CLIENT_TITLE_RE

    assert bool(_CLIENT_TITLE_RE.match(title)) is client
