"""``pgmgr replica`` and ``pgmgr promote`` on real servers: streaming, read-only standby,
promotion with nothing lost, roles and lag in ``status``, and bad inputs that create nothing."""

from __future__ import annotations

import json
import os
import pwd
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers import error_lines
from tests.ops.conftest import Instance


def conn(inst: Instance, name: str | None = None) -> psycopg.Connection[Any]:
    rec = inst.record() if name is None else Instance(name, Path()).record()
    return psycopg.connect(
        host="127.0.0.1", port=int(str(rec["port"])), user="postgres", dbname="postgres",
        autocommit=True,
    )  # fmt: skip


def primary_leftovers(inst: Instance) -> tuple[int, int, list[str]]:
    """Slots and pgmgr roles on the primary, and its pg_hba.conf lines pgmgr tagged."""
    with conn(inst) as c:
        slots = c.execute("SELECT count(*) FROM pg_replication_slots").fetchone()
        roles = c.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'pgmgr%'").fetchone()
        hba = c.execute("SELECT pg_read_file(current_setting('hba_file'))").fetchone()
    assert slots and roles and hba
    tagged = [ln for ln in str(hba[0]).splitlines() if "# pgmgr replica" in ln]
    return int(slots[0]), int(roles[0]), tagged


def _count(c: psycopg.Connection[Any]) -> int:
    """Rows in t (0 while the standby has not replayed its creation yet)."""
    try:
        row = c.execute("SELECT count(*) FROM t").fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    assert row is not None
    return int(row[0])


def status(inst: Instance) -> dict[str, dict[str, Any]]:
    proc = inst.pgmgr("status", "--json")
    return {r["name"]: r for r in json.loads(proc.stdout)}


def test_replica_streams_is_read_only_and_promotes_with_nothing_lost(fresh: Instance) -> None:
    made = fresh.pgmgr("replica", "fresh", "--name", "rep", "-p", "auto")
    assert made.returncode == 0, made.stderr
    assert "a standby of 'fresh'" in made.stderr
    assert len(primary_leftovers(fresh)[2]) == 2  # 127.0.0.1/32 and ::1/128
    assert all(" 127.0.0.1/32 " in ln or " ::1/128 " in ln for ln in primary_leftovers(fresh)[2])
    st = status(fresh)
    assert st["fresh"]["role"] == "primary" and st["fresh"]["primary"] is None
    assert st["rep"]["role"] == "standby" and st["rep"]["primary"] == "fresh"
    assert st["rep"]["replay_lag_bytes"] is not None and st["rep"]["host"] == "127.0.0.1"
    table = fresh.pgmgr("status").stdout
    assert "standby of fresh" in table

    with conn(fresh) as p, conn(fresh, "rep") as r:
        p.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        delays = []
        for batch in range(5):
            t0 = time.monotonic()
            p.execute("INSERT INTO t SELECT g, 'x' FROM generate_series(%s::int, %s::int) g",
                      (batch * 100 + 1, batch * 100 + 100))  # fmt: skip
            while True:
                got = _count(r)
                if got == (batch + 1) * 100:
                    break
                # Streaming, rows come in ms; a deadline, not a timed promise (1 s was
                # tight for a loaded CI machine): without streaming they never come.
                assert time.monotonic() - t0 < 60, f"replica has {got} rows after 60 s"
                time.sleep(0.005)
            delays.append(time.monotonic() - t0)
        print(f"replication delay: max {max(delays) * 1000:.1f} ms")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            r.execute("INSERT INTO t VALUES (1000, 'no')")

    promoted = fresh.pgmgr("promote", "rep")
    assert promoted.returncode == 0, promoted.stderr
    assert (
        "Dropped on 'fresh': slot pgmgr_rep, role pgmgr_rep, 2 pg_hba.conf lines\n"
        in promoted.stderr
    )
    assert primary_leftovers(fresh) == (0, 0, [])
    with conn(fresh, "rep") as r:
        assert _count(r) == 500
        r.execute("INSERT INTO t VALUES (1000, 'yes')")
        assert _count(r) == 501
        conninfo = r.execute("SHOW primary_conninfo").fetchone()
        assert conninfo == ("",)  # the replication password is gone from its config
    st = status(fresh)
    assert st["rep"]["role"] == "primary" and st["rep"]["primary"] is None
    again = fresh.pgmgr("promote", "rep")
    assert again.returncode == 1
    assert error_lines(again.stderr) == [
        "Error: 'rep' is a primary, not a standby: there is nothing to promote"
    ]


def snapshot(inst: Instance, ops_dir: Path) -> tuple[object, ...]:
    """Everything a failed replica must leave as it was."""
    return (
        sorted(p.name for p in ops_dir.iterdir()),
        sorted(status(inst)),
        primary_leftovers(inst),
    )


def test_bad_replica_inputs_create_nothing(fresh: Instance, ops_dir: Path) -> None:
    before = snapshot(fresh, ops_dir)
    (ops_dir / "taken").mkdir()
    before = snapshot(fresh, ops_dir)
    cases = [
        (("replica", "nosuch"), 4, "Error: no instance named 'nosuch'"),
        (("replica", "fresh", "-d", str(ops_dir / "taken")), 1,
         f"Error: {ops_dir / 'taken'} already exists; a replica needs a new directory"),
        (("replica", "fresh", "--name", "fresh"), 2, "Error: instance name 'fresh' is already"),
        (("replica", "fresh", "-p", "70000"), 2, "Error: invalid --port '70000'"),
        # refused before the clone, not after it (the start's wait then failed at once)
        *[(("replica", "fresh", "--timeout", t), 2, "Error: Invalid value for '--timeout'")
          for t in ("0", "nan", "-1", "inf")],
        (("replica", "fresh", "-v", "18"), 1,
         "Error: 'fresh' is PostgreSQL 15: a streaming replica must run the same major"),
        (("promote", "fresh"), 1, "Error: 'fresh' is a primary, not a standby"),
        (("promote", "nosuch"), 4, "Error: no instance named 'nosuch'"),
    ]  # fmt: skip
    for args, code, start in cases:
        proc = fresh.pgmgr(*args)
        lines = error_lines(proc.stderr)
        assert proc.returncode == code, (args, proc.stderr)
        assert lines[0].startswith(start), (args, lines)
        assert len(lines) <= 2 and all(ln.startswith(("Error:", "Hint:")) for ln in lines)
        assert snapshot(fresh, ops_dir) == before, args
    assert fresh.pgmgr("stop", "fresh", "-q").returncode == 0
    stopped = fresh.pgmgr("replica", "fresh")
    assert stopped.returncode == 3
    assert error_lines(stopped.stderr)[0] == "Error: 'fresh' is not running"
    assert sorted(p.name for p in ops_dir.iterdir()) == before[0]
    assert sorted(status(fresh)) == ["fresh"]


def test_destroying_a_primary_says_what_happens_to_its_standby(fresh: Instance) -> None:
    assert fresh.pgmgr("replica", "fresh", "--name", "gone").returncode == 0
    # Destroying a standby drops its slot, role and pg_hba.conf lines on the primary.
    out = fresh.pgmgr("destroy", "gone", "--yes")
    assert out.returncode == 0, out.stderr
    assert (
        "Dropped on its primary: slot pgmgr_gone, role pgmgr_gone, 2 pg_hba.conf lines\n"
        in out.stderr
    )
    assert primary_leftovers(fresh) == (0, 0, [])

    assert fresh.pgmgr("replica", "fresh", "--name", "left").returncode == 0
    asked = fresh.pgmgr("destroy", "fresh")  # no terminal, no --yes: refused, but explained
    assert asked.returncode == 2
    assert "'fresh' is the primary of left: their replication slots go with it" in asked.stderr
    out = fresh.pgmgr("destroy", "fresh", "--yes")
    assert out.returncode == 0, out.stderr
    assert "the standbys are left as they are" in out.stderr
    st = status(fresh)
    assert list(st) == ["left"] and st["left"]["state"] == "running"
    assert st["left"]["role"] == "standby" and st["left"]["primary"] == "fresh"
    promoted = fresh.pgmgr("promote", "left")
    assert promoted.returncode == 0, promoted.stderr
    # its primary is gone, and its slot and role with it: nothing to clean up, nothing to say
    assert "could not clean up" not in promoted.stderr


def test_destroying_a_standby_of_a_stopped_primary_says_what_is_left(fresh: Instance) -> None:
    assert fresh.pgmgr("replica", "fresh", "--name", "orphan").returncode == 0
    assert fresh.pgmgr("stop", "fresh", "-q").returncode == 0
    out = fresh.pgmgr("destroy", "orphan", "--yes")
    assert out.returncode == 0, out.stderr
    notes = [ln for ln in out.stderr.splitlines() if ln.startswith("Note:")]
    assert len(notes) == 1, out.stderr
    assert "could not clean up on 'fresh' (cannot connect to fresh:" in notes[0]
    assert notes[0].endswith(
        "drop slot pgmgr_orphan and role pgmgr_orphan there, or it keeps WAL for a standby "
        "that no longer follows it, and remove the pg_hba.conf lines that end in "
        "'# pgmgr replica orphan'"
    ), out.stderr
    assert fresh.pgmgr("start", "fresh", "-q").returncode == 0
    slots, roles, hba = primary_leftovers(fresh)  # what the note names is what is left
    assert (slots, roles, len(hba)) == (1, 1, 2)
    assert all(ln.endswith("# pgmgr replica orphan") for ln in hba)
    assert "\t" not in out.stderr and "Traceback" not in out.stderr


def test_a_failed_clone_leaves_nothing_on_the_primary(fresh: Instance, ops_dir: Path) -> None:
    """pg_basebackup fails (the primary allows no WAL senders): the role, slot and
    pg_hba.conf lines made for it are gone again, and no directory or record is left."""
    assert fresh.pgmgr("stop", "fresh", "-q").returncode == 0
    start = fresh.pgmgr("start", "fresh", "-q", "-c", "max_wal_senders=0")
    assert start.returncode == 0, start.stderr
    before = snapshot(fresh, ops_dir)
    proc = fresh.pgmgr("replica", "fresh", "--name", "doomed")
    assert proc.returncode == 1
    lines = error_lines(proc.stderr)
    assert lines[0].startswith("Error: pg_basebackup failed"), lines
    assert snapshot(fresh, ops_dir) == before
    assert primary_leftovers(fresh) == (0, 0, [])


def test_a_taken_role_name_is_refused_and_left_alone(fresh: Instance, ops_dir: Path) -> None:
    """The role and slot a replica would use exist already (a user's own, or another
    replica's whose name maps to the same one: 'r-1' and 'r_1' both give pgmgr_r_1): the
    refusal drops neither of them (its clean-up once dropped both)."""
    with conn(fresh) as p:
        p.execute("CREATE ROLE pgmgr_r_1 LOGIN REPLICATION")
        p.execute("COMMENT ON ROLE pgmgr_r_1 IS 'pgmgr replica r-1'")
        p.execute("SELECT pg_create_physical_replication_slot('pgmgr_r_1')")
    before = snapshot(fresh, ops_dir)
    proc = fresh.pgmgr("replica", "fresh", "--name", "r_1")
    assert proc.returncode == 1
    assert error_lines(proc.stderr)[0].startswith("Error: role pgmgr_r_1 already exists")
    assert snapshot(fresh, ops_dir) == before
    assert primary_leftovers(fresh) == (1, 1, [])


def test_two_replicas_with_one_name_at_once(fresh: Instance, ops_dir: Path) -> None:
    """One wins; the other fails cleanly and does not undo the winner's work."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "pgmgr", "replica", "fresh", "--name", "twin"]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    loser = next(err for code, err in results if code)
    assert "Traceback" not in loser and error_lines(loser)[0].startswith("Error:"), loser
    st = status(fresh)
    assert st["twin"]["state"] == "running" and st["twin"]["role"] == "standby"
    assert primary_leftovers(fresh)[:2] == (1, 1)
    with conn(fresh) as p:
        p.execute("CREATE TABLE after_race (x int)")
    deadline = time.monotonic() + 60
    with conn(fresh, "twin") as r:
        while True:
            row = r.execute("SELECT count(*) FROM pg_class WHERE relname = 'after_race'").fetchone()
            if row == (1,):
                break
            assert time.monotonic() < deadline, "the winner stopped replicating"
            time.sleep(0.01)


@pytest.mark.skipif(os.geteuid() != 0, reason="a third user's directory matters only to root")
def test_a_replica_under_a_directory_another_user_controls_is_refused(
    fresh: Instance, ops_dir: Path
) -> None:
    """As root, the standby's directory would be made in 'nobody's directory, where
    nobody could swap a symlink in and receive the base backup: refused before SRC is
    touched (it went ahead)."""
    theirs = ops_dir / "theirs"
    theirs.mkdir(mode=0o755)
    nobody = pwd.getpwnam("nobody")
    os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
    before = snapshot(fresh, ops_dir)
    proc = fresh.pgmgr("replica", "fresh", "--name", "r", "-d", str(theirs / "r"))
    assert proc.returncode == 1
    lines = error_lines(proc.stderr)
    assert lines[0].startswith(f"Error: refusing to make {theirs / 'r'} as root"), lines
    assert snapshot(fresh, ops_dir) == before
    assert list(theirs.iterdir()) == []


def test_a_standby_with_hot_standby_off_promotes_and_says_it_takes_no_connections(
    fresh: Instance,
) -> None:
    """``hot_standby = off``: the standby accepts no connection, so ``pg_promote()`` cannot
    be called; promote writes the ``promote`` file and signals the postmaster, as
    ``pg_ctl promote`` does (it failed with libpq's "not accepting connections"), and
    ``status`` says why nothing connects (it showed a plain standby)."""
    made = fresh.pgmgr("replica", "fresh", "--name", "cold", "-p", "auto", "-q")
    assert made.returncode == 0, made.stderr
    off = fresh.pgmgr("config", "cold", "set", "hot_standby=off", "--restart", "-q")
    assert off.returncode in (0, 1), off.stderr  # its report cannot read live values
    restarted = fresh.pgmgr("restart", "cold")
    assert restarted.returncode == 0, restarted.stderr
    assert (
        "Note: 'cold' is a standby with hot_standby = off: it accepts no connections "
        "(pgmgr config cold unset hot_standby --restart)" in restarted.stderr
    )
    st = status(fresh)["cold"]
    assert st["state"] == "running" and st["role"] == "standby"
    assert st["accepts_connections"] is False
    assert "standby of fresh (hot_standby off)" in fresh.pgmgr("status").stdout
    with conn(fresh) as p:
        p.execute("CREATE TABLE t (id int)")
        p.execute("INSERT INTO t SELECT generate_series(1, 100)")
        lsn = p.execute("SELECT pg_current_wal_lsn()").fetchone()
    assert lsn is not None
    with pytest.raises(psycopg.OperationalError, match="not accepting connections"):
        conn(fresh, "cold")
    # what needs no connection works, and says what it could not do; what needs one is
    # refused in pgmgr's words (all of them said libpq's "not accepting connections")
    reloaded = fresh.pgmgr("reload", "cold", "--json")
    assert reloaded.returncode == 0, reloaded.stderr
    assert json.loads(reloaded.stdout)["confirmed"] is False
    shown = fresh.pgmgr("config", "cold", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["accepts_connections"] is False
    kept = fresh.pgmgr("config", "cold", "set", "work_mem=9MB")
    assert kept.returncode == 0, kept.stderr
    assert "Sent SIGHUP (not confirmed): set work_mem for 'cold'" in kept.stderr
    for argv in (
        ["psql", "cold", "-c", "SELECT 1"],
        ["export", "cold", str(fresh.datadir.parent / "b")],
    ):
        refused = fresh.pgmgr(*argv)
        assert refused.returncode == 1
        assert error_lines(refused.stderr)[0].endswith(
            "'cold' is a standby with hot_standby = off, which accepts no connections; "
            "nothing was changed"
        ), refused.stderr
        assert "Hint: 'pgmgr config cold unset hot_standby --restart'" in refused.stderr
    assert not (fresh.datadir.parent / "b").exists()

    promoted = fresh.pgmgr("promote", "cold")
    assert promoted.returncode == 0, promoted.stderr
    assert "Promoted 'cold': it is a primary now and accepts writes" in promoted.stderr
    assert primary_leftovers(fresh) == (0, 0, [])
    with conn(fresh, "cold") as r:
        assert _count(r) == 100  # what the primary had committed is there
        r.execute("INSERT INTO t VALUES (101)")
        assert r.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        assert r.execute("SHOW primary_conninfo").fetchone() == ("",)
    st = status(fresh)["cold"]
    assert st["role"] == "primary" and "accepts_connections" not in st
    assert not (Path(str(Instance("cold", Path()).record()["datadir"])) / "promote").exists()


def test_init_json_of_a_registered_standby_shows_no_password(fresh: Instance) -> None:
    """``init -d DIR --json`` of a registered directory prints its record: never the
    superuser's password, nor a standby's replication password (the record keeps it 0600)."""
    made = fresh.pgmgr("replica", "fresh", "--name", "rep", "-p", "auto", "--json")
    assert made.returncode == 0, made.stderr
    secret = str(Instance("rep", Path(), fresh.env).record()["repl_password"])
    assert len(secret) > 8
    again = fresh.pgmgr("init", "-d", str(fresh.datadir.parent / "rep"), "--json")
    assert again.returncode == 0, again.stderr
    rec = json.loads(again.stdout)
    assert rec["name"] == "rep" and rec["initialized"] is False
    assert secret not in again.stdout + again.stderr
    assert "password" not in rec and "repl_password" not in rec
