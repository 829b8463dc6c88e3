"""Faults 5, 6 and 9: broken records, an unwritable state dir, data dirs that vanish, a full
disk and a read-only data directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.conftest import (
    InstFactory,
    assert_truthful,
    is_root,
    needs_root,
    no_orphans,
    one_error,
    pgmgr,
    postgres_pids_under,
)

# --------------------------------------------------------------------------- 5: records


@pytest.mark.parametrize("garbage", ["", '{"name": "db", "datadir"', "not json\n", "[1, 2]"])
def test_broken_record(cluster: InstFactory, rel_isolation: Path, garbage: str) -> None:
    good, broken = cluster("good"), cluster("db")
    assert good.start("--port", "auto").returncode == 0
    token = good.commit_canary()
    record = rel_isolation / "instances" / "db.json"
    record.write_text(garbage)
    err = one_error(pgmgr("status", "db"))
    assert str(record) in err and "unreadable" in err
    listing = pgmgr("status", "--json")  # the others are still listed, the broken one named
    assert listing.returncode == 0, str(listing)
    states = [(r["name"], r["state"]) for r in listing.json()]
    assert states == [("db", "broken"), ("good", "running")]
    assert str(record) in listing.stderr
    assert one_error(pgmgr("start", "db", "--port", "auto"))
    assert one_error(pgmgr("stop", "db"))
    assert not postgres_pids_under(broken.datadir)
    assert good.has_canary(token) and assert_truthful(good) == "running"
    run = pgmgr("stop", "--all")
    assert run.returncode == 0, str(run)
    assert assert_truthful(good) == "stopped"


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` read-only: a read-only bind mount as root (root ignores modes), else every
    directory in it 0555 (the owner could still chmod them back, as initdb does with an
    empty data dir, so callers check what that means for them)."""
    path.mkdir(parents=True, exist_ok=True)
    if is_root():
        subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
            yield
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)
    else:
        dirs = [path, *(p for p in path.rglob("*") if p.is_dir() and not p.is_symlink())]
        modes = {d: d.stat().st_mode & 0o7777 for d in dirs}
        for d in reversed(dirs):
            d.chmod(0o555)
        try:
            yield
        finally:
            for d in dirs:
                d.chmod(modes[d])


def _can_mount() -> bool:
    if not is_root():
        return False
    probe = subprocess.run(["mount", "--bind", "/", "/mnt"], capture_output=True, check=False)
    if probe.returncode == 0:
        subprocess.run(["umount", "/mnt"], check=False)
    return probe.returncode == 0


CAN_MOUNT = _can_mount()
needs_mount = pytest.mark.skipif(
    not (CAN_MOUNT or not is_root()), reason="mount not permitted here"
)


@needs_mount
def test_state_dir_unwritable(cluster: InstFactory, rel_isolation: Path) -> None:
    inst = cluster()
    assert inst.start("--port", "auto").returncode == 0
    token = inst.commit_canary()
    assert inst.stop().returncode == 0
    with read_only(rel_isolation):
        err = one_error(inst.start("--port", "auto"))
        assert "Read-only" in err or "ermission" in err, err
        assert not postgres_pids_under(inst.datadir)  # nothing spawned without a record
        run = inst.status()  # reading still works
        assert run.returncode == 3 and run.json()["state"] == "stopped", str(run)
        err = one_error(pgmgr("init", "-d", str(inst.datadir.parent / "new")))
        assert not (inst.datadir.parent / "new").exists()
    assert inst.start().returncode == 0 and inst.has_canary(token)
    assert inst.stop().returncode == 0


# --------------------------------------------------------------------------- 6: data dir gone


@pytest.mark.parametrize("how", ["deleted", "moved", "unreadable"])
def test_datadir_gone_while_registered(cluster: InstFactory, how: str) -> None:
    gone, other = cluster("gone"), cluster("other")
    assert other.start("--port", "auto").returncode == 0
    token = other.commit_canary()
    if how == "deleted":
        shutil.rmtree(gone.datadir)
    elif how == "moved":
        gone.datadir.rename(gone.datadir.with_name("elsewhere"))
    elif is_root():  # root reads anything: hide it behind a directory it cannot enter
        gone.datadir.rename(gone.datadir.parent / "locked")
        (gone.datadir.parent / "locked").chmod(0o000)
        gone.datadir.mkdir(mode=0o000)
    else:
        gone.datadir.chmod(0o000)
    try:
        run = gone.status()
        assert run.returncode == 4 and run.json()["state"] == "missing", str(run)
        for verb in ("start", "stop"):
            run = pgmgr(verb, gone.name)
            err = one_error(run)
            assert run.returncode == 4, str(run)
            assert str(gone.datadir) in err
        listing = pgmgr("status", "--json")
        assert listing.returncode == 0
        states = {r["name"]: r["state"] for r in listing.json()}
        assert states == {"gone": "missing", "other": "running"}
        assert other.has_canary(token) and assert_truthful(other) == "running"
    finally:
        gone.datadir.chmod(0o755) if gone.datadir.exists() else None
    assert other.stop().returncode == 0
    no_orphans(other)


# --------------------------------------------------------------------------- 9: disk, read-only


@needs_root
@pytest.mark.skipif(not CAN_MOUNT, reason="mount not permitted here")
def test_disk_full_during_init(work: Path) -> None:
    mnt = work / "small"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(mnt)], check=True
    )
    try:
        run = pgmgr("init", "-d", str(mnt / "data"), "-v", "15")
        err = one_error(run)
        assert "No space left on device" in err, str(run)
        assert not (mnt / "data").exists()  # pgmgr made it, so pgmgr removed it
        assert pgmgr("status", "--json").json() == []  # nothing half-made registered
        (mnt / "empty").mkdir()
        err = one_error(pgmgr("start", "--init", "-d", str(mnt / "empty"), "--port", "auto"))
        assert (mnt / "empty").is_dir() and not any((mnt / "empty").iterdir())  # kept, empty
        assert pgmgr("status", "--json").json() == []
        assert not postgres_pids_under(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@needs_mount
def test_read_only_datadir(cluster: InstFactory, work: Path) -> None:
    inst = cluster("db")
    assert inst.start("--port", "auto").returncode == 0
    token = inst.commit_canary()
    assert inst.stop().returncode == 0
    with read_only(inst.datadir):
        err = one_error(inst.start("--port", "auto"))
        assert "Read-only" in err or "ermission" in err, err
        assert assert_truthful(inst) == "stopped"
        assert not postgres_pids_under(inst.datadir)
    # init into a read-only empty directory: refused, nothing registered. Only root can make
    # it read-only for its owner (a bind mount): an owner's 0555 dir is chmod-ed back by initdb.
    if not is_root():
        return
    empty = work / "ro-empty"
    with read_only(empty):
        err = one_error(pgmgr("init", "-d", str(empty)))
        names = [r["name"] for r in pgmgr("status", "--json").json()]
        assert names == ["db"], names
    assert os.listdir(empty) == []
    assert inst.start().returncode == 0 and inst.has_canary(token)
    assert inst.stop().returncode == 0
