"""Private places (issue 10): a state or cache directory that another user made, that
others can write, or that is a symlink is refused with one error naming it and the fix,
before pgmgr reads or writes anything there."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgmgr.core import paths
from tests.reliability.conftest import needs_root, one_error, pgmgr
from tests.reliability.users import os_user, pgmgr_as, run_as

VARS = ("PGMGR_STATE_DIR", "PGMGR_CACHE_DIR")
#: A command that reads the place the variable names.
READER = {"PGMGR_STATE_DIR": ("status", "--json"), "PGMGR_CACHE_DIR": ("cache", "list")}


@pytest.fixture
def hostile() -> Iterator[Path]:
    """A path in /tmp for a directory someone else makes; removed afterwards."""
    path = Path(f"/tmp/regtest-place-{secrets.token_hex(4)}")
    try:
        yield path
    finally:
        if path.is_symlink():
            path.unlink()
        shutil.rmtree(path, ignore_errors=True)


def refused(run: object, path: Path, what: str) -> str:
    err = one_error(run)  # type: ignore[arg-type]
    assert f"{what} directory {path}" in err, err
    return err


@pytest.mark.parametrize("var", VARS)
def test_world_writable_or_symlinked_place_is_refused(work: Path, hostile: Path, var: str) -> None:
    what = "state" if var == VARS[0] else "cache"
    hostile.mkdir()
    hostile.chmod(0o777)
    datadir = work / "db"
    run = pgmgr("start", "--init", "-d", str(datadir), "-p", "auto", env={var: str(hostile)})
    err = refused(run, hostile, what)
    assert "writable by group or others" in err and "chmod go-w" in run.stderr, str(run)
    assert not datadir.exists() and not list(hostile.iterdir())

    link = work / "link"
    link.symlink_to(hostile)
    hostile.chmod(0o700)
    run = pgmgr(*READER[var], env={var: str(link)})
    assert "symlink" in refused(run, link, what)

    inner = hostile / "state"  # private itself, but inside a directory others can write
    hostile.chmod(0o777)
    inner.mkdir(mode=0o700)
    run = pgmgr(*READER[var], env={var: str(inner)})
    assert "another user can write" in refused(run, inner, what)


@needs_root
@pytest.mark.parametrize("var", VARS)
def test_attackers_directory_refused_by_root_and_by_others(
    work: Path, hostile: Path, var: str
) -> None:
    """An attacker makes /tmp/X mode 0777 (or 0700, theirs): root and a third user refuse
    it, and nothing is written there."""
    what = "state" if var == VARS[0] else "cache"
    with os_user("attacker") as attacker, os_user("victim") as victim:
        made = run_as(attacker.name, "mkdir", "-m", "0777", str(hostile))
        assert made.returncode == 0, made
        datadir = work / "db"
        run = pgmgr("start", "--init", "-d", str(datadir), "-p", "auto", env={var: str(hostile)})
        assert f"belongs to {attacker.name}" in refused(run, hostile, what)
        assert not datadir.exists()
        run = pgmgr(*READER[var], env={var: str(hostile)})
        refused(run, hostile, what)

        proc = pgmgr_as(victim.name, *READER[var], env={var: str(hostile), "HOME": "/"})
        assert proc.returncode == 1, proc
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
        assert len(lines) == 1 and f"directory {hostile}" in lines[0], proc.stderr
        # even when the attacker makes it theirs only, it is not the victim's
        assert run_as(attacker.name, "chmod", "0700", str(hostile)).returncode == 0
        run = pgmgr(*READER[var], env={var: str(hostile)})
        refused(run, hostile, what)
        assert run_as(attacker.name, "ls", "-A", str(hostile)).stdout == ""


def test_own_private_place_is_accepted(work: Path) -> None:
    """The common case still works: a fresh directory made by pgmgr, or one of the user's
    own (0700), in a directory only they can write."""
    mine = work / "mine"
    mine.mkdir(mode=0o700)
    run = pgmgr("status", "--json", env={"PGMGR_STATE_DIR": str(mine / "new")})
    assert run.returncode == 0, str(run)
    os.chmod(mine, 0o755)  # noqa: S103 - readable is fine, writable is not
    run = pgmgr("status", "--json", env={"PGMGR_STATE_DIR": str(mine)})
    assert run.returncode == 0, str(run)


@pytest.mark.parametrize("var", VARS)
def test_home_directory_is_refused(work: Path, var: str) -> None:
    """The user's own home directory as the place: private and theirs, so it passed every
    check, and pgmgr put its directories among the user's files."""
    home = work / "home"
    home.mkdir(mode=0o700)
    (home / "notes.txt").write_text("mine\n")
    run = pgmgr(*READER[var], env={var: str(home), "HOME": str(home)})
    assert "is your home directory" in refused(run, home, READER_WHAT[var]), str(run)
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]
    run = pgmgr(*READER[var], env={var: str(home / "pgmgr"), "HOME": str(home)})
    assert run.returncode == 0, str(run)  # a directory of its own in it: fine


def test_a_home_that_is_pgmgrs_own_directory_is_accepted(work: Path) -> None:
    """A service account whose home is pgmgr's directory (``/var/lib/pgmgr``): empty at
    first, then holding pgmgr's files only. Not refused as a home full of the user's."""
    home = work / "svc"
    home.mkdir(mode=0o700)
    env = {"PGMGR_STATE_DIR": str(home), "PGMGR_CACHE_DIR": str(home / "cache"), "HOME": str(home)}
    datadir = work / "db"
    run = pgmgr("init", "-d", str(datadir), "-q", env=env)
    assert run.returncode == 0, str(run)
    assert "instances" in os.listdir(home)
    # paths.OWN_NAMES, which tells pgmgr's own directory from a home, names all it makes
    assert set(os.listdir(home)) - {"cache"} <= paths.OWN_NAMES, os.listdir(home)
    assert set(os.listdir(home / "cache")) <= paths.OWN_NAMES, os.listdir(home / "cache")
    run = pgmgr("status", "--json", env=env)
    assert run.returncode == 0, str(run)
    assert str(datadir) in run.stdout


#: What pgmgr makes in its state and cache directories.
PGMGR_NAMES = ("instances", "locks", "logs", "pgpass", "templates", "binaries.json")


@pytest.mark.parametrize("var", VARS)
@pytest.mark.parametrize("place", ["/", "/etc", "/var/lib"])
def test_system_directory_is_refused(work: Path, var: str, place: str) -> None:
    """As root, ``PGMGR_STATE_DIR=/`` passed every check (root's, nobody else can write
    it) and pgmgr made its ``locks``, ``logs`` and ``instances`` in ``/``. A symlink to
    such a directory is the same directory, and says where it leads. (As another user
    the same error comes first.)"""
    made = [Path(place, n) for n in PGMGR_NAMES if not Path(place, n).exists()]
    link = work / "link"
    link.symlink_to(place)
    try:
        for given in (Path(place), link):
            run = pgmgr(*READER[var], env={var: str(given)})
            err = refused(run, given, READER_WHAT[var])
            assert "is a system directory" in err, str(run)
            assert (given == link) == (f"({place})" in err), err
        datadir = work / "db"
        run = pgmgr("start", "--init", "-d", str(datadir), "-p", "auto", env={var: place})
        refused(run, Path(place), READER_WHAT[var])
        assert not datadir.exists()
        assert [p for p in made if p.exists()] == []
    finally:  # the old code made them: never leave them there
        for path in made:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists() or path.is_symlink():
                path.unlink()


READER_WHAT = {"PGMGR_STATE_DIR": "state", "PGMGR_CACHE_DIR": "cache"}


@pytest.mark.parametrize("var", VARS)
def test_a_place_in_a_data_directory_is_refused(work: Path, var: str) -> None:
    """The state directory inside a PostgreSQL data directory (its owner's: every other
    check passed): a snapshot copied pgmgr's records and locks with the data, and a
    restore put back the records of the snapshot's time, dropping the instances
    registered since (a branch, say)."""
    datadir = work / "db"
    run = pgmgr("init", "-d", str(datadir), "-q")
    assert run.returncode == 0, str(run)
    before = sorted(os.listdir(datadir))
    for place in (datadir, datadir / "pgmgr", datadir / "base" / "pgmgr"):
        run = pgmgr(*READER[var], env={var: str(place)})
        err = refused(run, place, READER_WHAT[var])
        where = "" if place == datadir else "in "
        assert f"is {where}the PostgreSQL data directory {datadir}, which" in err, err
        hint = "it" if where else "pgmgr's files"
        assert f"Hint: move {hint} out of {datadir}" in run.stderr, str(run)
        if var == "PGMGR_STATE_DIR":  # (a start reads no cache)
            run = pgmgr("start", "-d", str(datadir), "-p", "auto", env={var: str(place)})
            refused(run, place, READER_WHAT[var])
    assert sorted(os.listdir(datadir)) == before
    run = pgmgr(*READER[var], env={var: str(work / "beside")})
    assert run.returncode == 0, str(run)  # beside it: fine
