"""Each instance's replication role, for ``pgmgr status``: kept apart from
:mod:`pgmgr.core.replica` so that ``status`` imports nothing heavy (one ``stat`` per
instance; a connection only to a running standby, for its replay lag)."""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from pgmgr.core.instance import Server

LAG_SQL = """
SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()),
       CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000 END,
       EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')
"""


def is_standby(srv: Server) -> bool:
    """Whether the data directory is a standby's (``standby.signal``, PostgreSQL 12+)."""
    return (srv.datadir / "standby.signal").exists()


def standbys_of(srv: Server) -> list[str]:
    """Names of the registered standbys whose primary is ``srv``."""
    from pgmgr.core import registry

    return [i.name for i in registry.load_all()[0] if i.primary == srv.inst.name]


def replay_lag(srv: Server) -> tuple[int | None, float | None, bool | None]:
    """A running standby's WAL received but not replayed (bytes), how old its last
    replayed transaction is while it is behind (ms; 0 when caught up), and whether it is
    streaming from its primary now (a standby cut off, e.g. by an upgrade or a restore of
    its primary, has replayed all it received: lag 0, which says nothing); None if
    unknown."""
    import psycopg

    from pgmgr.core import ownconn

    try:
        with psycopg.connect(ownconn.dsn(srv), connect_timeout=2) as conn:
            row = conn.execute(LAG_SQL).fetchone()
    except psycopg.Error:
        return None, None, None
    if row is None:
        return None, None, None
    return (
        None if row[0] is None else int(row[0]),
        None if row[1] is None else round(float(row[1]), 1),
        bool(row[2]),
    )


def role_fields(srv: Server, running: bool) -> dict[str, Any]:
    """``role`` (primary or standby), ``primary``, ``replay_lag_bytes``, ``replay_lag_ms``,
    ``streaming``; and ``accepts_connections: false`` for a running standby with
    ``hot_standby = off``."""
    standby = is_standby(srv)
    closed = standby and running and refuses_connections(srv.datadir)
    lag = replay_lag(srv) if standby and running and not closed else (None, None, None)
    fields: dict[str, Any] = {
        "role": "standby" if standby else "primary",
        "primary": srv.inst.primary if standby else None,
        "replay_lag_bytes": lag[0],
        "replay_lag_ms": lag[1],
        "streaming": lag[2],
    }
    if closed:  # hot_standby = off: nothing (psql, url, export, lag) can connect to it
        fields["accepts_connections"] = False
    return fields


def refuses_connections(datadir: Path) -> bool:
    """Whether the server on ``datadir`` runs as a standby that accepts no connections
    (``hot_standby = off``): ``standby`` in its ``postmaster.pid``, which PostgreSQL
    writes only then."""
    from pgmgr.core import process

    pf = process.running_postmaster(datadir)
    return pf is not None and pf.status == "standby"
