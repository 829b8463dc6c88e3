"""pytest fixtures for PostgreSQL: a temporary server per session, a fresh database per test.

Loaded in every pytest session through the ``pytest11`` entry point, so it is opt-in: nothing
starts unless a test requests a fixture (or carries the ``pgmgr`` marker), and nothing heavy
is imported until then.

- ``pgmgr_server`` (session): a :class:`~pgmgr.core.temporary.TemporaryInstance`, fast
  settings, never registered, removed at the end of the session. Under pytest-xdist each
  worker gets its own server on its own free port.
- ``pgmgr_template`` (session): the name of a database prepared once; override this fixture
  to load a schema into it, and every ``pgmgr_db`` starts as a copy of it.
- ``pgmgr_pool`` (session): a :class:`~pgmgr.core.dbpool.DatabasePool` of ready copies of
  the template, refilled (and used databases dropped) by a background thread; None when
  ini ``pgmgr_pool_size`` is 0.
- ``pgmgr_db`` (function): a fresh copy of the template, taken from the pool (else made
  with ``CREATE DATABASE ... TEMPLATE``), dropped after the test.
- ``@pytest.mark.pgmgr``: the test gets ``pgmgr_db``, and ``DATABASE_URL``/``PG*`` point at it.

Each run of a ``pgmgr_template`` fixture (the plugin's, a user's override that loads a
schema, a module-scoped override run again) starts a new template generation: the pool drops
what it made from the previous one.

Options: ``--pgmgr-version`` / ini ``pgmgr_version``; ini ``pgmgr_settings`` (lines of
``name=value``), ``pgmgr_pool_size`` (default 4; 0 turns the pool off), ``pgmgr_tmpdir``
(where the server's directory goes; default ``auto``: /dev/shm when it is a tmpfs with room).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pgmgr.core.dbpool import DatabasePool
    from pgmgr.core.temporary import TemporaryInstance

TEMPLATE_DB = "pgmgr_template"
POOL_SIZE = 4
MAX_POOL_SIZE = 64
#: The pools (of all xdist workers) hold at most this share of the free space where the
#: servers live.
POOL_SPACE_SHARE = 0.25
#: Only for the plugin's servers: WAL on a memory filesystem is memory (default max 1GB).
PLUGIN_SETTINGS = {"max_wal_size": "256MB"}
#: /dev/shm is used when it is a tmpfs with at least this much room.
MEMORY_FS_MIN = 1 << 30
MEMORY_DIR = "/dev/shm"  # noqa: S108
#: SCRAM iterations of the plugin server's password (see :func:`_cheap_logins`).
LOGIN_ITERATIONS = 16
_counter = itertools.count(1)
_generation = pytest.StashKey[int]()


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
    parser.addini(
        "pgmgr_pool_size",
        "Databases pgmgr keeps ready for pgmgr_db (0: no pool, one CREATE DATABASE per test).",
        default=str(POOL_SIZE),
    )
    parser.addini(
        "pgmgr_tmpdir",
        "Directory for pgmgr_server's files ('auto': /dev/shm if a tmpfs with room, else TMPDIR).",
        default="auto",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "pgmgr: give the test a fresh database (pgmgr_db) and point PG* at it"
    )
    _check_version(config)
    _settings(config)
    _pool_size(config)
    _tmp_root(config)


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


def _settings(config: pytest.Config) -> dict[str, str]:
    """ini ``pgmgr_settings``: ``name=value`` lines, checked as ``-c`` ones are, before any
    test runs (else each test that asks for the server errors with the same traceback).

    :raises pytest.UsageError: a malformed line, or a setting pgmgr manages (``port``).
    """
    lines = config.getini("pgmgr_settings")
    if not lines:
        return {}
    from pgmgr.core import server
    from pgmgr.core.errors import PgmgrError

    try:
        return dict(server.parse_setting(s) for s in lines)
    except PgmgrError as e:
        raise pytest.UsageError(f"pgmgr_settings: {e.message}") from None


def _pool_size(config: pytest.Config) -> int:
    """ini ``pgmgr_pool_size``: a whole number from 0 to :data:`MAX_POOL_SIZE`.

    :raises pytest.UsageError: anything else (pytest prints one ``ERROR:`` line).
    """
    from pgmgr.core import numtext

    text = str(config.getini("pgmgr_pool_size")).strip()
    size = numtext.whole(text)
    if size is None or size > MAX_POOL_SIZE:
        raise pytest.UsageError(
            f"pgmgr_pool_size must be a whole number from 0 (no pool) to {MAX_POOL_SIZE}, "
            f"not {text!r}"
        )
    return size


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[object], request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Count the runs of ``pgmgr_template`` fixtures: each one may have changed the template."""
    yield
    if fixturedef.argname == "pgmgr_template":
        stash = request.config.stash
        stash[_generation] = stash.get(_generation, 0) + 1


def memory_dir(path: str = MEMORY_DIR, need: int | None = None) -> str | None:
    """``path`` if it is a tmpfs mount we can use with ``need`` bytes free (default
    :data:`MEMORY_FS_MIN`), else None."""
    need = MEMORY_FS_MIN if need is None else need
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            mounts = [line.split() for line in f]
        st = os.statvfs(path)
    except OSError:
        return None
    tmpfs = any(m[1:3] == [path, "tmpfs"] for m in mounts if len(m) > 2)
    if tmpfs and st.f_bavail * st.f_frsize >= need and os.access(path, os.W_OK | os.X_OK):
        return path
    return None


def _tmp_root(config: pytest.Config) -> str | None:
    """ini ``pgmgr_tmpdir``: ``auto`` (/dev/shm if fit, else None: the temp dir) or a
    directory.

    :raises pytest.UsageError: not an existing directory.
    """
    value = str(config.getini("pgmgr_tmpdir")).strip() or "auto"
    if value == "auto":
        return memory_dir()
    if not os.path.isdir(value):
        raise pytest.UsageError(f"pgmgr_tmpdir: {value!r} is not a directory (or use 'auto')")
    return value


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
    from pgmgr.core.temporary import TemporaryInstance

    config = request.config
    version = config.getoption("pgmgr_version") or config.getini("pgmgr_version") or None
    settings = _settings(config)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    root = _tmp_root(config)
    if root is None and str(config.getini("pgmgr_tmpdir")).strip() in ("", "auto"):
        _sweep_memory_dir()
    tmp = TemporaryInstance(
        version,
        {**PLUGIN_SETTINGS, **settings},
        prefix=f"pgmgr-pytest-{worker}-",
        root=root,
        guard=True,  # a crashed session must not leave its server running
    )
    # psycopg takes ~100 ms to import, during which the server could be starting: import it
    # in a thread while this one copies the template and waits for postgres (both release
    # the GIL), so the first test waits for the longer of the two, not for their sum.
    importer = threading.Thread(target=_import_psycopg, name="pgmgr-import", daemon=True)
    importer.start()
    try:
        tmp.start()
        importer.join()
        _cheap_logins(tmp)
        yield tmp
    finally:
        tmp.close()


def _sweep_memory_dir() -> None:
    """``auto`` chose the temp dir, /dev/shm lacking room: maybe for the directories of
    sessions killed with their reaper, which only a session starting in /dev/shm swept (a
    full /dev/shm then stayed full, every later session going to the disk)."""
    from pgmgr.core import sweep
    from pgmgr.core.temporary import _default_user

    sweep.dead_runs(_default_user(), also=MEMORY_DIR)


def _cheap_logins(tmp: TemporaryInstance) -> None:
    """Store the superuser's password with :data:`LOGIN_ITERATIONS` rounds of key stretching
    instead of PostgreSQL's 4096: every test that connects over TCP (``pgmgr_db.url``) then
    skips ~5 ms of client CPU (libpq's PBKDF2). The password is random (144 bits), so
    stretching adds nothing; the server is this session's, on loopback, removed at the end."""
    from pgmgr.core import scram
    from pgmgr.core.instance import quote_ident, quote_literal

    inst = tmp.server.inst
    if not inst.password or inst.auth != "scram-sha-256":
        return
    verifier = scram.verifier(inst.password, iterations=LOGIN_ITERATIONS)
    tmp.execute(f"ALTER ROLE {quote_ident(inst.superuser)} PASSWORD {quote_literal(verifier)}")


def _import_psycopg() -> None:
    with contextlib.suppress(ImportError):  # the connection's own import says why
        import psycopg  # noqa: F401


@pytest.fixture(scope="session")
def pgmgr_template(pgmgr_server: TemporaryInstance) -> str:
    """The database every ``pgmgr_db`` is copied from; override it to add a schema."""
    pgmgr_server.create_database(TEMPLATE_DB)
    return TEMPLATE_DB


@pytest.fixture(scope="session")
def pgmgr_pool(
    request: pytest.FixtureRequest, pgmgr_server: TemporaryInstance
) -> Iterator[DatabasePool | None]:
    """Ready copies of the template for ``pgmgr_db`` (None when ``pgmgr_pool_size`` is 0).

    Its databases are not dropped at the end: the server and its directory go next.
    """
    from pgmgr.core.dbpool import DatabasePool

    size = _pool_size(request.config)
    if size == 0:
        yield None
        return

    def connect() -> object:
        import psycopg

        from pgmgr.core import ownconn

        params = ownconn.params(
            {**pgmgr_server.server.conninfo(tcp=False), "application_name": "pgmgr-pool"}
        )
        return psycopg.connect(**params, autocommit=True)  # type: ignore[arg-type]

    st = os.statvfs(pgmgr_server.base or ".")
    # a share for all the xdist workers together: their servers live in the same place
    from pgmgr.core import numtext

    count = numtext.whole(os.environ.get("PYTEST_XDIST_WORKER_COUNT")) or 1
    budget = int(st.f_bavail * st.f_frsize * POOL_SPACE_SHARE / count)
    pool = DatabasePool(connect, size=size, budget=budget)
    try:
        yield pool
    finally:
        pool.close(timeout=0)  # a statement under way ends when the server stops, next


@pytest.fixture
def pgmgr_db(
    request: pytest.FixtureRequest,
    pgmgr_server: TemporaryInstance,
    pgmgr_template: str,
    pgmgr_pool: DatabasePool | None,
) -> Iterator[Database]:
    """A fresh database for this test, a copy of ``pgmgr_template``, dropped afterwards
    (by the pool's worker, after the test, when there is a pool)."""
    if pgmgr_pool is None:
        name = f"test_{os.getpid()}_{next(_counter)}"
        _create(pgmgr_server, name, pgmgr_template)
    else:
        name = pgmgr_pool.acquire(pgmgr_template, request.config.stash.get(_generation, 0))
    env = pgmgr_server.environment(dbname=name)
    try:
        yield Database(name, env["DATABASE_URL"], pgmgr_server.database_dsn(name), env)
    finally:
        if pgmgr_pool is None:
            _drop(pgmgr_server, name)
        else:
            pgmgr_pool.release(name)


def _create(server: TemporaryInstance, name: str, template: str) -> None:
    """Make a test's database (no pool).

    :raises DatabaseException: it could not be made (the template is gone, the server is
        down), as the pool's PoolError says it; not a raw psycopg error from in here.
    """
    import psycopg

    try:
        server.create_database(name, template=template)
    except psycopg.Error as e:
        raise _failed(f"cannot make the test database {name} from {template}", e) from None


def _drop(server: TemporaryInstance, name: str) -> None:
    """Drop a test's database (no pool). One a prepared transaction the test left uses
    cannot be dropped while the server runs: it stays, and goes with the server at the
    end, as the pool leaves it (the test errored at teardown with psycopg's ObjectInUse
    only when the pool was off).

    :raises DatabaseException: it could not be dropped (the server is down).
    """
    import psycopg

    from pgmgr.core.instance import quote_ident

    try:
        try:
            server.drop_database(name)
        except psycopg.errors.WrongObjectType:  # the test made it a template: DROP refuses
            server.execute(f"ALTER DATABASE {quote_ident(name)} WITH IS_TEMPLATE false")
            server.drop_database(name)
    except psycopg.errors.ObjectInUse:
        pass
    except psycopg.Error as e:
        raise _failed(f"cannot drop the test database {name}", e) from None


def _failed(what: str, e: Exception) -> Exception:
    from pgmgr.core.errors import DatabaseException

    return DatabaseException(f"{what}: {' '.join(str(e).split())}")


@pytest.fixture(autouse=True)
def _pgmgr_marker(request: pytest.FixtureRequest) -> Iterator[None]:
    """For tests marked ``pgmgr``: a fresh database, with DATABASE_URL and PG* set to it (a
    PGSERVICE or PGHOSTADDR of the session, which would send the test elsewhere, unset)."""
    if request.node.get_closest_marker("pgmgr") is None:
        yield
        return
    from pgmgr.core import ownconn

    db: Database = request.getfixturevalue("pgmgr_db")
    with pytest.MonkeyPatch.context() as mp:
        for key in ownconn.stray_targets(db.env):
            mp.delenv(key)
        for key, value in db.env.items():
            mp.setenv(key, value)
        yield
