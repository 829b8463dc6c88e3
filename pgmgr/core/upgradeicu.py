"""ICU collations and a new major built without ICU (the embedded wheel's 18): pg_upgrade's
checks pass (they compare template0's locales only), then, the server stopped, restoring
the schema fails ("ICU is not supported in this build", or a ``pg_catalog`` ICU collation
that does not exist). The old cluster is asked first, by :mod:`pgmgr.core.upgradeprobe`,
in every database: a database whose locale provider is ICU, an ICU collation created
there, or one of ``pg_catalog``'s that something uses.
"""

from __future__ import annotations

from pgmgr.core.errors import DatabaseException
from pgmgr.core.versions import Installation

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    import psycopg

    from pgmgr.core.instance import Server

#: The ICU collation a database's objects need, if any (per database: collations are).
USED_SQL = (
    "SELECT c.collname FROM pg_collation c WHERE c.collprovider = 'i' "
    "AND (c.collnamespace <> 'pg_catalog'::regnamespace OR EXISTS (SELECT FROM pg_depend d "
    "WHERE d.refclassid = 'pg_collation'::regclass AND d.refobjid = c.oid)) "
    "ORDER BY 1 LIMIT 1"
)


def lacks_icu(new: Installation) -> bool:
    """Whether ``new`` is built without ICU (its ``pg_config --configure``: ``--with-icu``
    before 16, where it became the default, ``--without-icu`` since); False when that
    cannot be told."""
    from pgmgr.core import binout

    pg_config = new.bin("pg_config")
    out = binout.cached_output([str(pg_config), "--configure"]) if pg_config.is_file() else None
    if not out:
        return False
    if int(new.major) >= 16:
        return "'--without-icu'" in out
    return "'--with-icu'" not in out


def first_use(conn: psycopg.Connection[tuple[object, ...]], major: int) -> str | None:
    """Where the old cluster (``conn``, to its ``postgres`` database) uses ICU: "database
    X uses collation Y" or "database X's locale provider is ICU", or None."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from pgmgr.core import ownconn

    provider = "datlocprovider" if major >= 15 else "'c'"
    rows = conn.execute(
        f"SELECT datname, {provider} = 'i', datallowconn AND datname <> 'template0' "  # noqa: S608 - a column name chosen above
        "FROM pg_database ORDER BY datname"
    ).fetchall()
    for name, icu, _ in rows:
        if icu:
            return f"database {name}'s locale provider is ICU"
    known = {k: str(v) for k, v in conninfo_to_dict(conn.info.dsn).items()}  # without
    # its empty values: what the environment gave it is given again
    for name, _, connectable in rows:
        if not connectable:
            continue
        with psycopg.connect(
            ownconn.conninfo({**known, "dbname": str(name)}), connect_timeout=10
        ) as db:
            row = db.execute(USED_SQL).fetchone()
        if row:
            return f"database {name} uses ICU collation {row[0]}"
    return None


def refuse(srv: Server, new: Installation, use: str | None) -> None:
    """:raises DatabaseException: ``use`` (see :func:`first_use`)."""
    if use is None:
        return
    raise DatabaseException(
        f"cannot upgrade '{srv.inst.name}': this PostgreSQL {new.major} is built without "
        f"ICU, and {use}: pg_upgrade would fail once the server is stopped; nothing was "
        "changed",
        hint=f"use a PostgreSQL {new.major} built with ICU, or move to libc collations "
        '(e.g. ALTER TABLE ... ALTER COLUMN ... TYPE ... COLLATE "C"; DROP COLLATION)',
    )
