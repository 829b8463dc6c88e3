"""What PostgreSQL would reject in the configuration files as they are now on disk, from
``pg_file_settings`` (the files parsed again at each query): what ``pgmgr reload`` checks.

A hand edit of ``postgresql.conf`` with a syntax error (or an ``include`` of a missing
file) makes a reload apply none of the files' changes and leaves ``pg_conf_load_time()``
where it was: ``pgmgr reload`` waited its whole timeout, then said "did not confirm the
reload". An invalid value (``work_mem = 'zz'``) is skipped while the rest is applied:
``pgmgr reload`` said "Reloaded" and nothing of it.

A setting only a restart applies (``postmaster`` context) is "could not be applied" both
when its value is invalid (``shared_buffers = 'banana'``) and when it is a valid change:
pg_settings' ``pending_restart`` does not tell them apart (it stays set by an earlier valid
change), so the instance's own ``postgres -C`` checks the value alone (:func:`sort_restart`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pgmgr.core import ownconn

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pgmgr.core.instance import Server

#: pg_file_settings' error for a value that could not be set (an invalid one), and for a
#: changed setting that only a restart applies (not a problem: config says so).
NOT_APPLIED = "setting could not be applied"

QUERY = """
SELECT f.sourcefile, f.sourceline, f.name, f.setting, f.error, s.context, s.source
FROM pg_file_settings f LEFT JOIN pg_settings s ON lower(s.name) = lower(f.name)
WHERE f.error IS NOT NULL
ORDER BY f.seqno
"""


@dataclass(frozen=True)
class Rejected:
    """A value pg_file_settings says "could not be applied" (in the database it was asked
    in), at ``where`` (file and line)."""

    where: str
    name: str
    setting: str
    #: the server's command line sets it (pgmgr's port, listen_addresses and
    #: unix_socket_directories): the file's value never applies, a restart neither
    pgmgrs: bool = False

    def __str__(self) -> str:
        return f"{self.where}: invalid value for {self.name}: {self.setting!r}"


@dataclass
class Problems:
    """``whole``: errors that make PostgreSQL apply nothing of the files (a syntax error, an
    unreadable include, an unknown setting); ``rejected``: values it skips (invalid ones)."""

    whole: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    #: changed values of settings only a restart applies: valid or not (:func:`sort_restart`)
    restart_only: list[Rejected] = field(default_factory=list)


def find(srv: Server, timeout: int = 5) -> Problems:
    """The problems in the files the server at ``srv`` reads, as sentences naming the file
    and line.

    :raises WorkerError: cannot connect.
    """
    import psycopg

    from pgmgr.core.errors import WorkerError

    try:
        with psycopg.connect(ownconn.dsn(srv), connect_timeout=timeout) as conn:
            rows = conn.execute(QUERY).fetchall()
    except psycopg.Error as e:
        from pgmgr.core.readyfirst import cannot_connect

        raise WorkerError(cannot_connect(srv, e)) from None
    found = Problems()
    for sourcefile, line, name, setting, error, context, source in rows:
        where = f"{sourcefile} line {line}"
        if name is None:
            found.whole.append(f"{where}: {error}")
        elif error != NOT_APPLIED:  # "unrecognized configuration parameter": none applied
            found.whole.append(f"{where}: {error} {name!r}")
        elif context == "postmaster":  # a valid change, or an invalid value
            pgmgrs = source == "command line"
            found.restart_only.append(Rejected(where, name, setting, pgmgrs))
        elif context != "internal":
            found.rejected.append(Rejected(where, name, setting))
    return found


def sort_restart(srv: Server, changed: list[Rejected]) -> tuple[list[Rejected], list[Rejected]]:
    """``(invalid, pending)``: which of ``changed`` (:attr:`Problems.restart_only`) the
    server rejects, and which a restart applies. Each value is checked alone by the
    instance's ``postgres -C``, reading no configuration file (the one on disk holds the
    values being checked, and any invalid one fails the whole file), not even the data
    directory's postgresql.auto.conf: ``-D`` is /dev/null (postgres skips the file it
    cannot open there), so an invalid value of another setting there is not this one's.

    :raises OSError: postgres cannot be executed.
    """
    from pgmgr.core import server

    install, user = srv.installation(), srv.user()
    invalid: list[Rejected] = []
    pending: list[Rejected] = []
    for r in changed:
        alone = {"config_file": os.devnull, r.name: r.setting}
        failed = server.postgres_check(install, Path(os.devnull), alone, user)
        (invalid if failed is not None else pending).append(r)
    return invalid, pending


def not_in_effect(srv: Server, rejected: list[Rejected], timeout: int = 5) -> list[Rejected]:
    """Those of ``rejected`` whose value a new session (after the reload) does not have.

    pg_file_settings checks a value in the database it is asked in: a
    ``default_text_search_config`` (or ``default_tablespace``, ``default_table_access_method``)
    that exists elsewhere only is "setting could not be applied" there, while the server,
    which checks it outside any database on a reload, applies it.

    :raises WorkerError: cannot connect.
    """
    import psycopg

    from pgmgr.core.errors import WorkerError

    names = sorted({r.name.lower() for r in rejected})  # the file's own spelling: any case
    try:
        with psycopg.connect(ownconn.dsn(srv), connect_timeout=timeout) as conn:
            rows = conn.execute(
                "SELECT lower(name), setting FROM pg_settings WHERE lower(name) = ANY(%s)",
                [names],
            ).fetchall()
    except psycopg.Error as e:
        from pgmgr.core.readyfirst import cannot_connect

        raise WorkerError(cannot_connect(srv, e)) from None
    now: dict[str, str] = dict(rows)
    return [r for r in rejected if now.get(r.name.lower()) != r.setting]
