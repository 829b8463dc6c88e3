"""Security defaults, each tested against real servers: private files and directories, a
loopback-only listen address, passwords over TCP, no way in for a second OS user, and never
postgres as root.

Root-only tests (a second OS user, the server user's uid) skip with a reason otherwise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import secrets
import signal
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgmgr.core import process
from tests.reliability.conftest import Run, is_root, needs_root, one_error, pgmgr

PSQL = "/usr/lib/postgresql/15/bin/psql"


def server_uid() -> int:
    """The uid postgres runs as: ``postgres`` when the suite runs as root, else ourselves."""
    return pwd.getpwnam("postgres").pw_uid if is_root() else os.geteuid()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def ok(run: Run) -> Run:
    assert run.returncode == 0, str(run)
    return run


@pytest.fixture(scope="module")
def module_cache(rel_base: Path) -> Path:
    return rel_base / f"security-cache-{os.getpid()}"


@pytest.fixture(autouse=True)
def shared_template_cache(
    rel_isolation: Path, module_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One template cache for the module: initdb once, copies afterwards (speed only)."""
    monkeypatch.setenv("PGMGR_CACHE_DIR", str(module_cache))


class Servers:
    """Starts instances through the CLI; every one is stopped (immediate) at the end."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.datadirs: list[Path] = []

    def start(self, name: str, *args: str) -> dict[str, Any]:
        datadir = self.work / name
        self.datadirs.append(datadir)
        ok(pgmgr("start", "--init", "-d", str(datadir), "--port", "auto", "-q", *args))
        return record(name)

    def stop_all(self) -> None:
        for datadir in self.datadirs:
            pf = process.PidFile.read(datadir)
            if pf is not None and process.serves(pf.pid, datadir, pf.start_time):
                process.signal_pid(pf.pid, signal.SIGQUIT)
                process.wait_gone(pf.pid, datadir, 5)


@pytest.fixture
def servers(work: Path) -> Iterator[Servers]:
    made = Servers(work)
    try:
        yield made
    finally:
        made.stop_all()


def record(name: str) -> dict[str, Any]:
    from pgmgr.core import registry

    return registry.load(name).to_dict()


def tcp_connect(rec: dict[str, Any], password: str | None) -> psycopg.Connection[Any]:
    kw: dict[str, Any] = {"password": password} if password is not None else {}
    return psycopg.connect(
        host="127.0.0.1",
        port=rec["port"],
        user="postgres",
        dbname="postgres",
        connect_timeout=5,
        **kw,
    )


# --------------------------------------------------------------------------- files, dirs


@pytest.mark.parametrize("how", ["template", "initdb"])
def test_private_files_and_dirs(servers: Servers, rel_isolation: Path, how: str) -> None:
    """Data dir 0700, socket dir 0700 owned by the server user, records, their directory,
    the log and its directory private -- with a permissive umask (pgmgr must not rely on
    the caller's umask)."""
    old = os.umask(0o002)
    try:
        rec = servers.start("db", *(["--no-template"] if how == "initdb" else []))
    finally:
        os.umask(old)
    uid = server_uid()
    datadir = Path(rec["datadir"])
    assert mode(datadir) == 0o700 and datadir.stat().st_uid == uid
    for path in datadir.rglob("*"):  # nothing inside is open to group or others either
        if path.is_socket():  # the socket (0777 as postgres makes it) in the 0700 data dir
            continue
        assert mode(path) & 0o077 == 0, f"{path} is {mode(path):o}"

    sock = Path(rec["socket_dir"])
    assert not sock.is_symlink() and sock.is_dir()
    assert mode(sock) == 0o700 and sock.lstat().st_uid == uid
    assert (sock / f".s.PGSQL.{rec['port']}").is_socket()

    instances = rel_isolation / "instances"
    assert mode(instances) & 0o077 == 0
    assert mode(rel_isolation) & 0o022 == 0  # nobody else may swap the instances dir
    records = list(instances.glob("*.json"))
    assert [p.name for p in records] == ["db.json"]
    for path in records:
        assert mode(path) == 0o600 and path.stat().st_uid == os.geteuid()
    for lock in (rel_isolation / "locks").iterdir():
        assert mode(lock) == 0o600

    log = Path(rec["log_file"])
    assert log.is_file() and mode(log) == 0o600
    assert mode(log.parent) & 0o077 == 0


def test_password_file_is_private(servers: Servers, rel_isolation: Path) -> None:
    """``pgmgr env --tcp`` writes a PGPASSFILE: mode 0600 in a 0700 directory, and it works."""
    rec = servers.start("db")
    env = ok(pgmgr("env", "db", "--tcp", "--json")).json()
    passfile = Path(env["PGPASSFILE"])
    assert passfile.parent == rel_isolation / "pgpass"
    assert mode(passfile) == 0o600 and passfile.stat().st_uid == os.geteuid()
    assert mode(passfile.parent) & 0o077 == 0
    assert rec["password"] in passfile.read_text()
    # the exported variables alone (no password in them) log in over TCP
    assert "PGPASSWORD" not in env and rec["password"] not in str(env)
    conninfo = f"host={env['PGHOST']} port={env['PGPORT']} user={env['PGUSER']}"
    with psycopg.connect(conninfo, dbname=env["PGDATABASE"], passfile=str(passfile)) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    # written again (new password or not), still 0600
    os.chmod(passfile, 0o644)
    env = ok(pgmgr("env", "db", "--tcp", "--json")).json()
    assert mode(Path(env["PGPASSFILE"])) == 0o600


def test_recorded_socket_dir_not_reused_unless_private(
    servers: Servers, rel_base: Path, tmp_path: Path
) -> None:
    """A socket dir the user chose (recorded) is reused while private; widened, or swapped
    for a symlink to a public directory, it is not: the next start uses pgmgr's own choice
    (the data directory) and writes nothing into the public directory."""
    mine = Path(os.environ["TMPDIR"]) / "mine"
    rec = servers.start("db", "--socket-dir", str(mine))
    assert Path(rec["socket_dir"]) == mine and mode(mine) == 0o700
    ok(pgmgr("stop", "db"))
    assert Path(ok_start("db")["socket_dir"]) == mine  # private: reused
    ok(pgmgr("stop", "db"))
    os.chmod(mine, 0o777)  # noqa: S103 - widened on purpose
    rec = ok_start("db")
    second = Path(rec["socket_dir"])
    assert second != mine and mode(second) == 0o700 and not second.is_symlink()
    assert second == Path(rec["datadir"])
    ok(pgmgr("stop", "db"))

    public = Path(os.environ["TMPDIR"]) / "public"
    public.mkdir()
    public.chmod(0o777)
    link = Path(os.environ["TMPDIR"]) / "link"
    link.symlink_to(public)
    from pgmgr.core import registry

    inst = registry.load("db")
    inst.socket_dir = str(link)  # as if recorded so
    registry.save(inst)
    rec = ok_start("db")
    third = Path(rec["socket_dir"])
    assert third not in (link, public) and mode(third) == 0o700 and not third.is_symlink()
    assert not list(public.iterdir())
    ok(pgmgr("stop", "db"))


def ok_start(name: str) -> dict[str, Any]:
    ok(pgmgr("start", name, "--port", "auto", "-q"))
    return record(name)


# --------------------------------------------------------------------------- listening


def _hex_addr(text: str) -> str:
    """A /proc/net/tcp{,6} address (32-bit words in host byte order) as text."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words)


def listening_addresses(port: int) -> list[str]:
    """Local addresses of TCP sockets in LISTEN state (st 0A) on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                addr, _, port_hex = fields[1].rpartition(":")
                if fields[3] == "0A" and int(port_hex, 16) == port:
                    found.append(_hex_addr(addr))
    return found


def is_loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def test_proc_net_parser() -> None:
    assert _hex_addr("0100007F") == "127.0.0.1"
    assert _hex_addr("00000000000000000000000001000000") == "::1"
    assert _hex_addr("0000000000000000FFFF00000100007F") == "::ffff:127.0.0.1"
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and is_loopback("::1")  # noqa: S104


def test_listens_on_loopback_only(servers: Servers) -> None:
    """Default listen address 127.0.0.1, by the server's own word and the kernel's; even an
    ``ALTER SYSTEM SET listen_addresses = '*'`` does not widen it on the next start."""
    rec = servers.start("db")
    assert rec["host"] == "127.0.0.1"

    def check() -> None:
        port = record("db")["port"]
        with tcp_connect(record("db"), record("db")["password"]) as conn:
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        addrs = listening_addresses(port)
        assert addrs, f"nothing listens on port {port}"
        assert all(is_loopback(a) for a in addrs), addrs

    check()
    with tcp_connect(rec, rec["password"]) as conn:
        conn.autocommit = True
        conn.execute("ALTER SYSTEM SET listen_addresses = '*'")
    ok(pgmgr("restart", "db", "-q"))
    check()


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0", "*", "::", "127.0.0.1,10.1.2.3", "localhost,192.168.1.1", "127.0.0.1,"],  # noqa: S104
)
def test_a_host_that_is_not_loopback_is_refused(work: Path, servers: Servers, host: str) -> None:
    """``start -H 0.0.0.0`` started a server listening on every interface (so did a record
    with such a host, written by hand or by an older pgmgr): refused in one line, before
    anything is made, and on every start of a record that holds one."""
    datadir = work / "db"
    err = one_error(pgmgr("start", "--init", "-d", str(datadir), "--port", "auto", "-H", host))
    assert "listen on loopback only" in err
    assert not datadir.exists()
    assert ok(pgmgr("status", "--json")).json() == []
    rec = servers.start("old")
    ok(pgmgr("stop", "old", "-q"))
    assert "listen on loopback only" in one_error(pgmgr("start", "old", "-H", host))
    from pgmgr.core import registry

    inst = registry.load("old")
    inst.host = host
    registry.save(inst)
    assert "listen on loopback only" in one_error(pgmgr("start", "old"))
    assert not process.PidFile.read(work / "old")
    assert not listening_addresses(rec["port"])
    ok(pgmgr("start", "old", "-H", "127.0.0.1", "-q"))  # the way out
    assert all(is_loopback(a) for a in listening_addresses(record("old")["port"]))


@pytest.mark.parametrize(
    "setting", ["listen_addresses=0.0.0.0", "LISTEN_ADDRESSES=*", " listen_addresses =::"]
)
def test_listen_addresses_cannot_be_set_by_c(work: Path, setting: str) -> None:
    datadir = work / "db"
    err = one_error(pgmgr("start", "--init", "-d", str(datadir), "--port", "auto", "-c", setting))
    assert "managed by pgmgr" in err
    assert not process.PidFile.read(datadir)
    assert ok(pgmgr("status", "--json")).json() == []


def test_manager_refuses_listen_addresses_setting(work: Path) -> None:
    from pgmgr import DatabaseException, Manager

    with pytest.raises(DatabaseException, match="managed by pgmgr"):
        Manager(
            "127.0.0.1",
            54321,  # a valid port: 0 is refused first
            work / "db",
            initialize=True,
            settings={"listen_addresses": "*"},
        )
    assert not (work / "db").exists()


# --------------------------------------------------------------------------- TCP auth


def test_tcp_needs_the_password(servers: Servers) -> None:
    """No password, or another instance's password: refused. The right one: in."""
    a, b = servers.start("a"), servers.start("b")
    assert a["password"] and b["password"] and a["password"] != b["password"]
    for rec, other in ((a, b), (b, a)):
        with pytest.raises(psycopg.OperationalError, match="password"):
            tcp_connect(rec, None).close()
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            tcp_connect(rec, other["password"]).close()
        with pytest.raises(psycopg.OperationalError, match="password"):
            tcp_connect(rec, "").close()
        with tcp_connect(rec, rec["password"]) as conn:
            assert conn.execute("select current_user").fetchone() == ("postgres",)
    # the server really checks scram, not something weaker
    with tcp_connect(a, a["password"]) as conn:
        rules = conn.execute(
            "select type, auth_method from pg_hba_file_rules where type like 'host%'"
        ).fetchall()
    assert rules and {m for _, m in rules} == {"scram-sha-256"}, rules


def test_trust_only_when_asked(servers: Servers, work: Path) -> None:
    datadir = work / "trusting"
    servers.datadirs.append(datadir)
    ok(pgmgr("init", "-d", str(datadir), "--auth", "trust", "-q"))
    ok(pgmgr("start", "trusting", "--port", "auto", "-q"))
    rec = record("trusting")
    assert rec["password"] is None and rec["auth"] == "trust"
    with tcp_connect(rec, None) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_manager_defaults_are_private(work: Path, rel_isolation: Path) -> None:
    """The library API: same defaults as the CLI (0700 data dir, 0600 record and log,
    loopback only, password over TCP)."""
    from pgmgr import Manager
    from pgmgr.core import server

    port = server.free_port("127.0.0.1")
    pg = Manager("127.0.0.1", port, work / "lib", initialize=True)
    try:
        pg.start(timeout=30)
        assert mode(work / "lib") == 0o700
        assert mode(rel_isolation / "instances" / "lib.json") == 0o600
        assert mode(Path(record("lib")["log_file"])) == 0o600
        assert mode(Path(str(pg.socket_dir))) == 0o700
        assert all(is_loopback(a) for a in listening_addresses(port))
        assert pg.password
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(host="127.0.0.1", port=port, user="postgres", connect_timeout=5)
        with psycopg.connect(pg.dsn, connect_timeout=5) as conn:
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
    finally:
        pg.stop(mode="immediate")


# --------------------------------------------------------------------------- other OS users


@pytest.fixture(scope="module")
def intruder() -> Iterator[str]:
    """A throwaway unprivileged OS user, removed afterwards."""
    name = f"pgmgr-intruder-{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            raise AssertionError(f"could not remove the OS user {name}")


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", user, "--", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PGCONNECT_TIMEOUT": "5", "LC_ALL": "C"},
    )


@needs_root
def test_second_user_cannot_connect_or_read(
    servers: Servers, work: Path, intruder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything is on paths the intruder can traverse (/tmp/... 0755), so only pgmgr's
    own modes keep them out."""
    state = work / "state"
    state.mkdir(mode=0o755)  # made by someone else, open: only pgmgr's subdirs protect
    state.chmod(0o755)
    monkeypatch.setenv("PGMGR_STATE_DIR", str(state))
    rec = servers.start("db")
    env = ok(pgmgr("env", "db", "--tcp", "--json")).json()
    sock, port = rec["socket_dir"], str(rec["port"])
    rec_path = state / "instances" / "db.json"

    # sanity: the intruder can run psql and reach the parent directories
    assert as_user(intruder, PSQL, "--version").returncode == 0
    assert as_user(intruder, "ls", str(Path(sock).parent)).returncode == 0
    assert as_user(intruder, "ls", str(state)).returncode == 0
    # ... and root (as the server user) gets in through that very socket
    srv_user = pwd.getpwuid(server_uid()).pw_name
    run = as_user(srv_user, PSQL, "-h", sock, "-p", port, "-U", "postgres", "-Atc", "select 1")
    assert run.returncode == 0 and run.stdout.strip() == "1", run

    run = as_user(intruder, PSQL, "-h", sock, "-p", port, "-U", "postgres", "-c", "select 1")
    assert run.returncode != 0 and "Permission denied" in run.stderr, run
    # over TCP it needs the password, which it cannot read
    run = as_user(intruder, PSQL, "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-w", "-c", "")
    assert run.returncode != 0 and "password" in run.stderr, run

    for path in (rec_path, rec["log_file"], env["PGPASSFILE"], Path(rec["datadir"]) / "PG_VERSION"):
        run = as_user(intruder, "cat", str(path))
        assert run.returncode != 0 and "Permission denied" in run.stderr, (path, run)
    for path in (state / "instances", rec["datadir"], sock):
        run = as_user(intruder, "ls", str(path))
        assert run.returncode != 0 and "Permission denied" in run.stderr, (path, run)
    # the record's own mode keeps it private even in an opened directory
    os.chmod(state / "instances", 0o755)  # noqa: S103 - opened on purpose
    try:
        run = as_user(intruder, "cat", str(rec_path))
        assert run.returncode != 0 and "Permission denied" in run.stderr, run
    finally:
        os.chmod(state / "instances", 0o700)


@needs_root
def test_a_socket_in_a_shared_directory_lets_no_one_else_in(
    servers: Servers, work: Path, intruder: str
) -> None:
    """``--socket-dir`` naming a directory others can enter (a 1777 one, like /tmp): local
    connections are ``trust``, so a socket file of PostgreSQL's default mode 0777 there let
    any OS user in as the superuser (and run programs as the server user with COPY ...
    PROGRAM). The socket is the server user's only (0700) unless the user asks otherwise."""
    shared = work / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    rec = servers.start("db", "--socket-dir", str(shared))
    port = str(rec["port"])
    sock = shared / f".s.PGSQL.{port}"
    assert mode(sock) == 0o700, oct(mode(sock))
    run = as_user(intruder, PSQL, "-h", str(shared), "-p", port, "-U", "postgres", "-c", "")
    assert run.returncode != 0 and "Permission denied" in run.stderr, run
    srv_user = pwd.getpwuid(server_uid()).pw_name
    run = as_user(
        srv_user, PSQL, "-h", str(shared), "-p", port, "-U", "postgres", "-Atc", "select 1"
    )
    assert run.returncode == 0 and run.stdout.strip() == "1", run
    # asked for: the user's own setting wins
    ok(pgmgr("stop", "db", "-q"))
    ok(
        pgmgr(
            "start", "db", "-q", "--socket-dir", str(shared), "-c", "unix_socket_permissions=0770"
        )
    )
    assert mode(sock) == 0o770, oct(mode(sock))


@needs_root
@pytest.mark.parametrize("place", ["theirs", "under-theirs"])
def test_root_refuses_a_socket_dir_another_user_can_change(
    servers: Servers, work: Path, intruder: str, place: str
) -> None:
    """As root, ``--socket-dir`` in a directory another user owns (or below one): they
    could rename the server's socket away and put their own in its place, and root's
    pgmgr would talk to their server (an export's pg_dump sends the superuser's password,
    PGPASSWORD, to whoever asks for it). Refused in one line, nothing left running; a
    sticky directory (/tmp) stays fine (see the test above)."""
    theirs = work / "theirs"
    theirs.mkdir()
    theirs.chmod(0o777)  # the intruder's open directory, as they would make it
    os.chown(theirs, pwd.getpwnam(intruder).pw_uid, -1)
    sockdir = theirs if place == "theirs" else theirs / "sock"
    ok(pgmgr("init", "-d", str(work / "db"), "-q"))
    servers.datadirs.append(work / "db")  # stopped at the end, whatever happens
    run = pgmgr("start", "db", "--port", "auto", "--socket-dir", str(sockdir))
    assert "refusing socket directory" in one_error(run), run
    assert not list(theirs.iterdir())
    assert process.PidFile.read(work / "db") is None
    ok(pgmgr("start", "db", "--port", "auto", "-q"))  # the default place: fine


@needs_root
def test_root_does_not_reuse_a_recorded_socket_dir_another_user_can_change(
    servers: Servers, work: Path, intruder: str
) -> None:
    """A socket dir chosen earlier (recorded, private itself) whose parent became another
    user's (or a record from before the check): not reused, the data directory is."""
    parent = work / "parent"
    parent.mkdir(mode=0o755)
    sockdir = parent / "sock"
    rec = servers.start("db", "--socket-dir", str(sockdir))
    assert Path(rec["socket_dir"]) == sockdir
    ok(pgmgr("stop", "db", "-q"))
    os.chown(parent, pwd.getpwnam(intruder).pw_uid, -1)
    rec = ok_start("db")
    assert Path(rec["socket_dir"]) == Path(rec["datadir"])
    assert not list(sockdir.iterdir())


# --------------------------------------------------------------------------- never root


def test_refuses_to_run_postgres_as_root(work: Path) -> None:
    """``--user root``: one error line, nothing made, running or registered."""
    datadir = work / "db"
    for argv in (
        ["start", "--init", "-d", str(datadir), "--port", "auto", "--user", "root"],
        ["init", "-d", str(datadir), "--user", "root"],
    ):
        err = one_error(pgmgr(*argv))
        assert "root" in err, err
        assert not datadir.exists() or not any(datadir.iterdir())
        assert not process.PidFile.read(datadir)
        assert ok(pgmgr("status", "--json")).json() == []


def test_manager_refuses_root(work: Path) -> None:
    from pgmgr import DatabaseException, Manager

    with pytest.raises(DatabaseException, match="root"):
        Manager("127.0.0.1", 54321, work / "db", initialize=True, user="root")
    assert not (work / "db").exists() or not any((work / "db").iterdir())


def _ids(pid: int) -> tuple[list[int], list[int], list[int]]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                fields[key] = [int(v) for v in value.split()]
    return fields["Uid"], fields["Gid"], fields["Groups"]


def test_postgres_never_runs_as_root(servers: Servers) -> None:
    """As root, postgres and all its children run as ``postgres`` (real, effective, saved
    and filesystem ids), with no root group; otherwise as the caller."""
    rec = servers.start("db")
    pf = process.PidFile.read(Path(rec["datadir"]))
    assert pf is not None
    pids = [pf.pid, *process.children(pf.pid)]
    assert len(pids) > 1
    want = server_uid()
    for pid in pids:
        uids, gids, groups = _ids(pid)
        assert uids == [want] * 4, (pid, uids)
        if is_root():
            assert 0 not in gids and 0 not in groups, (pid, gids, groups)
