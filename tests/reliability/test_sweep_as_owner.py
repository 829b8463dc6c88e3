"""As root, what a killed run left in a server user's directories (its data directory in a
dead ``pgmgr run``'s directory, the settings check's or an upgrade's ``pgmgr-<what>-<pid>-*``
handed over to that user) was emptied by root, through fds: it removed what the server user
could not, a bystander's files in a directory of theirs inside the server user's tree. Now
each directory is emptied by its owner (:mod:`pgmgr.core.ownerrm`): what the server user
could remove goes, the bystander's files stay."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from pgmgr.core import privileges, reaper, sockets, sweep
from pgmgr.core.temporary import TemporaryInstance
from tests.helpers import dead_pid
from tests.pause import Paused, ok
from tests.reliability.test_multiuser_init import OsUser, attacker  # noqa: F401

from .conftest import InstFactory, needs_root, one_error, pgmgr

pytestmark = needs_root


def open_to_all(path: Path, bystander: OsUser, *, reachable: bool = True) -> Path:
    """``path`` (the server user's directory) with a world-writable ``drop`` in it, where
    ``bystander`` made a directory of theirs holding a file: what the server user cannot
    remove. Not ``reachable`` (a parent only root may enter): made by root as the
    bystander would have left it while they could reach it."""
    pg = privileges.lookup("postgres")
    path.chmod(0o755)  # the server user's choice: others may reach its drop
    drop = path / "drop"
    drop.mkdir(mode=0o777)
    drop.chmod(0o777)
    os.chown(drop, pg.uid, pg.gid)
    (path / "mine").write_text("the server user's")
    os.chown(path / "mine", pg.uid, pg.gid)
    theirs = drop / "theirs"
    if reachable:
        bystander.run(
            "import os, sys; os.mkdir(sys.argv[1], 0o755); "
            "open(sys.argv[1] + '/f', 'w').write('x')",
            str(theirs),
        )
    else:
        theirs.mkdir(mode=0o755)
        (theirs / "f").write_text("x")
        for p in (theirs, theirs / "f"):
            os.chown(p, bystander.uid, bystander.gid)
    return theirs / "f"


@pytest.fixture
def tmpdir_in(work: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``work`` as the temp dir of this process (and of pgmgr's sweeps in it)."""
    monkeypatch.setenv("TMPDIR", str(work))
    monkeypatch.setattr(tempfile, "tempdir", str(work))  # gettempdir() caches its answer
    return work


def test_a_server_users_dead_dir_is_emptied_as_that_user(
    tmpdir_in: Path,
    attacker: OsUser,  # noqa: F811 - here a bystander
) -> None:
    pg = privileges.lookup("postgres")
    left = tmpdir_in / f"pgmgr-cfg-{dead_pid()}-abc"
    left.mkdir(mode=0o700)
    os.chown(left, pg.uid, pg.gid)
    theirs = open_to_all(left, attacker)
    with TemporaryInstance("15"):  # its start sweeps the temp dir, as root
        pass
    assert theirs.read_text() == "x"  # root removed it
    assert not (left / "mine").exists()  # what the server user could remove went


def test_a_dead_runs_data_dir_is_emptied_as_its_owner(
    tmpdir_in: Path,
    attacker: OsUser,  # noqa: F811 - here a bystander
) -> None:
    pg = privileges.lookup("postgres")
    run = tmpdir_in / "pgmgr-run-dead"
    run.mkdir(mode=0o755)
    (run / sweep.OWNER_FILE).write_text(f"{dead_pid()} 0\n")
    data = run / "data"
    data.mkdir(mode=0o700)
    os.chown(data, pg.uid, pg.gid)
    theirs = open_to_all(data, attacker)
    assert run not in sweep.dead_runs(pg)  # it cannot all go
    assert theirs.read_text() == "x"  # root removed it
    assert not (data / "mine").exists()
    assert (run / sweep.OWNER_FILE).exists()  # the next sweep still knows it


def test_a_temporary_instance_is_removed_as_its_owner(
    tmpdir_in: Path,
    attacker: OsUser,  # noqa: F811 - here a bystander
) -> None:
    with TemporaryInstance("15") as tmp:
        data = Path(tmp.server.datadir)
        theirs = open_to_all(data, attacker)
    assert theirs.read_text() == "x"  # root removed it
    assert not (data / "base").exists()  # the server user's files went


def test_destroy_empties_the_data_dir_as_the_server_user(
    cluster: InstFactory,
    attacker: OsUser,  # noqa: F811 - here a bystander
) -> None:
    inst = cluster("db")
    theirs = open_to_all(inst.datadir, attacker)
    err = one_error(pgmgr("destroy", "db", "--yes"))
    assert "could not remove all of" in err, err
    (trash,) = inst.datadir.parent.glob(".db.pgmgr-trash-*")
    assert (trash / theirs.relative_to(inst.datadir)).read_text() == "x"  # root removed it
    assert not (trash / "base").exists()  # the server user's files went


def test_the_settings_check_dir_is_removed_as_the_server_user(
    work: Path,
    hooks: Path,
    attacker: OsUser,  # noqa: F811 - here a bystander
) -> None:
    """``start --init -c ...`` checks the settings in a directory it gives the server
    user (``pgmgr-cfg-<pid>-*``): root removed it, a bystander's files with it."""
    datadir = work / "db"
    args = ("start", "--init", "-d", str(datadir), "--version", "15", "--port", "auto")
    args += ("-c", "work_mem=8MB")
    with Paused(hooks, "settings-check", *args) as paused:
        paused.reached()
        (check,) = Path(tempfile.gettempdir()).glob("pgmgr-cfg-*")
        theirs = open_to_all(check, attacker)
        ok(paused.go())
    ok(pgmgr("stop", "-d", str(datadir)))
    assert theirs.read_text() == "x"  # root removed it
    assert not (check / "mine").exists()


def test_the_reaper_removes_as_the_owner(
    tmpdir_in: Path,
    attacker: OsUser,  # noqa: F811 - here a bystander
) -> None:
    """The pytest plugin's reaper, once its owner died, removes the run's directory."""
    with TemporaryInstance("15") as tmp:
        data = Path(tmp.server.datadir)
        theirs = open_to_all(data, attacker)
        assert tmp.base is not None
        reaper.reap(tmp.base, data)  # as the reaper process does (python -m, as root)
        assert theirs.read_text() == "x"  # root removed it
        assert not (data / "base").exists()


def test_a_stale_socket_dir_is_removed_as_the_server_user(
    cluster: InstFactory,
    attacker: OsUser,  # noqa: F811 - here a bystander
) -> None:
    """A start sweeps stale socket dirs in the server user's runtime directory (they hold
    only ``.s.PGSQL.*`` entries): root removed them, through fds, in that user's directory,
    and a ``.s.PGSQL.*`` directory with a bystander's files in it went too."""
    pg = privileges.lookup("postgres")
    base = sockets.runtime_base(pg)  # in this test's temp dir (TMPDIR)
    base.mkdir(mode=0o700)
    os.chown(base, pg.uid, pg.gid)
    stale = base / ("0" * 16)
    drop = stale / ".s.PGSQL.9"
    (drop / "theirs").mkdir(parents=True)
    (drop / "theirs" / "f").write_text("x")
    drop.chmod(0o777)
    for path, owner in ((stale, pg.uid), (drop, pg.uid), (drop / "theirs", attacker.uid)):
        os.chown(path, owner, owner)
    os.chown(drop / "theirs" / "f", attacker.uid, attacker.gid)
    old = time.time() - 2 * sockets.SWEEP_AGE
    os.utime(stale, (old, old))
    inst = cluster("db")
    ok(inst.start("--port", "auto"))
    ok(inst.stop())
    assert (drop / "theirs" / "f").read_text() == "x"  # root removed it


def test_destroy_with_snapshots_empties_the_store_as_the_server_user(
    cluster: InstFactory,
    attacker: OsUser,  # noqa: F811 - here a bystander
) -> None:
    """The store of an instance's snapshots is the server user's (under root's
    ``.pgmgr-snapshots``): root emptied it itself, a bystander's files in it too."""
    inst = cluster("db")
    ok(pgmgr("snapshot", "db", "one"))
    store = inst.datadir.parent / ".pgmgr-snapshots" / "db"
    store.chmod(0o755)  # for a while, others could reach the drop
    open_to_all(store / "one", attacker)
    store.chmod(0o700)
    err = one_error(pgmgr("destroy", "db", "--yes", "--with-snapshots"))
    assert "could not remove all of the snapshots" in err, err
    # The data directory went first: the error says so (and the same destroy finishes).
    assert f"the data directory {inst.datadir} is removed, the record kept" in err, err
    left = list((inst.datadir.parent / ".pgmgr-snapshots").rglob("theirs/f"))
    assert [p.read_text() for p in left] == ["x"]  # root removed it
    assert not list((inst.datadir.parent / ".pgmgr-snapshots").rglob("mine"))


def test_a_killed_destroys_doomed_store_is_swept_as_the_server_user(
    cluster: InstFactory,
    hooks: Path,
    attacker: OsUser,  # noqa: F811 - here a bystander
) -> None:
    """What a killed ``destroy --with-snapshots`` renamed out of sight is removed by the
    next command that opens a store beside it: as root, by root itself before."""
    inst, other = cluster("db"), cluster("other")
    ok(pgmgr("snapshot", "db", "one"))
    args = ("destroy", "db", "--yes", "--with-snapshots")
    with Paused(hooks, "destroy-snapshots-renamed", *args) as paused:
        paused.reached()
        paused.kill(signal.SIGKILL)
    top = inst.datadir.parent / ".pgmgr-snapshots"
    (doomed,) = top.glob(".tmp-delete-*")
    doomed.chmod(0o755)  # for a while, others could reach the drop
    theirs = open_to_all(doomed / "one", attacker)
    doomed.chmod(0o700)
    ok(pgmgr("snapshot", other.name, "s"))  # sweeps the top directory
    assert theirs.read_text() == "x"  # root removed it
    assert not (doomed / "one" / "mine").exists()


def test_a_branch_that_cannot_start_is_removed_as_the_server_user(
    cluster: InstFactory,
    hooks: Path,
    attacker: OsUser,  # noqa: F811 - here a bystander
) -> None:
    """A branch placed but not started is removed again: by root itself before, with a
    bystander's files put in its data directory meanwhile (made 0755 by the server user,
    which is also why PostgreSQL refuses to start it)."""
    inst = cluster("db")
    new = inst.datadir.parent / "new"
    args = ("branch", "db", "new", "-d", str(new), "--start", "-p", "auto")
    with Paused(hooks, "branch-placed", *args) as paused:
        paused.reached()
        theirs = open_to_all(new, attacker)
        err = one_error(paused.go())
    assert "permissions" in err, err  # why it failed, not what could not be removed
    assert theirs.read_text() == "x"  # root removed it
    assert not (new / "base").exists()


def test_cache_clear_removes_a_template_as_the_server_user(
    work: Path,
    attacker: OsUser,  # noqa: F811 - here a bystander
) -> None:
    """``u<uid>`` in the template cache is the server user's: root renamed and removed its
    templates itself, a bystander's files in one too."""
    ok(pgmgr("init", "-d", str(work / "db"), "--version", "15", "-q"))
    pg = privileges.lookup("postgres")
    (mine,) = Path(os.environ["PGMGR_CACHE_DIR"]).rglob(f"u{pg.uid}")
    (template,) = [p for p in mine.iterdir() if (p / "PG_VERSION").exists()]
    theirs = open_to_all(template, attacker, reachable=False)
    err = one_error(pgmgr("cache", "clear"))
    assert "cannot remove" in err, err
    assert theirs.parent.parent.parent.parent == mine
    left = list(mine.rglob("theirs/f"))
    assert [p.read_text() for p in left] == ["x"]  # root removed it
    assert not list(mine.rglob("PG_VERSION"))


def test_an_open_part_of_the_cache_is_removed_as_its_owner(
    work: Path,
    attacker: OsUser,  # noqa: F811 - here a bystander
) -> None:
    """``u<uid>`` made readable by others is not trusted and goes at the next use: root
    removed it itself, a bystander's files in it too."""
    ok(pgmgr("init", "-d", str(work / "db"), "--version", "15", "-q"))
    pg = privileges.lookup("postgres")
    (mine,) = Path(os.environ["PGMGR_CACHE_DIR"]).rglob(f"u{pg.uid}")
    theirs = open_to_all(mine, attacker, reachable=False)  # 0755 now
    ok(pgmgr("init", "-d", str(work / "db2"), "--version", "15", "-q"))  # without it
    assert theirs.read_text() == "x"  # root removed it


def test_a_dead_runs_dir_of_a_deleted_user_still_goes(tmpdir_in: Path) -> None:
    """A data directory whose owner has no passwd entry (the user was deleted since) is
    emptied as that uid all the same."""
    run = tmpdir_in / "pgmgr-run-gone"
    run.mkdir(mode=0o755)
    (run / sweep.OWNER_FILE).write_text(f"{dead_pid()} 0\n")
    uid = 4_000_000 + os.getpid() % 1000
    (run / "data" / "base").mkdir(parents=True)
    (run / "data" / "base" / "f").write_text("x")
    for path in (run / "data", run / "data" / "base", run / "data" / "base" / "f"):
        os.chown(path, uid, 0)
    (run / "data").chmod(0o700)
    assert run in sweep.dead_runs(privileges.lookup("postgres"))
    assert not run.exists()
