"""pytest fixtures for PostgreSQL: a temporary server per session, a fresh database per test.

Loaded in every pytest session through the ``pytest11`` entry point, so it is opt-in: nothing
starts unless a test requests a fixture (or carries the ``pgmgr`` marker), and nothing heavy
is imported until then.

- ``pgmgr_server`` (session): a :class:`~pgmgr.core.temporary.TemporaryInstance`, fast
  settings, never registered, removed at the end of the session. Under pytest-xdist each
  worker gets its own server on its own free port.
- ``pgmgr_template`` (session): the name of a database prepared once; override this fixture
  to load a schema into it, and every ``pgmgr_db`` starts as a copy of it.
- ``pgmgr_db`` (function): a new database made with ``CREATE DATABASE ... TEMPLATE``
  (milliseconds), dropped after the test.
- ``@pytest.mark.pgmgr``: the test gets ``pgmgr_db``, and ``DATABASE_URL``/``PG*`` point at it.

Options: ``--pgmgr-version`` / ini ``pgmgr_version``; ini ``pgmgr_settings`` (lines of
``name=value``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pgmgr.core.temporary import TemporaryInstance

TEMPLATE_DB = "pgmgr_template"
_counter = itertools.count(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pgmgr", "PostgreSQL fixtures (pgmgr)")
    group.addoption(
        "--pgmgr-version",
        dest="pgmgr_version",
        default=None,
        help="PostgreSQL version for the pgmgr_server fixture (default: pgmgr's choice).",
    )
    parser.addini("pgmgr_version", "PostgreSQL version for pgmgr_server.", default="")
    parser.addini(
        "pgmgr_settings", "Server settings for pgmgr_server (name=value lines).", type="linelist"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "pgmgr: give the test a fresh database (pgmgr_db) and point PG* at it"
    )
    _check_version(config)


def _check_version(config: pytest.Config) -> None:
    """A version given to the plugin that is malformed or not installed stops the session
    at once with one usage error naming the option, not an error in every test that asks
    for a server. Nothing is looked up (or imported) unless a version is given.

    :raises pytest.UsageError: the version is malformed or not installed.
    """
    value, option = config.getoption("pgmgr_version"), "--pgmgr-version"
    if not value:
        value, option = config.getini("pgmgr_version"), "ini option pgmgr_version"
    if not value:
        return
    from pgmgr.core import versions
    from pgmgr.core.errors import PgmgrError

    try:
        wanted = versions.check_version_string(value, option)
        installed = versions.discover()
    except PgmgrError as e:
        raise pytest.UsageError(str(e)) from None
    if not any(versions.matches(inst, wanted) for inst in installed):
        have = ", ".join(inst.version for inst in installed) or "none"
        raise pytest.UsageError(
            f"{option} {wanted}: PostgreSQL {wanted} is not installed (installed: {have}; "
            "see 'pgmgr versions')"
        )


@dataclass(frozen=True)
class Database:
    """One test's database on the session server."""

    name: str
    url: str
    dsn: str
    env: dict[str, str]


@pytest.fixture(scope="session")
def pgmgr_server(request: pytest.FixtureRequest) -> Iterator[TemporaryInstance]:
    """A temporary PostgreSQL server for this session (or this xdist worker)."""
    from pgmgr.core import server
    from pgmgr.core.temporary import TemporaryInstance

    config = request.config
    version = config.getoption("pgmgr_version") or config.getini("pgmgr_version") or None
    settings = dict(server.parse_setting(s) for s in config.getini("pgmgr_settings"))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    tmp = TemporaryInstance(version, settings, prefix=f"pgmgr-pytest-{worker}-")
    tmp.start()
    try:
        yield tmp
    finally:
        tmp.close()


@pytest.fixture(scope="session")
def pgmgr_template(pgmgr_server: TemporaryInstance) -> str:
    """The database every ``pgmgr_db`` is copied from; override it to add a schema."""
    pgmgr_server.create_database(TEMPLATE_DB)
    return TEMPLATE_DB


@pytest.fixture
def pgmgr_db(pgmgr_server: TemporaryInstance, pgmgr_template: str) -> Iterator[Database]:
    """A fresh database for this test, a copy of ``pgmgr_template``, dropped afterwards."""
    name = f"test_{os.getpid()}_{next(_counter)}"
    pgmgr_server.create_database(name, template=pgmgr_template)
    env = pgmgr_server.environment(dbname=name)
    try:
        yield Database(name, env["DATABASE_URL"], pgmgr_server.database_dsn(name), env)
    finally:
        pgmgr_server.drop_database(name)


@pytest.fixture(autouse=True)
def _pgmgr_marker(request: pytest.FixtureRequest) -> Iterator[None]:
    """For tests marked ``pgmgr``: a fresh database, with DATABASE_URL and PG* set to it."""
    if request.node.get_closest_marker("pgmgr") is None:
        yield
        return
    db: Database = request.getfixturevalue("pgmgr_db")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in db.env.items():
            mp.setenv(key, value)
        yield
