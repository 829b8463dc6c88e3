"""Edges found by a review of replica, import, service, config and run: files that are not
UTF-8, settings pgmgr owns, unit files that are not files, and run's temporary directory as
root under a directory another user controls."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers import Run, error_lines
from tests.ops.conftest import Instance
from tests.ops.test_replica import primary_leftovers
from tests.pause import Paused
from tests.reliability.users import os_user, run_as

LATIN1_COMMENT = b"# caf\xe9: a comment in Latin-1\n"


def test_a_primary_whose_pg_hba_conf_is_not_utf8_gets_a_replica_and_keeps_its_bytes(
    fresh: Instance,
) -> None:
    hba = fresh.datadir / "pg_hba.conf"
    with open(hba, "ab") as f:
        f.write(LATIN1_COMMENT)
    before = hba.read_bytes()
    made = fresh.pgmgr("replica", "fresh", "--name", "l1", "-q")
    assert made.returncode == 0, made.stderr
    assert LATIN1_COMMENT in hba.read_bytes()
    gone = fresh.pgmgr("destroy", "l1", "--yes", "-q")
    assert gone.returncode == 0, gone.stderr
    assert error_lines(gone.stderr) == []
    assert hba.read_bytes() == before


def test_a_primary_whose_pg_hba_conf_is_a_symlink_is_refused_in_words(fresh: Instance) -> None:
    hba = fresh.datadir / "pg_hba.conf"
    real = fresh.datadir / "pg_hba.real"
    hba.rename(real)
    hba.symlink_to(real.name)
    before = real.read_bytes()
    made = fresh.pgmgr("replica", "fresh", "--name", "l2")
    assert made.returncode == 1
    assert error_lines(made.stderr) == [
        f"Error: {hba} is a symlink: pgmgr edits pg_hba.conf only as a regular file (its "
        "rename would replace the link)",
        "Hint: put the file itself in its place, or set hba_file to the file",
    ]
    assert hba.is_symlink() and real.read_bytes() == before
    assert "l2" not in fresh.registered()
    assert primary_leftovers(fresh) == (0, 0, [])


def test_a_latin1_cluster_with_a_non_ascii_role_is_exported_and_imported(
    fresh: Instance, ops_dir: Path
) -> None:
    """pg_dumpall writes a LATIN1 cluster's globals in LATIN1 (with SET client_encoding):
    not UTF-8, which the import read them as."""
    made = fresh.pgmgr(
        "init", "-q", "-d", str(ops_dir / "lat"), "--name", "lat", "-v", "15",
        "--encoding", "LATIN1",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert fresh.pgmgr("start", "-q", "lat", "-p", "auto").returncode == 0
    with connect(fresh, "lat") as c:
        c.execute('CREATE ROLE "josé"')
        c.execute("""COMMENT ON ROLE "josé" IS 'été'""")
    bundle = ops_dir / "bundle"
    out = fresh.pgmgr("export", "lat", str(bundle), "-q")
    assert out.returncode == 0, out.stderr
    assert "josé".encode("latin-1") in (bundle / "globals.sql").read_bytes()
    back = fresh.pgmgr("import", str(bundle), "-d", str(ops_dir / "lat2"), "-q")
    assert back.returncode == 0, back.stderr
    with connect(fresh, "lat2") as c:
        row = c.execute(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = 'josé'"
        ).fetchone()
    assert row == ("été",)


def connect(inst: Instance, name: str) -> psycopg.Connection[Any]:
    rec = Instance(name, Path(), inst.env).record()
    return psycopg.connect(
        host=str(rec["socket_dir"]), port=int(str(rec["port"])), user="postgres",
        dbname="postgres", autocommit=True, client_encoding="UTF8",
    )  # fmt: skip


def swapped_at(ops_dir: Path, step: str, *args: str) -> tuple[Run, list[str], Path]:
    """``pgmgr ARGS`` as root with TMPDIR in another user's directory, who swaps what pgmgr
    made there at ``step`` for a symlink to a private directory of root's: pgmgr's run,
    what it had made there, and that directory (which must stay as it was)."""
    hooks = ops_dir / "hooks"
    hooks.mkdir(exist_ok=True)
    victim = ops_dir / "victim"
    victim.mkdir(mode=0o700)
    with os_user("tmpown") as other:
        theirs = ops_dir / "theirs"
        theirs.mkdir(mode=0o755)
        os.chown(theirs, other.uid, other.gid)
        with Paused(hooks, step, *args, env={"TMPDIR": str(theirs)}) as run:
            run.reached()
            made = sorted(p.name for p in theirs.iterdir())
            for name in made:  # the other user swaps it for a symlink to root's directory
                swap = f"mv {name} {name}.moved && ln -s {victim} {name}"
                assert run_as(other.name, "sh", "-c", f"cd {theirs} && {swap}").returncode == 0
            done = run.go()
    return done, made, victim


def untouched(victim: Path) -> tuple[int, int, list[Path]]:
    st = victim.stat()
    return st.st_uid, st.st_mode & 0o777, list(victim.iterdir())


ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="a second OS user needs root")


@ROOT_ONLY
def test_run_as_root_makes_nothing_where_another_user_could_swap_it(ops_dir: Path) -> None:
    """As root with TMPDIR in another user's directory, 'pgmgr run' made its directory there,
    then wrote its owner file in it and chmodded it 0755 through its path: swapped for a
    symlink in between, root chmodded (and wrote into) whatever the other user chose."""
    done, made, victim = swapped_at(ops_dir, "run-base-made", "run", "--", "true")
    assert untouched(victim) == (0, 0o700, [])
    assert made == [], made
    assert done.returncode == 0, done.stderr


@ROOT_ONLY
def test_another_user_cannot_hold_a_runs_directory(ops_dir: Path) -> None:
    """A run's directory was 0755: another OS user could open it and hold its lock (a shared
    flock says "a live run works here"), so that once the run was killed its directory, with
    its server's data, was never swept. The server user only needs to pass through it."""
    import subprocess
    import sys

    from tests.helpers import readline_within

    child = subprocess.Popen(
        [sys.executable, "-m", "pgmgr", "run", "-q", "--", "sh", "-c", "echo up; exec sleep 60"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None and readline_within(child.stdout) == "up\n"
        (run,) = (ops_dir / "tmp").iterdir()
        hold = (
            "import fcntl, os, sys; os.stat(sys.argv[1]); print('reached', flush=True); "
            "fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_SH); "
            "print('held')"
        )
        with os_user("holder") as other:
            tried = run_as(other.name, "python3", "-c", hold, str(run))  # the system one
        assert tried.stdout == "reached\n", (tried.stdout, tried.stderr)  # it gets there
        assert "PermissionError" in tried.stderr, tried.stderr  # but cannot open it
    finally:
        child.terminate()
        child.wait(30)


@ROOT_ONLY
def test_start_init_with_settings_as_root_chowns_nothing_another_user_chose(
    fresh: Instance, ops_dir: Path
) -> None:
    """'start --init -c ...' checks the settings with postgres -C in a directory it makes in
    the temp dir, then chowns it to the server user: in another user's TMPDIR, swapped for
    a symlink, root gave the server user whatever directory that user chose."""
    args = ("start", "--init", "-q", "-d", str(ops_dir / "new"), "--name", "new", "-p", "auto",
            "-c", "work_mem=8MB")  # fmt: skip
    done, made, victim = swapped_at(ops_dir, "settings-check-dir", *args)
    assert untouched(victim) == (0, 0o700, [])
    assert made == [], made
    assert done.returncode == 0, done.stderr


@ROOT_ONLY
def test_import_as_root_copies_its_archive_nowhere_another_user_chose(
    fresh: Instance, ops_dir: Path
) -> None:
    """As root, import copies each archive into a directory it makes in the temp dir and
    chowns it to the server user: in another user's TMPDIR, swapped for a symlink, root
    wrote the archive into and gave the server user whatever directory that user chose."""
    bundle = ops_dir / "bundle"
    assert fresh.pgmgr("export", "fresh", str(bundle), "-q").returncode == 0
    args = ("import", str(bundle), "-d", str(ops_dir / "imp"), "-q")
    done, made, victim = swapped_at(ops_dir, "import-archive-dir", *args)
    assert untouched(victim) == (0, 0o700, [])
    assert made == [], made
    assert done.returncode == 0, done.stderr


@pytest.fixture
def units(ops_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user-unit directory, inside the test's directory."""
    monkeypatch.setenv("PGMGR_SYSTEMD_SYSTEM_DIR", str(ops_dir / "system-units"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(ops_dir / "config"))
    path = ops_dir / "config" / "systemd" / "user"
    path.mkdir(parents=True)
    return path


def test_a_directory_or_a_file_not_utf8_at_the_unit_path_is_one_clear_line(
    fresh: Instance, units: Path
) -> None:
    unit = units / "pgmgr-fresh.service"
    unit.mkdir()
    install = fresh.pgmgr("service", "install", "fresh", "--user")
    assert install.returncode == 1
    assert error_lines(install.stderr)[0] == (
        f"Error: {unit} exists and was not written by pgmgr; leaving it alone"
    )
    remove = fresh.pgmgr("service", "remove", "fresh", "--user")
    assert remove.returncode == 1
    assert error_lines(remove.stderr)[0] == (
        f"Error: {unit} exists and was not written by pgmgr; leaving it alone"
    )
    shown = fresh.pgmgr("service", "show", "fresh", "--user")
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr.startswith(f"# not installed (would be {unit})")
    assert unit.is_dir()
    unit.rmdir()
    header = f"# Generated by pgmgr for instance 'fresh' ({fresh.datadir}).\n".encode()
    unit.write_bytes(header + b"# then edited: caf\xe9\n[Unit]\n")  # an older pgmgr's
    shown = fresh.pgmgr("service", "show", "fresh", "--user")
    assert shown.returncode == 0, shown.stderr
    assert "edited: caf\N{REPLACEMENT CHARACTER}" in shown.stdout
    assert fresh.pgmgr("service", "remove", "fresh", "--user", "-q").returncode == 0
    assert not unit.exists()
    unit.symlink_to(units / "elsewhere.service")  # dangling: someone's, not pgmgr's
    install = fresh.pgmgr("service", "install", "fresh", "--user")
    assert install.returncode == 1
    assert "exists and was not written by pgmgr" in error_lines(install.stderr)[0]
    assert unit.is_symlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="a second OS user needs root")
def test_service_show_as_root_never_prints_a_file_swapped_in_for_the_unit(
    ops_dir: Path,
) -> None:
    """As root with a HOME or XDG_CONFIG_HOME of another user's (sudo without -H), 'show'
    checked their unit file, then read it again by its path: a symlink swapped in meanwhile
    had root print any file."""
    hooks = ops_dir / "hooks"
    hooks.mkdir()
    secret = ops_dir / "secret"
    secret.write_text("root's secret\n")
    secret.chmod(0o600)
    with os_user("units") as other:
        config = ops_dir / "config"
        units = config / "systemd" / "user"
        units.mkdir(parents=True)
        for path in (config, config / "systemd", units):
            os.chown(path, other.uid, other.gid)
        unit = units / "pgmgr-x.service"
        unit.write_text("# Generated by pgmgr for instance 'x'.\n")
        os.chown(unit, other.uid, other.gid)
        env = {"XDG_CONFIG_HOME": str(config)}
        with Paused(hooks, "service-unit-read", "service", "show", "x", "--user", env=env) as run:
            run.reached()
            swap = f"rm {unit} && ln -s {secret} {unit}"
            assert run_as(other.name, "sh", "-c", swap).returncode == 0
            shown = run.go()
    assert shown.returncode == 0, shown.stderr
    assert "secret" not in shown.stdout
    assert "# Generated by pgmgr for instance 'x'." in shown.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="a second OS user needs root")
def test_service_remove_as_root_with_another_users_home_removes_the_system_unit(
    fresh: Instance, ops_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sudo kept a user's HOME: 'remove' removed the system unit, then refused that user's
    directory (where no unit was) and failed, saying nothing of what it had removed."""
    system = ops_dir / "system-units"
    monkeypatch.setenv("PGMGR_SYSTEMD_SYSTEM_DIR", str(system))
    with os_user("home") as other:
        home = ops_dir / "home"
        home.mkdir(mode=0o755)
        os.chown(home, other.uid, other.gid)
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
        assert fresh.pgmgr("service", "install", "fresh", "--system", "-q").returncode == 0
        unit = system / "pgmgr-fresh.service"
        assert unit.is_file()
        gone = fresh.pgmgr("service", "remove", "fresh")
        assert gone.returncode == 0, gone.stderr
        assert gone.stderr == f"Removed {unit}\n"
        assert not unit.exists()
