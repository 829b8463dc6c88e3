"""The pure parts of service, replica, bundle and scram: unit files, pg_hba.conf edits,
command lines, globals filtering; and SCRAM verifiers checked against PostgreSQL's own."""

from __future__ import annotations

import base64
import copy
import json
import os
import pwd
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgmgr.core import bundlecheck, importer, listen, onprimary, replica, scram, service, versions
from pgmgr.core.errors import DatabaseException, UsageError
from pgmgr.core.instance import Server
from tests.ops.conftest import Instance

INSTALL = versions.Installation("15", "15.18", Path("/usr/lib/postgresql/15/bin"), "debian")


def test_a_bundles_settings_keep_none_bound_to_its_machine() -> None:
    """pgmgr's own settings and those naming files, libraries or commands are dropped (by
    name, by suffix, extensions' too, any case); the rest are kept and checked as -c ones."""
    from pgmgr.core import server

    dropped = ["hba_file", "ident_file", "config_file", "data_directory", "listen_addresses",
               "unix_socket_directories", "unix_socket_permissions", "ssl_cert_file",
               "ssl_crl_dir", "ssl_passphrase_command", "archive_command", "archive_library",
               "restore_command", "recovery_end_command", "shared_preload_libraries",
               "dynamic_library_path", "krb_server_keyfile", "log_directory", "log_filename",
               "include", "include_dir", "include_if_exists", "external_pid_file", "port",
               "Hba_File", "myext.key_file"]  # fmt: skip
    kept = {"work_mem": "64MB", "search_path": "app, public", "archive_mode": "off",
            "log_min_messages": "info", "max_connections": 50, "myext.enabled": "on"}  # fmt: skip
    got, names = server.portable_settings(
        {**kept, **dict.fromkeys(dropped, "/x"), "Archive_Mode": "always"}
    )  # archive_mode on: its command is dropped, so is it (the WAL was kept for ever)
    assert names == sorted([*dropped, "Archive_Mode"])
    assert got == {k: str(v) for k, v in kept.items()}
    with pytest.raises(UsageError, match="holds a line break"):
        server.portable_settings({"work_mem": "1MB\nhba_file = '/x'"})


def test_slot_names_are_valid_identifiers() -> None:
    assert onprimary.slot_name("Web-2.b") == "pgmgr_web_2_b"
    assert len(onprimary.slot_name("x" * 63)) <= 63


def test_a_replica_or_branch_listens_on_loopback_only() -> None:
    """Whatever its source listens on (one started with -H 0.0.0.0 included)."""
    assert listen.loopback_of("127.0.0.1") == "127.0.0.1"
    assert listen.loopback_of("127.0.0.1,::1") == "127.0.0.1,::1"
    assert listen.loopback_of("localhost") == "localhost"
    assert listen.loopback_of("0.0.0.0") == "127.0.0.1"  # noqa: S104 - what it must not keep
    assert listen.loopback_of("*") == "127.0.0.1"
    assert listen.loopback_of("::, 10.1.2.3, ::1") == "::1"
    assert listen.loopback_of("") == "127.0.0.1"


def test_hba_edit_puts_ours_first_and_removes_only_ours() -> None:
    text = "# comment\nhost all all 127.0.0.1/32 trust\n"
    added = onprimary.edited_hba(text, "r1", onprimary.hba_lines("r1", "pgmgr_r1"))
    lines = added.splitlines()
    assert lines[0] == "host replication pgmgr_r1 127.0.0.1/32 scram-sha-256  # pgmgr replica r1"
    assert lines[1].startswith("host replication pgmgr_r1 ::1/128 ")
    both = onprimary.edited_hba(added, "xr1", onprimary.hba_lines("xr1", "pgmgr_xr1"))
    assert onprimary.edited_hba(both, "r1", []).count("# pgmgr replica") == 2  # xr1's stay
    assert onprimary.edited_hba(onprimary.edited_hba(both, "r1", []), "xr1", []) == text


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


_GOOD = {
    "format": "pgmgr-bundle",
    "format_version": 1,
    "source": {"name": "a", "version": "15.1", "major": "15"},
    "encoding": "UTF8",
    "locale": {"collate": "C", "ctype": "C"},
    "superuser": "postgres",
    "settings": {},
    "globals": "globals.sql",
    "databases": [
        {
            "name": "postgres",
            "dir": "databases/1",
            "extensions": [{"name": "plpgsql", "version": "1.0"}],
        },
    ],
    "files": {
        "globals.sql": {"sha256": "0", "size": 0},
        "databases/1/toc.dat": {"sha256": "0", "size": 0},
    },
}


_BAD: list[tuple[str, Any]] = [
    ("files", ["globals.sql"]),
    ("files", {"globals.sql": "x", "databases/1/toc.dat": "x"}),
    ("databases", [{"name": "postgres", "dir": "databases/1", "extensions": [{"name": "x"}]}]),
    ("databases", [{"name": "postgres", "dir": "databases/1", "extensions": "abc"}]),
    ("databases", [7]),
    ("locale", None),
    ("superuser", "x\ny"),
    ("auth", ["trust"]),
    ("auth", "ident"),
]


@pytest.mark.parametrize(("key", "value"), _BAD)
def test_a_malformed_manifest_is_one_clear_error(tmp_path: Path, key: str, value: Any) -> None:
    """A hand-edited manifest: a DatabaseException naming it, never a traceback later."""
    m = {**copy.deepcopy(_GOOD), key: value}
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatabaseException, match="not a valid manifest"):
        bundlecheck.read_manifest(tmp_path)


def test_a_manifest_that_is_a_fifo_or_huge_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO named manifest.json hung the import (nobody writes to it); a huge one was
    read whole into memory."""
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "manifest.json")
    with pytest.raises(DatabaseException, match=r"manifest\.json is unreadable \(not a regular"):
        bundlecheck.read_manifest(fifo)
    huge = tmp_path / "huge"
    huge.mkdir()
    with open(huge / "manifest.json", "wb") as f:
        f.truncate(bundlecheck.MANIFEST_LIMIT + 1)  # sparse: no disk used
    with pytest.raises(DatabaseException, match=r"manifest\.json is unreadable \(larger than"):
        bundlecheck.read_manifest(huge)


@pytest.mark.parametrize("verb", ["show", "remove"])
def test_a_unit_name_is_never_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verb: str
) -> None:
    """'service remove x/../../victim' must not reach (and delete) a file outside the
    unit directory, even when pgmgr-x/ exists there (a drop-in directory, say)."""
    units = tmp_path / "units"
    (units / "pgmgr-x").mkdir(parents=True)
    victim = tmp_path / "victim.service"
    victim.write_text(service.HEADER + " for instance 'other'\n")
    monkeypatch.setenv(service.SYSTEM_DIR_ENV, str(units))
    with pytest.raises(UsageError, match="invalid instance name"):
        if verb == "remove":
            service.remove("x/../../victim", "system")
        else:
            service.show(None, "x/../../victim", "system")
    assert victim.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="root following another user's symlink")
@pytest.mark.parametrize("verb", ["install", "remove"])
def test_root_never_writes_units_through_a_users_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verb: str
) -> None:
    """sudo keeping HOME: ~/.config/systemd/user is the user's, who made it a symlink to a
    root-only directory. Root must neither write nor delete a unit there."""
    nobody = pwd.getpwnam("nobody")
    home = tmp_path / "home"
    (home / ".config" / "systemd").mkdir(parents=True)
    secret = tmp_path / "root-only"
    secret.mkdir(mode=0o700)
    (home / ".config" / "systemd" / "user").symlink_to(secret)
    for d in (home, home / ".config", home / ".config" / "systemd"):
        os.chown(d, nobody.pw_uid, nobody.pw_gid)
    os.lchown(home / ".config" / "systemd" / "user", nobody.pw_uid, nobody.pw_gid)
    tmp_path.chmod(0o755)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    srv = Server.for_datadir(tmp_path / "data", name="svc")  # a record is not needed
    unit = secret / service.unit_name("svc")
    if verb == "remove":
        unit.write_text(service.HEADER + " for instance 'x'\n")
    with pytest.raises(DatabaseException, match="refusing to write units"):
        if verb == "install":
            service.install(srv, "user")
        else:
            service.remove("svc", "user")
    assert unit.exists() == (verb == "remove")
