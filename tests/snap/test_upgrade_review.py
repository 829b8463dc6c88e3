"""pgmgr upgrade 15 -> 18 as a user meets it (review): what a refused upgrade says, what
``--check`` reports, and how the statistics are rebuilt or the user told how. Real
servers: Debian's 15 and the embedded wheel's 18."""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import error_lines
from tests.snap.conftest import Inst, leftovers


def make(scratch: Path, name: str = "rv", *, start: bool = True) -> Inst:
    it = Inst(name, scratch / name)
    it.ok("init", "-q", "-d", str(it.datadir), "--name", name, "-v", "15")
    it.ok("start", name, "-q", "-p", "auto", "-c", "vacuum_defer_cleanup_age=0")
    it.sql("CREATE TABLE t AS SELECT g AS x, g % 10 AS y FROM generate_series(1, 2000) g;"
           " ANALYZE t")  # fmt: skip
    if not start:
        it.ok("stop", name, "-q")
    return it


@pytest.fixture
def rv(scratch: Path) -> Iterator[Inst]:
    try:
        yield make(scratch)
    finally:
        Inst("rv", scratch / "rv").pgmgr("stop", "--all", "-m", "immediate", "-q")


def test_a_refused_extension_is_named_and_nothing_changes(rv: Inst) -> None:
    """adminpack (removed in 17) is in the old cluster: pg_upgrade refuses. The one line
    says so in full (pg_upgrade wraps it: it was cut at 'missing from the') and names the
    library; with --check and without, nothing changes and the server runs on, never
    stopped (it was stopped and started again around the failing pg_upgrade)."""
    rv.sql("CREATE EXTENSION adminpack")
    pid = rv.pid()
    for args in (["--check"], ["--yes"]):
        proc = rv.pgmgr("upgrade", "rv", "-v", "18", *args)
        lines = error_lines(proc.stderr)
        assert proc.returncode == 1, proc.stderr
        assert lines[0].startswith(
            "Error: pg_upgrade failed: Your installation references loadable libraries that "
            "are missing from the new installation (could not load library "
            '"$libdir/adminpack"'
        ), lines
        assert lines[0].endswith("; nothing was changed") and lines[1].startswith("Hint: ")
        assert rv.record()["major"] == "15" and rv.state() == "running"
        assert rv.pid() == pid, args  # checked live first: not even stopped and started
        assert rv.sql("SELECT extname FROM pg_extension WHERE extname = 'adminpack'")
        assert leftovers(rv.store) == []


def test_check_names_the_settings_the_new_major_rejects(rv: Inst) -> None:
    """--check reports what the upgrade would drop (it said only 'checks passed'), a
    renamed one with its new name, and changes nothing: the settings stay in the record
    and in postgresql.auto.conf."""
    rv.sql("ALTER SYSTEM SET old_snapshot_threshold = '1h'")  # gone in 17
    rv.sql("ALTER SYSTEM SET force_parallel_mode = off")  # debug_parallel_query from 16
    out = json.loads(rv.ok("upgrade", "rv", "-v", "18", "--check", "--json").stdout)
    assert out["rejected_settings"] == [
        "force_parallel_mode", "old_snapshot_threshold", "vacuum_defer_cleanup_age"
    ]  # fmt: skip
    assert out["renamed_settings"] == {"force_parallel_mode": "debug_parallel_query"}
    text = rv.ok("upgrade", "rv", "-v", "18", "--check").stderr
    assert ("rejects (the upgrade would drop them): force_parallel_mode (now "
            "debug_parallel_query), old_snapshot_threshold, vacuum_defer_cleanup_age") in text, (
        text
    )  # fmt: skip
    assert rv.record()["settings"] == {"vacuum_defer_cleanup_age": "0"}
    assert rv.sql("SELECT setting FROM pg_file_settings WHERE name = 'old_snapshot_threshold'"
                  " AND applied IS NOT NULL") == "1h"  # fmt: skip
    assert rv.record()["major"] == "15" and rv.state() == "running"


def test_statistics_carried_over_by_pg_upgrade_are_kept(rv: Inst) -> None:
    """pg_upgrade 18 carries the column statistics over: pgmgr builds in stages only what
    is missing, then refreshes (pg_upgrade's advice). A plain --analyze-in-stages first
    replaced them with 1-target ones: 3 ANALYZEs of t, not 1."""
    rv.sql("CREATE TABLE u AS SELECT g AS a, g % 7 AS b FROM generate_series(1, 500) g;"
           " CREATE STATISTICS u_ab (dependencies) ON a, b FROM u; ANALYZE u")  # fmt: skip
    out = json.loads(rv.ok("upgrade", "rv", "-v", "18", "--yes", "--json").stdout)
    assert out["statistics_rebuilt"] is True
    assert out["statistics_rebuilt_with"] == (
        "vacuumdb --all --analyze-in-stages --missing-stats-only, "
        "then vacuumdb --all --analyze-only"
    )
    counts = rv.sql("SELECT string_agg(relname || '=' || analyze_count, ',' ORDER BY relname)"
                    " FROM pg_stat_user_tables")  # fmt: skip
    assert counts == "t=1,u=4", counts  # u: no extended statistics carried over: in stages
    assert rv.sql("SELECT count(*) FROM pg_statistic_ext_data") == "1"


def test_a_stopped_instance_is_told_a_command_that_runs(scratch: Path) -> None:
    """The statistics hint of a stopped instance runs as written (it was
    "pgmgr psql NAME -c 'ANALYZE' (or vacuumdb --all --analyze-in-stages)": a shell
    syntax error, ANALYZE of one database only, a vacuumdb that finds no server)."""
    it = make(scratch, "rvs", start=False)
    try:
        out = json.loads(it.ok("upgrade", "rvs", "-v", "18", "--yes", "--json").stdout)
        assert out["statistics_rebuilt"] is False
        start, command = out["statistics_hint"].split(", then run: ")
        assert start == "start it ('pgmgr start rvs')"
        it.ok("start", "rvs", "-q")
        for part in command.split(" && "):
            proc = subprocess.run(shlex.split(part), capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, (part, proc.stderr)
        assert it.sql("SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 't'") == "1"
    finally:
        it.pgmgr("stop", "--all", "-m", "immediate", "-q")


def _has_reflinks(directory: Path) -> bool:
    import fcntl
    import os

    from pgmgr.core.copy import FICLONE

    src, dst = directory / "reflink-probe-a", directory / "reflink-probe-b"
    src.write_bytes(b"x" * 4096)
    try:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
        return True
    except OSError:
        return False
    finally:
        for p in (src, dst):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


def test_clone_without_reflinks_is_one_line_and_no_downtime(rv: Inst, scratch: Path) -> None:
    """--method clone where the filesystem has no reflinks (this VM's ext4 or tmpfs): one
    line, a hint to use copy, and the running server was never stopped."""
    if _has_reflinks(scratch):
        pytest.skip(f"{scratch} has reflinks (tests/snap/test_reflink.py covers clone there)")
    pid = rv.pid()
    proc = rv.pgmgr("upgrade", "rv", "-v", "18", "--method", "clone", "--yes")
    lines = error_lines(proc.stderr)
    assert proc.returncode == 1, proc.stderr
    assert lines[0] == (
        "Error: pg_upgrade failed: could not clone file between old and new data "
        "directories: Operation not supported; nothing was changed"
    ), lines
    assert lines[1].startswith("Hint: this filesystem has no reflinks: use --method copy or link")
    assert len(lines) == 2
    assert rv.pid() == pid and rv.record()["major"] == "15"
    assert leftovers(rv.store) == []


def _streaming(it: Inst, name: str) -> object:
    return json.loads(it.ok("status", name, "--json").stdout).get("streaming")


def test_status_after_upgrading_a_primary_with_a_standby_and_a_branch(rv: Inst) -> None:
    """The standby cannot follow (its system identifier is the old one): the upgrade names
    it, and status says it is not streaming (it said 'standby of rv (lag 0 B, 0 ms)': it
    had replayed all it had received). The branch is independent: still 15, running."""
    import time

    rv.ok("replica", "rv", "--name", "rvr", "-q")
    rv.ok("branch", "rv", "rvb", "-q")
    deadline = time.monotonic() + 60
    while _streaming(rv, "rvr") is not True:
        assert time.monotonic() < deadline, "the standby never streamed"
        time.sleep(0.1)
    out = json.loads(rv.ok("upgrade", "rv", "-v", "18", "--yes", "--json").stdout)
    assert out["standbys_not_following"] == ["rvr"]
    assert _streaming(rv, "rvr") is False
    assert "standby of rv (not streaming)" in rv.ok("status").stdout
    assert json.loads(rv.ok("status", "rvb", "--json").stdout)["version"].startswith("15.")
    assert rv.state("rvb") == "running" and rv.sql("SELECT count(*) FROM t", "rvb") == "2000"


def test_the_spinner_says_the_step_and_the_size(rv: Inst, scratch: Path) -> None:
    """On a terminal the spinner names the step under way, with the data directory's size
    while pg_upgrade copies it (it showed only the elapsed time, for seconds)."""
    import re

    from tests.cli.test_terminal import run_in_pty

    code, out = run_in_pty(["upgrade", "rv", "-v", "18", "--yes"], scratch, {"COLUMNS": "80"})
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    assert code == 0, text
    assert re.search(r"Upgrading 'rv' 15\.\d+ -> 18\.\d+: pg_upgrade --copy, [\d.]+ MB \d+\.\ds",
                     text), text  # fmt: skip
    assert "Upgraded 'rv' from PostgreSQL 15." in text


def test_an_older_rollback_snapshot_names_the_one_that_rolls_back(rv: Inst) -> None:
    """Upgrade, roll back, upgrade again: the first pre-upgrade snapshot is refused (it
    is of the 15 before the first upgrade), and the hint names the second, which rolls
    back (it said 'only the snapshot kept by pgmgr upgrade can...', which both are)."""
    rv.ok("upgrade", "rv", "-v", "18", "--yes", "-q")
    rv.ok("restore", "rv", "pre-upgrade-15", "--yes", "-q")
    second = json.loads(rv.ok("upgrade", "rv", "-v", "18", "--yes", "--json").stdout)
    name = second["rollback_snapshot"]
    assert name.startswith("pre-upgrade-15-")
    proc = rv.pgmgr("restore", "rv", "pre-upgrade-15", "--yes")
    assert proc.returncode == 1
    assert error_lines(proc.stderr)[1] == (
        f"Hint: 'pgmgr restore rv {name}' rolls the upgrade back; this snapshot can be "
        "restored then"
    )
    rv.ok("restore", "rv", name, "--yes", "-q")
    rv.ok("restore", "rv", "pre-upgrade-15", "--yes", "-q")
    assert rv.record()["major"] == "15" and rv.sql("SELECT count(*) FROM t") == "2000"


def test_a_standby_is_refused_before_it_is_stopped(rv: Inst) -> None:
    """pg_upgrade refuses a standby only once it is shut down ('shut down while in
    recovery mode'): pgmgr stopped and started it again for nothing. Now refused first."""
    rv.ok("replica", "rv", "--name", "rvr", "-q")
    pid = rv.pid("rvr")
    proc = rv.pgmgr("upgrade", "rvr", "-v", "18", "--yes")
    assert proc.returncode == 1
    assert error_lines(proc.stderr) == [
        "Error: 'rvr' is a standby: pg_upgrade upgrades primaries only; nothing was changed",
        "Hint: upgrade its primary ('rv'), then make the standby again ('pgmgr destroy' and "
        "'pgmgr replica')",
    ]
    assert rv.pid("rvr") == pid and rv.state("rvr") == "running"


def test_tablespaces_are_refused_before_anything(rv: Inst, scratch: Path) -> None:
    """The pre-upgrade snapshot cannot hold a tablespace (snapshot and restore refuse
    one): --method copy upgraded, then 'pgmgr restore rv pre-upgrade-15' failed ('cannot
    copy ...: it has tablespaces'); link stopped the server first. Now all refuse first."""
    import os
    import shutil

    ts = scratch / "ts"
    ts.mkdir(mode=0o700)
    if os.geteuid() == 0:
        shutil.chown(ts, "postgres", "postgres")
    rv.sql(f"CREATE TABLESPACE ts LOCATION '{ts}'")
    pid = rv.pid()
    for args in (["--yes"], ["--yes", "--method", "link"], ["--check"]):
        proc = rv.pgmgr("upgrade", "rv", "-v", "18", *args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert error_lines(proc.stderr)[0] == (
            "Error: cannot upgrade 'rv': it has tablespaces (pg_tblspc is not empty), so the "
            "snapshot that rolls an upgrade back could not hold it; nothing was changed"
        )
    assert rv.pid() == pid and rv.record()["major"] == "15"
    assert [p.name.split("_")[1] for p in ts.iterdir()] == ["15"]  # no PG_18_* made
    rv.sql("DROP TABLESPACE ts")


def test_postgresql_conf_settings_left_behind_are_named(scratch: Path) -> None:
    """pgmgr carries postgresql.auto.conf and the record's settings, not postgresql.conf:
    what a user set there was dropped without a word. Now named (those 18 rejects with
    the rejected ones); the locale settings initdb writes there are the old cluster's
    (they were the environment's: lc_monetary 'C' became 'C.UTF-8')."""
    it = make(scratch, "rvc", start=False)
    try:
        with open(it.datadir / "postgresql.conf", "a") as f:
            f.write("work_mem = '3MB'   # mine\nold_snapshot_threshold '1h'\n")
        it.ok("start", "rvc", "-q")
        before = it.sql("SELECT string_agg(current_setting(n), ',') FROM unnest("
                        "'{lc_messages,lc_monetary,lc_numeric,lc_time}'::text[]) n")  # fmt: skip
        it.ok("stop", "rvc", "-q")
        out = json.loads(it.ok("upgrade", "rvc", "-v", "18", "--yes", "--json").stdout)
        assert out["postgresql_conf_not_carried"] == ["work_mem"]
        assert out["rejected_settings"] == ["old_snapshot_threshold", "vacuum_defer_cleanup_age"]
        it.ok("start", "rvc", "-q")
        assert it.sql("SHOW work_mem") == "4MB"  # as said: not carried
        after = it.sql("SELECT string_agg(current_setting(n), ',') FROM unnest("
                       "'{lc_messages,lc_monetary,lc_numeric,lc_time}'::text[]) n")  # fmt: skip
        assert after == before
    finally:
        it.pgmgr("stop", "--all", "-m", "immediate", "-q")
