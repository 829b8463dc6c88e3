"""destroy removes only what is provably an instance (issue 11.1), and survives being
killed at any point (11.4); destroy and forget leave no log or socket dir behind (11.11)."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pgmgr.core import server
from tests.helpers import copy_datadir
from tests.pause import Paused
from tests.reliability.conftest import (
    Inst,
    InstFactory,
    one_error,
    pgmgr,
    pgmgr_argv,
    postgres_pids_under,
)

#: Where destroy is paused and SIGKILLed (see pgmgr.core.testhook): after the stop, after the
#: rename to the trash name, after PG_VERSION went, before the record goes.
STEPS = ("destroy-stopped", "destroy-renamed", "destroy-unversioned", "destroy-record")
#: And SIGKILLs at timings between those, spread over the second half of a destroy's run.
RANDOM_KILLS = 4


def trash_of(datadir: Path) -> list[Path]:
    return sorted(datadir.parent.glob(f".{datadir.name}.pgmgr-trash-*"))


def test_destroy_refuses_what_is_not_provably_an_instance(template: Path, work: Path) -> None:
    fake = work / "fake"  # issue 11.1: this was deleted, important.txt and all
    fake.mkdir()
    (fake / "PG_VERSION").write_text("15\n")
    (fake / "important.txt").write_text("keep me\n")
    err = one_error(pgmgr("destroy", str(fake), "--yes"))
    assert "not a complete PostgreSQL data directory" in err
    assert (fake / "important.txt").read_text() == "keep me\n"

    extra = copy_datadir(template, work / "extra")  # complete, but with the user's file
    (extra / "important.txt").write_text("keep me\n")
    (extra / "dumps").mkdir()
    err = one_error(pgmgr("destroy", str(extra), "--yes"))
    assert "dumps, important.txt" in err, err
    assert (extra / "important.txt").exists() and (extra / "PG_VERSION").exists()

    plain = copy_datadir(template, work / "plain")  # nothing but PostgreSQL's own
    run = pgmgr("destroy", str(plain), "--yes")
    assert run.returncode == 0, str(run)
    assert not plain.exists() and not trash_of(plain)


def test_destroy_of_a_registered_instance_takes_all(cluster: InstFactory) -> None:
    """Its identity matches: what the user kept in it goes with it (the prompt said so)."""
    inst = cluster("db")
    (inst.datadir / "notes.txt").write_text("mine\n")
    run = pgmgr("destroy", "db", "--yes")
    assert run.returncode == 0, str(run)
    assert not inst.datadir.exists() and not trash_of(inst.datadir)


def test_a_trash_dir_is_no_data_dir(template: Path, work: Path) -> None:
    trash = copy_datadir(template, work / ".db.pgmgr-trash-12345")
    assert not server.is_datadir(trash)
    run = pgmgr("status", "-d", str(trash), "--json")
    assert run.returncode == 4, str(run)
    run = pgmgr("start", "-d", str(trash), "--port", "auto")
    assert run.returncode == 4, str(run)


def test_forget_and_destroy_leave_no_log_nor_socket_dir(
    cluster: InstFactory, rel_isolation: Path
) -> None:
    # names long enough that the socket path does not fit in the data dir: the socket
    # goes to a private directory of the instance's under the runtime directory
    kept, gone = cluster("kept" + "k" * 59), cluster("gone" + "g" * 59)
    dirs = {}
    for inst in (kept, gone):
        assert inst.start("--port", "auto").returncode == 0
        rec = inst.record()
        dirs[inst.name] = (Path(rec["log_file"]), Path(rec["socket_dir"]))
        assert inst.stop().returncode == 0
        assert all(p.exists() for p in dirs[inst.name])
    assert all(dirs[i.name][1] != i.datadir for i in (kept, gone))
    assert pgmgr("forget", kept.name).returncode == 0
    assert pgmgr("destroy", gone.name, "--yes").returncode == 0
    for name, (log, sockdir) in dirs.items():
        assert not log.exists() and not sockdir.exists(), name
    assert (kept.datadir / "PG_VERSION").exists()


def _registered(template: Path, work: Path, name: str) -> Inst:
    """A copy of the template, registered in this process (a pgmgr process per try would
    cost more than the destroy it prepares)."""
    from pgmgr.core.instance import Server
    from pgmgr.core.server import InitOptions

    datadir = copy_datadir(template, work / name)
    Server.for_datadir(datadir, name=name).initialize(InitOptions())
    return Inst(name, datadir)


def _destroy(name: str, delay: float | None) -> tuple[int, float]:
    """``pgmgr destroy NAME --yes``, SIGKILLed after ``delay`` (None: not killed); its exit
    code and how long it ran."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        pgmgr_argv("destroy", name, "--yes"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if delay is not None:
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err, err
    return proc.returncode, time.monotonic() - t0


def _one_kill(inst: Inst, i: int, delay: float) -> str:
    """destroy killed after ``delay``; then see :func:`_finish`."""
    code, _ = _destroy(inst.name, delay)
    return _finish(inst, i, code)


def _finish(inst: Inst, i: int, code: int) -> str:
    """After a killed destroy (exit ``code``), destroy (even i) or forget (odd i) finishes
    it. Returns what the kill left: done / intact / trash / gone (data gone, record left)."""
    name = inst.name
    trash = trash_of(inst.datadir)
    records = Path(os.environ["PGMGR_STATE_DIR"]) / "instances"
    if code == 0 or not (records / f"{name}.json").exists():  # the record goes last
        left = "done"
    elif trash:
        left = "trash"
        assert not inst.datadir.exists()  # renamed whole: no half-deleted data dir
        assert all(not server.is_datadir(t) for t in trash)
        st = pgmgr("status", name, "--json")
        assert st.returncode == 4 and st.json()["state"] == "missing", str(st)
    elif not inst.datadir.exists():
        left = "gone"  # deleted, the record not yet removed
    else:
        left = "intact"
        assert (inst.datadir / "PG_VERSION").exists() and (inst.datadir / "base").is_dir()
    finisher = "destroy" if i % 2 == 0 else "forget"
    if left != "done":
        run = pgmgr(finisher, name, *(["--yes"] if finisher == "destroy" else []))
        if run.returncode != 0 and finisher == "forget" and "running" in run.stderr:
            assert pgmgr("stop", name).returncode == 0  # killed before it stopped the server
            run = pgmgr("forget", name)
        assert run.returncode == 0, str(run)
    assert not trash_of(inst.datadir), (i, left)
    assert not postgres_pids_under(inst.datadir)
    assert not (records / f"{name}.json").exists(), (i, left)
    if finisher == "destroy" or left != "intact":
        assert not inst.datadir.exists(), (i, left)
    else:  # forget keeps a data dir the kill left whole
        assert (inst.datadir / "PG_VERSION").exists(), (i, left)
    return left


def test_destroy_killed_at_each_step_is_finished_later(
    template: Path, work: Path, hooks: Path
) -> None:
    """destroy SIGKILLed where it stops, renames, deletes and drops the record (paused
    there), each finished by a destroy and by a forget, a running server among them:
    whatever the kill left, the next destroy or forget finishes it, and nothing left behind
    counts as a data directory."""
    outcomes: dict[str, list[str]] = {}
    for n, step in enumerate(STEPS):
        for i in (2 * n, 2 * n + 1):  # even: finished by destroy, odd: by forget
            inst = _registered(template, work, f"p{i}")
            if i in (0, 3):
                assert inst.start("--port", "auto").returncode == 0
            paused = Paused(hooks, step, "destroy", inst.name, "--yes")
            paused.reached()
            code = paused.kill(signal.SIGKILL)
            outcomes.setdefault(step, []).append(_finish(inst, i, code))
    print(f"destroy killed at each step, what each kill left: {json.dumps(outcomes)}")
    assert outcomes["destroy-stopped"] == ["intact", "intact"]
    assert outcomes["destroy-renamed"] == ["trash", "trash"]
    assert outcomes["destroy-unversioned"] == ["trash", "trash"]
    assert outcomes["destroy-record"] == ["gone", "gone"]


def test_destroy_killed_at_random_points_is_finished_later(template: Path, work: Path) -> None:
    """RANDOM_KILLS SIGKILLs of destroy, spread over the second half of its run (one running
    server), between the steps the test above pauses at."""
    spans = []
    for n in range(2):  # not killed: how long one takes, now, on this machine
        _registered(template, work, f"m{n}")
        code, span = _destroy(f"m{n}", None)
        assert code == 0
        spans.append(span)
    span = min(spans)
    outcomes: dict[str, int] = {}
    for i in range(RANDOM_KILLS):
        inst = _registered(template, work, f"k{i}")
        if i == RANDOM_KILLS - 1:
            assert inst.start("--port", "auto").returncode == 0
        left = _one_kill(inst, i, span * (0.5 + 0.6 * i / RANDOM_KILLS))
        outcomes[left] = outcomes.get(left, 0) + 1
    print(f"destroy: {RANDOM_KILLS} SIGKILLs, what each left: {json.dumps(outcomes)}")


def test_forget_and_destroy_sweep_only_their_own_trash(cluster: InstFactory) -> None:
    """A directory beside the instance merely named like its trash (the user's own copy,
    or one another user chose where others can write) was deleted, all in it, by any
    forget or destroy of the instance. Only what a destroy of this very data directory
    renamed (its inode, its process gone) is swept now."""
    inst = cluster("db")
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine = copy_datadir(Path(inst.datadir), inst.datadir.parent / f".{inst.datadir.name}"
                        f".pgmgr-trash-{dead.pid}")  # fmt: skip
    (mine / "notes.txt").write_text("mine\n")
    run = pgmgr("forget", "db")
    assert run.returncode == 0, str(run)
    assert (mine / "notes.txt").read_text() == "mine\n"
    if os.geteuid() == 0:  # another user's, beside a data directory without a record
        subprocess.run(["chown", "-R", "65534:65534", str(mine)], check=True)
        run = pgmgr("destroy", str(inst.datadir), "--yes")
        assert run.returncode == 0, str(run)
        assert (mine / "notes.txt").read_text() == "mine\n"


def test_destroy_of_a_tree_deeper_than_python_recursion(cluster: InstFactory) -> None:
    """A directory chain 1,500 deep in the data directory (any user can make one in a
    directory of theirs): the removal recursed, one Python frame a level, and destroy
    ended in a RecursionError traceback with the trash left behind. The walk holds an fd
    a level: the depth is bounded by the open files (beyond: "Too many open files", one
    line), so the soft limit is raised to the hard one (1,024 is a common soft limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2000:
        pytest.skip(f"open files limited to {hard}")
    inst = cluster("deep")
    owner = inst.datadir.stat()
    fd = os.open(inst.datadir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(1500):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.fchown(nxt, owner.st_uid, owner.st_gid)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # for the pgmgr it runs
    try:
        run = pgmgr("destroy", "deep", "--yes")
        assert run.returncode == 0, str(run)
        assert not inst.datadir.exists() and not trash_of(inst.datadir)
    finally:  # the fixtures' shutil.rmtree recurses too
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        subprocess.run(["rm", "-rf", str(inst.datadir), *map(str, trash_of(inst.datadir))])


def test_destroy_refuses_a_data_directory_another_record_also_names(
    cluster: InstFactory, tmp_path: Path
) -> None:
    """A record copied by hand (``cp dev.json dev2.json``): 'pgmgr destroy dev2' removed
    the data directory of 'dev' too, whose record stayed with nothing behind it. pgmgr never
    makes two records of one directory; with two, which one is meant is not known."""
    dev = cluster("dev")
    records = tmp_path / "state" / "instances"
    (records / "dev2.json").write_bytes((records / "dev.json").read_bytes())
    err = one_error(pgmgr("destroy", "dev2", "--yes"))
    assert "is also the instance 'dev'" in err and "nothing was removed" in err, err
    assert (dev.datadir / "PG_VERSION").is_file()
    assert pgmgr("forget", "dev2").returncode == 0  # the hint: then destroy works
    run = pgmgr("destroy", "dev", "--yes")
    assert run.returncode == 0, str(run)
    assert not dev.datadir.exists()


def test_destroy_says_what_it_leaves_outside(cluster: InstFactory, work: Path) -> None:
    """Tablespaces (pg_tblspc links) and a pg_wal kept elsewhere are not the data directory:
    destroy never removes them, and said nothing of them (a tablespace's data stayed,
    unnamed). Now a note for each, and ``left_outside`` in --json; the link targets and
    what they hold stay as they were."""
    made = {}
    for name in ("db", "db2"):
        inst = cluster(name)
        st = inst.datadir.stat()
        owner = (st.st_uid, st.st_gid)
        assert inst.start("--port", "auto").returncode == 0
        space = work / f"space-{name}"
        space.mkdir()
        os.chown(space, *owner)
        inst.sql(f"CREATE TABLESPACE ts_{name} LOCATION '{space}'")
        inst.sql(f"CREATE TABLE kept_{name} (x int) TABLESPACE ts_{name}")
        oid = inst.sql("SELECT oid::text FROM pg_tablespace WHERE spcname = %s", f"ts_{name}")
        made[name] = (inst, space, oid[0][0])
    inst, space, oid = made["db"]
    text = pgmgr("destroy", "db", "--yes")
    assert text.returncode == 0 and not inst.datadir.exists(), str(text)
    assert f"left its tablespace {oid} in {space}" in text.stderr, str(text)
    assert all(p.name.startswith("PG_") for p in space.iterdir()) and any(space.iterdir())
    inst, space, oid = made["db2"]
    doc = pgmgr("destroy", "db2", "--yes", "--json").json()
    assert doc["left_outside"] == [{"kind": "tablespace", "oid": oid, "path": str(space)}]
    assert any(space.iterdir())


def test_destroy_says_it_leaves_a_wal_directory_elsewhere(cluster: InstFactory, work: Path) -> None:
    """pg_wal a (relative) symlink out of the data directory, as initdb --waldir makes."""
    inst = cluster("db")
    wal = work / "wal"
    (inst.datadir / "pg_wal").rename(wal)
    (inst.datadir / "pg_wal").symlink_to("../wal")
    os.lchown(inst.datadir / "pg_wal", inst.datadir.stat().st_uid, inst.datadir.stat().st_gid)
    doc = pgmgr("destroy", "db", "--yes", "--json").json()
    assert doc["left_outside"] == [{"kind": "wal", "oid": None, "path": str(wal)}], doc
    assert wal.is_dir() and not inst.datadir.exists()
    plain = cluster("plain")
    doc = pgmgr("destroy", "plain", "--yes", "--json").json()
    assert doc["left_outside"] == [] and not plain.datadir.exists()


def test_destroy_note_of_what_it_leaves_is_one_line_without_terminal_controls(
    cluster: InstFactory, work: Path
) -> None:
    """The names in pg_tblspc and the targets of its links are the data directory owner's:
    a name holding an escape sequence reached the terminal raw (``\\x1b]0;...``), and a
    line break in either split the note. Each note is now one line, its controls shown."""
    inst = cluster("db")
    st = inst.datadir.stat()
    link = inst.datadir / "pg_tblspc" / "16384\x1b]0;owned\x07\nError: fake"
    link.symlink_to(work / "ts\x1b[2J\nHint: fake")
    os.lchown(link, st.st_uid, st.st_gid)
    run = pgmgr("destroy", "db", "--yes")
    assert run.returncode == 0 and not inst.datadir.exists(), str(run)
    assert "\x1b" not in run.stderr and "\x07" not in run.stderr, repr(run.stderr)
    notes = [line for line in run.stderr.splitlines() if "left its tablespace" in line]
    assert len(notes) == 1, repr(run.stderr)
    assert "16384\\x1b]0;owned\\x07\\x0aError: fake in " in notes[0], notes
    assert "ts\\x1b[2J\\x0aHint: fake: pgmgr deletes nothing" in notes[0], notes
    assert not any(line.startswith(("Error:", "Hint:")) for line in run.stderr.splitlines())
