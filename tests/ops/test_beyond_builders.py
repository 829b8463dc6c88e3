"""The pure parts of service, replica, bundle and scram: unit files, pg_hba.conf edits,
command lines, globals filtering; and SCRAM verifiers checked against PostgreSQL's own."""

from __future__ import annotations

import base64
from pathlib import Path

import psycopg

from pgmgr.core import importer, replica, scram, versions
from tests.ops.conftest import Instance

INSTALL = versions.Installation("15", "15.18", Path("/usr/lib/postgresql/15/bin"), "debian")


def test_slot_names_are_valid_identifiers() -> None:
    assert replica.slot_name("Web-2.b") == "pgmgr_web_2_b"
    assert len(replica.slot_name("x" * 63)) <= 63


def test_hba_edit_puts_ours_first_and_removes_only_ours() -> None:
    text = "# comment\nhost all all 127.0.0.1/32 trust\n"
    added = replica.edited_hba(text, "r1", replica.hba_lines("r1", "pgmgr_r1"))
    lines = added.splitlines()
    assert lines[0] == "host replication pgmgr_r1 127.0.0.1/32 scram-sha-256  # pgmgr replica r1"
    assert lines[1].startswith("host replication pgmgr_r1 ::1/128 ")
    both = replica.edited_hba(added, "xr1", replica.hba_lines("xr1", "pgmgr_xr1"))
    assert replica.edited_hba(both, "r1", []).count("# pgmgr replica") == 2  # xr1's stay
    assert replica.edited_hba(replica.edited_hba(both, "r1", []), "xr1", []) == text


def test_basebackup_argv_never_holds_a_password() -> None:
    argv = replica.basebackup_argv(INSTALL, Path("/d"), "127.0.0.1", 5433, "pgmgr_r", "pgmgr_r")
    assert argv[0] == "/usr/lib/postgresql/15/bin/pg_basebackup"
    assert {"-R", "-w", "-S"} <= set(argv) and argv[argv.index("-S") + 1] == "pgmgr_r"
    assert not any("password" in a for a in argv)


def test_globals_drop_only_the_superusers_create_role() -> None:
    text = "CREATE ROLE app;\nCREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER;\n"
    assert importer.globals_sql(text, "postgres") == (
        "CREATE ROLE app;\nALTER ROLE postgres WITH SUPERUSER;\n"
    )
    assert importer.globals_sql('CREATE ROLE "Admin";\n', "Admin") == ""


def test_restore_argv() -> None:
    argv = importer.restore_argv(INSTALL, Path("/b/databases/2"), create=True)
    assert argv[-2:] == ["--create", "/b/databases/2"] and "--exit-on-error" in argv


def test_scram_verifier_matches_postgres(fresh: Instance) -> None:
    """PostgreSQL hashes a password; the same salt and iterations give the same verifier."""
    rec = fresh.record()
    with psycopg.connect(
        host=str(rec["socket_dir"]), port=int(str(rec["port"])), user="postgres",
        dbname="postgres", autocommit=True,
    ) as c:  # fmt: skip
        c.execute("SET password_encryption = 'scram-sha-256'")
        c.execute("CREATE ROLE hashed PASSWORD 'pa:ss w0rd'")
        row = c.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'hashed'").fetchone()
    assert row is not None
    stored = str(row[0])
    iterations, salt = stored.split("$")[1].split(":")
    ours = scram.verifier("pa:ss w0rd", salt=base64.b64decode(salt), iterations=int(iterations))
    assert ours == stored
    assert scram.verifier("x") != scram.verifier("x")  # a new salt each time
