"""Version choice (pg_version, POSTGRES_VERSION, highest under /usr/lib/postgresql, the data
dir's PG_VERSION pin) and initialization (iff the data dir does not exist; initdb failures)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from pgmgr import DatabaseException, Manager, WorkerError
from pgmgr.core import registry
from pgmgr.core.errors import CommandFailed, PgmgrError
from pgmgr.core.server import free_port
from pgmgr.core.versions import DEFAULT_ROOT, version_key
from tests.core.support import (
    TEMPLATE_PASSWORD,
    VERSIONS,
    ManagerFactory,
)
from tests.helpers import copy_datadir, postmasters_under

NASTY_PASSWORD = "p@ss w'o:r/d\\%?#&="


def _major(m: Manager) -> str:
    return m.status().version.split(".")[0]


def _nothing_spawned(datadir: Path) -> None:
    assert postmasters_under(datadir.parent) == []
    assert registry.names() == []
    logs = Path(os.environ["PGMGR_STATE_DIR"]) / "logs"
    assert not logs.exists() or list(logs.iterdir()) == []


# --------------------------------------------------------------------------- version choice


def test_pg_version_chooses(work_dir: Path, pg_version: str) -> None:
    m = Manager("127.0.0.1", 5999, work_dir / "none", pg_version=pg_version)
    assert _major(m) == pg_version
    assert m.status().state == "missing"


@pytest.mark.parametrize("env_version", VERSIONS)
def test_postgres_version_env_chooses(
    work_dir: Path, monkeypatch: pytest.MonkeyPatch, env_version: str
) -> None:
    monkeypatch.setenv("POSTGRES_VERSION", env_version)
    assert _major(Manager("127.0.0.1", 5999, work_dir / "none")) == env_version


def test_pg_version_beats_the_environment(work_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_VERSION", "18")
    assert _major(Manager("127.0.0.1", 5999, work_dir / "none", pg_version="15")) == "15"


def test_default_is_the_highest_under_usr_lib_postgresql(work_dir: Path) -> None:
    root = Path(DEFAULT_ROOT)
    majors = [p.name for p in root.iterdir() if (p / "bin" / "postgres").is_file()]
    if not majors:
        pytest.skip(f"nothing installed under {root}")
    expected = max(majors, key=version_key)
    # 18 (embedded) is higher, but the seed's rule picks the highest under the root.
    assert _major(Manager("127.0.0.1", 5999, work_dir / "none")) == expected


@pytest.mark.parametrize("bad", ["11", "99.1"])
def test_version_not_installed(work_dir: Path, bad: str) -> None:
    with pytest.raises(DatabaseException, match=f"PostgreSQL {bad} .*is not installed"):
        Manager("127.0.0.1", 5999, work_dir / "none", pg_version=bad)


def test_malformed_version_is_a_database_exception(work_dir: Path) -> None:
    with pytest.raises(DatabaseException, match="invalid"):
        Manager("127.0.0.1", 5999, work_dir / "none", pg_version="fifteen")


# --------------------------------------------------------------------------- PG_VERSION pin


@pytest.mark.parametrize(("on_disk", "asked"), [("15", "18"), ("18", "15")])
def test_pg_version_pin_mismatch_refused_before_spawning(
    templates: Callable[[str], Path], work_dir: Path, on_disk: str, asked: str
) -> None:
    datadir = copy_datadir(templates(on_disk), work_dir / "data")
    with pytest.raises(DatabaseException, match=f"is PostgreSQL {on_disk}.*version {asked}"):
        Manager("127.0.0.1", free_port("127.0.0.1"), datadir, pg_version=asked)
    with pytest.raises(DatabaseException, match=f"is PostgreSQL {on_disk}"):
        Manager("127.0.0.1", 5999, datadir, initialize=True, pg_version=asked)
    _nothing_spawned(datadir)
    assert (datadir / "PG_VERSION").read_text().strip() == on_disk


def test_pg_version_pin_mismatch_refused_for_a_registered_instance(
    datadir: Path, pg_version: str, managers: ManagerFactory
) -> None:
    m = managers(datadir)
    with m:
        pass
    assert registry.names() == [m.name]
    other = "18" if pg_version == "15" else "15"
    with pytest.raises(DatabaseException, match=f"is PostgreSQL {pg_version}"):
        Manager("127.0.0.1", m.port, datadir, pg_version=other)


@pytest.mark.parametrize("env_version", VERSIONS)
def test_pg_version_pin_wins_over_postgres_version(
    datadir: Path,
    pg_version: str,
    managers: ManagerFactory,
    monkeypatch: pytest.MonkeyPatch,
    env_version: str,
) -> None:
    monkeypatch.setenv("POSTGRES_VERSION", env_version)
    m = managers(datadir)
    assert _major(m) == pg_version
    with m, psycopg.connect(m.dsn) as conn:
        assert conn.info.server_version // 10000 == int(pg_version)


def test_full_version_of_the_same_major_is_accepted(
    datadir: Path, pg_version: str, managers: ManagerFactory
) -> None:
    full = Manager("127.0.0.1", 5999, datadir, pg_version=pg_version).status().version
    m = managers(datadir, pg_version=full)
    with m:
        m.health()


# --------------------------------------------------------------------------- initialize


def test_initialize_a_new_data_dir(
    work_dir: Path, pg_version: str, managers: ManagerFactory
) -> None:
    datadir = work_dir / "new" / "data"
    m = managers(
        datadir,
        initialize=True,
        pg_version=pg_version,
        superuser="admin",
        password=NASTY_PASSWORD,
        initdb_args=["--no-sync"],
    )
    assert (datadir / "PG_VERSION").read_text().strip() == pg_version
    assert stat.S_IMODE(datadir.stat().st_mode) == 0o700
    record = registry.record_path(m.name)
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert registry.load(m.name).password == NASTY_PASSWORD
    with m:
        for target in (m.dsn, m.url):
            with psycopg.connect(target) as conn:
                assert conn.execute("SELECT current_user").fetchone() == ("admin",)
                enc = conn.execute("SHOW server_encoding").fetchone()
                assert enc == ("UTF8",)
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(host="127.0.0.1", port=m.port, user="admin", dbname="postgres")


def test_initialize_generates_a_password(work_dir: Path, managers: ManagerFactory) -> None:
    m = managers(work_dir / "data", initialize=True, pg_version="15", initdb_args=["-N"])
    assert m.password and len(m.password) >= 16
    assert m.password in m.dsn and m.password in m.url
    with m:
        psycopg.connect(m.dsn).close()


def test_initialize_with_trust_needs_no_password(
    work_dir: Path, pg_version: str, managers: ManagerFactory
) -> None:
    m = managers(
        work_dir / "data", initialize=True, pg_version=pg_version, auth="trust", initdb_args=["-N"]
    )
    assert m.password is None and "password" not in m.dsn
    with m:
        psycopg.connect(host="127.0.0.1", port=m.port, user="postgres", dbname="postgres").close()


def test_initialize_an_empty_existing_dir(work_dir: Path, managers: ManagerFactory) -> None:
    datadir = work_dir / "empty"
    datadir.mkdir()
    managers(datadir, initialize=True, pg_version="18", initdb_args=["-N"])
    assert (datadir / "PG_VERSION").read_text().strip() == "18"


def test_an_existing_data_dir_is_not_reinitialized(
    datadir: Path, pg_version: str, managers: ManagerFactory
) -> None:
    marker = datadir / "marker-from-test"
    marker.write_text("kept")
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in datadir.rglob("*")}
    m = managers(datadir, initialize=True, pg_version=pg_version, password=TEMPLATE_PASSWORD)
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in datadir.rglob("*")}
    assert after == before
    assert marker.read_text() == "kept"
    with m:  # the template's password still works: the catalog is the old one
        psycopg.connect(m.dsn).close()


def test_a_non_empty_non_postgres_dir_is_refused(work_dir: Path) -> None:
    target = work_dir / "mine"
    target.mkdir()
    (target / "precious.txt").write_text("do not touch")
    with pytest.raises(DatabaseException, match="not empty and is not a PostgreSQL data dir"):
        Manager("127.0.0.1", 5999, target, initialize=True, pg_version="15")
    assert [p.name for p in target.iterdir()] == ["precious.txt"]
    assert (target / "precious.txt").read_text() == "do not touch"


def test_a_file_is_refused(work_dir: Path) -> None:
    target = work_dir / "file"
    target.write_text("x")
    with pytest.raises(DatabaseException, match="not a directory"):
        Manager("127.0.0.1", 5999, target, initialize=True, pg_version="15")


def test_without_initialize_a_missing_dir_is_not_created(work_dir: Path) -> None:
    m = Manager("127.0.0.1", free_port("127.0.0.1"), work_dir / "absent", pg_version="15")
    with pytest.raises(PgmgrError, match="does not exist"):
        m.start()
    assert not (work_dir / "absent").exists()
    with pytest.raises(WorkerError):
        m.health()


# --------------------------------------------------------------------------- initdb failures


def test_initdb_failure_keeps_stderr_and_removes_what_it_made(
    work_dir: Path, pg_version: str
) -> None:
    datadir = work_dir / "made" / "data"
    with pytest.raises(DatabaseException) as info:
        Manager(
            "127.0.0.1",
            5999,
            datadir,
            initialize=True,
            pg_version=pg_version,
            initdb_args=["--no-such-option"],
        )
    err = info.value
    assert isinstance(err, CommandFailed)
    assert "unrecognized option" in err.stderr and "--no-such-option" in err.stderr
    assert "--no-such-option" in str(err)  # the message states the error, not the hint
    assert err.returncode != 0
    assert not datadir.exists()
    _nothing_spawned(datadir)


def test_initdb_failure_in_an_empty_dir_leaves_it_empty(work_dir: Path) -> None:
    datadir = work_dir / "empty"
    datadir.mkdir()
    with pytest.raises(DatabaseException, match="invalid locale name"):
        Manager(
            "127.0.0.1", 5999, datadir, initialize=True, pg_version="18", locale="xx_NOPE.UTF-9"
        )
    assert datadir.is_dir() and list(datadir.iterdir()) == []


def test_bad_locale_is_a_database_exception_with_stderr(work_dir: Path, pg_version: str) -> None:
    with pytest.raises(DatabaseException, match="invalid locale name") as info:
        Manager(
            "127.0.0.1",
            5999,
            work_dir / "data",
            initialize=True,
            pg_version=pg_version,
            locale="xx_NOPE",
        )
    assert 'invalid locale name "xx_NOPE"' in info.value.stderr  # type: ignore[attr-defined]


def test_bad_options_are_refused(work_dir: Path) -> None:
    d = work_dir / "data"
    with pytest.raises(DatabaseException, match="invalid auth"):
        Manager("127.0.0.1", 5999, d, initialize=True, pg_version="15", auth="ident-ish")
    with pytest.raises(DatabaseException, match="managed by pgmgr"):
        Manager("127.0.0.1", 5999, d, pg_version="15", settings={"port": "1"})
    with pytest.raises(DatabaseException, match="line break"):
        Manager("127.0.0.1", 5999, d, pg_version="15", settings={"work_mem": "1\nfsync=off"})
    with pytest.raises(DatabaseException, match="db_dir is required"):
        Manager("127.0.0.1", 5999, "")
    with pytest.raises(TypeError, match="unknown option"):
        Manager("127.0.0.1", 5999, d, pg_version="15", colour="blue")
    assert not d.exists()
