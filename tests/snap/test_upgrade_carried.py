"""What pg_upgrade does not carry over from PostgreSQL 15 to 18, and pgmgr must not lose
silently (review): logical replication slots, and extensions left at the old version.
Real servers: Debian's 15, the wheel's 18."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import error_lines
from tests.snap.conftest import Inst, leftovers, running15


@pytest.fixture
def sl(scratch: Path) -> Iterator[Inst]:
    with running15(scratch, "sl") as it:
        yield it


def test_logical_slots_are_refused_before_anything(sl: Inst) -> None:
    """pg_upgrade carries logical slots over only from PostgreSQL 17 on: from 15 the
    upgrade succeeded and the slot was gone, with not a word (its subscriber then lost
    its place: 'replication slot "feed" does not exist'). Now refused first, with
    --check too, the server never stopped; once dropped, the upgrade goes through."""
    sl.sql("ALTER SYSTEM SET wal_level = logical")
    sl.ok("restart", "sl", "-q")
    sl.sql("SELECT pg_create_logical_replication_slot('feed', 'pgoutput')")
    pid = sl.pid()
    for args in (["--yes"], ["--yes", "--method", "link"], ["--check"]):
        proc = sl.pgmgr("upgrade", "sl", "-v", "18", *args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert error_lines(proc.stderr) == [
            "Error: cannot upgrade 'sl': it has logical replication slots (feed), which "
            "pg_upgrade carries over only from PostgreSQL 17: they would be lost; nothing "
            "was changed",
            "Hint: once their subscribers have caught up, drop them (SELECT "
            "pg_drop_replication_slot('feed')), upgrade, then create them again",
        ], args
    assert sl.pid() == pid and sl.record()["major"] == "15"
    assert sl.sql("SELECT slot_name FROM pg_replication_slots") == "feed"
    assert leftovers(sl.store) == []

    sl.ok("stop", "sl", "-q")  # stopped: asked of the server run for the question
    proc = sl.pgmgr("upgrade", "sl", "-v", "18", "--yes")
    assert proc.returncode == 1 and "(feed)" in error_lines(proc.stderr)[0], proc.stderr
    assert sl.state() == "stopped" and sl.record()["major"] == "15"

    sl.ok("start", "sl", "-q")
    sl.sql("SELECT pg_drop_replication_slot('feed')")
    sl.ok("upgrade", "sl", "-v", "18", "--yes", "-q")
    assert sl.record()["major"] == "18" and sl.sql("SHOW wal_level") == "logical"


def test_physical_slots_pg_upgrade_drops_are_named(sl: Inst) -> None:
    """pg_upgrade never carries physical slots over: a slot kept for a pg_receivewal or a
    standby pgmgr does not know was gone after the upgrade, not a word said (and the WAL
    its consumer still needs no longer kept). Named by --check and by the upgrade."""
    sl.sql("SELECT pg_create_physical_replication_slot('archiver', true)")
    said = ("Physical replication slots pg_upgrade does not carry over (the upgrade {} them; "
            "make them again for what uses them): archiver")  # fmt: skip
    proc = sl.ok("upgrade", "sl", "-v", "18", "--check", "--json")
    assert json.loads(proc.stdout)["replication_slots_dropped"] == ["archiver"]
    assert sl.ok("upgrade", "sl", "-v", "18", "--check").stderr.splitlines()[-1] == (
        said.format("would drop")
    )
    proc = sl.ok("upgrade", "sl", "-v", "18", "--yes")
    assert said.format("dropped") in proc.stderr.splitlines(), proc.stderr
    assert sl.sql("SELECT count(*) FROM pg_replication_slots") == "0"
    back = sl.ok("restore", "sl", "pre-upgrade-15", "--yes", "--json")
    assert json.loads(back.stdout)["rolled_back_from"].startswith("18.")
    assert sl.sql("SELECT slot_name FROM pg_replication_slots") == "archiver"


def test_extensions_left_at_the_old_version_are_named(sl: Inst) -> None:
    """pg_upgrade keeps each extension's version (citext 1.6 of PostgreSQL 15; 18 has
    1.8) and writes update_extensions.sql in its working directory, which pgmgr removed,
    not a word said. Now named (database and extension), and the script kept: it runs
    through 'pgmgr psql'."""
    sl.sql("CREATE EXTENSION citext")
    sl.sql('CREATE DATABASE "we ird\'db"')
    sl.ok("psql", "sl", "--", "-d", "we ird'db", "-c", "CREATE EXTENSION citext")
    out = json.loads(sl.ok("upgrade", "sl", "-v", "18", "--yes", "--json").stdout)
    assert out["extensions_to_update"] == [
        {"database": "postgres", "extension": "citext"},
        {"database": "we ird'db", "extension": "citext"},
    ]
    script = Path(out["extensions_script"])
    assert script.is_file() and "citext" in script.read_text()
    assert sl.sql("SELECT extversion FROM pg_extension WHERE extname = 'citext'") == "1.6"
    sl.ok("psql", "sl", "--", "-X", "-v", "ON_ERROR_STOP=1", "-f", str(script))
    for db in ("postgres", "we ird'db"):
        got = sl.ok("psql", "sl", "--", "-XAtq", "-d", db, "-c",
                    "SELECT extversion FROM pg_extension WHERE extname = 'citext'")  # fmt: skip
        assert got.stdout.strip() == "1.8", db


def test_a_preloaded_library_the_new_major_lacks_is_refused_first(scratch: Path) -> None:
    """shared_preload_libraries names a library PostgreSQL 18 lacks (pgcrypto: Debian's 15
    has it, the wheel's 18 not; any preloaded one would do): pg_upgrade does not look at
    it, --check said the checks passed, and the upgrade went through, then 18 did not
    start ('could not access file "pgcrypto"'): down until fixed or rolled back. Now
    refused before anything, from the record's -c and from ALTER SYSTEM alike."""
    it = Inst("pl", scratch / "pl")
    try:
        it.ok("init", "-q", "-d", str(it.datadir), "--name", "pl", "-v", "15")
        it.ok("start", "pl", "-q", "-p", "auto", "-c", "shared_preload_libraries=pgcrypto")
        pid = it.pid()
        for args in (["--yes"], ["--check"]):
            proc = it.pgmgr("upgrade", "pl", "-v", "18", *args)
            assert proc.returncode == 1, (args, proc.stderr)
            assert error_lines(proc.stderr) == [
                "Error: cannot upgrade 'pl': PostgreSQL 18 has no library 'pgcrypto' "
                "(shared_preload_libraries): it would not start; nothing was changed",
                "Hint: install it for PostgreSQL 18, or take it out of "
                "shared_preload_libraries (kept by pgmgr: 'pgmgr config pl set "
                "shared_preload_libraries=...', or 'unset shared_preload_libraries')",
            ], args
        assert it.pid() == pid and it.record()["major"] == "15"
        it.ok("stop", "pl", "-q")
        it.ok("start", "pl", "-q", "-c", "shared_preload_libraries=pg_stat_statements")
        it.sql('ALTER SYSTEM SET session_preload_libraries = auto_explain, "pgcrypto"')
        it.ok("stop", "pl", "-q")
        proc = it.pgmgr("upgrade", "pl", "-v", "18", "--yes")
        assert proc.returncode == 1, proc.stderr
        assert error_lines(proc.stderr)[0] == (
            "Error: cannot upgrade 'pl': PostgreSQL 18 has no library 'pgcrypto' "
            "(session_preload_libraries): every connection would fail; nothing was changed"
        )
        assert error_lines(proc.stderr)[1] == (
            "Hint: install it for PostgreSQL 18, or take it out of session_preload_libraries "
            "(ALTER SYSTEM SET session_preload_libraries = '...', or ALTER SYSTEM RESET "
            "session_preload_libraries)"
        )
        assert it.state() == "stopped" and it.record()["major"] == "15"
        assert leftovers(it.store) == []
        it.ok("start", "pl", "-q")
        it.sql("ALTER SYSTEM RESET session_preload_libraries")
        it.ok("upgrade", "pl", "-v", "18", "--yes", "-q")
        assert it.sql("SHOW shared_preload_libraries") == "pg_stat_statements"
    finally:
        it.pgmgr("stop", "--all", "-m", "immediate", "-q")


def test_library_list_and_lookup(tmp_path: Path) -> None:
    from pgmgr.core import upgradeplan as plan

    assert plan.library_list(' a, "b, c" ,"x""y",, ') == ["a", "b, c", 'x"y']
    (tmp_path / "here.so").touch()
    assert plan.library_found(tmp_path, "here") and plan.library_found(tmp_path, "$libdir/here")
    assert plan.library_found(tmp_path, str(tmp_path / "here.so"))
    assert not plan.library_found(tmp_path, "gone")


def test_a_password_on_the_socket_is_one_line_and_changes_nothing(sl: Inst) -> None:
    """pg_hba.conf asks a password on the Unix socket: pg_upgrade (and pgmgr's question
    to the old server) connect there as the superuser, without one. It said "cannot read
    the cluster's locale settings: ... fe_sendauth: no password supplied", with neither
    what to do nor that nothing changed."""
    hba = sl.datadir / "pg_hba.conf"
    text = hba.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("local ")]
    hba.write_text("\n".join(["local all all scram-sha-256", *[f"#{ln}" for ln in lines]])
                   + "\n" + text)  # fmt: skip
    sl.sql("ALTER ROLE postgres PASSWORD 'pw'")  # before the reload: pgmgr's psql is refused next
    sl.ok("restart", "sl", "-q")
    pid = sl.pid()
    proc = sl.pgmgr("upgrade", "sl", "-v", "18", "--yes")
    assert proc.returncode == 1, proc.stderr
    assert error_lines(proc.stderr) == [
        "Error: cannot upgrade 'sl': its server asks postgres for a password on the Unix "
        "socket (fe_sendauth: no password supplied), where pg_upgrade connects without one; "
        "nothing was changed",
        "Hint: let postgres in on the 'local' lines of pg_hba.conf (trust, or peer) for the "
        "upgrade",
    ]
    assert sl.pid() == pid and sl.record()["major"] == "15"
    assert leftovers(sl.store) == []
    hba.write_text(text)
    sl.ok("restart", "sl", "-q")
    sl.ok("upgrade", "sl", "-v", "18", "--yes", "-q")


def test_database_and_role_settings_the_new_major_lacks_are_refused_first(sl: Inst) -> None:
    """A database's or role's setting of a parameter PostgreSQL 18 lacks (ALTER ROLE ...
    SET force_parallel_mode, renamed in 16): --check passed, then pg_upgrade, the server
    stopped, failed to restore it (downtime for nothing). Now refused before anything,
    naming each, with --check too."""
    sl.sql("CREATE ROLE rr; ALTER ROLE rr SET force_parallel_mode = off")
    sl.sql("ALTER ROLE rr IN DATABASE postgres SET work_mem = '2MB'")  # accepted: kept
    sl.sql("ALTER DATABASE postgres SET force_parallel_mode = off")
    pid = sl.pid()
    for args in (["--yes"], ["--check"]):
        proc = sl.pgmgr("upgrade", "sl", "-v", "18", *args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert error_lines(proc.stderr) == [
            "Error: cannot upgrade 'sl': PostgreSQL 18 rejects these settings of databases "
            "and roles, which pg_upgrade would fail to restore: force_parallel_mode (role rr), "
            "force_parallel_mode (database postgres); nothing was changed",
            "Hint: reset them (ALTER ROLE rr RESET force_parallel_mode; ALTER DATABASE "
            "postgres RESET force_parallel_mode), then upgrade",
        ], args
    assert sl.pid() == pid and sl.record()["major"] == "15"
    assert leftovers(sl.store) == []
    sl.sql("ALTER DATABASE postgres RESET force_parallel_mode")
    sl.sql("ALTER ROLE rr RESET force_parallel_mode")
    sl.ok("upgrade", "sl", "-v", "18", "--yes", "-q")
    assert sl.sql("SELECT setconfig FROM pg_db_role_setting") == "{work_mem=2MB}"


def test_scoped_settings_say_where_and_how_to_reset() -> None:
    from pgmgr.core.upgradeplan import Scoped

    both = Scoped("My db", 'we"ird', "work_mem", "2MB")
    assert both.where() == 'role we"ird in database My db'
    assert both.reset_sql() == 'ALTER ROLE "we""ird" IN DATABASE "My db" RESET work_mem'
    assert Scoped("app", "", "x", "1").reset_sql() == "ALTER DATABASE app RESET x"
