"""The plugin's database pool (pgmgr.core.dbpool), through small example suites run with
pytester against real servers: isolation, template invalidation, failing tests, a server
restarting under the pool, and a session ending with databases still in the pool."""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgmgr.core import process
from pgmgr.core.dbpool import TRIALS, DatabasePool, PoolError
from pgmgr.core.temporary import TemporaryInstance
from pgmgr.pytest_plugin import memory_dir
from tests.helpers import postgres_pids_under, postmasters_under, wait_not_in_use
from tests.ops.test_plugin import assert_nothing_left

CONFTEST = """
import pytest


@pytest.fixture(scope="session")
def pgmgr_template(pgmgr_server, pgmgr_template):
    pgmgr_server.execute("create table t (x int)", dbname=pgmgr_template)
    return pgmgr_template
"""

RECORDER = """
import json, os


def record(**facts):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(os.environ["RECORD_DIR"], worker), "a") as f:
        f.write(json.dumps({"worker": worker, **facts}) + "\\n")
"""

#: Each test makes a table of its own, then checks it sees only the template's and its own.
ISOLATION = """
import psycopg
import pytest
from recorder import record


def tables(conn):
    rows = conn.execute(
        "select table_name from information_schema.tables where table_schema = 'public'"
    )
    return sorted(r[0] for r in rows)


@pytest.mark.parametrize("i", range(12))
def test_alone(pgmgr_db, pgmgr_server, i):
    with psycopg.connect(pgmgr_db.dsn) as conn:
        assert tables(conn) == ["t"]
        assert conn.execute("select count(*) from t").fetchone() == (0,)
        conn.execute(f"create table mine_{i} (x int)")
        conn.execute("insert into t values (1)")
        conn.commit()
        assert tables(conn) == ["mine_%d" % i, "t"]
    record(db=pgmgr_db.name, port=pgmgr_server.server.inst.port)
"""


def ini(tmp: Path, pool_size: int = 2) -> str:
    return f"""
[pytest]
pgmgr_version = 15
pgmgr_pool_size = {pool_size}
pgmgr_tmpdir = {tmp}
"""


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for f in path.iterdir() for line in f.read_text().splitlines()]


@pytest.fixture
def suite(
    pytester: pytest.Pytester, ops_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    pytester.makeini(ini(ops_dir / "tmp"))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(recorder=RECORDER)
    rec = ops_dir / "records"
    rec.mkdir()
    monkeypatch.setenv("RECORD_DIR", str(rec))
    return pytester


def run(suite: pytest.Pytester, *args: str) -> pytest.RunResult:
    return suite.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=150)


@pytest.mark.parametrize("pool_size", [2, 0], ids=["pool", "no-pool"])
def test_no_test_sees_another_tests_tables(
    suite: pytest.Pytester, ops_dir: Path, pool_size: int
) -> None:
    suite.makeini(ini(ops_dir / "tmp", pool_size))
    suite.makepyfile(test_iso=ISOLATION)
    run(suite).assert_outcomes(passed=12)
    names = [r["db"] for r in records(ops_dir / "records")]
    assert len(names) == 12 and len(set(names)) == 12  # never one database twice
    assert_nothing_left(ops_dir)


@pytest.mark.skipif(importlib.util.find_spec("xdist") is None, reason="needs pytest-xdist")
def test_isolation_under_xdist(suite: pytest.Pytester, ops_dir: Path) -> None:
    suite.makepyfile(test_iso=ISOLATION)
    run(suite, "-p", "xdist", "-n", "2").assert_outcomes(passed=12)
    recs = records(ops_dir / "records")
    assert len({r["db"] for r in recs}) == 12
    ports = {r["worker"]: {r["port"]} for r in recs}
    assert len(ports) == 2 and len(set.union(*ports.values())) == 2  # a server per worker
    assert_nothing_left(ops_dir)


def test_a_changed_template_invalidates_the_pool(suite: pytest.Pytester, ops_dir: Path) -> None:
    """Module b's override adds a table to the template after module a's tests: the pool
    (warm with copies made before) must not hand those out to module b."""
    head = """
import time
import psycopg
from recorder import record

"""
    body = """
def test_{n}(pgmgr_db, pgmgr_pool):
    with psycopg.connect(pgmgr_db.dsn) as conn:
        rows = conn.execute("select table_name from information_schema.tables "
                            "where table_schema = 'public' order by 1").fetchall()
    record(tables=[r[0] for r in rows])
    for _ in range(600):  # module a's last test leaves the pool warm
        if {n!r} != "a3" or pgmgr_pool.ready():
            break
        time.sleep(0.05)
"""
    suite.makepyfile(**{"a/test_a": head + "".join(body.format(n=f"a{i}") for i in range(4))})
    suite.makepyfile(**{"b/test_b": head + "".join(body.format(n=f"b{i}") for i in range(4))})
    suite.makepyfile(
        **{
            "b/conftest": """
import pytest


@pytest.fixture(scope="module")
def pgmgr_template(pgmgr_server, pgmgr_template):
    pgmgr_server.execute("create table extra (x int)", dbname=pgmgr_template)
    return pgmgr_template
"""
        }
    )
    run(suite, "a", "b").assert_outcomes(passed=8)
    recs = records(ops_dir / "records")
    assert [r["tables"] for r in recs] == [["t"]] * 4 + [["extra", "t"]] * 4
    assert_nothing_left(ops_dir)


def test_failing_tests_leave_the_pool_working(suite: pytest.Pytester, ops_dir: Path) -> None:
    """A failure with a transaction open and a lock held, a connection leaked for good, an
    error in the middle of the set-up of another fixture: later tests are unaffected and
    the used databases are dropped (their sessions disconnected)."""
    suite.makepyfile(
        test_fail="""
import psycopg
import pytest

LEAKED = []


def test_fails_in_a_transaction(pgmgr_db):
    conn = psycopg.connect(pgmgr_db.dsn)
    LEAKED.append(conn)  # never closed
    conn.execute("lock table t in access exclusive mode")
    conn.execute("insert into t values (1)")
    raise RuntimeError("boom")


@pytest.fixture
def broken(pgmgr_db):
    raise RuntimeError("fixture boom")


def test_fixture_error(broken):
    pass


@pytest.mark.parametrize("i", range(6))
def test_later(pgmgr_db, pgmgr_pool, i):
    with psycopg.connect(pgmgr_db.dsn) as conn:
        assert conn.execute("select count(*) from t").fetchone() == (0,)


def test_used_databases_were_dropped(pgmgr_server, pgmgr_pool):
    import time

    for _ in range(200):
        with psycopg.connect(pgmgr_server.dsn) as conn:
            names = {r[0] for r in conn.execute("select datname from pg_database")}
            busy = conn.execute(
                "select count(*) from pg_stat_activity where datname like 'test%'"
            ).fetchone()[0]
        pooled = {n for n in names if n.startswith("test_")}
        if pooled <= set(pgmgr_pool.ready()) and busy == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"still there: {pooled - set(pgmgr_pool.ready())}, {busy} sessions")
"""
    )
    result = run(suite)
    result.assert_outcomes(passed=7, failed=1, errors=1)
    assert_nothing_left(ops_dir)


def test_a_server_restart_under_the_pool(suite: pytest.Pytester, ops_dir: Path) -> None:
    """The server is restarted (immediate: crash recovery) and the pool's connection is
    terminated between tests: the worker reconnects and later tests get fresh databases."""
    suite.makepyfile(
        test_restart="""
import psycopg
import pytest


def use(db):
    with psycopg.connect(db.dsn) as conn:
        assert conn.execute("select count(*) from t").fetchone() == (0,)
        conn.execute("insert into t values (1)")


def test_before(pgmgr_db):
    use(pgmgr_db)


def test_restart(pgmgr_db, pgmgr_server):
    use(pgmgr_db)
    pgmgr_server.restart("immediate")


@pytest.mark.parametrize("i", range(5))
def test_after_restart(pgmgr_db, i):
    use(pgmgr_db)


def test_kill_pool_session(pgmgr_db, pgmgr_server):
    with psycopg.connect(pgmgr_server.dsn, autocommit=True) as conn:
        conn.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                     "where application_name = 'pgmgr-pool'")


@pytest.mark.parametrize("i", range(5))
def test_after_kill(pgmgr_db, pgmgr_pool, i):
    use(pgmgr_db)
"""
    )
    run(suite).assert_outcomes(passed=13)
    assert_nothing_left(ops_dir)


def test_session_ends_with_databases_in_the_pool(suite: pytest.Pytester, ops_dir: Path) -> None:
    """A big pool, one short test: the session ends while the worker is still making
    databases. Nothing is left: no server, no directory."""
    suite.makeini(ini(ops_dir / "tmp", 8))
    suite.makepyfile(
        test_one="""
def test_one(pgmgr_db, pgmgr_pool):
    assert pgmgr_pool.size == 8
"""
    )
    run(suite).assert_outcomes(passed=1)
    assert_nothing_left(ops_dir)


def test_memory_dir_by_default(suite: pytest.Pytester, ops_dir: Path) -> None:
    """``pgmgr_tmpdir = auto``: the server lives in /dev/shm when it is a tmpfs with room
    (else in TMPDIR), and is removed from there too."""
    suite.makeini("[pytest]\npgmgr_version = 15\n")
    suite.makepyfile(
        test_where="""
from recorder import record
from pgmgr.pytest_plugin import memory_dir


def test_where(pgmgr_db, pgmgr_server):
    record(base=str(pgmgr_server.base), memory=memory_dir())
"""
    )
    run(suite).assert_outcomes(passed=1)
    (rec,) = records(ops_dir / "records")
    base = Path(str(rec["base"]))
    expected = Path(str(rec["memory"] or ops_dir / "tmp"))
    assert base.parent == expected
    assert not base.exists() and postmasters_under(base) == []
    assert_nothing_left(ops_dir)


def test_a_session_killed_mid_way_leaves_nothing(suite: pytest.Pytester, ops_dir: Path) -> None:
    """A test kills its own pytest process (SIGKILL: no finalizer runs) while the pool is
    busy: the reaper stops the server and removes its directory."""
    suite.makepyfile(
        test_crash="""
import os, signal


def test_first(pgmgr_db):
    pass


def test_crash(pgmgr_db):
    os.kill(os.getpid(), signal.SIGKILL)
"""
    )
    result = run(suite)
    assert result.ret == -signal.SIGKILL
    tmp = ops_dir / "tmp"
    deadline = time.monotonic() + 60
    while (postmasters_under(tmp) or any(tmp.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert_nothing_left(ops_dir)


@pytest.mark.skipif(importlib.util.find_spec("xdist") is None, reason="needs pytest-xdist")
def test_xdist_workers_share_the_space_budget(suite: pytest.Pytester, ops_dir: Path) -> None:
    """The pool may hold a quarter of the free space where the servers live, all workers
    together: each of N xdist workers took a quarter for itself (4 workers: all of a
    /dev/shm, for a big template)."""
    suite.makepyfile(
        test_budget="""
import os
from recorder import record


def test_budget(pgmgr_pool, pgmgr_server):
    st = os.statvfs(pgmgr_server.base)
    record(budget=pgmgr_pool.budget, free=st.f_bavail * st.f_frsize)
"""
    )
    run(suite, "-p", "xdist", "-n", "2").assert_outcomes(passed=1)
    (rec,) = records(ops_dir / "records")
    share = rec["budget"] / rec["free"]  # type: ignore[operator]
    assert 0.1 < share < 0.15, share  # a quarter for two workers: an eighth each
    assert_nothing_left(ops_dir)


@pytest.mark.skipif(memory_dir() is None, reason="needs /dev/shm (a tmpfs with room)")
def test_a_session_that_finds_dev_shm_full_sweeps_it_still(
    suite: pytest.Pytester, ops_dir: Path
) -> None:
    """Dead sessions' directories (killed with their reaper) in /dev/shm can leave it
    short of room: ``auto`` then goes to the temp dir, and still sweeps /dev/shm, or the
    next sessions never would (only a session starting there swept it). /dev/shm being
    short of room is mocked (MEMORY_FS_MIN raised in the suite's conftest); the dead
    session's directory is a real one of a gone process, in the real /dev/shm."""
    dead = Path(tempfile.mkdtemp(prefix="pgmgr-pytest-main-", dir="/dev/shm"))
    try:
        gone = subprocess.Popen(["true"])
        gone.wait()
        (dead / "pgmgr.owner").write_text(f"{gone.pid} 1\n")
        (dead / "data").mkdir()
        suite.makeini("[pytest]\npgmgr_version = 15\npgmgr_pool_size = 0\n")
        suite.makeconftest(
            "import pgmgr.pytest_plugin\npgmgr.pytest_plugin.MEMORY_FS_MIN = 1 << 62\n"
        )
        suite.makepyfile(test_full="def test_full(pgmgr_server):\n    pass\n")
        run(suite).assert_outcomes(passed=1)
        assert not dead.exists()
    finally:
        shutil.rmtree(dead, ignore_errors=True)
    assert_nothing_left(ops_dir)


def test_the_next_session_sweeps_a_dead_one_in_its_own_tmpdir(
    suite: pytest.Pytester, ops_dir: Path
) -> None:
    """A session killed with its reaper (an OOM kill, a container stopped: everything at
    once) leaves its directory in ``pgmgr_tmpdir`` (/dev/shm by default, memory): the next
    session there removes it. Only the temp dir was swept, so a /dev/shm one stayed."""
    shm = ops_dir / "shm"  # not TMPDIR (ops_dir/tmp), as /dev/shm is not
    shm.mkdir(mode=0o755)
    suite.makeini(ini(shm))
    suite.makepyfile(
        test_crash="""
import os, signal


def test_crash(pgmgr_server):
    os.kill(pgmgr_server._reaper.pid, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
"""
    )
    assert run(suite).ret == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while postgres_pids_under(shm) and time.monotonic() < deadline:  # and its backends
        time.sleep(0.05)
    (left,) = shm.iterdir()
    assert not wait_not_in_use([left])  # and the reaper killed with it
    suite.makepyfile(test_crash="def test_next(pgmgr_server):\n    pass\n")
    run(suite).assert_outcomes(passed=1)
    assert not left.exists() and list(shm.iterdir()) == []
    assert_nothing_left(ops_dir)


def test_a_server_started_from_a_thread_outlives_the_thread(ops_dir: Path) -> None:
    """A temporary server is stopped when its process dies (PR_SET_PDEATHSIG), but the
    kernel sends that signal when the *thread* that spawned it ends: started from a worker
    thread, it was stopped as soon as that thread finished, under the process using it."""
    tmp = TemporaryInstance("15", root=str(ops_dir / "tmp"))
    failed: list[BaseException] = []

    def start() -> None:
        try:
            tmp.start()
        except BaseException as e:
            failed.append(e)

    worker = threading.Thread(target=start, daemon=True)
    try:
        worker.start()
        worker.join(120)
        assert not worker.is_alive(), "the start from a thread did not end within 120 s"
        assert failed == []
        pid = tmp.server.child.pid if tmp.server.child else 0
        time.sleep(0.5)  # the signal comes at the thread's end: it has had time to act
        assert process.is_alive(pid)
        tmp.execute("select 1")
    finally:
        tmp.close()
    assert_nothing_left(ops_dir)


@pytest.fixture
def tmp_server(ops_dir: Path) -> Iterator[TemporaryInstance]:
    with TemporaryInstance("15", root=str(ops_dir / "tmp")) as tmp:
        yield tmp


def pool_for(tmp: TemporaryInstance, size: int = 2) -> DatabasePool:
    def connect() -> object:
        import psycopg

        return psycopg.connect(**tmp.server.conninfo(tcp=False), autocommit=True)  # type: ignore[arg-type]

    return DatabasePool(connect, size=size)


def test_pool_strategies_names_and_errors(tmp_server: TemporaryInstance) -> None:
    """Direct use: both strategies are tried and one kept; a new template name is a new
    snapshot; a template that cannot be copied gives PoolError with PostgreSQL's reason;
    ``close(drain=True)`` drops everything the pool made."""
    tmp_server.create_database("one")
    tmp_server.create_database("two")
    tmp_server.execute("create table only_in_two (x int)", dbname="two")
    pool = pool_for(tmp_server)
    try:
        count = 2 * TRIALS + 1  # the last copy is made with the strategy kept
        names = [pool.acquire("one") for _ in range(count)]
        assert len(set(names)) == count
        with pool._cond:  # every copy was made with a strategy and timed, the first too
            assert sum(map(len, pool.stats.timings.values())) == pool.stats.created
        assert pool.stats.strategy in ("WAL_LOG", "FILE_COPY")
        assert {s: len(t) >= TRIALS for s, t in pool.stats.timings.items()} == {
            "WAL_LOG": True,
            "FILE_COPY": True,
        }
        for name in names:
            pool.release(name)
        db = pool.acquire("two")
        import psycopg

        params = tmp_server.server.conninfo(tcp=False)
        with psycopg.connect(**{**params, "dbname": db}) as conn:  # type: ignore[arg-type]
            assert conn.execute("select count(*) from only_in_two").fetchone() == (0,)
        assert pool.stats.invalidations == 1
        # the snapshot is a FILE_COPY: it (and its copies) keep the template's relcache init
        # file, which "two" has since its connection above
        # missing_ok: the pool makes and drops copies in the background meanwhile, and a
        # database listed in pg_database can have no directory yet, or none any more
        # (CI failed once: 'could not open directory "base/16390"').
        sql = (
            "select pg_ls_dir('base/' || oid, true, false) from pg_database"
            " where datname like 'pgmgr_pool%'"
        )
        deadline = time.monotonic() + 60
        while pool.stats.snapshots < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        with psycopg.connect(**params) as conn:  # type: ignore[arg-type]
            assert "pg_internal.init" in {r[0] for r in conn.execute(sql)}
        with pytest.raises(PoolError, match='database "missing" does not exist'):
            pool.acquire("missing", timeout=60)
    finally:
        pool.close(drain=True)
    with psycopg.connect(**params) as conn:  # type: ignore[arg-type]
        left = [r[0] for r in conn.execute("select datname from pg_database")]
    assert sorted(left) == sorted(["one", "postgres", "template0", "template1", "two", db])


def test_a_prepared_transaction_left_in_a_database_does_not_stop_the_pool(
    ops_dir: Path,
) -> None:
    """DROP ... WITH (FORCE) fails while a prepared transaction uses the database: the pool
    leaves that one to the server's end instead of retrying it for ever, which (with one
    place for used databases) made every later acquire fail with PoolError."""
    import psycopg

    with TemporaryInstance(
        "15", {"max_prepared_transactions": "2"}, root=str(ops_dir / "tmp")
    ) as tmp:
        tmp.create_database("tpl")
        pool = pool_for(tmp, size=1)
        pool.max_pending = 1
        try:
            used = pool.acquire("tpl")
            params = {**tmp.server.conninfo(tcp=False), "dbname": used}
            with psycopg.connect(**params) as conn:  # type: ignore[arg-type]
                conn.execute("create table t (x int)")
                conn.execute("prepare transaction 'left behind'")
            pool.release(used)
            for _ in range(3):
                pool.release(pool.acquire("tpl", timeout=30))
            assert pool.stats.abandoned == [used]
        finally:
            pool.close(timeout=5)


def test_a_snapshot_dropped_by_a_test_is_taken_again(tmp_server: TemporaryInstance) -> None:
    """A test that drops every database it finds drops the pool's snapshot too: the pool
    takes a new one (it copied from the missing one in a loop, and every later test waited
    for its timeout)."""
    tmp_server.create_database("tpl")
    pool = pool_for(tmp_server)
    try:
        pool.release(pool.acquire("tpl"))
        deadline = time.monotonic() + 60
        while pool.stats.snapshots < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        snapshot = pool._snapshot
        assert snapshot is not None
        tmp_server.execute(f'DROP DATABASE "{snapshot}"')
        for _ in range(4):
            pool.release(pool.acquire("tpl", timeout=30))
        assert pool.stats.snapshots == 2 and pool._snapshot != snapshot
    finally:
        pool.close(timeout=5)


@pytest.mark.parametrize(
    ("ini_line", "message"),
    [
        ("pgmgr_pool_size = -1", "*pgmgr_pool_size must be a whole number from 0*'-1'*"),
        ("pgmgr_pool_size = 65", "*pgmgr_pool_size must be a whole number from 0*"),
        ("pgmgr_tmpdir = /nonexistent/x", "*pgmgr_tmpdir: '/nonexistent/x' is not a directory*"),
    ],
)
def test_bad_pool_settings_are_one_clear_error(
    pytester: pytest.Pytester, ops_dir: Path, ini_line: str, message: str
) -> None:
    pytester.makeini(f"[pytest]\n{ini_line}\n")
    pytester.makepyfile(test_x="def test_x(pgmgr_db):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=150)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert_nothing_left(ops_dir)


@pytest.mark.parametrize(
    ("budget_mb", "expected"),
    [(None, (4, 8)), (1000, (4, 8)), (80, (4, 5)), (40, (2, 2)), (8, (1, 1))],
)
def test_the_pool_shrinks_to_its_space_budget(
    budget_mb: int | None, expected: tuple[int, int]
) -> None:
    """With 8 MB databases: ready and used-but-not-dropped ones, plus the snapshot, fit in
    the budget (the plugin's is a quarter of the free space where the server lives)."""
    pool = DatabasePool(lambda: None, size=4, budget=budget_mb and budget_mb << 20)
    pool.stats.template_bytes = 8 << 20
    assert pool._limits() == expected
