"""What the new cluster of an upgrade must share with the old one: its encoding, locales
(lc_messages, lc_monetary, lc_numeric and lc_time too) and checksum setting, asked of the
old server; and whether it has what pg_upgrade would silently drop (logical replication
slots, before PostgreSQL 17), which is refused before anything is stopped.

template0's encoding and locales live in the catalog, which only a server reads. A running
instance is asked as it runs. A stopped one is started for the question, and stopped
again, in a way that never outlives the question: on a private socket directory (the
upgrade's own, swept once its pgmgr is gone), without TCP (no client reaches a server its
user had stopped), and with a death signal, SIGINT, so that a pgmgr killed meanwhile (kill
-9, the OOM killer) takes it down with a fast shutdown, a clean one (pg_upgrade needs
that), instead of leaving a server running that its user had stopped. The record is not
touched: the instance is not "started" (no pid, no change to the stop mark of
:mod:`pgmgr.core.stopmark`).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from pgmgr.core import launch, ownconn, pgconf, process, server, sigguard, startchild, testhook
from pgmgr.core import upgradeplan as plan
from pgmgr.core.errors import DatabaseException, WorkerError
from pgmgr.core.instance import Server
from pgmgr.core.versions import Installation

#: Seconds the stopped server gets to be ready (crash recovery included), and to stop.
TIMEOUT = 60.0


def options_sql(major: int) -> str:
    provider = "datlocprovider" if major >= 15 else "'c'"
    locale = "datlocale" if major >= 17 else ("daticulocale" if major >= 15 else "NULL")
    return (
        f"SELECT pg_encoding_to_char(encoding), datcollate, datctype, {provider}, {locale}, "  # noqa: S608 - column names chosen above, no input
        "current_setting('data_checksums'), current_setting('lc_messages'), "
        "current_setting('lc_monetary'), current_setting('lc_numeric'), "
        "current_setting('lc_time') FROM pg_database WHERE datname = 'template0'"
    )


#: From this major on, pg_upgrade carries logical replication slots over (and checks them).
SLOTS_CARRIED = 17


#: The settings of databases and roles (ALTER DATABASE/ROLE ... SET): database, role
#: ("" for all) and the ``name=value`` of each.
SCOPED_SQL = (
    "SELECT coalesce(d.datname, ''), coalesce(r.rolname, ''), c FROM pg_db_role_setting s "
    "LEFT JOIN pg_database d ON d.oid = s.setdatabase "
    "LEFT JOIN pg_roles r ON r.oid = s.setrole, unnest(s.setconfig) c ORDER BY 1, 2, 3"
)


def probe(
    srv: Server, sockdir: str, new: Installation
) -> tuple[plan.ClusterOptions, list[plan.Scoped], list[str]]:
    """The old cluster's options (see the module doc), the settings of its databases and
    roles, and its physical replication slots (pg_upgrade never carries them over: the
    upgrade names them); a stopped server is run for the question on ``sockdir``, a
    private directory of the server user's.

    :raises WorkerError: a stopped server cannot be started.
    :raises DatabaseException: the server cannot be asked; it has logical replication
        slots that pg_upgrade would drop (:func:`_refuse_lost_slots`); it uses ICU, which
        ``new`` lacks (:mod:`pgmgr.core.upgradeicu`).
    """
    import psycopg

    from pgmgr.core import upgradeicu

    major = int(srv.inst.major)
    icu = upgradeicu.lacks_icu(new)
    try:
        with _asked(srv, sockdir) as dsn, psycopg.connect(dsn, connect_timeout=10) as conn:
            row = conn.execute(options_sql(major)).fetchone()
            scoped = [
                plan.Scoped(str(db), str(role), *str(c).partition("=")[::2])
                for db, role, c in conn.execute(SCOPED_SQL)
            ]
            found = conn.execute(
                "SELECT slot_name, slot_type FROM pg_replication_slots ORDER BY slot_name"
            ).fetchall()
            icu_use = upgradeicu.first_use(conn, major) if icu else None
    except psycopg.Error as e:
        _refuse_asked_password(srv, str(e))
        raise DatabaseException(f"cannot read the cluster's locale settings: {e}") from None
    assert row is not None
    if major < SLOTS_CARRIED:
        _refuse_lost_slots(srv, [str(n) for n, kind in found if kind == "logical"])
    upgradeicu.refuse(srv, new, icu_use)
    enc, collate, ctype, provider, locale, checksums, *other = row
    return (
        plan.ClusterOptions(
            enc, collate, ctype, str(provider), locale or None, checksums == "on", tuple(other)
        ),
        scoped,
        [str(n) for n, kind in found if kind == "physical"],
    )


def _refuse_asked_password(srv: Server, error: str) -> None:
    """:raises DatabaseException: ``error`` (connecting over the Unix socket) says the
    server asks a password there: pg_upgrade connects that way, without one."""
    if "no password supplied" not in error and "authentication failed" not in error:
        return
    why = error.strip().splitlines()[-1].rsplit('" failed: ', 1)[-1].strip()
    user = srv.inst.superuser
    raise DatabaseException(
        f"cannot upgrade '{srv.inst.name}': its server asks {user} for a password on the Unix "
        f"socket ({why}), where pg_upgrade connects without one; nothing was changed",
        hint=f"let {user} in on the 'local' lines of pg_hba.conf (trust, or peer) for the upgrade",
    )


def _refuse_lost_slots(srv: Server, slots: list[str]) -> None:
    """:raises DatabaseException: the old cluster has logical replication ``slots``, which
    pg_upgrade carries over only from :data:`SLOTS_CARRIED` on: from an older major the
    upgrade succeeded without them, not a word said, and their subscribers lost their
    place."""
    if not slots:
        return
    names = ", ".join(slots)  # [a-z0-9_] only (PostgreSQL's rule): nothing to quote
    drop = f"pg_drop_replication_slot('{slots[0]}')" if len(slots) == 1 else "..."
    raise DatabaseException(
        f"cannot upgrade '{srv.inst.name}': it has logical replication slots ({names}), "
        f"which pg_upgrade carries over only from PostgreSQL {SLOTS_CARRIED}: they would be "
        "lost; nothing was changed",
        hint=f"once their subscribers have caught up, drop them (SELECT {drop}), upgrade, "
        "then create them again",
    )


@contextlib.contextmanager
def _asked(srv: Server, sockdir: str) -> Iterator[str]:
    """A connection string to ``srv``'s server: the running one, else one run for the
    question (see the module doc) until the block ends."""
    if srv.running() is not None:
        yield ownconn.dsn(srv, tcp=False)
        return
    srv.check_identity("upgrade")
    startchild.clear_stale_pidfile(srv)
    su = srv.user()
    conf = pgconf.write(srv.datadir, srv.inst.settings, su)
    port = srv.inst.port or 5432  # any: the socket directory is the upgrade's own
    argv = server.postgres_argv(
        srv.installation(), srv.datadir, host="", port=port, socket_dir=Path(sockdir),
        settings={}, config_file=conf,
    )  # fmt: skip
    offset = launch.open_log_offset(srv.log_file)
    with sigguard.shielded(deliver=False) as got:  # a Ctrl-C inside Popen loses the child
        child = launch.spawn(argv, srv.log_file, su, die_with_parent=True, death=signal.SIGINT)
    try:
        # To the handlers in place: a Ctrl-C (or a SIGTERM the upgrade's interruptible
        # took) interrupts; a caller's own handler gets its signal (it was a Ctrl-C).
        sigguard.redeliver(got, None)
        wait_ready(srv, child, offset, srv.datadir)
        testhook.pause("upgrade-probing")
        user = srv.inst.superuser
        yield ownconn.conninfo(
            {"host": sockdir, "port": str(port), "user": user, "dbname": "postgres"}
        )
    finally:
        stop(child)


def wait_ready(srv: Server, child: subprocess.Popen[bytes], offset: int, datadir: Path) -> None:
    """Wait (:data:`TIMEOUT`) until the server run for the question (on ``datadir``, its
    output in ``srv``'s log from ``offset``) is ready, a second at a time: one waiting for
    ever to open a FIFO put in place of a configuration file after the checks (its
    signals blocked: neither the stop below nor its death signal reached it, and it
    outlived pgmgr) is killed and named.

    :raises WorkerError: it exited, or was not ready in time.
    :raises DatabaseException: it waited on a FIFO.
    """
    from pgmgr.core import fifowait

    watch = fifowait.watchdog()
    deadline = time.monotonic() + TIMEOUT
    while True:
        left = deadline - time.monotonic()
        try:
            launch.wait_ready(
                child.pid, datadir, max(0.0, min(1.0, left)), child=child,
                log_file=srv.log_file, log_offset=offset,
            )  # fmt: skip
            return
        except launch.ServerExited:
            raise
        except WorkerError:
            if left <= 1.0:
                raise
        why = watch(child.pid)
        if why:
            with contextlib.suppress(subprocess.TimeoutExpired):  # killed by the watch
                child.wait(timeout=5.0)
            raise DatabaseException(f"cannot upgrade '{srv.inst.name}': {why}; nothing was changed")


def stop(child: subprocess.Popen[bytes]) -> None:
    """Stop the server run for the question (a fast shutdown): our own child, signalled
    and waited for as such (its pid cannot be reused before we reap it, and early in its
    start-up it has no postmaster.pid yet).

    :raises WorkerError: it did not stop in time.
    """
    process.signal_pid(child.pid, server.STOP_SIGNALS["fast"])
    try:
        child.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise WorkerError(
            f"the server started to read the cluster's settings (pid {child.pid}) did not "
            f"stop within {TIMEOUT:g} s; nothing was changed",
            hint=f"stop it with 'kill -INT {child.pid}' (or -QUIT: immediate)",
        ) from None
