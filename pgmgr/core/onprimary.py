"""What a streaming standby holds on its primary, made and undone there: a replication role
(commented with the replica's name), a physical slot, and ``pg_hba.conf`` lines tagged with
the replica's name, all named after it, so a retry, a destroy or a promote drops exactly
those and never a user's own. :mod:`pgmgr.core.replica` makes the standby itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pgmgr.core import ownconn, scram, testhook, userfs
from pgmgr.core.errors import DatabaseException, WorkerError
from pgmgr.core.instance import Server
from pgmgr.core.ops import reload

if TYPE_CHECKING:
    import psycopg


HBA_TAG = "# pgmgr replica "


def slot_name(name: str) -> str:
    """The slot (and replication role) name for replica ``name``: ``[a-z0-9_]``, <= 63."""
    return "pgmgr_" + re.sub(r"[^a-z0-9_]", "_", name.lower())[:56]


def hba_lines(name: str, role: str) -> list[str]:
    """Loopback-only scram lines for ``role``, each tagged so it can be found again."""
    tag = HBA_TAG + name
    return [
        f"host replication {role} 127.0.0.1/32 scram-sha-256  {tag}",
        f"host replication {role} ::1/128 scram-sha-256  {tag}",
    ]


def tagged(line: str, name: str) -> bool:
    """Whether ``line`` of a pg_hba.conf is one pgmgr added for replica ``name``."""
    return line.rstrip().endswith(HBA_TAG + name)


def edited_hba(text: str, name: str, add: list[str]) -> str:
    """``text`` without the lines tagged for replica ``name``, with ``add`` first (the
    first matching line wins, so ours come before a broader one)."""
    kept = [ln for ln in text.splitlines() if not tagged(ln, name)]
    return "\n".join([*add, *kept]) + "\n"


# --------------------------------------------------------------------------- as the server user


def _rewrite_hba(path: str, name: str, add: list[str]) -> int:
    """Runs as the server user (:func:`~pgmgr.core.userfs.as_user`): rewrite ``path``
    atomically, never through a symlink nor blocking on a FIFO.

    :returns: how many lines tagged for ``name`` it removed."""
    import errno

    with userfs.opened_dir(os.path.dirname(path)) as fd:
        base = os.path.basename(path)
        try:
            raw = userfs.read_file_at(fd, base, limit=16 << 20)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise DatabaseException(  # not "Too many levels of symbolic links: pg_hba.conf"
                f"{path} is a symlink: pgmgr edits pg_hba.conf only as a regular file "
                "(its rename would replace the link)",
                hint="put the file itself in its place, or set hba_file to the file",
            ) from None
        # Bytes that are not UTF-8 (a comment in Latin-1) are kept as they were, not refused
        text = raw.decode(errors="surrogateescape")
        data = edited_hba(text, name, add).encode(errors="surrogateescape")
        userfs.write_file_at(fd, base, data, 0o600)
    return sum(1 for ln in text.splitlines() if tagged(ln, name))


# --------------------------------------------------------------------------- connections


@contextlib.contextmanager
def connect(srv: Server) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit superuser session on ``srv``.

    :raises WorkerError: cannot connect.
    """
    import psycopg

    try:
        conn = psycopg.connect(ownconn.dsn(srv), autocommit=True, connect_timeout=5)
    except psycopg.Error as e:
        from pgmgr.core.readyfirst import cannot_connect

        raise WorkerError(cannot_connect(srv, e)) from None
    with conn:
        yield conn


def value(conn: psycopg.Connection[Any], query: str, *params: object) -> Any:
    """The first column of the first row of ``query`` (None without one).

    :raises DatabaseException: the server refused it (its first line)."""
    import psycopg

    try:
        cur = conn.execute(query, params or None)
        row = cur.fetchone() if cur.description else None
    except psycopg.Error as e:
        raise DatabaseException(str(e).strip().splitlines()[0]) from None
    return row[0] if row else None


# --------------------------------------------------------------------------- make, undo


def prepare_primary(src: Server, name: str, role: str, password: str) -> None:
    """The role (commented with the replica's name), slot and pg_hba.conf lines on SRC.

    :raises DatabaseException: the role or slot exists there already (not made by this
        replica command: a retry drops its own first).
    """
    from psycopg import sql

    slot = role
    with connect(src) as conn:
        if value(conn, "SELECT count(*) FROM pg_roles WHERE rolname = %s", role):
            raise DatabaseException(
                f"role {role} already exists on '{src.inst.name}' (nothing was created)",
                hint=f"drop it there first, or choose another --name than {name!r}",
            )
        if value(conn, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", slot):
            raise DatabaseException(
                f"replication slot {slot} already exists on '{src.inst.name}' "
                "(nothing was created)",
                hint=f"drop it with SELECT pg_drop_replication_slot('{slot}'), or choose "
                "another --name",
            )
        hba_file = str(value(conn, "SHOW hba_file"))
        stmt = sql.SQL("CREATE ROLE {} WITH LOGIN REPLICATION PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(scram.verifier(password))
        )
        comment = sql.SQL("COMMENT ON ROLE {} IS {}").format(
            sql.Identifier(role), sql.Literal(f"pgmgr replica {name}")
        )
        with conn.transaction():  # the comment marks it as this replica's: never one without
            value(conn, stmt.as_string(conn))
            value(conn, comment.as_string(conn))
        try:
            value(conn, "SELECT pg_create_physical_replication_slot(%s)", slot)
            testhook.pause("replica-slot-made")
            userfs.as_user(src.user(), _rewrite_hba, hba_file, name, hba_lines(name, role))
        except BaseException:
            with contextlib.suppress(Exception):
                value(conn, "SELECT pg_drop_replication_slot(slot_name) FROM "
                     "pg_replication_slots WHERE slot_name = %s", slot)  # fmt: skip
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
            raise
    reload(src)


def detach_primary(primary: Server, name: str, role: str | None, slot: str | None) -> list[str]:
    """Drop replica ``name``'s slot, role and pg_hba.conf lines on ``primary`` (running).

    :returns: what was removed.
    """
    from psycopg import sql

    done: list[str] = []
    with connect(primary) as conn:
        if role and not _ours(conn, role, name):
            # A role (and slot) of that name that this replica did not make: a user's own,
            # or another replica's whose name maps to the same slot name. Never dropped.
            role = slot = None
        if slot:
            deadline = time.monotonic() + 10
            while value(conn, "SELECT active FROM pg_replication_slots WHERE slot_name = %s", slot):
                if time.monotonic() > deadline:  # its walsender is still there
                    raise WorkerError(f"replication slot {slot} is still in use")
                time.sleep(0.05)
            if value(conn, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", slot):
                value(conn, "SELECT pg_drop_replication_slot(%s)", slot)
                done.append(f"slot {slot}")
        if role and value(conn, "SELECT count(*) FROM pg_roles WHERE rolname = %s", role):
            value(conn, sql.SQL("DROP ROLE {}").format(sql.Identifier(role)).as_string(conn))
            done.append(f"role {role}")
        hba_file = str(value(conn, "SHOW hba_file"))
    lines = userfs.as_user(primary.user(), _rewrite_hba, hba_file, name, [])
    reload(primary)
    if lines:
        done.append(f"{lines} pg_hba.conf line{'s' if lines > 1 else ''}")
    return done


def _ours(conn: psycopg.Connection[Any], role: str, name: str) -> bool:
    """Whether ``role`` on the primary is the one made for replica ``name`` (its comment says
    so; the role is made and commented in one transaction, before the slot), or is gone."""
    query = (
        "SELECT shobj_description(oid, 'pg_authid') IS NOT DISTINCT FROM %s "
        "FROM pg_roles WHERE rolname = %s"
    )
    found = value(conn, query, f"pgmgr replica {name}", role)
    return found is None or bool(found)
