"""``pgmgr import`` and ``pgmgr replica`` killed at their worst moments, and run twice at
once, on real servers.

Each command registers the new instance first, marked pending, and clears the mark last:
after a SIGKILL, ``status`` says ``incomplete``, ``start`` refuses it, the same command run
again redoes it, and ``destroy`` (without ``--yes``) removes it with everything it made on
the primary. A SIGTERM cleans up at once. The test-only pause of
:mod:`pgmgr.core.testhook` stops pgmgr at an exact step, where the test kills it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers import error_lines, postmasters_under
from tests.ops.conftest import Instance, template  # noqa: F401
from tests.ops.test_bundle import fingerprint
from tests.ops.test_replica import conn, primary_leftovers
from tests.pause import Paused, ok
from tests.snap.test_switch_waiters import waiting_for_lock


@pytest.fixture
def hooks(ops_dir: Path) -> Path:
    path = ops_dir / "hooks"
    path.mkdir(mode=0o777)
    path.chmod(0o777)  # the server user's work pauses here too
    return path


def states(inst: Instance) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in json.loads(inst.pgmgr("status", "--json").stdout)}


def assert_incomplete(inst: Instance, name: str, command: str) -> None:
    """status shows it; start refuses it with one Error line and a Hint."""
    rec = states(inst)[name]
    assert rec["state"] == "incomplete", rec
    assert f"'pgmgr {command}' did not finish" in rec["detail"], rec
    assert f"{name}" in inst.pgmgr("status").stdout
    start = inst.pgmgr("start", name)
    assert start.returncode == 1, start.stderr
    lines = error_lines(start.stderr)
    assert lines[0].startswith(f"Error: '{name}' is an unfinished 'pgmgr {command}'"), lines
    assert lines[0].endswith("it was not started"), lines
    assert lines[1].startswith(f"Hint: run the same 'pgmgr {command}' again"), lines
    assert len(lines) == 2, lines


def assert_gone(inst: Instance, name: str, datadir: Path) -> None:
    assert name not in states(inst)
    assert not datadir.exists()
    assert not postmasters_under(datadir)


# --------------------------------------------------------------------------- import


@pytest.fixture
def bundle(fresh: Instance, ops_dir: Path) -> tuple[Path, dict[str, tuple[int, str, str]]]:
    rec = fresh.status()
    with psycopg.connect(str(rec["url"]), autocommit=True) as c:
        c.execute("CREATE DATABASE second")
        c.execute("CREATE TABLE a AS SELECT g AS id, md5(g::text) FROM generate_series(1, 3000) g")
    with psycopg.connect(str(rec["url"]), dbname="second") as c:
        c.execute("CREATE TABLE b AS SELECT g AS id FROM generate_series(1, 2000) g")
    path = ops_dir / "bundle"
    out = fresh.pgmgr("export", "fresh", str(path))
    assert out.returncode == 0, out.stderr
    return path, fingerprint(rec)


# step, signal, then: "retry" (the same import again) or "destroy"
IMPORT_KILLS = [
    ("import-registered", signal.SIGKILL, "retry"),
    ("import-started", signal.SIGKILL, "destroy"),
    ("import-restored-db", signal.SIGKILL, "retry"),
    ("import-restored-db", signal.SIGTERM, None),
    # its data directory built, the import not yet told so: the clean-up took it for one
    # that appeared there, removed the record only, and the retry found the directory
    ("init-built", signal.SIGTERM, None),
]


def test_an_interrupted_import_is_redone_or_destroyed(
    fresh: Instance, bundle: tuple[Path, dict[str, Any]], ops_dir: Path, hooks: Path
) -> None:
    path, expected = bundle
    target = ops_dir / "imp"
    argv = ("import", str(path), "-d", str(target), "--name", "imp")
    for step, sig, then in IMPORT_KILLS:
        run = Paused(hooks, step, *argv)
        run.reached()
        if step == "import-started":  # while it runs, status says so
            live = states(fresh)["imp"]
            assert live["state"] == "importing", live
        run.kill(sig)
        if sig == signal.SIGTERM:  # interrupted like Ctrl-C: it cleans up itself
            assert_gone(fresh, "imp", target)
            continue
        assert_incomplete(fresh, "imp", "import")
        if step == "import-restored-db":  # a server with part of the data was running
            assert states(fresh)["imp"]["pid"], "the half-import's server should still run"
        if then == "destroy":
            out = fresh.pgmgr("destroy", "imp")  # no --yes, no terminal: not asked
            assert out.returncode == 0, out.stderr
            assert_gone(fresh, "imp", target)
            continue
        again = fresh.pgmgr(*argv)
        assert again.returncode == 0, (step, again.stderr)
        rec = states(fresh)["imp"]
        assert rec["state"] == "running", rec
        assert fingerprint(rec) == expected, step
        assert fresh.pgmgr("destroy", "imp", "--yes").returncode == 0


@pytest.mark.parametrize(
    ("first", "second"),
    [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGHUP)],
    ids=["sigterm-sigterm", "ctrl-c-then-hang-up"],
)
def test_a_second_signal_while_an_interrupted_import_is_undone(
    fresh: Instance, bundle: tuple[Path, dict[str, Any]], ops_dir: Path, hooks: Path,
    first: int, second: int,
) -> None:  # fmt: skip
    """A signal during the restore, then another while the import destroys what it made
    (the pause 'destroy-renamed'): the second is ignored (sigguard.interruptible) and
    the clean-up completes. Taken like the first, it cut the destroy short and left an
    incomplete instance behind; after a Ctrl-C, a hang-up was still taken (only one that
    interruptible had raised itself counted as the first)."""
    target = ops_dir / "imp"
    (hooks / "destroy-renamed").touch()
    run = Paused(hooks, "import-restored-db", "import", str(bundle[0]), "-d", str(target))
    run.reached()
    run.proc.send_signal(first)
    run.reached_also("destroy-renamed", timeout=60)
    run.proc.send_signal(second)
    time.sleep(0.2)
    (hooks / "destroy-renamed.go").touch()
    assert run.kill(0) == 130  # signal 0: only waits for it
    assert_gone(fresh, "imp", target)


def test_a_data_directory_that_appears_during_an_import_is_left_alone(
    fresh: Instance, bundle: tuple[Path, dict[str, Any]], ops_dir: Path, hooks: Path
) -> None:
    """Someone makes a data directory at the target after the import checked it was free
    (a second command, another user's race): the import refuses it, neither registers,
    starts, fills nor removes it (it restored into it, and its clean-up could delete it)."""
    path, _ = bundle
    target = ops_dir / "imp"
    run = Paused(hooks, "import-registered", "import", str(path), "-d", str(target))
    run.reached()
    target.mkdir()
    (target / "PG_VERSION").write_text("15\n")
    (target / "theirs").write_text("precious\n")
    done = run.go()
    assert done.returncode == 1, done.stderr
    lines = error_lines(done.stderr)
    assert lines[0] == f"Error: {target} appeared while pgmgr was about to make it; nothing " \
        "was done there", lines  # fmt: skip
    assert sorted(p.name for p in target.iterdir()) == ["PG_VERSION", "theirs"]
    assert sorted(states(fresh)) == ["fresh"]


def test_a_retry_never_removes_a_data_directory_the_killed_import_did_not_make(
    fresh: Instance,
    bundle: tuple[Path, dict[str, Any]],
    ops_dir: Path,
    hooks: Path,
    template: Path,  # noqa: F811
) -> None:
    """Killed before it made its directory; then a user puts a data directory of theirs
    there. The retry (and destroy) of the unfinished import removed it as its own: the
    record pinned nothing, and a complete data directory passed for the killed one's.
    Now an import pins its directory before it builds in it, so an unpinned record's
    directory with a PG_VERSION is not the import's."""
    path, _ = bundle
    target = ops_dir / "imp"
    argv = ("import", str(path), "-d", str(target), "--name", "imp")
    run = Paused(hooks, "import-registered", *argv)
    run.reached()
    run.kill(signal.SIGKILL)
    subprocess.run(["cp", "-a", str(template), str(target)], check=True)
    (target / "base" / "mine").write_text("precious\n")
    for args in (argv, ("destroy", "imp", "--yes")):
        out = fresh.pgmgr(*args)
        assert out.returncode == 1, (args, out.stderr)
        assert error_lines(out.stderr)[0] == (
            f"Error: refusing to remove {target}: a data directory the unfinished command "
            "did not make stands there; nothing was removed"
        ), out.stderr
        assert (target / "base" / "mine").read_text() == "precious\n"
    assert fresh.pgmgr("forget", "imp").returncode == 0


def test_an_import_killed_after_it_made_its_directory_is_redone(
    fresh: Instance, bundle: tuple[Path, dict[str, Any]], ops_dir: Path, hooks: Path
) -> None:
    """Its directory is pinned before anything is built in it: the retry removes that one."""
    path, expected = bundle
    target = ops_dir / "imp"
    argv = ("import", str(path), "-d", str(target), "--name", "imp")
    run = Paused(hooks, "init-pinned", *argv)
    run.reached()
    run.kill(signal.SIGKILL)
    assert target.is_dir()
    again = fresh.pgmgr(*argv)
    assert again.returncode == 0, again.stderr
    assert fingerprint(states(fresh)["imp"]) == expected


def test_an_unfinished_import_is_not_exported_replicated_nor_given_a_unit(
    fresh: Instance,
    bundle: tuple[Path, dict[str, Any]],
    ops_dir: Path,
    hooks: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its server runs with part of the data: an export of it looked like a complete
    bundle, a replica streamed it, and a unit restarted a refused start for ever."""
    monkeypatch.setenv("PGMGR_SYSTEMD_SYSTEM_DIR", str(ops_dir))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(ops_dir))
    run = Paused(hooks, "import-started", "import", str(bundle[0]), "-d", str(ops_dir / "imp"))
    run.reached()
    run.kill(signal.SIGKILL)
    assert_incomplete(fresh, "imp", "import")
    for args, what in [
        (("export", "imp", str(ops_dir / "out")), "exported"),
        (("replica", "imp"), "replicated"),
        (("service", "install", "imp"), "given a unit"),
    ]:
        proc = fresh.pgmgr(*args)
        lines = error_lines(proc.stderr)
        assert proc.returncode == 1, (args, proc.stderr)
        assert lines[0].startswith("Error: 'imp' is an unfinished 'pgmgr import'"), lines
        assert lines[0].endswith(f"it was not {what}"), lines
    assert not (ops_dir / "out").exists()
    assert sorted(states(fresh)) == ["fresh", "imp"]
    assert not list(ops_dir.rglob("*.service"))
    assert fresh.pgmgr("destroy", "imp").returncode == 0


def test_an_interrupted_import_of_another_bundle_is_not_replaced(
    fresh: Instance, bundle: tuple[Path, dict[str, Any]], ops_dir: Path, hooks: Path
) -> None:
    path, _ = bundle
    target = ops_dir / "imp"
    run = Paused(hooks, "import-started", "import", str(path), "-d", str(target))
    run.reached()
    run.kill(signal.SIGKILL)
    other = ops_dir / "other"
    os.rename(path, other)
    proc = fresh.pgmgr("import", str(other), "-d", str(target))
    assert proc.returncode == 1
    lines = error_lines(proc.stderr)
    assert lines[0].startswith("Error: 'imp' is an unfinished 'pgmgr import'"), lines
    assert lines[0].endswith(f"of {path}; it was not replaced"), lines
    assert states(fresh)["imp"]["state"] == "incomplete"
    assert fresh.pgmgr("destroy", "imp").returncode == 0
    assert_gone(fresh, "imp", target)


# --------------------------------------------------------------------------- replica


REPLICA_KILLS = [
    ("replica-registered", signal.SIGKILL, "retry"),
    ("replica-slot-made", signal.SIGKILL, "destroy"),
    ("replica-cloned", signal.SIGKILL, "retry"),
    ("replica-cloned", signal.SIGTERM, None),
    ("replica-primary-ready", signal.SIGKILL, "destroy-source"),
]


def test_an_interrupted_replica_is_redone_or_destroyed(
    fresh: Instance, ops_dir: Path, hooks: Path
) -> None:
    target = ops_dir / "rep"
    argv = ("replica", "fresh", "--name", "rep", "-d", str(target))
    for step, sig, then in REPLICA_KILLS:
        run = Paused(hooks, step, *argv)
        run.reached()
        run.kill(sig)
        if sig == signal.SIGTERM:  # interrupted like Ctrl-C: it cleans up itself
            assert_gone(fresh, "rep", target)
            assert primary_leftovers(fresh) == (0, 0, [])
            continue
        assert_incomplete(fresh, "rep", "replica")
        if step != "replica-registered":  # killed with these made on the primary
            slots, roles, hba = primary_leftovers(fresh)
            assert (slots, roles) == (1, 1), step
            assert len(hba) == (0 if step == "replica-slot-made" else 2), step
            assert all(ln.endswith("# pgmgr replica rep") for ln in hba)
        if then == "destroy":
            out = fresh.pgmgr("destroy", "rep")
            assert out.returncode == 0, out.stderr
            assert_gone(fresh, "rep", target)
            assert primary_leftovers(fresh) == (0, 0, [])
            continue
        if then == "destroy-source":  # what it made there goes with the source
            assert fresh.pgmgr("destroy", "fresh", "--yes").returncode == 0
            assert fresh.pgmgr("destroy", "rep").returncode == 0
            assert_gone(fresh, "rep", target)
            continue
        again = fresh.pgmgr(*argv)
        assert again.returncode == 0, (step, again.stderr)
        assert states(fresh)["rep"]["state"] == "running"
        slots, roles, hba = primary_leftovers(fresh)
        assert (slots, roles, len(hba)) == (1, 1, 2), step
        assert_streams(fresh, "rep")
        assert fresh.pgmgr("destroy", "rep", "--yes").returncode == 0
        assert primary_leftovers(fresh) == (0, 0, [])


def test_a_retry_without_a_name_redoes_the_unfinished_replica(
    fresh: Instance, ops_dir: Path, hooks: Path
) -> None:
    """'pgmgr replica fresh' killed, then run again as it was: it redoes 'fresh-replica'
    rather than making 'fresh-replica-2' beside it (the first one's slot kept WAL)."""
    run = Paused(hooks, "replica-cloned", "replica", "fresh")
    run.reached()
    run.kill(signal.SIGKILL)
    assert_incomplete(fresh, "fresh-replica", "replica")
    again = fresh.pgmgr("replica", "fresh")
    assert again.returncode == 0, again.stderr
    st = states(fresh)
    assert sorted(st) == ["fresh", "fresh-replica"], st
    assert st["fresh-replica"]["state"] == "running"
    assert primary_leftovers(fresh)[:2] == (1, 1)
    assert fresh.pgmgr("destroy", "fresh-replica", "--yes").returncode == 0
    assert primary_leftovers(fresh) == (0, 0, [])


def test_a_data_directory_that_appears_during_a_replica_is_left_alone(
    fresh: Instance, ops_dir: Path, hooks: Path
) -> None:
    """Someone puts a data directory at the target after the replica checked it was free:
    the replica fails, undoes its work on the primary, and does not delete that directory
    (its clean-up did)."""
    import shutil

    target = ops_dir / "rep"
    run = Paused(hooks, "replica-primary-ready", "replica", "fresh", "-d", str(target))
    run.reached()
    shutil.copytree(
        fresh.datadir, target, ignore=shutil.ignore_patterns("postmaster.pid", ".s.PGSQL.*")
    )
    done = run.go()
    assert done.returncode == 1, done.stderr
    assert error_lines(done.stderr)[0] == (
        f"Error: cannot create the directory {target}: File exists"
    ), done
    assert (target / "PG_VERSION").is_file() and (target / "base").is_dir()
    assert sorted(states(fresh)) == ["fresh"]
    assert primary_leftovers(fresh) == (0, 0, [])


def assert_streams(primary: Instance, standby: str) -> None:
    with conn(primary) as p:
        p.execute("DROP TABLE IF EXISTS probe; CREATE TABLE probe ()")
        oid = p.execute("SELECT 'probe'::regclass::oid").fetchone()
    deadline = time.monotonic() + 60  # a deadline, not a promise: ms when it streams
    with conn(primary, standby) as r:
        while r.execute("SELECT to_regclass('probe')::oid").fetchone() != oid:
            assert time.monotonic() < deadline, f"{standby} does not stream"
            time.sleep(0.01)


def test_two_replicas_of_one_name_race_and_one_wins(
    fresh: Instance, ops_dir: Path, hooks: Path
) -> None:
    """The first registers the name and waits; the second (another directory) fails with
    one clear line before it touches the primary; the first then finishes intact."""
    first = Paused(hooks, "replica-registered", "replica", "fresh", "--name", "twin",
                   "-d", str(ops_dir / "a"))  # fmt: skip
    first.reached()
    second = fresh.pgmgr("replica", "fresh", "--name", "twin", "-d", str(ops_dir / "b"))
    assert second.returncode != 0
    lines = error_lines(second.stderr)
    assert lines[0] == "Error: instance name 'twin' is being made by another 'pgmgr replica'"
    assert len(lines) <= 2 and all(ln.startswith(("Error:", "Hint:")) for ln in lines), lines
    assert not (ops_dir / "b").exists()
    ok(first.go())
    st = states(fresh)["twin"]
    assert st["state"] == "running" and st["role"] == "standby", st
    assert primary_leftovers(fresh)[:2] == (1, 1)
    assert_streams(fresh, "twin")


def test_a_promote_killed_after_pg_promote_is_finished_by_the_next(
    fresh: Instance, hooks: Path
) -> None:
    """Killed once the standby is a primary but before its former primary was cleaned:
    a second promote finishes the job instead of saying there is nothing to promote."""
    made = fresh.pgmgr("replica", "fresh", "--name", "rep")
    assert made.returncode == 0, made.stderr
    run = Paused(hooks, "promote-promoted", "promote", "rep")
    run.reached()
    run.kill(signal.SIGKILL)
    assert primary_leftovers(fresh)[:2] == (1, 1)
    again = fresh.pgmgr("promote", "rep")
    assert again.returncode == 0, again.stderr
    assert "Dropped on 'fresh': slot pgmgr_rep, role pgmgr_rep, 2 pg_hba.conf lines" in again.stderr
    assert primary_leftovers(fresh) == (0, 0, [])
    with conn(fresh, "rep") as r:
        assert r.execute("SHOW primary_conninfo").fetchone() == ("",)
        r.execute("CREATE TABLE writable ()")
    third = fresh.pgmgr("promote", "rep")
    assert third.returncode == 1
    assert error_lines(third.stderr)[0] == (
        "Error: 'rep' is a primary, not a standby: there is nothing to promote"
    )


def test_two_promotes_at_once_one_promotes_the_other_says_so(fresh: Instance, hooks: Path) -> None:
    """The second waits for the first's lock, then sees the record the first left (it read
    the record before the lock and saved the standby's primary, slot and role back)."""
    assert fresh.pgmgr("replica", "fresh", "--name", "rep").returncode == 0
    first = Paused(hooks, "promote-promoted", "promote", "rep")
    first.reached()
    env = {k: v for k, v in os.environ.items() if k != "PGMGR_TEST_PAUSE"}
    second = subprocess.Popen(
        [sys.executable, "-m", "pgmgr", "promote", "rep"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    waiting_for_lock(second, Path(states(fresh)["rep"]["datadir"]))  # (a 0.5 s sleep hoped so)
    ok(first.go())
    _, err2 = second.communicate(timeout=120)
    assert second.returncode == 1, err2
    assert error_lines(err2) == [
        "Error: 'rep' is a primary, not a standby: there is nothing to promote"
    ]
    st = states(fresh)["rep"]
    assert st["role"] == "primary" and st["primary"] is None
    assert primary_leftovers(fresh) == (0, 0, [])


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize(
    ("step", "sig"),
    [("export-written", signal.SIGKILL), ("export-dumped-db", signal.SIGTERM)],
)  # fmt: skip
def test_an_interrupted_export_leaves_no_bundle_and_a_retry_works(
    fresh: Instance, ops_dir: Path, hooks: Path, step: str, sig: int
) -> None:
    """Killed before or after its manifest is written, an export leaves nothing under the
    bundle's name (import says so; nothing half-written is taken for a bundle); the retry
    succeeds and removes the dead export's hidden work directory."""
    dest = ops_dir / "bundle"
    run = Paused(hooks, step, "export", "fresh", str(dest))
    run.reached()
    run.kill(sig)
    assert not dest.exists()
    leftovers = [p.name for p in ops_dir.iterdir() if ".pgmgr-export-" in p.name]
    assert len(leftovers) == (0 if sig == signal.SIGTERM else 1), leftovers
    imp = fresh.pgmgr("import", str(dest), "-d", str(ops_dir / "imp"))
    assert imp.returncode == 1
    assert error_lines(imp.stderr)[0].startswith(f"Error: {dest} is not a directory")
    again = fresh.pgmgr("export", "fresh", str(dest))
    assert again.returncode == 0, again.stderr
    assert (dest / "manifest.json").is_file()
    assert not [p.name for p in ops_dir.iterdir() if ".pgmgr-export-" in p.name]


def test_an_export_of_a_server_stopped_meanwhile_says_why(
    fresh: Instance, ops_dir: Path, hooks: Path
) -> None:
    """The source stopped between two databases: the next pg_dump cannot connect, and its
    error is the line that says so, not libpq's indented afterword ("Is the server running
    locally and accepting connections on that socket?" was all it said)."""
    with conn(fresh) as c:
        c.execute("CREATE DATABASE second")
    dest = ops_dir / "bundle"
    with Paused(hooks, "export-dumped-db", "export", "fresh", str(dest)) as run:
        run.reached()
        ok(fresh.pgmgr("stop", "fresh", "-q"))
        done = run.go()
    assert done.returncode == 1
    [line] = error_lines(done.stderr)
    assert line.startswith("Error: pg_dump failed with exit code 1: pg_dump: error: "), line
    assert "connection to server" in line and "Is the server running" not in line, line
    assert not dest.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (another user's directory)")
def test_an_export_sweeps_no_other_users_work_name(fresh: Instance, ops_dir: Path) -> None:
    """A directory named like a dead export's work directory but not ours (anyone who can
    write beside the bundle can choose the name) was deleted, all in it, by the export."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    theirs = ops_dir / f".bundle.pgmgr-export-{dead.pid}"
    (theirs / "keep").mkdir(parents=True)
    subprocess.run(["chown", "-R", "65534:65534", str(theirs)], check=True)
    run = fresh.pgmgr("export", "fresh", str(ops_dir / "bundle"))
    assert run.returncode == 0, run.stderr
    assert (theirs / "keep").is_dir()


def _base_backup(pgmgr_pid: int, timeout: float = 30) -> tuple[int, int]:
    """pg_basebackup under ``pgmgr_pid`` (its child, or its grandchild under the subreaper
    wrapper) and the child it streams WAL with, once both run."""
    from pgmgr.core import process

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        below = process.children(pgmgr_pid)
        for pid in [*below, *(kid for child in below for kid in process.children(child))]:
            argv = process.cmdline(pid)
            kids = process.children(pid)
            if argv and os.path.basename(argv[0]) == "pg_basebackup" and kids:
                return pid, kids[0]
        time.sleep(0.002)
    raise AssertionError("pg_basebackup and its WAL streamer never ran")


def test_a_replica_interrupted_during_its_base_backup_stops_all_of_it(
    fresh: Instance, ops_dir: Path, hooks: Path
) -> None:
    """SIGTERM (as Ctrl-C) while pg_basebackup runs: pgmgr killed pg_basebackup alone, and
    the child it forks to stream WAL (-X stream) outlived the command, its walsender
    holding the replica's slot on the primary: the clean-up could not drop the slot
    (waited 10 s for it), removed the record that named it, and the slot kept the
    primary's WAL for ever. Held stopped here, that child cannot end by itself."""
    target = ops_dir / "rep"
    run = Paused(hooks, "replica-cloned", "replica", "fresh", "--name", "rep", "-d", str(target))
    main, streamer = _base_backup(run.proc.pid)
    for pid in (streamer, main):
        os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        assert run.kill(signal.SIGTERM) == 130
        # Under the subreaper (4e24cf8), stopped ones got no SIGCONT: they died only when
        # SIGKILLed after its whole grace, 20 s.
        assert time.monotonic() - t0 < 10
        assert not _alive(streamer), "pg_basebackup's WAL streamer outlived pgmgr"
    finally:
        for pid in (main, streamer):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                os.kill(pid, signal.SIGCONT)
    assert_gone(fresh, "rep", target)
    assert primary_leftovers(fresh) == (0, 0, [])


def _alive(pid: int) -> bool:
    from pgmgr.core import process

    deadline = time.monotonic() + 2
    while process.is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return process.is_alive(pid)
