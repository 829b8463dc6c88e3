"""pg_upgrade itself failing (a reg* column, which it refuses), with a FIFO the server user
put among its logs: one line saying why, nothing changed, nothing left."""

from __future__ import annotations

import os
from pathlib import Path

from pgmgr.core import upgradeplan as plan
from tests.helpers import error_lines
from tests.pause import Paused
from tests.snap.conftest import Inst, leftovers
from tests.snap.test_upgrade import facts, up  # noqa: F401


def test_a_failed_link_upgrade_says_why_and_changes_nothing(up: Inst, scratch: Path) -> None:  # noqa: F811
    """It said 'pg_upgrade failed: <a file in the work directory>' (PostgreSQL 18's
    pg_upgrade ends its output with that file's name; the file is deleted with the work
    directory); a FIFO named like a log there hung it for ever as it kept the logs."""
    up.sql("CREATE TABLE regs (p regproc)")  # pg_upgrade refuses reg* columns
    before = facts(up)
    hooks = scratch / "hooks"
    hooks.mkdir(mode=0o777)
    hooks.chmod(0o777)  # the pause is in the server user's work
    run = Paused(hooks, "upgrade-workdir", "upgrade", "up", "-v", "18", "--method", "link",
                 "--yes", env=up.env)  # fmt: skip
    run.reached()
    work = next(up.store / n for n in os.listdir(up.store) if n.startswith(".tmp-upgrade-"))
    os.mkfifo(work / "hang.log", 0o600)
    owner = work.stat()
    os.chown(work / "hang.log", owner.st_uid, owner.st_gid)  # the server user's
    done = run.go(timeout=60)
    assert done.returncode == 1, str(done)
    said = error_lines(done.stderr)
    assert said[0] == (
        "Error: pg_upgrade failed: Your installation contains one of the reg* data types "
        "in user tables (In database: postgres); nothing was changed"
    ), said
    log = Path(said[1].rsplit(" ", 1)[1])
    assert said[1].startswith("Hint: pg_upgrade's logs are kept in ") and log.is_file()
    assert "public.regs.p" in log.read_text()  # the file the message named is in it
    assert up.state() == "running" and up.record()["major"] == "15"
    assert up.record().get("intent") is None
    assert facts(up) == before
    assert leftovers(up.store) == []


PG18_OUT = (
    "Checking data type usage" + " " * 38 + "failed check: Checking for reg* data types in user"
    " tables\n\nData type checks failed: \n"  # pg_upgrade's own trailing space
    "Your installation contains one of the reg* data types in user tables.\n"
    "These data types reference system OIDs that are not preserved by\n"
    "pg_upgrade, so this cluster cannot currently be upgraded.\n\n"
    "A list of the problem columns is in the file:\n    /w/tables_using_reg.txt\n\n"
    "Failure, exiting\n"
)


def test_failure_reason_of_pg_upgrade_18() -> None:
    """PostgreSQL 18's pg_upgrade marks a failed check 'failed check:', not 'fatal', under
    a heading, and ends with the file's name: that was the reason given."""
    logs = "==> /w/tables_using_reg.txt <==\nIn database: postgres\n  public.regs.p\n"
    assert plan.failure_reason(PG18_OUT, logs, 1) == (
        "Your installation contains one of the reg* data types in user tables "
        "(In database: postgres)"
    )


NOCONN_OUT = (
    "Performing Consistency Checks on Old Live Server\n"
    "------------------------------------------------\n"
    "Checking cluster versions                                     ok\n"
    "Checking database connection settings                         fatal\n\n"
    "All non-template0 databases must allow connections, i.e. their\n"
    "pg_database.datallowconn must be true and pg_database.datconnlimit\n"
    "must not be -2.  Your installation contains non-template0 databases\n"
    "which cannot be connected to.  A list of databases with the problem is in the file:\n"
    "    /w/databases_cannot_connect_to.txt\n\n"
    "Failure, exiting\n"
)


def test_failure_reason_is_not_cut_at_an_abbreviation() -> None:
    """A database that does not allow connections: the reason was cut at 'i.e.' ("All
    non-template0 databases must allow connections, i.e (noconn)")."""
    logs = "==> /w/databases_cannot_connect_to.txt <==\nnoconn\n"
    assert plan.failure_reason(NOCONN_OUT, logs, 1) == (
        "All non-template0 databases must allow connections, i.e. their "
        "pg_database.datallowconn must be true and pg_database.datconnlimit must not be -2 "
        "(noconn)"
    )


def test_a_server_pg_upgrade_cannot_start_is_the_reason(scratch: Path) -> None:
    """pg_upgrade starts the old server without the record's -c settings: here wal_level
    is minimal (ALTER SYSTEM) and only the record's max_wal_senders=0 lets it start. The
    reason given was the last line of pg_upgrade's output, its pg_ctl command line; the
    server's own FATAL line (in the log pg_upgrade says to consult) is the reason."""
    it = Inst("os", scratch / "os")
    try:
        it.ok("init", "-q", "-d", str(it.datadir), "--name", "os", "-v", "15")
        it.ok("start", "os", "-q", "-p", "auto", "-c", "max_wal_senders=0")
        it.sql("ALTER SYSTEM SET wal_level = minimal")
        it.ok("restart", "os", "-q")
        proc = it.pgmgr("upgrade", "os", "-v", "18", "--yes")
        assert proc.returncode == 1, proc.stderr
        assert error_lines(proc.stderr)[0] == (
            "Error: pg_upgrade failed: the old server did not start: WAL streaming "
            '(max_wal_senders > 0) requires wal_level "replica" or "logical"; nothing was '
            "changed"
        ), proc.stderr
        assert it.state() == "running" and it.record()["major"] == "15"
        assert leftovers(it.store) == []
    finally:
        it.pgmgr("stop", "--all", "-m", "immediate", "-q")


PG_CTL_OUT = (
    "*failure*\n"
    'Consult the last few lines of "/w/log/pg_upgrade_server.log" for\n'
    "the probable cause of the failure.\n\n"
    'connection to server on socket "/s/.s.PGSQL.5" failed: No such file or directory\n'
    "\tIs the server running locally and accepting connections on that socket?\n\n"
    "could not connect to target postmaster started with the command:\n"
    '"/b/pg_ctl" -w -l "/w/log/pg_upgrade_server.log" -D "/n" start\n'
)


def test_failure_reason_of_a_server_that_did_not_start() -> None:
    logs = (
        "==> /w/log/pg_upgrade_server.log <==\nwaiting for server to start....2026-11-27 "
        "04:17:32.209 UTC [9] FATAL:  could not map anonymous shared memory: Cannot "
        "allocate memory\n stopped waiting\npg_ctl: could not start server\n"
        "==> /w/log/pg_upgrade_utility.log <==\nFATAL:  not this one\n"
    )
    assert plan.failure_reason(PG_CTL_OUT, logs, 1) == (
        "the new server did not start: could not map anonymous shared memory: Cannot "
        "allocate memory"
    )
    # the log not kept: the last line, as before
    assert plan.failure_reason(PG_CTL_OUT, "", 1).startswith('"/b/pg_ctl" -w')


def test_failure_reason_of_a_statement_pg_upgrade_could_not_restore() -> None:
    """The log pg_upgrade says to consult ends with psql's ERROR on the statement that
    failed: that (and the statement) is the reason, not 'the probable cause of the
    failure' (the last line of its output)."""
    out = (
        "*failure*\n"
        'Consult the last few lines of "/w/log/pg_upgrade_utility.log" for\n'
        "the probable cause of the failure.\n"
    )
    logs = (
        "==> /w/log/pg_upgrade_utility.log <==\ncommand: psql ...\nCREATE ROLE\n"
        'ALTER ROLE "rr" SET "force_parallel_mode" TO \'off\';\n'
        "psql:/w/dump/pg_upgrade_dump_globals.sql:36: ERROR:  unrecognized configuration "
        'parameter "force_parallel_mode"\n\n'
    )
    assert plan.failure_reason(out, logs, 1) == (
        'unrecognized configuration parameter "force_parallel_mode" (in: ALTER ROLE "rr" '
        "SET \"force_parallel_mode\" TO 'off')"
    )
