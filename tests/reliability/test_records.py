"""Instance records that are valid JSON but not valid records (wrong types), through a real
``pgmgr``: one bad file is one ``Error:`` line, never a traceback, and never hides the
other instances."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from pgmgr.core import recordcheck, registry
from tests.reliability.conftest import InstFactory, one_error, pgmgr

#: One field of a valid record replaced by a value of the wrong JSON type.
BAD_FIELDS: list[tuple[str, Any]] = [
    ("datadir", None),
    ("bindir", ["/usr/lib/postgresql/15/bin"]),
    ("port", "5432"),
    ("port", True),
    ("pid", 1.5),
    ("started_at", "yesterday"),
    ("created_at", False),
    ("socket_dir", 0),
    ("password", {"secret": "x"}),
    ("settings", {"work_mem": 64}),
    ("settings", ["work_mem=64MB"]),
    ("password_pending", "yes"),
    ("intent", "upgrading"),
    # an intent naming an entry outside the snapshot store (settling it would rename that)
    ("intent", {"op": "restore", "new": {"dev": 1, "ino": 2}, "record": {}, "old": "../../x"}),
]


def corrupt(state: Path, name: str, key: str, value: Any) -> Path:
    """Rewrite one field of the record of ``name``; returns the record's path."""
    path = state / "instances" / f"{name}.json"
    data = json.loads(path.read_text())
    data[key] = value
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(("key", "value"), BAD_FIELDS, ids=[f"{k}={v!r}" for k, v in BAD_FIELDS])
def test_status_lists_the_others_and_names_the_bad_record(
    cluster: InstFactory, rel_isolation: Path, key: str, value: Any
) -> None:
    cluster("alpha"), cluster("bad"), cluster("zeta")
    record = corrupt(rel_isolation, "bad", key, value)
    for args in (["status"], ["status", "--json"]):
        run = pgmgr(*args)
        assert run.returncode == 0, str(run)
        errors = run.errors()
        assert len(errors) == 1, str(run)
        assert str(record) in errors[0] and repr(key) in errors[0], str(run)
        if "--json" in args:
            states = [(r["name"], r["state"]) for r in run.json()]
            assert states == [("alpha", "stopped"), ("bad", "broken"), ("zeta", "stopped")]
        else:
            assert "alpha" in run.stdout and "zeta" in run.stdout, str(run)
            assert "broken" in run.stdout, str(run)


def test_a_records_name_is_its_file_name(cluster: InstFactory, rel_isolation: Path) -> None:
    """A ``name`` of the wrong type (or another name) does not matter: the file names it."""
    cluster("alpha")
    corrupt(rel_isolation, "alpha", "name", 5)
    run = pgmgr("status", "--json")
    assert [r["name"] for r in run.json()] == ["alpha"] and not run.errors(), str(run)


def test_type_checks_cover_every_field() -> None:
    """Every field of the record has a type check (a new field needs one)."""
    fields = {f.name for f in dataclasses.fields(registry.Instance)}
    assert fields == set(recordcheck.FIELD_TYPES)


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: (size, mtime in ns)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("running", [False, True], ids=["stopped", "running"])
@pytest.mark.parametrize("garbage", ['{"name": "bad", "datadir": null}', "not json\n"])
def test_forget_removes_an_unreadable_record_and_nothing_else(
    cluster: InstFactory, rel_isolation: Path, garbage: str, running: bool
) -> None:
    """The CorruptRecord hint says 'pgmgr forget NAME': that must work, and must not touch
    the data directory (nor a server still running in it)."""
    good, bad = cluster("good"), cluster("bad")
    if running:
        assert bad.start("--port", "auto").returncode == 0
    pid = bad.pid()
    record = rel_isolation / "instances" / "bad.json"
    record.write_text(garbage)
    hint = pgmgr("status", "--json").stderr
    assert "pgmgr forget bad" in hint
    before = tree(bad.datadir)

    run = pgmgr("forget", "bad")
    assert run.returncode == 0, str(run)
    assert not record.exists()
    assert str(record) in run.stderr and "cannot tell" in run.stderr, str(run)
    assert tree(bad.datadir) == before
    assert bad.pid() == pid
    listing = pgmgr("status", "--json")
    assert listing.returncode == 0 and not listing.errors(), str(listing)
    assert [r["name"] for r in listing.json()] == ["good"]
    assert good.datadir.is_dir()

    # ... and the data directory can be registered again, as the hint says
    again = pgmgr("init", "-d", str(bad.datadir), "--name", "bad")
    assert again.returncode == 0, str(again)
    state = pgmgr("status", "bad", "--json")
    assert state.json()["state"] == ("running" if running else "stopped"), str(state)
    if running:
        assert pgmgr("stop", "bad").returncode == 0


#: Every command that reads one instance's record, as the tests run it.
READERS: list[list[str]] = [
    ["status", "bad"],
    ["status", "bad", "--json"],
    ["start", "bad", "--port", "auto"],
    ["stop", "bad"],
    ["restart", "bad"],
    ["reload", "bad"],
    ["destroy", "bad", "--yes"],
    ["snapshots", "bad"],
    ["snapshot", "bad"],
    ["branch", "bad", "twig"],
    ["url", "bad"],
    ["logs", "bad"],
    ["env", "bad"],
]


def _not_a_file(record: Path, kind: str, aside: Path) -> str:
    """Put ``kind`` in place of ``record``; the words its error must hold."""
    aside.write_bytes(record.read_bytes())
    record.unlink()
    if kind == "directory":
        record.mkdir()
        (record / "kept").write_text("a user's file\n")
        return "a directory"
    if kind == "fifo":
        os.mkfifo(record)
        return "a FIFO"
    if kind == "socket":
        import socket

        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(record))
        return "a socket"
    record.symlink_to(aside)
    return "a symbolic link"


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink", "socket"])
def test_a_record_that_is_not_a_file_is_named_and_left(
    cluster: InstFactory, rel_isolation: Path, work: Path, kind: str
) -> None:
    """A record replaced by a directory, a FIFO or a symlink: every command that reads it
    says so in one line naming the file, exits non-zero, and changes nothing. 'forget'
    printed "Is a directory: PATH" (its hint's own advice), a symlink read "Too many levels
    of symbolic links". forget removes a FIFO or a symlink (not what it points to), never
    a directory, which pgmgr does not make there."""
    bad = cluster("bad")
    record = rel_isolation / "instances" / "bad.json"
    aside = work / "bad.json.aside"
    words = _not_a_file(record, kind, aside)
    before = tree(bad.datadir)
    for args in [*READERS, *([["forget", "bad"]] if kind == "directory" else [])]:
        run = pgmgr(*args)
        err = one_error(run)
        assert str(record) in err and words in err, str(run)
        assert "Is a directory" not in err and "Too many levels" not in err, str(run)
    assert tree(bad.datadir) == before and bad.pid() is None
    assert not (work / "twig").exists()
    if kind == "directory":
        assert (record / "kept").read_text() == "a user's file\n"
        hint = pgmgr("status", "bad").stderr
        assert "rm -r" in hint and "pgmgr forget" not in hint, hint
        return
    run = pgmgr("forget", "bad")
    assert run.returncode == 0 and not os.path.lexists(record), str(run)
    assert aside.is_file() and tree(bad.datadir) == before


def test_a_lock_file_that_is_a_directory_is_named(
    cluster: InstFactory, rel_isolation: Path
) -> None:
    """The registry's lock file made a directory: 'init' said "Is a directory: PATH"."""
    inst = cluster("db", register=False)
    lock = rel_isolation / "locks" / "registry.lock"
    lock.unlink(missing_ok=True)
    for private in (rel_isolation, lock.parent):
        private.mkdir(mode=0o700, exist_ok=True)
    lock.mkdir()
    err = one_error(pgmgr("init", "-d", str(inst.datadir)))
    assert f"cannot open the lock file {lock}: Is a directory" in err, err
    assert lock.is_dir() and not (rel_isolation / "instances" / "db.json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_a_record_it_cannot_read_is_named(cluster: InstFactory, rel_isolation: Path) -> None:
    """Mode 000 (as a user): 'permission denied', naming the file, for every reader."""
    cluster("bad")
    record = rel_isolation / "instances" / "bad.json"
    record.chmod(0)
    try:
        for args in READERS:
            err = one_error(pgmgr(*args))
            assert str(record) in err and "permission denied" in err, err
    finally:
        record.chmod(0o600)
