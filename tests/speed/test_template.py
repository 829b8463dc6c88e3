"""The template cache against real PostgreSQL 15 servers: copies are independent instances,
concurrent inits are safe, new binaries get a new template, and the opt-outs work."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgmgr.core import registry

from .conftest import init_concurrently, pgmgr, pgmgr_json, templates, wait_refills


def connect(port: int, password: str | None, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        user="postgres",
        dbname="postgres",
        password=password or "",
        connect_timeout=5,
        autocommit=True,
        **kw,
    )


def record(name: str) -> registry.Instance:
    return registry.load(name)


def scalar(port: int, password: str | None, sql: str) -> Any:
    with connect(port, password) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row[0]


def test_two_copies_are_independent(base: Path, started: Callable[..., dict[str, Any]]) -> None:
    first = pgmgr_json("init", "-d", str(base / "a"))
    assert first["initialized"]
    keys = templates()
    assert len(keys) == 1, "the first init keeps a template"
    second = pgmgr_json("init", "-d", str(base / "b"))
    assert second["initialized"] and templates() == keys
    a, b = record("a"), record("b")
    assert a.password and b.password and a.password != b.password
    assert a.password_pending and b.password_pending
    hba = (base / "b" / "pg_hba.conf").read_text()
    assert "scram-sha-256" in hba
    assert all(
        ln.split()[-1] == "scram-sha-256" for ln in hba.splitlines() if ln.startswith("host")
    )

    pa = started(base / "a", "-c", "work_mem=7MB")["port"]
    pb = started(base / "b", "-c", "work_mem=9MB")["port"]
    assert not record("a").password_pending and not record("b").password_pending

    # each password works for its own server only, over TCP
    assert scalar(pa, a.password, "SHOW work_mem") == "7MB"
    assert scalar(pb, b.password, "SHOW work_mem") == "9MB"
    for port, wrong in ((pa, b.password), (pb, a.password), (pa, None)):
        with pytest.raises(psycopg.OperationalError, match="password"):
            connect(port, wrong).close()

    # data written to one is not in the other
    with connect(pa, a.password) as conn:
        conn.execute("CREATE TABLE only_in_a (x int)")
        conn.execute("INSERT INTO only_in_a VALUES (1)")
    assert scalar(pa, a.password, "SELECT count(*) FROM only_in_a") == 1
    assert scalar(pb, b.password, "SELECT to_regclass('only_in_a') IS NULL") is True

    # each has a database system identifier of its own (they shared the template's), in
    # pg_control and in the WAL that PostgreSQL checks against it (else it would not start)
    sysid = "SELECT system_identifier FROM pg_control_system()"
    assert scalar(pa, a.password, sysid) != scalar(pb, b.password, sysid)
    for port, password in ((pa, a.password), (pb, b.password)):
        assert scalar(port, password, "SELECT pg_switch_wal() IS NOT NULL") is True


def test_start_init_uses_the_template_and_sets_the_password(
    base: Path, started: Callable[..., dict[str, Any]]
) -> None:
    pgmgr("init", "-d", str(base / "seed"))
    rec = started(base / "new", "--init")
    assert templates() and len(templates()) == 1
    inst = record("new")
    assert not inst.password_pending
    assert scalar(rec["port"], inst.password, "SELECT current_user") == "postgres"


def test_trust_and_other_options(base: Path, started: Callable[..., dict[str, Any]]) -> None:
    pgmgr("init", "-d", str(base / "t1"), "--auth", "trust")
    pgmgr("init", "-d", str(base / "t2"), "--auth", "trust")
    pgmgr("init", "-d", str(base / "k"), "--", "--data-checksums")
    assert len(templates()) == 2, "auth is per instance; --data-checksums is another template"
    assert record("t2").password is None and not record("t2").password_pending
    port = started(base / "t2")["port"]
    assert scalar(port, None, "SELECT 1") == 1
    pk = started(base / "k")["port"]
    assert scalar(pk, record("k").password, "SHOW data_checksums") == "on"


def test_unsafe_initdb_args_bypass_the_template(base: Path) -> None:
    wal = base / "wal"
    wal.mkdir(mode=0o755)
    if os.geteuid() == 0:
        os.chown(wal, *_server_ids())
    pgmgr("init", "-d", str(base / "w"), "--", f"--waldir={wal / 'x'}")
    assert templates() == []
    assert not record("w").password_pending


def _server_ids() -> tuple[int, int]:
    import pwd

    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def test_concurrent_inits_with_an_empty_cache(
    base: Path, started: Callable[..., dict[str, Any]]
) -> None:
    dirs = [base / f"c{i}" for i in range(4)]
    init_concurrently(dirs)
    assert len(templates()) == 1
    wait_refills()  # a spare being made in the background is not a leftover
    leftovers = [p.name for p in (Path(os.environ["PGMGR_CACHE_DIR"]) / "templates").iterdir()]
    assert not [n for n in leftovers if ".tmp-" in n], leftovers
    for d in dirs:
        port = started(d)["port"]
        assert scalar(port, record(d.name).password, "SELECT count(*) FROM pg_database") == 3


def test_changed_binaries_rebuild_the_template(
    base: Path, fake_install: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGMGR_PG_ROOT", str(fake_install))
    monkeypatch.setenv("PGMGR_SOURCES", "debian")
    pgmgr("init", "-d", str(base / "old"))
    (before,) = templates()
    assert record("old").bindir == str(fake_install / "15" / "bin")
    pgmgr("init", "-d", str(base / "same"))
    assert templates() == [before]
    exe = fake_install / "15" / "bin" / "postgres"
    st = exe.stat()
    os.utime(exe, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # an upgraded binary
    pgmgr("init", "-d", str(base / "new"))
    (after,) = templates()  # rebuilt, and the stale one pruned
    assert after != before
    listed = pgmgr_json("cache", "list")
    assert [t["key"] for t in listed] == [after] and not listed[0]["stale"]


def test_no_template_bypasses_the_cache(base: Path, started: Callable[..., dict[str, Any]]) -> None:
    out = pgmgr_json("init", "-d", str(base / "plain"), "--no-template")
    assert out["initialized"] and templates() == []
    assert not record("plain").password_pending
    rec = started(base / "plain2", "--init", "--no-template")
    assert templates() == []
    assert scalar(rec["port"], record("plain2").password, "SELECT 1") == 1


def test_cache_clear(base: Path) -> None:
    pgmgr("init", "-d", str(base / "x"))
    (key,) = templates()
    assert pgmgr_json("cache", "list")[0]["key"] == key
    assert pgmgr_json("cache", "clear")["removed"] == [key]
    assert templates() == [] and pgmgr_json("cache", "list") == []
    assert (base / "x" / "PG_VERSION").is_file(), "instances are never touched"
    assert pgmgr_json("cache", "clear")["removed"] == []
    pgmgr("init", "-d", str(base / "y"))
    assert len(templates()) == 1


def test_library_start_without_wait_then_ready_wait_sets_the_password(base: Path) -> None:
    from pgmgr import Manager
    from pgmgr.core.server import free_port

    pgmgr("init", "-d", str(base / "seed"))  # the template exists: the next init copies it
    m = Manager("127.0.0.1", free_port("127.0.0.1"), base / "lib", initialize=True)
    try:
        assert record("lib").password_pending
        m.start(wait=False)
        m.ready_wait()
        assert not record("lib").password_pending
        assert scalar(m.port, m.password, "SELECT 1") == 1
    finally:
        m.stop()
