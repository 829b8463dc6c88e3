"""``pgmgr export`` / ``pgmgr import`` on real servers: 15 -> 15 and 15 -> 18 give equal row
counts and per-table checksums; incomplete, damaged or impossible imports create nothing."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.helpers import error_lines
from tests.ops.conftest import Instance

SETUP = {
    "postgres": [
        "CREATE EXTENSION hstore",
        "CREATE ROLE app LOGIN PASSWORD 'app-secret'",
        "CREATE TABLE kinds AS SELECT g AS id, md5(g::text) AS t, g * 1.25 AS n,"
        " '2024-01-01'::timestamptz + g * interval '1 hour' AS ts,"
        " jsonb_build_object('g', g) AS j, ('k=>' || g)::hstore AS h,"
        " decode(md5(g::text), 'hex') AS b FROM generate_series(1, 5000) g",
        "ALTER TABLE kinds ADD PRIMARY KEY (id)",
        "CREATE TABLE empty (x int)",
    ],
    "shop": [
        "CREATE TABLE orders (id serial PRIMARY KEY, who text, total numeric(10,2))",
        "INSERT INTO orders (who, total) SELECT 'c' || g, g / 3.0 FROM generate_series(1, 777) g",
        "ALTER TABLE orders OWNER TO app",
    ],
}


CHECKSUM = sql.SQL(
    "SELECT count(*), md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM {} x"
)


def connect(rec: dict[str, Any], dbname: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=str(rec["socket_dir"]), port=int(rec["port"]), user="postgres", dbname=dbname,
        autocommit=True,
    )  # fmt: skip


def fingerprint(rec: dict[str, Any]) -> dict[str, tuple[int, str, str]]:
    """db.table -> (rows, md5 of the sorted rows as text, owner) for every user table."""
    found: dict[str, tuple[int, str, str]] = {}
    with connect(rec) as c:
        dbs = [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE NOT datistemplate")]
    for db in dbs:
        with connect(rec, db) as c:
            tables = c.execute(
                "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
            for table, owner in tables:
                row = c.execute(CHECKSUM.format(sql.Identifier(table))).fetchone()
                assert row is not None
                found[f"{db}.{table}"] = (int(row[0]), str(row[1]), str(owner))
    return found


def record(inst: Instance, name: str) -> dict[str, Any]:
    proc = inst.pgmgr("status", name, "--json")
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


@pytest.fixture
def source(fresh: Instance) -> dict[str, Any]:
    rec = record(fresh, "fresh")
    with connect(rec) as c:
        c.execute("CREATE DATABASE shop")
    for db, statements in SETUP.items():
        with connect(rec, db) as c:
            for sql in statements:
                c.execute(sql)
    return rec


def test_export_then_import_into_15_and_18_keeps_every_row(
    fresh: Instance, source: dict[str, Any], ops_dir: Path
) -> None:
    bundle = ops_dir / "bundle"
    out = fresh.pgmgr("export", "fresh", str(bundle), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["databases"] == ["postgres", "shop"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["source"]["major"] == "15" and manifest["encoding"] == "UTF8"
    exts = {e["name"]: e["version"] for e in manifest["databases"][0]["extensions"]}
    assert exts.get("hstore")
    globals_sql = (bundle / "globals.sql").read_text()
    assert "CREATE ROLE app;" in globals_sql and "SCRAM-SHA-256" not in globals_sql
    expected = fingerprint(source)
    assert expected["postgres.kinds"][0] == 5000 and expected["shop.orders"][:1] == (777,)
    assert expected["shop.orders"][2] == "app"

    for major in ("15", "18"):
        name = f"to{major}"
        proc = fresh.pgmgr(
            "import", str(bundle), "-d", str(ops_dir / name), "-v", major, "--name", name
        )
        assert proc.returncode == 0, proc.stderr
        rec = record(fresh, name)
        assert rec["version"].startswith(f"{major}.") and rec["state"] == "running"
        assert fingerprint(rec) == expected, major
        # The new instance's own generated password works over TCP.
        with psycopg.connect(rec["tcp_url"]) as c:
            assert c.execute("SELECT current_user").fetchone() == ("postgres",)


def test_with_passwords_keeps_the_hashes(
    fresh: Instance, source: dict[str, Any], ops_dir: Path
) -> None:
    assert fresh.pgmgr("export", "fresh", str(ops_dir / "b"), "--with-passwords").returncode == 0
    assert "SCRAM-SHA-256$" in (ops_dir / "b" / "globals.sql").read_text()


def expect_error(inst: Instance, args: list[str], code: int, start: str, ops_dir: Path) -> None:
    """One Error line (and maybe a Hint), the exit code, and no new directory or instance."""
    before_dirs = sorted(p.name for p in ops_dir.iterdir())
    before = inst.pgmgr("status", "--json").stdout
    proc = inst.pgmgr(*args)
    lines = error_lines(proc.stderr)
    assert proc.returncode == code, (args, proc.stderr)
    assert lines[0].startswith(start), (args, lines)
    assert len(lines) <= 2 and all(ln.startswith(("Error:", "Hint:")) for ln in lines), lines
    assert sorted(p.name for p in ops_dir.iterdir()) == before_dirs, args
    assert sorted(r["name"] for r in json.loads(inst.pgmgr("status", "--json").stdout)) == sorted(
        r["name"] for r in json.loads(before)
    )


def test_bad_bundles_and_targets_create_nothing(
    fresh: Instance, source: dict[str, Any], ops_dir: Path
) -> None:
    good = ops_dir / "good"
    assert fresh.pgmgr("export", "fresh", str(good)).returncode == 0
    new = str(ops_dir / "new")

    expect_error(fresh, ["export", "fresh", str(good)], 1, f"Error: {good} already exists", ops_dir)
    # pg_dumpall refused it after the export had begun: "failed with exit code 1: x/glo..."
    broke = str(ops_dir / "a\nb")
    expect_error(
        fresh, ["export", "fresh", broke], 2, f"Error: invalid path {broke!r}: it holds a", ops_dir
    )
    expect_error(
        fresh, ["import", str(good), "-d", str(good)], 1, f"Error: {good} already exists", ops_dir
    )
    expect_error(
        fresh,
        ["import", str(ops_dir / "nope"), "-d", new],
        1,
        f"Error: {ops_dir / 'nope'} is not a directory",
        ops_dir,
    )

    expect_error(
        fresh, ["import", str(good), "-d", new, "-p", "x"], 2, "Error: invalid --port 'x'", ops_dir
    )

    partial = ops_dir / "partial"
    shutil.copytree(good, partial)
    (partial / "manifest.json").unlink()
    expect_error(
        fresh,
        ["import", str(partial), "-d", new],
        1,
        f"Error: {partial} is not a complete bundle: it has no manifest.json",
        ops_dir,
    )

    broken = ops_dir / "broken"
    shutil.copytree(good, broken)
    victim = max((broken / "databases" / "1").glob("*.dat*"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    rel = victim.relative_to(broken)
    expect_error(
        fresh,
        ["import", str(broken), "-d", new],
        1,
        f"Error: bundle {broken} is damaged: {rel} does not match its checksum",
        ops_dir,
    )
    victim.unlink()
    expect_error(
        fresh,
        ["import", str(broken), "-d", new],
        1,
        f"Error: bundle {broken} is damaged: {rel} is missing",
        ops_dir,
    )
    # Unlisted, a symlink in a dump directory: pg_restore (as root, when pgmgr is) read the
    # file it names into a table of the new instance.
    manifest = json.loads((broken / "manifest.json").read_text())
    del manifest["files"][str(rel)]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    secret = ops_dir / "secret"
    secret.write_text("only the importing user can read this\n")
    link = victim.parent / victim.name.removesuffix(".gz")
    link.symlink_to(secret)
    expect_error(
        fresh,
        ["import", str(broken), "-d", new],
        1,
        f"Error: bundle {broken} is damaged: {link.relative_to(broken)} is a symlink",
        ops_dir,
    )

    newer = ops_dir / "newer"
    shutil.copytree(good, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["source"].update(major="18", version="18.6")
    (newer / "manifest.json").write_text(json.dumps(manifest))
    expect_error(
        fresh,
        ["import", str(newer), "-d", new, "-v", "15"],
        1,
        "Error: the bundle is from PostgreSQL 18.6; it cannot be imported into the older",
        ops_dir,
    )

    # Without -v: the bundle's major, which the user did not give as --version
    manifest["source"].update(major="99", version="99.1")
    (newer / "manifest.json").write_text(json.dumps(manifest))
    expect_error(
        fresh,
        ["import", str(newer), "-d", new],
        1,
        "Error: the bundle is from PostgreSQL 99.1, which is not installed here (installed: ",
        ops_dir,
    )
    # initdb -U '' said only 'FATAL: a name must follow the "/" sign at character 72'
    nosu = ops_dir / "nosu"
    shutil.copytree(good, nosu)
    good_manifest = json.loads((good / "manifest.json").read_text())
    (nosu / "manifest.json").write_text(json.dumps({**good_manifest, "superuser": ""}))
    expect_error(
        fresh,
        ["import", str(nosu), "-d", new],
        1,
        f"Error: {nosu}/manifest.json is not a valid manifest ('superuser' is empty)",
        ops_dir,
    )
    manifest["source"].update(major="abc")
    (newer / "manifest.json").write_text(json.dumps(manifest))
    expect_error(
        fresh,
        ["import", str(newer), "-d", new],
        1,
        f"Error: {newer}/manifest.json is not a valid manifest (invalid source 'major' 'abc': ",
        ops_dir,
    )

    assert fresh.pgmgr("stop", "fresh", "-q").returncode == 0
    expect_error(
        fresh,
        ["export", "fresh", str(ops_dir / "stopped")],
        3,
        "Error: 'fresh' is not running",
        ops_dir,
    )


def test_an_extension_the_target_lacks_is_reported(
    fresh: Instance, source: dict[str, Any], ops_dir: Path
) -> None:
    """The embedded PostgreSQL 18 has no pgcrypto; Debian's 15 has it."""
    with connect(source, "shop") as c:
        c.execute("CREATE EXTENSION pgcrypto")
    bundle = ops_dir / "b"
    assert fresh.pgmgr("export", "fresh", str(bundle)).returncode == 0
    version = json.loads((bundle / "manifest.json").read_text())["databases"][1]["extensions"]
    pgcrypto = {e["name"]: e["version"] for e in version}["pgcrypto"]
    expect_error(
        fresh,
        ["import", str(bundle), "-d", str(ops_dir / "n"), "-v", "18"],
        1,
        "Error: PostgreSQL 18",
        ops_dir,
    )
    proc = fresh.pgmgr("import", str(bundle), "-d", str(ops_dir / "n"), "-v", "18")
    assert f"lacks extensions the bundle uses: pgcrypto {pgcrypto} (database shop)" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the escalation exists only for root")
def test_a_bundles_psql_meta_command_never_runs_as_root(
    fresh: Instance, source: dict[str, Any], ops_dir: Path
) -> None:
    """A hostile globals.sql (``\\!`` runs a shell in psql) with a recomputed checksum: the
    import runs it as the server user, never as root (it did: the file said uid 0)."""
    bundle = ops_dir / "b"
    assert fresh.pgmgr("export", "fresh", str(bundle)).returncode == 0
    proof = Path(f"/tmp/pgmgr-test-bang-{uuid.uuid4().hex}")
    try:
        with (bundle / "globals.sql").open("a") as f:
            f.write(f"\\! id -u > {proof}\n")
        manifest = json.loads((bundle / "manifest.json").read_text())
        digest = hashlib.sha256((bundle / "globals.sql").read_bytes()).hexdigest()
        manifest["files"]["globals.sql"]["sha256"] = digest
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        proc = fresh.pgmgr("import", str(bundle), "-d", str(ops_dir / "imp"), "--name", "imp")
        assert proc.returncode == 0, proc.stderr
        assert proof.read_text().strip() == str(pwd.getpwnam("postgres").pw_uid)
    finally:
        proof.unlink(missing_ok=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the escalation exists only for root")
def test_a_crafted_archive_never_makes_root_read_a_file(fresh: Instance, ops_dir: Path) -> None:
    """A dump directory whose toc.dat names ``../../root-only-file`` as a table's data (with
    the checksums recomputed): pg_restore runs as the server user on a copy it can read, so
    root's file never reaches the new instance (it did: the table held the secret)."""
    import gzip
    import re
    import struct
    import tempfile

    rec = record(fresh, "fresh")
    with connect(rec) as c:
        c.execute("CREATE TABLE loot (line text)")
        c.execute("INSERT INTO loot VALUES ('harmless-marker')")
    bundle = ops_dir / "b"
    assert fresh.pgmgr("export", "fresh", str(bundle)).returncode == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    db = next(d for d in manifest["databases"] if d["name"] == "postgres")
    archive = bundle / str(db["dir"])
    toc = (archive / "toc.dat").read_bytes()
    data = next(
        name
        for name in re.findall(rb"\d+\.dat", toc)
        if b"harmless-marker" in gzip.decompress((archive / (name.decode() + ".gz")).read_bytes())
    )
    vault = Path(tempfile.mkdtemp(prefix="pgmgr-test-vault-"))  # root's, 0700
    try:
        (vault / "secret").write_text("TOPSECRET\n")
        target = ("../" * 30 + str(vault / "secret").lstrip("/")).encode()
        old = b"\x00" + struct.pack("<I", len(data)) + data
        assert toc.count(old) == 1
        (archive / "toc.dat").write_bytes(
            toc.replace(old, b"\x00" + struct.pack("<I", len(target)) + target)
        )
        (archive / (data.decode() + ".gz")).unlink()
        rel = str((archive / "toc.dat").relative_to(bundle))
        del manifest["files"][str((archive / (data.decode() + ".gz")).relative_to(bundle))]
        raw = (archive / "toc.dat").read_bytes()
        manifest["files"][rel] = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
        (bundle / "manifest.json").write_text(json.dumps(manifest))

        proc = fresh.pgmgr("import", str(bundle), "-d", str(ops_dir / "imp"), "--name", "imp")
        assert "Traceback" not in proc.stderr
        if proc.returncode == 0:
            with connect(record(fresh, "imp")) as c:
                rows = c.execute("SELECT line FROM loot").fetchall()
            assert ("TOPSECRET",) not in rows
        else:  # pg_restore, as the server user, cannot open it: one clear error, nothing made
            assert len(error_lines(proc.stderr)) >= 1
            assert "TOPSECRET" not in proc.stderr
            assert not (ops_dir / "imp").exists()
    finally:
        shutil.rmtree(vault)


def test_settings_that_name_files_or_run_commands_are_not_imported(
    fresh: Instance, ops_dir: Path
) -> None:
    """A manifest (hand-edited, or from a machine where they made sense) that sets pgmgr's
    own settings, files, libraries or commands: the import applies the others, drops those
    with one Note line, and the new server uses none of them. A malformed one is refused
    before anything is made."""
    bundle = ops_dir / "bundle"
    assert fresh.pgmgr("export", "fresh", str(bundle), "-q").returncode == 0
    marker = ops_dir / "archived"
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["settings"] = {
        "work_mem": "8MB",
        "search_path": "public",
        "hba_file": str(ops_dir / "hba.conf"),
        "archive_mode": "on",
        "archive_command": f"touch {marker}",
        "shared_preload_libraries": "no_such_library",
        "listen_addresses": "*",
        "port": "1",
        "include_if_exists": str(ops_dir / "extra.conf"),
        "ssl_key_file": str(ops_dir / "key"),
        "jit_provider": "../../../../../tmp/x",  # loads /tmp/x.so
        # a scratch instance's speed-ups: data lost after a crash where it is imported
        "fsync": "off",
        "full_page_writes": "False",
        "zero_damaged_pages": "on",
        "ignore_checksum_failure": "yes",
        "data_sync_retry": "true",
        "synchronous_commit": "off",  # recent commits only: kept
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    proc = fresh.pgmgr("import", str(bundle), "-d", str(ops_dir / "imp"))
    assert proc.returncode == 0, proc.stderr
    notes = [ln for ln in proc.stderr.splitlines() if ln.startswith("Note:") and "auth" not in ln]
    assert notes == [
        "Note: not applied, from the bundle's settings: archive_command, archive_mode, "
        "data_sync_retry, fsync, full_page_writes, hba_file, ignore_checksum_failure, "
        "include_if_exists, jit_provider, listen_addresses, port, shared_preload_libraries, "
        "ssl_key_file, zero_damaged_pages (pgmgr's own, naming files or commands of the "
        "machine it was made on, archiving with such a command, or giving up crash safety); "
        "set one with 'pgmgr config imp set NAME=VALUE' if it holds here"
    ], proc.stderr
    rec = record(fresh, "imp")
    with connect(rec) as c:
        c.execute("SELECT pg_switch_wal()")  # archive_mode is dropped too: nothing archives
        shown = {
            name: c.execute(f"SHOW {name}").fetchone()
            for name in ("work_mem", "search_path", "hba_file", "listen_addresses",
                         "shared_preload_libraries", "fsync", "full_page_writes",
                         "zero_damaged_pages", "synchronous_commit")
        }  # fmt: skip
    assert shown["work_mem"] == ("8MB",) and shown["search_path"] == ("public",)
    assert shown["hba_file"] == (f"{ops_dir / 'imp'}/pg_hba.conf",)
    assert shown["listen_addresses"] == ("127.0.0.1",)
    assert shown["shared_preload_libraries"] == ("",)
    assert (shown["fsync"], shown["full_page_writes"]) == (("on",), ("on",))
    assert (shown["zero_damaged_pages"], shown["synchronous_commit"]) == (("off",), ("off",))
    assert not marker.exists()
    assert fresh.pgmgr("destroy", "imp", "--yes", "-q").returncode == 0

    manifest["settings"] = {"work_mem": "8MB\nhba_file = '/etc/x'"}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    expect_error(
        fresh,
        ["import", str(bundle), "-d", str(ops_dir / "imp")],
        1,
        f"Error: {bundle}/manifest.json is not a valid manifest (invalid setting 'work_mem': "
        "the value holds a line break); nothing was created",
        ops_dir,
    )


def test_a_bundles_trust_authentication_is_not_applied_unless_asked(
    fresh: Instance, ops_dir: Path
) -> None:
    """A manifest that says ``auth: trust`` (an export of an instance made with ``init
    --auth trust``; or anyone's edit: the manifest has no checksum): the new instance let
    any local client in over TCP as any role, the superuser included, without a password.
    It gets scram-sha-256 and its own password, with a Note line; ``--auth trust`` asks
    for it."""
    bundle = ops_dir / "bundle"
    assert fresh.pgmgr("export", "fresh", str(bundle), "-q").returncode == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "auth": "trust"}))

    proc = fresh.pgmgr("import", str(bundle), "-d", str(ops_dir / "imp"))
    assert proc.returncode == 0, proc.stderr
    notes = [ln for ln in proc.stderr.splitlines() if ln.startswith("Note:")]
    assert notes == [
        "Note: not applied, from the bundle: auth trust (TCP logins without a password); "
        "'imp' uses scram-sha-256 with its own password. To let TCP in without one, import "
        "with '--auth trust'"
    ], proc.stderr
    rec = record(fresh, "imp")
    assert rec["tcp_url"].startswith("postgresql://postgres:")  # a password in it
    port = int(rec["port"])
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
    with psycopg.connect(rec["tcp_url"]) as c:
        assert c.execute("SELECT current_user").fetchone() == ("postgres",)

    asked = fresh.pgmgr(
        "import", str(bundle), "-d", str(ops_dir / "open"), "--auth", "trust", "--json"
    )
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout)["dropped_auth"] is None
    rec = record(fresh, "open")
    with psycopg.connect(host="127.0.0.1", port=int(rec["port"]), user="postgres") as c:
        assert c.execute("SELECT current_user").fetchone() == ("postgres",)
    bad = fresh.pgmgr("import", str(bundle), "-d", str(ops_dir / "x"), "--auth", "ident")
    assert bad.returncode == 2
    assert error_lines(bad.stderr) == [
        "Error: invalid --auth 'ident': use scram-sha-256, trust, md5, password"
    ]
    assert not (ops_dir / "x").exists()


def test_a_manifest_nested_too_deep_is_one_line(ops_dir: Path) -> None:
    """A bundle comes from elsewhere: a manifest.json nested deeper than the JSON parser
    goes (RecursionError, not a ValueError) made the import die with a traceback."""
    bundle = ops_dir / "deep"
    bundle.mkdir()
    (bundle / "manifest.json").write_text('{"format": ' + "[" * 100_000)
    nobody = Instance("nobody", ops_dir / "unused")
    expect_error(
        nobody, ["import", str(bundle), "-d", str(ops_dir / "new")], 1,
        f"Error: {bundle}/manifest.json is unreadable (nested too deep)", ops_dir,
    )  # fmt: skip
