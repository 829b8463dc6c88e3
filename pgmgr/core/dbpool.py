"""A pool of ready databases, made and dropped in the background (IntegreSQL's approach).

The pytest plugin hands every test a database of its own. ``CREATE DATABASE ... TEMPLATE``
and ``DROP DATABASE`` cost tens of milliseconds each (more on a busy disk), so a
:class:`DatabasePool` keeps a few databases copied from the template ready, and one worker
thread, with its own connection, makes new ones and drops used ones while the tests run:

- :meth:`DatabasePool.acquire` takes a ready database (a list pop when the pool is warm;
  it waits for the worker only when the tests use databases faster than they are made);
- :meth:`DatabasePool.release` queues a used database for dropping and returns at once;
- the worker copies the template into a private **snapshot** that accepts no connections,
  and copies the pooled databases from it: once it is taken, a user holding a connection to
  the template no longer blocks the pool (``CREATE DATABASE`` refuses a template that has
  other sessions). The first copy of each generation, made while no database is ready, comes
  straight from the template, before the snapshot: the first test waits for one copy, not
  two;
- a new ``(template, generation)`` in :meth:`acquire` **invalidates** the pool: the ready
  databases and the old snapshot are dropped, a new snapshot is taken;
- on PostgreSQL 15+ each snapshot's first copies alternate ``STRATEGY WAL_LOG`` (WAL-logs
  every page: cost grows with the template's size) and ``FILE_COPY`` (two checkpoints plus a
  file copy), timed, and the faster one is kept for that snapshot;
- a failed statement (server restarting, connection killed) closes the connection; the worker
  retries with a growing pause and reconnects. :meth:`acquire` raises :class:`PoolError` with
  the worker's message once it has failed :data:`MAX_FAILURES` times in a row.

This module imports nothing heavy: the caller passes a ``connect`` function (psycopg).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pgmgr.core.errors import DatabaseException

#: In the order they are tried: FILE_COPY first, while little is dirty in shared buffers
#: (its checkpoints write what WAL_LOG copies leave dirty, which would bias its timing).
STRATEGIES = ("FILE_COPY", "WAL_LOG")
#: Copies timed per strategy before the pool keeps the faster one.
TRIALS = 3
MAX_FAILURES = 5
#: SQLSTATE of DROP DATABASE ... WITH (FORCE) on a database a prepared transaction uses.
OBJECT_IN_USE = "55006"
#: SQLSTATE of CREATE DATABASE from a template that does not exist.
NO_DATABASE = "3D000"
#: SQLSTATE of DROP DATABASE of a template database ("cannot drop a template database").
WRONG_OBJECT_TYPE = "42809"


class PoolError(DatabaseException):
    """The pool's worker cannot make databases (it says why), or none came in time."""


@dataclass
class PoolStats:
    """What the pool did: for the benchmark and for curious users."""

    created: int = 0
    dropped: int = 0
    snapshots: int = 0
    invalidations: int = 0
    waits: list[float] = field(default_factory=list)  # seconds each acquire waited
    strategy: str | None = None
    template_bytes: int | None = None
    timings: dict[str, list[float]] = field(default_factory=dict)
    #: used databases that cannot be dropped while the server runs (a prepared transaction)
    abandoned: list[str] = field(default_factory=list)


class DatabasePool:
    """Ready copies of one template database, refilled by a background thread.

    :param connect: opens an autocommit psycopg connection to a maintenance database; the
        server's version (``STRATEGY`` needs 15, ``WITH (FORCE)`` 13) is read from it.
    :param size: databases kept ready.
    :param max_pending: used databases waiting to be dropped before drops go first.
    :param budget: bytes the pool may hold (ready and used databases, the snapshot); once
        the template's size is known, ``size`` and ``max_pending`` shrink to fit (to 1).
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        size: int = 4,
        prefix: str = "test",
        max_pending: int | None = None,
        budget: int | None = None,
    ) -> None:
        self._connect = connect
        self.major = 0  # known once connected
        self.size = max(1, size)
        self.max_pending = max_pending if max_pending is not None else 2 * self.size
        self.budget = budget
        self.prefix = f"{prefix}_{os.getpid()}"
        self.stats = PoolStats()
        self._names = itertools.count(1)
        self._cond = threading.Condition()
        self._ready: deque[str] = deque()
        self._drops: deque[str] = deque()
        self._key: tuple[str, int] | None = None
        self._snapshot: str | None = None
        self._snapshot_busy = False
        self._inflight = 0
        self._failures = 0
        self._error: str | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._conn: Any = None

    # ------------------------------------------------------------------ the test's side

    def acquire(self, template: str, generation: int = 0, timeout: float = 60.0) -> str:
        """The name of a fresh copy of ``template``, now the caller's.

        :raises PoolError: the worker keeps failing (its message), or nothing came in time.
        """
        t0 = time.perf_counter()
        with self._cond:
            if self._closed:
                raise PoolError("the database pool is closed")
            if self._key != (template, generation):
                self._invalidate((template, generation))
            self._start()
            while not self._ready:
                if self._failures >= MAX_FAILURES:
                    raise PoolError(f"the database pool cannot make databases: {self._error}")
                left = timeout - (time.perf_counter() - t0)
                if left <= 0:
                    raise PoolError(f"no database from the pool within {timeout:g} s")
                self._cond.wait(left)
            name = self._ready.popleft()
            self._cond.notify_all()
        self.stats.waits.append(time.perf_counter() - t0)
        return name

    def release(self, name: str) -> None:
        """Queue ``name`` for dropping (its sessions are disconnected then)."""
        with self._cond:
            self._drops.append(name)
            self._cond.notify_all()

    def ready(self) -> list[str]:
        with self._cond:
            return list(self._ready)

    def close(self, drain: bool = False, timeout: float = 30.0) -> None:
        """Stop the worker, waiting up to ``timeout`` for the statement it runs (a worker
        still busy then closes its connection when that statement ends or fails: the
        plugin stops the server next, which ends it at once). With ``drain``, drop every
        database the pool still holds (not needed when the whole server goes away next)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return
        if drain:
            with contextlib.suppress(Exception):
                left = [*self._ready, *self._drops, *([self._snapshot] if self._snapshot else [])]
                self._ready.clear()
                for name in left:
                    self._drop(name)
        self._disconnect()

    # ------------------------------------------------------------------ bookkeeping (locked)

    def _invalidate(self, key: tuple[str, int]) -> None:
        if self._key is not None:
            self.stats.invalidations += 1
        self._drops.extend(self._ready)
        self._ready.clear()
        if self._snapshot is not None:
            self._drops.append(self._snapshot)
        self._key, self._snapshot, self._failures, self._error = key, None, 0, None
        self.stats.timings = {s: [] for s in STRATEGIES}
        self.stats.strategy = None
        self._cond.notify_all()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pgmgr-pool", daemon=True)
            self._thread.start()

    def _next(self) -> tuple[str, ...] | None:
        """The worker's next job, waiting for one: refills first, unless too many used
        databases wait to be dropped (each holds a template's worth of files)."""
        while not self._closed:
            key = self._key
            size, max_pending = self._limits()
            short = len(self._ready) + self._inflight < size
            if key is not None and self._snapshot is None and not self._snapshot_busy:
                self._snapshot_busy = True
                return ("snapshot", key[0], str(key[1]))
            if self._drops and (len(self._drops) >= max_pending or not short):
                return ("drop", self._drops.popleft())
            if key is not None and self._snapshot is not None and short:
                self._inflight += 1
                return ("create", self._snapshot, key[0], str(key[1]))
            if self._drops:
                return ("drop", self._drops.popleft())
            self._cond.wait()
        return None

    def _limits(self) -> tuple[int, int]:
        """(ready, waiting to be dropped), shrunk to the budget for this template's size."""
        size, pending = self.size, self.max_pending
        per_db = self.stats.template_bytes
        if self.budget is not None and per_db:
            fit = max(2, self.budget // per_db - 1)  # the snapshot counts too
            size = max(1, min(size, fit // 2))
            pending = max(1, min(pending, fit - size))
        return size, pending

    # ------------------------------------------------------------------ the worker

    def _run(self) -> None:
        while True:
            with self._cond:
                job = self._next()
            if job is None:
                self._disconnect()
                return
            try:
                getattr(self, "_do_" + job[0])(*job[1:])
            except Exception as e:  # psycopg.Error and OSError alike: reconnect and retry
                self._failed(job, e)
            else:
                with self._cond:
                    self._failures, self._error = 0, None

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _failed(self, job: tuple[str, ...], e: Exception) -> None:
        self._disconnect()
        if job[0] == "drop" and self.major >= 13 and getattr(e, "sqlstate", None) == OBJECT_IN_USE:
            # WITH (FORCE) ends sessions, but not a prepared transaction (or a replication
            # slot) a test left in it: no retry drops it, and retrying it would count as the
            # pool failing (then acquire fails every later test). It goes with the server.
            with self._cond:
                self.stats.abandoned.append(job[1])
                self._cond.notify_all()
            return
        with self._cond:
            if job[0] == "snapshot":
                self._snapshot_busy = False
            elif job[0] == "create":
                self._inflight -= 1
                if job[1] == self._snapshot and getattr(e, "sqlstate", None) == NO_DATABASE:
                    self._snapshot = None  # a test dropped it: take a new one
            else:
                self._drops.append(job[1])
            self._failures += 1
            self._error = " ".join(str(e).split()) or type(e).__name__
            self._cond.notify_all()
            self._cond.wait(min(1.0, 0.05 * 2 ** (self._failures - 1)))

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self._connect()
            self.major = int(self._conn.info.server_version) // 10000
        return self._conn

    def _execute(self, sql: str) -> Any:
        return self._connection().execute(sql.encode())

    def _drop(self, name: str) -> None:
        self._connection()  # the version decides the syntax
        try:
            self._execute(_drop_sql(name, self.major))
        except Exception as e:
            if getattr(e, "sqlstate", None) != WRONG_OBJECT_TYPE:
                raise
            # a test made its database a template (ALTER DATABASE ... IS_TEMPLATE true):
            # the drop was retried for ever, each failure counted, and after 5 in a row
            # every test that found the pool empty failed with "cannot drop a template
            # database"
            self._execute(f"ALTER DATABASE {_ident(name)} WITH IS_TEMPLATE false")
            self._execute(_drop_sql(name, self.major))

    def _do_snapshot(self, template: str, generation: str) -> None:
        with self._cond:
            direct = not self._ready
            self._inflight += direct
        if direct:  # a test is (or soon will be) waiting: one copy first, straight away
            try:
                self._do_create(template, template, generation)
            except BaseException:
                with self._cond:
                    self._inflight -= 1
                raise
        name = f"pgmgr_pool_{os.getpid()}_{next(self._names)}"
        # FILE_COPY (15+) copies the template's relcache init file too: the snapshot's
        # copies made the same way spare each test's first connection ~1 ms of catalog reads
        how = " STRATEGY FILE_COPY" if self.major >= 15 else ""
        self._execute(f"CREATE DATABASE {_ident(name)} TEMPLATE {_ident(template)}{how}")
        with self._cond:
            self._drops.append(name)  # until it is known to be the current snapshot
        self._execute(f"ALTER DATABASE {_ident(name)} WITH ALLOW_CONNECTIONS false")
        row = self._execute(f"SELECT pg_database_size({_literal(name)})").fetchone()
        with self._cond:
            self._snapshot_busy = False
            if self._key == (template, int(generation)):
                self._drops.remove(name)
                self._snapshot = name
                self.stats.snapshots += 1
                self.stats.template_bytes = int(row[0])
            self._cond.notify_all()

    def _do_create(self, source: str, template: str, generation: str) -> None:
        """Copy ``source`` (the snapshot, or the template itself for the first copy of a
        generation); ready if ``(template, generation)`` is still current, else dropped."""
        name = f"{self.prefix}_{next(self._names)}"
        self._connection()  # the version decides the strategy (the first copy's too)
        strategy = self._strategy()
        sql = f"CREATE DATABASE {_ident(name)} TEMPLATE {_ident(source)}"
        t0 = time.perf_counter()
        try:
            self._execute(sql + (f" STRATEGY {strategy}" if strategy else ""))
        except BaseException:
            with self._cond:
                self._drops.append(name)  # it may exist if only the reply was lost
            raise
        elapsed = time.perf_counter() - t0
        with self._cond:
            self._inflight -= 1
            self.stats.created += 1
            if strategy:
                self.stats.timings.setdefault(strategy, []).append(elapsed)
            if self._key == (template, int(generation)):
                self._ready.append(name)
            else:
                self._drops.append(name)
            self._cond.notify_all()

    def _do_drop(self, name: str) -> None:
        self._drop(name)
        self.stats.dropped += 1

    def _strategy(self) -> str | None:
        """WAL_LOG or FILE_COPY, whichever copied this snapshot faster (each is tried
        :data:`TRIALS` times first); None before PostgreSQL 15, which has only one."""
        if self.major < 15:
            return None
        with self._cond:
            t = self.stats.timings
            for s in STRATEGIES:
                if len(t.get(s, [])) < TRIALS:
                    return s
            best = min(STRATEGIES, key=lambda s: statistics.median(t[s][-5:]))
            self.stats.strategy = best
            return best


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _drop_sql(name: str, major: int) -> str:
    force = " WITH (FORCE)" if major >= 13 else ""
    return f"DROP DATABASE IF EXISTS {_ident(name)}{force}"
