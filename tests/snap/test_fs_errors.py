"""File-system errors (init, the template cache, snapshots, restores, branches, upgrades),
driven for real where they can be (a read-only bind mount as root, a directory without
write permission otherwise, a small tmpfs that fills up; only EIO is mocked): one clear
line that names what failed, and no half state."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import error_lines
from tests.snap.conftest import Inst


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` cannot be written in for the block: a read-only bind mount of it as root
    (EROFS), else mode 0500 (EACCES for its owner)."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o500)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_unwritable_records_refuse_before_the_server_is_stopped(inst: Inst) -> None:
    """The start after the copy records the server, and stops it again when it cannot:
    with the records read-only, a restore, a branch and a snapshot failed and left a
    running instance stopped. Now each refuses before it stops anything."""
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.sql("INSERT INTO t VALUES (-1)")
    records = Path(os.environ["PGMGR_STATE_DIR"]) / "instances"
    with read_only(records):
        for args in (("restore", "dev", "s1", "--yes"), ("branch", "dev", "b1"),
                     ("snapshot", "dev", "s2")):  # fmt: skip
            proc = inst.pgmgr(*args)
            assert proc.returncode == 1, proc.stderr
            line = error_lines(proc.stderr)[0]
            assert line.startswith("Error: cannot stop 'dev' and start it again: "), line
            assert f"cannot write in {records} (" in line
            assert line.endswith("; nothing was changed"), line
            assert inst.state() == "running", args
    assert inst.sql("SELECT count(*) FROM t WHERE x = -1") == "1"
    assert [s["snapshot"] for s in inst.snaps()] == ["s1"]
    assert not (inst.datadir.parent / "b1").exists()


@pytest.fixture
def full_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs filled up (a real ENOSPC)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    fs = tmp_path / "fs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(fs)], check=True)
    try:
        with open(fs / "filler", "wb") as f, contextlib.suppress(OSError):
            f.write(b"x" * (2 << 20))
        yield fs
    finally:
        subprocess.run(["umount", str(fs)], check=True)


def test_check_writable_on_a_full_filesystem(full_fs: Path) -> None:
    from pgmgr.core import paths
    from pgmgr.core.errors import PgmgrError

    with pytest.raises(PgmgrError) as got:
        paths.check_writable(full_fs / "state" / "instances", "stop 'dev' and start it again")
    assert str(got.value) == (
        f"cannot stop 'dev' and start it again: pgmgr cannot write in {full_fs} "
        "(No space left on device); nothing was changed"
    )
    (full_fs / "filler").unlink()
    paths.check_writable(full_fs / "state" / "instances", "stop 'dev' and start it again")


def test_init_with_unwritable_records_makes_no_data_directory(ops_dir: Path) -> None:
    """It built the data directory, then failed to register it, and left it behind."""
    from tests.helpers import run_pgmgr

    records = Path(os.environ["PGMGR_STATE_DIR"]) / "instances"
    records.mkdir(parents=True, exist_ok=True)
    datadir = ops_dir / "d"
    with read_only(records):
        proc = run_pgmgr("init", "-q", "-d", str(datadir), "-v", "15", "--name", "d")
    assert proc.returncode == 1, proc.stderr
    line = error_lines(proc.stderr)[0]
    assert line.startswith(f"Error: cannot initialize {datadir}: pgmgr cannot write in "), line
    assert not datadir.exists()


def test_a_full_disk_names_the_file_it_could_not_write(full_fs: Path) -> None:
    """``write`` and ``fsync`` name no file: the error said "No space left on device" and
    nothing else."""
    from pgmgr.core import paths, registry
    from pgmgr.core.errors import describe_os_error

    for write in (paths.write_atomic, registry._write_exclusive):
        target = full_fs / "dev.json"
        with pytest.raises(OSError) as got:
            write(target, b"{}" * 100_000)
        assert describe_os_error(got.value) == f"cannot write {target}: No space left on device"
        assert sorted(p.name for p in full_fs.iterdir()) == ["filler"]  # no temporary file


def test_start_with_a_full_state_filesystem_names_the_log(
    full_fs: Path, ops_dir: Path, template: Path
) -> None:
    from tests.helpers import copy_datadir, run_pgmgr

    (full_fs / "filler").unlink()
    env = {"PGMGR_STATE_DIR": str(full_fs / "state")}
    datadir = copy_datadir(template, ops_dir / "data")
    assert run_pgmgr("init", "-q", "-d", str(datadir), "--name", "e", env=env).returncode == 0
    with open(full_fs / "filler", "wb") as f, contextlib.suppress(OSError):
        f.write(b"x" * (2 << 20))
    proc = run_pgmgr("start", "e", "-p", "auto", env=env)
    assert proc.returncode == 1, proc.stderr
    log = full_fs / "state" / "logs" / "e.log"
    assert error_lines(proc.stderr) == [f"Error: cannot write {log}: No space left on device"]
    assert run_pgmgr("status", "e", env=env).returncode == 3


def test_snapshot_store_in_a_read_only_place(ops_dir: Path, template: Path) -> None:
    """The store's first directory is made through the parent's fd: the error named only
    ".pgmgr-snapshots" ("Read-only file system: .pgmgr-snapshots")."""
    from tests.helpers import copy_datadir, run_pgmgr

    place = ops_dir / "w"
    datadir = copy_datadir(template, place / "data")
    assert run_pgmgr("init", "-q", "-d", str(datadir), "--name", "dev").returncode == 0
    with read_only(place):
        proc = run_pgmgr("snapshot", "dev", "s1")
    assert proc.returncode == 1, proc.stderr
    why = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    want = f"Error: cannot create the directory {place / '.pgmgr-snapshots'}: {why}"
    assert error_lines(proc.stderr) == [want]


def _open_store(datadir: Path) -> None:
    from pgmgr.core import snapstore

    with snapstore.opened(datadir, None):
        pass


def test_a_store_the_user_cannot_enter(ops_dir: Path) -> None:
    """A store directory the server user cannot open (another's, mode 700) was called
    "an unusual file, not a directory"."""
    from pgmgr.core import privileges, snapstore, userfs
    from pgmgr.core.errors import DatabaseException

    store = ops_dir / "p" / ".pgmgr-snapshots"
    store.mkdir(parents=True)
    store.parent.chmod(0o755)
    user = privileges.lookup("postgres") if os.geteuid() == 0 else None
    store.chmod(0o700 if user else 0)  # as root: root's; else the test's own, no access
    try:
        with pytest.raises(DatabaseException) as got:
            userfs.as_user(user, _open_store, store.parent / "data")
    finally:
        store.chmod(0o700)
    uid = os.getuid() if user is None else user.uid
    assert str(got.value) == (
        f"cannot open {store}: Permission denied (owned by uid {os.getuid()} with mode "
        f"{700 if user else 0}; expected uid {uid}, mode 700)"
    )
    assert store.name == snapstore.STORE


def test_snapshot_of_a_file_the_server_user_cannot_read(inst: Inst) -> None:
    """A file root left in the data directory (as a user: one without read permission):
    the copy failed with "Permission denied: rootfile", its name in its directory only."""
    stray = inst.datadir / "base" / "stray"
    stray.write_text("x")
    stray.chmod(0o600 if os.geteuid() == 0 else 0)
    proc = inst.pgmgr("snapshot", "dev", "s1")
    assert proc.returncode == 1, proc.stderr
    line = error_lines(proc.stderr)[0]
    assert line.startswith(f"Error: cannot copy {stray} -> {inst.store}/.tmp-snap-"), line
    assert line.endswith("/data/base/stray: Permission denied"), line
    assert inst.state() == "running"
    assert inst.snaps() == []


def test_a_read_error_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EIO from a failing disk: mocked (a disk cannot be made to fail here). A read names
    no file: the error was "Input/output error" alone."""
    import errno

    from pgmgr.core import copy, copydata
    from pgmgr.core.errors import describe_os_error

    src = tmp_path / "src"
    (src / "base").mkdir(parents=True)
    (src / "base" / "1").write_bytes(b"x" * 10)

    def failing(fin: int, fout: int, off: int, end: int, flush: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setenv("PGMGR_COPY_METHOD", "read")
    monkeypatch.setattr(copydata, "_copy_pread", failing)
    with pytest.raises(OSError) as got:
        copy.copy_tree(src, tmp_path / "dst")
    assert describe_os_error(got.value) == (
        f"cannot copy {src}/base/1 -> {tmp_path}/dst/base/1: Input/output error"
    )


def test_index_and_metadata_on_a_full_disk(full_fs: Path) -> None:
    """A snapshot's index and snapshot.json: the write said only "No space left on
    device", and left its temporary file behind (a restore keeps going without the index,
    and the file stayed in the snapshot)."""
    import time

    from pgmgr.core import delta, snapstore
    from pgmgr.core.errors import describe_os_error

    index = delta.Index(os.stat(full_fs).st_dev, {f"base/{i}": (i, 1, 2, 3) for i in range(9)})
    meta = snapstore.Meta("s1", "dev", "/d", "1", "15", "15.18", "/bin", time.time())
    with pytest.raises(OSError) as got:
        delta.save(full_fs, index)
    want = f"cannot write {full_fs / delta.INDEX}: No space left on device"
    assert describe_os_error(got.value) == want
    assert sorted(p.name for p in full_fs.iterdir()) == ["filler"]
    with pytest.raises(OSError) as got:
        snapstore.write_meta(full_fs, meta)
    want = f"cannot write {full_fs / snapstore.META}: No space left on device"
    assert describe_os_error(got.value) == want
    assert sorted(p.name for p in full_fs.iterdir()) == ["filler"]


def _init_uses_no_cache(ops_dir: Path, cache: Path) -> None:
    from tests.helpers import run_pgmgr

    datadir = ops_dir / "d"
    env = {"PGMGR_CACHE_DIR": str(cache), "PGMGR_NO_TEMPLATE": None}
    proc = run_pgmgr("init", "-q", "-d", str(datadir), "-v", "15", "--name", "d", env=env)
    assert proc.returncode == 0, proc.stderr
    try:
        assert run_pgmgr("start", "d", "-q", "-p", "auto", env=env).returncode == 0
        assert run_pgmgr("status", "d", "--check", env=env).returncode == 0
    finally:
        run_pgmgr("stop", "d", "-q", "-m", "immediate", env=env)


def test_init_with_a_read_only_template_cache(ops_dir: Path) -> None:
    """The template cache is a cache: one that cannot be written made the init fail
    ("cannot create the directory CACHE/templates: Read-only file system")."""
    cache = ops_dir / "cache"
    cache.mkdir(mode=0o700)
    with read_only(cache):
        _init_uses_no_cache(ops_dir, cache)


def test_init_with_a_full_template_cache(ops_dir: Path, full_fs: Path) -> None:
    """A full cache: the template's build failed half-way ("cannot write
    CACHE/templates/KEY.json: No space left on device"); now the init goes on without it,
    and leaves nothing in the cache but its (empty) directories and lock."""
    _init_uses_no_cache(ops_dir, full_fs / "cache")
    left = sorted(str(p.relative_to(full_fs)) for p in full_fs.rglob("*") if p.is_file())
    assert [p for p in left if not p.endswith((".lock", "binaries.json"))] == ["filler"]


@pytest.fixture
def placed(ops_dir: Path, template: Path) -> Iterator[Inst]:
    """A running instance with a snapshot s1, in a directory of its own (``w``)."""
    from tests.helpers import copy_datadir

    datadir = copy_datadir(template, ops_dir / "w" / "data")
    it = Inst("dev", datadir)
    try:
        it.ok("start", "-q", "--init", "-d", str(datadir), "--name", "dev", "--port", "auto")
        it.sql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        it.ok("snapshot", "dev", "s1", "-q")
        it.sql("INSERT INTO t VALUES (-1)")
        yield it
    finally:
        it.pgmgr("stop", "--all", "-m", "immediate", "-q")


def test_restore_and_branch_in_a_directory_they_cannot_rename_in(placed: Inst) -> None:
    """The restored copy is swapped in, the branch renamed in, in the data directory's
    parent: one the user cannot write made each copy everything, stop the server, then
    fail with "Permission denied: data" (relative to the directory's fd). Now they refuse
    first."""
    parent = placed.datadir.parent
    pid = placed.pid()
    with read_only(parent):
        for args, what in ((("restore", "dev", "s1", "--yes"), "restore 'dev'"),
                           (("branch", "dev", "b1"), f"create {parent / 'b1'}")):  # fmt: skip
            proc = placed.pgmgr(*args)
            assert proc.returncode == 1, proc.stderr
            line = error_lines(proc.stderr)[0]
            assert line.startswith(f"Error: cannot {what}: pgmgr cannot write in {parent} ("), line
            assert line.endswith("; nothing was changed"), line
    assert placed.pid() == pid  # never stopped
    assert placed.sql("SELECT count(*) FROM t WHERE x = -1") == "1"
    assert not (parent / "b1").exists()


def test_snapshot_on_a_filesystem_gone_read_only(placed: Inst) -> None:
    """As root: the data directory's filesystem read-only (remounted so after an error,
    say). The snapshot stopped the server, failed to make its copy, and could not start it
    again ("Read-only file system: DATADIR/.s.PGSQL.PORT.lock"): left stopped. As a user,
    a store without write permission: the stop and start were for nothing."""
    pid = placed.pid()
    where = placed.datadir.parent if os.geteuid() == 0 else placed.store
    with read_only(where):
        proc = placed.pgmgr("snapshot", "dev", "s2")
    assert proc.returncode == 1, proc.stderr
    line = error_lines(proc.stderr)[0]
    assert line.startswith(f"Error: cannot snapshot 'dev': pgmgr cannot write in {placed.store} (")
    assert line.endswith("; nothing was changed"), line
    assert placed.pid() == pid
    assert [s["snapshot"] for s in placed.snaps()] == ["s1"]


def test_upgrade_with_a_temporary_directory_the_server_user_cannot_write(placed: Inst) -> None:
    """pg_upgrade's socket directory is made as the server user: in a temporary directory
    it cannot write (root's own, e.g. pam_tmpdir's /tmp/user/0) it failed ("Permission
    denied: TMP/pgmgr-up-PID-x"); now it is made in /tmp then."""
    from tests.helpers import run_pgmgr

    if os.geteuid() != 0:
        pytest.skip("as a user, tempfile passes over a temporary directory it cannot write")
    tmp = placed.datadir.parent / "tmp"
    tmp.mkdir(mode=0o500)
    try:
        proc = run_pgmgr("upgrade", "dev", "-v", "18", "--yes", env={"TMPDIR": str(tmp)})
    finally:
        tmp.chmod(0o700)
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(tmp) == []
    assert placed.record()["major"] == "18" and placed.state() == "running"


INITDB_DISK_FULL = """\
running bootstrap script ... 2026-11-26 11:55:47.009 UTC [15635] FATAL:  could not extend \
file "base/1/2691": No space left on device
2026-11-26 11:55:47.009 UTC [15635] HINT:  Check free disk space.
2026-11-26 11:55:47.009 UTC [15635] PANIC:  cannot abort transaction 1, it was already committed
Aborted
child process exited with exit code 134
initdb: removing data directory "/d/x"
"""


def test_initdb_on_a_full_disk_says_the_fatal_line() -> None:
    """initdb's own output on a full tmpfs: the PANIC that follows the cause was shown."""
    from pgmgr.core.errors import CommandFailed

    assert str(CommandFailed(["/usr/lib/postgresql/15/bin/initdb"], 1, INITDB_DISK_FULL)) == (
        'initdb failed with exit code 1: FATAL:  could not extend file "base/1/2691": '
        "No space left on device"
    )


def test_init_on_a_full_disk(ops_dir: Path) -> None:
    """A template copy that fills the disk named its two internal paths ("cannot copy
    /proc/self/fd/5/KEY/base/1/2838 -> DIR/.pgmgr-init-PID/data/base/1/2838"); an initdb
    said "PANIC: cannot abort transaction 1". Neither leaves anything."""
    from tests.helpers import run_pgmgr

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    env = {"PGMGR_NO_TEMPLATE": None}
    assert run_pgmgr("init", "-q", "-d", str(ops_dir / "warm"), "-v", "15", env=env).returncode == 0
    fs = ops_dir / "fs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m,mode=0755", "tmpfs", str(fs)],
                   check=True)  # fmt: skip
    try:
        proc = run_pgmgr("init", "-q", "-d", str(fs / "d"), "-v", "15", env=env)
        assert proc.returncode == 1, proc.stderr
        assert error_lines(proc.stderr)[0] == (
            f"Error: not enough disk space for the data directory {fs / 'd'}: the filesystem "
            f"of {fs} filled up during the copy; nothing was changed"
        )
        proc = run_pgmgr("init", "-q", "-d", str(fs / "d"), "-v", "15",
                         env={"PGMGR_NO_TEMPLATE": "1"})  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        line = error_lines(proc.stderr)[0]
        assert line.startswith("Error: initdb failed with exit code 1: FATAL: "), line
        assert os.listdir(fs) == []
    finally:
        subprocess.run(["umount", str(fs)], check=True)


def test_cache_clear_on_a_read_only_cache(ops_dir: Path) -> None:
    """It said "Read-only file system: KEY.spare -> .KEY.tmp-trash-PID" (names relative to
    the user's part of the cache)."""
    import fcntl

    from tests.helpers import run_pgmgr

    cache = ops_dir / "cache"
    env = {"PGMGR_CACHE_DIR": str(cache), "PGMGR_NO_TEMPLATE": None}
    assert run_pgmgr("init", "-q", "-d", str(ops_dir / "d"), "-v", "15", env=env).returncode == 0
    (user_dir,) = (cache / "templates").glob("u*")
    for lock in (cache / "templates").glob("*.refill.lock"):  # the spare's refill: done
        with open(lock) as f:
            fcntl.flock(f, fcntl.LOCK_EX)
    with read_only(cache if os.geteuid() == 0 else user_dir):
        proc = run_pgmgr("cache", "clear", env=env)
    assert proc.returncode == 1, proc.stderr
    line = error_lines(proc.stderr)[0]
    assert line.startswith(f"Error: cannot remove {user_dir}/pg15"), line
    why = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert line.endswith(f": {why}"), line


def test_delete_a_snapshot_in_a_read_only_store(placed: Inst) -> None:
    """It said "Read-only file system: STORE/s1 -> STORE/.tmp-delete-XXXX" (its work name)."""
    with read_only(placed.store):
        proc = placed.pgmgr("snapshot", "dev", "s1", "--delete")
    why = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert error_lines(proc.stderr) == [f"Error: cannot delete {placed.store / 's1'}: {why}"]
    assert proc.returncode == 1
    assert [s["snapshot"] for s in placed.snaps()] == ["s1"]


def test_init_into_an_empty_directory_on_a_read_only_filesystem(ops_dir: Path) -> None:
    """As root, an empty root-owned data directory is handed over to the server user: on
    a read-only filesystem that said "Read-only file system" and nothing else."""
    from tests.helpers import run_pgmgr

    if os.geteuid() != 0:
        pytest.skip("only root hands a directory over to the server user")
    place = ops_dir / "w"
    (place / "d").mkdir(parents=True)
    with read_only(place):
        proc = run_pgmgr("init", "-q", "-d", str(place / "d"), "-v", "15")
    assert error_lines(proc.stderr) == [
        f"Error: cannot change the owner of {place / 'd'}: Read-only file system"
    ]
    assert os.listdir(place / "d") == []
