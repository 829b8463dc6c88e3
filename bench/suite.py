"""A generated test suite run with pgmgr's pytest plugin and with the baselines.

The suite: N tests, each on a fresh database holding a small schema (two tables, a foreign
key, an index), loaded once into the template; each test inserts two rows and counts them.
It is written once per runner, in the runner's own idiom:

- ``pgmgr``: the ``pgmgr_db`` fixture (the pool), the schema loaded by a ``pgmgr_template``
  override; the test connects with ``pgmgr_db.url`` (TCP, scram) as the README shows;
- ``pytest-postgresql`` (PyPI): ``postgresql_proc`` with ``--postgresql-load schema.sql``
  and the ``postgresql`` fixture (a new database from its template per test, and a
  connection: TCP, trust); its server gets the same durability-off settings as pgmgr's
  (``fsync``, ``synchronous_commit``, ``full_page_writes`` off); run once with pytest's
  default ``--basetemp`` (under /tmp) and once on /dev/shm like pgmgr's server;
- ``testing.postgresql`` (PyPI): one server per session, a template with the schema, and
  ``CREATE DATABASE ... TEMPLATE`` / ``DROP DATABASE`` per test in a fixture.

The baselines run as the server user (``postgres`` when this runs as root: neither can run
PostgreSQL as root); pgmgr runs as the invoking user, as in the other cases of bench/run.py.
A small plugin (``benchtiming``) times each test's set-up (its fixtures: the database) and
writes them to a file: the first is the session start (the server), the others the per-test
cost. Wall time is the whole ``python -m pytest`` process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = """\
create table users (id serial primary key, name text not null, email text unique);
create table orders (id serial primary key, user_id int not null references users,
                     total numeric(10, 2) not null default 0);
create index orders_user on orders (user_id);
"""

BODY = """\
conn.execute("insert into users (name, email) values ('ann', 'ann@example.com')")
conn.execute("insert into orders (user_id, total) select id, 9.5 from users")
assert conn.execute("select count(*) from orders").fetchone() == (1,)
"""

TIMING = """\
import json, os, time
import pytest

_setup = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    t = time.perf_counter()
    yield
    _setup.append(time.perf_counter() - t)


def pytest_sessionfinish(session):
    with open(os.environ["BENCH_TIMES"], "w") as f:
        json.dump(_setup, f)
"""

PGMGR = {
    "conftest.py": """\
import json, pathlib
import pytest


@pytest.fixture(scope="session")
def pgmgr_template(pgmgr_server, pgmgr_template):
    schema = (pathlib.Path(__file__).parent / "schema.sql").read_text()
    pgmgr_server.execute(schema, dbname=pgmgr_template)
    return pgmgr_template


@pytest.fixture(scope="session", autouse=True)
def _pool_report(pgmgr_pool):
    yield
    st = pgmgr_pool.stats
    with open(pathlib.Path(__file__).parent / "pool.json", "w") as f:
        json.dump({{"strategy": st.strategy, "bytes": st.template_bytes, "timings": st.timings,
                   "created": st.created, "dropped": st.dropped}}, f)
""",
    "test_suite.py": """\
import psycopg
import pytest


@pytest.mark.parametrize("i", range({n}))
def test_fresh(pgmgr_db, i):
    with psycopg.connect(pgmgr_db.url) as conn:
{body8}""",
}

PYTEST_POSTGRESQL = {
    "test_suite.py": """\
import pytest


@pytest.mark.parametrize("i", range({n}))
def test_fresh(postgresql, i):
    conn = postgresql
{body4}    conn.commit()
""",
}

TESTING_POSTGRESQL = {
    "conftest.py": """\
import itertools, pathlib
import psycopg
import pytest
import testing.postgresql

_n = itertools.count()


def params(pg, dbname):
    d = pg.dsn()
    return {{"host": d["host"], "port": d["port"], "user": d["user"], "dbname": dbname}}


@pytest.fixture(scope="session")
def server():
    args = "-h 127.0.0.1 -F -c synchronous_commit=off -c full_page_writes=off"
    with testing.postgresql.Postgresql(postgres_args=args) as pg:
        with psycopg.connect(**params(pg, "postgres"), autocommit=True) as conn:
            conn.execute("create database tpl")
        schema = (pathlib.Path(__file__).parent / "schema.sql").read_text()
        with psycopg.connect(**params(pg, "tpl"), autocommit=True) as conn:
            conn.execute(schema)
        yield pg


@pytest.fixture
def db(server):
    name = f"test_{{next(_n)}}"
    with psycopg.connect(**params(server, "postgres"), autocommit=True) as conn:
        conn.execute(f"create database {{name}} template tpl")
    yield params(server, name)
    with psycopg.connect(**params(server, "postgres"), autocommit=True) as conn:
        conn.execute(f"drop database {{name}} with (force)")
""",
    "test_suite.py": """\
import psycopg
import pytest


@pytest.mark.parametrize("i", range({n}))
def test_fresh(db, i):
    with psycopg.connect(**db) as conn:
{body8}""",
}


@dataclass
class Runner:
    title: str
    files: dict[str, str]
    args: Callable[[Path], list[str]]
    as_server_user: bool
    module: str  # what must be importable
    times: dict[int, list[float]] = field(default_factory=dict)  # n -> wall times
    setups: dict[int, list[list[float]]] = field(default_factory=dict)
    pool: dict[int, dict[str, Any]] = field(default_factory=dict)  # pgmgr: the last run's


def runners(bindir: Path, version: str) -> list[Runner]:
    fast = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"

    def ppg(basetemp: Callable[[Path], str]) -> Callable[[Path], list[str]]:
        return lambda d: [
            "-p",
            "no:pgmgr",
            f"--postgresql-exec={bindir / 'pg_ctl'}",
            "--postgresql-load=schema.sql",
            f"--postgresql-postgres-options={fast}",
            f"--basetemp={basetemp(d)}",
        ]

    return [
        Runner(
            "pgmgr plugin",
            PGMGR,
            lambda d: ["-p", "no:pytest_postgresql", "-o", f"pgmgr_version={version}"],
            False,
            "pgmgr",
        ),
        Runner(
            "pytest-postgresql",
            PYTEST_POSTGRESQL,
            ppg(lambda d: str(d / "basetemp")),
            True,
            "pytest_postgresql",
        ),
        Runner(
            "pytest-postgresql, --basetemp on /dev/shm",
            PYTEST_POSTGRESQL,
            ppg(lambda d: f"/dev/shm/{d.parent.name}-{d.name}"),
            True,
            "pytest_postgresql",
        ),
        Runner(
            "testing.postgresql + CREATE DATABASE per test",
            TESTING_POSTGRESQL,
            lambda d: ["-p", "no:pgmgr", "-p", "no:pytest_postgresql"],
            True,
            "testing.postgresql",
        ),
    ]


class Suites:
    """Writes the suites under ``work`` and runs them; ``ids`` are the server user's
    (uid, gid) when running as root."""

    def __init__(
        self, work: Path, ids: tuple[int, int] | None, env: dict[str, str], python: str
    ) -> None:
        self.work = work
        self.ids = ids
        self.env = env
        self.python = python
        work.mkdir(mode=0o755)
        if ids:
            os.chown(work, *ids)

    def available(self, r: Runner) -> bool:
        code = f"import importlib.util as u; raise SystemExit(u.find_spec({r.module!r}) is None)"
        return subprocess.run([self.python, "-c", code], capture_output=True).returncode == 0

    def write(self, r: Runner, n: int) -> Path:
        slug = "-".join(re.findall(r"[a-z0-9]+", r.title.lower()))[:40]
        d = self.work / f"{slug}-{n}"
        if d.exists():
            return d
        d.mkdir(mode=0o755)
        (d / "schema.sql").write_text(SCHEMA)
        (d / "benchtiming.py").write_text(TIMING)
        (d / "pytest.ini").write_text("[pytest]\n")
        for name, text in r.files.items():
            body4, body8 = textwrap.indent(BODY, " " * 4), textwrap.indent(BODY, " " * 8)
            (d / name).write_text(text.format(n=n, body4=body4, body8=body8))
        if self.ids and r.as_server_user:
            for p in [d, *d.iterdir()]:
                os.chown(p, *self.ids)
        return d

    def run(self, r: Runner, n: int) -> tuple[float, list[float]]:
        """One run of the suite: wall time and the tests' set-up times."""
        d = self.write(r, n)
        out = d / "times.json"
        out.unlink(missing_ok=True)
        env = dict(self.env, BENCH_TIMES=str(out), PYTHONPATH=str(d), HOME=str(self.work))
        kw: dict[str, Any] = {}
        if self.ids and r.as_server_user:
            kw = {"user": self.ids[0], "group": self.ids[1], "extra_groups": []}
            env = {k: v for k, v in env.items() if not k.startswith("PGMGR_")}
        argv = [self.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p"]
        argv += ["benchtiming", "-p", "no:xdist", "-p", "no:randomly", *r.args(d)]
        t = time.perf_counter()
        proc = subprocess.run(argv, cwd=d, env=env, capture_output=True, text=True, **kw)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"{r.title} (N={n}) failed:\n{proc.stdout[-3000:]}{proc.stderr}")
        shutil.rmtree(f"/dev/shm/{d.parent.name}-{d.name}", ignore_errors=True)
        if (d / "pool.json").exists():
            r.pool[n] = json.loads((d / "pool.json").read_text())
        return wall, json.loads(out.read_text())


def summary(r: Runner, n: int) -> dict[str, float]:
    """Median wall time, session start (first set-up) and per-test set-up median / p95,
    pooled over the rounds."""
    per_test = sorted(s for run in r.setups[n] for s in run[1:])
    p95 = per_test[min(len(per_test) - 1, int(0.95 * len(per_test)))]
    return {
        "wall": statistics.median(r.times[n]),
        "start": statistics.median(run[0] for run in r.setups[n]),
        "median": statistics.median(per_test),
        "p95": p95,
    }


def pool_note(n: int, pool: dict[str, Any]) -> str:
    """pgmgr's pool in its last run at size ``n``: the strategy kept and why."""
    timed = ", ".join(
        f"{k} median {statistics.median(v) * 1000:.1f} ms ({len(v)} copies)"
        for k, v in pool["timings"].items()
        if v
    )
    size = f"{pool['bytes'] / 2**20:.1f} MB" if pool["bytes"] else "?"
    return (
        f"- pgmgr's pool, N={n} (last run): template {size}; kept {pool['strategy']} "
        f"({timed}); {pool['created']} copies made, {pool['dropped']} dropped during the run"
    )


def table(rs: list[Runner], sizes: list[int], targets: dict[int, float]) -> str:
    """The Markdown table: each runner, each N, with the ratio to pytest-postgresql."""
    base = next(r for r in rs if r.title == "pytest-postgresql")
    lines = [
        "| suite | N | wall (median) | vs pytest-postgresql | target | first test's set-up "
        "(server start) | per-test set-up median | p95 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        ref = summary(base, n)["wall"] if base.times.get(n) else None
        for r in rs:
            if not r.times.get(n):
                lines.append(f"| {r.title} | {n} | not run (not installed) | | | | | |")
                continue
            s = summary(r, n)
            ratio = f"{s['wall'] / ref:.2f}" if ref else "-"
            target = ""
            if r.title == "pgmgr plugin" and n in targets and ref:
                ok = "met" if s["wall"] / ref <= targets[n] else "**not met**"
                target = f"<= {targets[n]} ({ok})"
            lines.append(
                f"| {r.title} | {n} | {s['wall']:.2f} s | {ratio} | {target} | "
                f"{s['start'] * 1000:.0f} ms | {s['median'] * 1000:.1f} ms | "
                f"{s['p95'] * 1000:.1f} ms |"
            )
    return "\n".join(lines)


def run_all(
    work: Path,
    ids: tuple[int, int] | None,
    env: dict[str, str],
    python: str,
    install: Any,
    sizes: list[int],
    rounds: int,
) -> str:
    """Every runner at every size, ``rounds`` times each, alternating runners (after one
    untimed warm-up run each at the first size); the Markdown section."""
    s = Suites(work, ids, env, python)
    rs = runners(install.bindir, install.version.split(".")[0])
    missing = [r.title for r in rs if not s.available(r)]
    rs = [r for r in rs if r.title not in missing]
    load0 = os.getloadavg()[0]
    for i, n in enumerate(sizes):
        for r in rs if i == 0 else []:
            s.run(r, n)  # warm-up, untimed: pgmgr's template cache, bytecode, page cache
        runs = rounds if n < 100 else max(1, rounds // 2)  # a big suite: fewer runs
        for k in range(runs):
            for r in rs if k % 2 == 0 else rs[::-1]:
                wall, setups = s.run(r, n)
                r.times.setdefault(n, []).append(wall)
                r.setups.setdefault(n, []).append(setups)
            print(f"suite N={n}: round {k + 1}/{runs} done", file=sys.stderr)
    notes = [
        f"- runs per suite: {rounds} for N < 100, {max(1, rounds // 2)} for larger N (median "
        "wall time; set-up figures pooled over the runs), after one untimed warm-up run each",
        f"- load average (1 min) before / after the suites: {load0:.2f} / {os.getloadavg()[0]:.2f}",
    ]
    if missing:
        notes.append(f"- not installed in the suites' environment: {', '.join(missing)}")
    notes += [pool_note(n, r.pool[n]) for r in rs for n in sizes if n in r.pool]
    return table(rs, sizes, {40: 0.15, 200: 0.1}) + "\n\n" + "\n".join(notes) + "\n"


def main() -> int:
    """Quick look: ``python bench/suite.py [N] [ROUNDS]`` (bench/run.py is the real run)."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from pgmgr.core import versions

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    install = versions.select("15").installation
    work = Path(tempfile.mkdtemp(prefix="pgmgr-suites-", dir="/tmp"))
    work.chmod(0o755)
    ids = None
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        ids = (pw.pw_uid, pw.pw_gid)
    env = dict(os.environ, PGMGR_CACHE_DIR=str(work / "cache"))
    try:
        print(run_all(work / "suites", ids, env, sys.executable, install, [n], rounds))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
