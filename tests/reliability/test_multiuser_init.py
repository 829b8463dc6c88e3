"""Issue 10, the init path: root runs pgmgr for two ordinary OS users, one of them hostile.

Each attack is driven through its window by the test-only pause (``PGMGR_TEST_PAUSE``,
:mod:`pgmgr.core.testhook`): pgmgr stops at the vulnerable step, the attacker (a real OS
user this test creates, acting through its own processes) does its swap, then pgmgr goes on.
Every test asserts the pause was reached, so each run drives each race through its window
once. Harm is checked where it would show: the victim's rows, files and running server,
a root-owned file, the settings of other users' instances.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgmgr.core import process
from tests.helpers import run_pgmgr
from tests.pause import Paused, ok

from .conftest import Inst, needs_root, pgmgr

pytestmark = [
    needs_root,
    pytest.mark.skipif(
        not Path("/usr/lib/postgresql/15/bin/postgres").exists(), reason="needs PostgreSQL 15"
    ),
]


@dataclass
class OsUser:
    name: str
    uid: int
    gid: int
    home: Path

    def run(self, code: str, *args: str) -> str:
        """Run Python ``code`` as this user (its own process: what the attacker can do)."""
        proc = subprocess.run(
            ["/usr/bin/python3", "-c", code, *args],
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "HOME": str(self.home)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def mkdir(self, path: Path) -> Path:
        self.run("import os, sys; os.makedirs(sys.argv[1], mode=0o700)", str(path))
        return path


@contextlib.contextmanager
def os_user(work: Path, role: str) -> Iterator[OsUser]:
    name = f"pgm{role}{uuid.uuid4().hex[:6]}"
    home = work / "home" / name
    home.parent.mkdir(mode=0o755, exist_ok=True)
    subprocess.run(
        ["useradd", "--create-home", "--home-dir", str(home), "--user-group", name],
        check=True,
        capture_output=True,
    )
    pw = pwd.getpwnam(name)
    home.chmod(0o755)  # as Debian's default: the user's server must reach its data dir
    try:
        yield OsUser(name, pw.pw_uid, pw.pw_gid, home)
    finally:
        subprocess.run(["userdel", "--force", name], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def attacker(work: Path) -> Iterator[OsUser]:
    with os_user(work, "atk") as u:
        yield u


@pytest.fixture
def victim(work: Path) -> Iterator[OsUser]:
    with os_user(work, "vic") as u:
        yield u


def files_under(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.fixture
def victim_db(victim: OsUser) -> Iterator[tuple[Inst, str]]:
    """The victim's running instance in its home, with a committed row."""
    datadir = victim.home / "pg" / "data"
    ok(pgmgr("init", "-d", str(datadir), "--name", "victim-prod", "-q"))
    assert datadir.stat().st_uid == victim.uid, "a data dir in a user's home is that user's"
    ok(pgmgr("start", "victim-prod", "--port", "auto", "-q"))
    inst = Inst("victim-prod", datadir)
    try:
        yield inst, inst.commit_canary()
    finally:
        pgmgr("stop", "victim-prod", "-m", "immediate")


def assert_victim_unharmed(inst: Inst, canary: str, before: set[str]) -> None:
    pf = process.PidFile.read(inst.datadir)
    assert pf is not None and process.serves(pf.pid, inst.datadir, pf.start_time)
    assert inst.has_canary(canary)
    after = {str(p.relative_to(inst.datadir)) for p in inst.datadir.rglob("*")}
    assert before <= after, f"victim lost files: {sorted(before - after)[:5]}"
    assert not [n for n in after if "pgmgr-init" in n]


def swap_for_symlink(attacker: OsUser, target: Path, to: Path) -> None:
    attacker.run(
        "import os, sys; os.rename(sys.argv[1], sys.argv[1] + '.old'); "
        "os.symlink(sys.argv[2], sys.argv[1])",
        str(target),
        str(to),
    )


# --------------------------------------------------------------------------- attack 1


def test_symlink_swapped_in_during_template_copy_empties_nothing(
    attacker: OsUser, victim_db: tuple[Inst, str], hooks: Path
) -> None:
    inst, canary = victim_db
    before = {str(p.relative_to(inst.datadir)) for p in inst.datadir.rglob("*")}
    ok(pgmgr("init", "-d", str(attacker.mkdir(attacker.home / "warm")), "-q"))  # its template
    target = attacker.mkdir(attacker.home / "data")
    paused = Paused(hooks, "copy", "init", "-d", str(target))
    paused.reached()
    swap_for_symlink(attacker, target, inst.datadir)
    run = paused.go()
    assert run.returncode != 0, str(run)
    assert_victim_unharmed(inst, canary, before)
    os.unlink(target)  # the attacker's link; the next init of the dir works
    os.rename(f"{target}.old", target)
    ok(pgmgr("init", "-d", str(target), "-q"))
    assert (target / "PG_VERSION").is_file() and target.stat().st_uid == attacker.uid


def test_symlink_swapped_in_during_initdb_empties_nothing(
    attacker: OsUser, work: Path, hooks: Path
) -> None:
    precious = work / "srv-victim"
    precious.mkdir(mode=0o755)
    (precious / "keep.txt").write_text("root's file")
    (precious / "sub").mkdir()
    (precious / "sub" / "deep.txt").write_text("root's too")
    before = files_under(precious)
    target = attacker.mkdir(attacker.home / "data")
    paused = Paused(hooks, "initdb", "init", "-d", str(target), env={"PGMGR_NO_TEMPLATE": "1"})
    paused.reached()
    swap_for_symlink(attacker, target, precious)
    run = paused.go(timeout=120)
    assert run.returncode != 0, str(run)
    assert files_under(precious) == before


# --------------------------------------------------------------------------- attack 2


def replace_hba(attacker: OsUser, under: Path, how: str, dest: str = "") -> int:
    """As the attacker: replace every pg_hba.conf under ``under`` (the work dir included)
    by a FIFO or by a symlink to ``dest``; how many it replaced."""
    code = (
        "import os, sys\n"
        "n = 0\n"
        "for top, dirs, files in os.walk(sys.argv[1]):\n"
        "    if 'pg_hba.conf' in files:\n"
        "        p = os.path.join(top, 'pg_hba.conf'); os.unlink(p); n += 1\n"
        "        os.mkfifo(p) if sys.argv[2] == 'fifo' else os.symlink(sys.argv[3], p)\n"
        "print(n)\n"
    )
    return int(attacker.run(code, str(under), how, dest))


def test_a_fifo_for_pg_hba_never_blocks_pgmgr(attacker: OsUser, hooks: Path) -> None:
    ok(pgmgr("init", "-d", str(attacker.mkdir(attacker.home / "warm")), "-q"))
    target = attacker.mkdir(attacker.home / "data")
    paused = Paused(hooks, "hba", "init", "-d", str(target))
    paused.reached()
    assert replace_hba(attacker, target, "fifo") == 1
    run = paused.go(timeout=30)  # no writer ever opens the FIFO: pgmgr must not wait
    assert run.returncode != 0, str(run)
    assert not (target / "PG_VERSION").exists()
    ok(pgmgr("init", "-d", str(target), "-q"))  # the leftover is cleared, the init works


def test_a_symlink_for_pg_hba_is_never_written_through(
    attacker: OsUser, work: Path, hooks: Path
) -> None:
    rootonly = work / "rootonly"
    rootonly.mkdir(mode=0o755)
    victim_file = rootonly / "x"
    victim_file.write_text("host all all 127.0.0.1/32 trust\n")
    ok(pgmgr("init", "-d", str(attacker.mkdir(attacker.home / "warm")), "-q"))
    target = attacker.mkdir(attacker.home / "data")
    paused = Paused(hooks, "hba", "init", "-d", str(target))
    paused.reached()
    assert replace_hba(attacker, target, "symlink", str(victim_file)) == 1
    paused.go()
    assert victim_file.read_text() == "host all all 127.0.0.1/32 trust\n"
    assert victim_file.stat().st_uid == 0
    assert sorted(p.name for p in rootonly.iterdir()) == ["x"]


# --------------------------------------------------------------------------- attack 3


def plant_archive_command(attacker: OsUser, under: Path, marker: Path) -> int:
    code = (
        "import os, sys\n"
        "n = 0\n"
        "for top, dirs, files in os.walk(sys.argv[1]):\n"
        "    if 'postgresql.conf' in files:\n"
        "        with open(os.path.join(top, 'postgresql.conf'), 'a') as f:\n"
        "            f.write(\"\\narchive_mode = on\\narchive_command = 'touch %s'\\n\""
        " % sys.argv[2])\n"
        "        n += 1\n"
        "print(n)\n"
    )
    return int(attacker.run(code, str(under), str(marker)))


def test_a_template_poisoned_by_one_user_reaches_no_other(
    attacker: OsUser, victim: OsUser, work: Path, hooks: Path
) -> None:
    marker = work / "pwned"
    target = attacker.mkdir(attacker.home / "data")
    paused = Paused(hooks, "build", "init", "-d", str(target))  # the first build: empty cache
    paused.reached()
    assert plant_archive_command(attacker, target, marker) >= 1
    ok(paused.go())
    others = [work / "srv" / "pg" / "data", victim.home / "pg" / "data"]
    names = []
    for i, datadir in enumerate(others):
        names.append(f"other{i}")
        ok(pgmgr("init", "-d", str(datadir), "--name", names[-1], "-q"))
        assert "pwned" not in (datadir / "postgresql.conf").read_text()
    try:
        for name, datadir in zip(names, others, strict=True):
            ok(pgmgr("start", name, "--port", "auto", "-q"))
            inst = Inst(name, datadir)
            assert inst.sql("SHOW archive_mode") == [("off",)]
            inst.sql("SELECT pg_switch_wal()")
    finally:
        for name in names:
            pgmgr("stop", name)
    assert not marker.exists()
    assert ok(pgmgr("cache", "list", "--json")).json().__len__() == 3  # one per server user


# --------------------------------------------------------------------------- refused, common


def test_init_as_another_user_in_a_dir_the_attacker_controls_is_refused(
    attacker: OsUser, victim: OsUser
) -> None:
    target = attacker.home / "data"
    run = pgmgr("init", "-d", str(target), "--user", victim.name)
    assert run.returncode == 1, str(run)
    assert "another OS user" in run.stderr
    assert not target.exists()


def test_start_init_under_a_root_owned_parent_runs_as_postgres(work: Path) -> None:
    datadir = work / "srv" / "pg" / "data"
    try:
        ok(pgmgr("start", "-d", str(datadir), "--init", "--port", "auto", "-q"))
        pg = pwd.getpwnam("postgres")
        assert datadir.stat().st_uid == pg.pw_uid and datadir.stat().st_mode & 0o777 == 0o700
        assert (work / "srv" / "pg").stat().st_uid == 0, "parents made by root, as mkdir -p"
        assert not [p for p in datadir.iterdir() if "pgmgr-init" in p.name]
        pf = process.PidFile.read(datadir)
        assert pf is not None and Path(f"/proc/{pf.pid}").stat().st_uid == pg.pw_uid
    finally:
        pgmgr("stop", "-d", str(datadir))


def test_start_init_in_a_users_home_runs_as_that_user(victim: OsUser) -> None:
    datadir = victim.home / "pg" / "data"
    try:
        ok(pgmgr("start", "-d", str(datadir), "--init", "--port", "auto", "-q"))
        assert {p.lstat().st_uid for p in [datadir.parent, datadir, *datadir.rglob("*")]} == {
            victim.uid
        }
        pf = process.PidFile.read(datadir)
        assert pf is not None and Path(f"/proc/{pf.pid}").stat().st_uid == victim.uid
    finally:
        pgmgr("stop", "-d", str(datadir))


def test_run_as_root_works() -> None:
    proc = run_pgmgr("run", "--", "sh", "-c", 'psql -XAtc "SELECT 41 + 1"', timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "42"
