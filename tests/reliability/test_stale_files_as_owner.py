"""As root, a start removes what a killed server of the instance left (its
``postmaster.pid``, its socket's ``.lock`` and the socket) by path. Where the data directory
is in the server user's own directory, that user could swap it for a symlink to another
user's directory between the check and the removal: root then removed the other cluster's
live ``postmaster.pid`` (letting a second postmaster in) or socket lock. They are removed as
the server user now: through the symlink, only what that user may remove."""

from __future__ import annotations

import socket
import stat
import subprocess
import time
from pathlib import Path

from tests.pause import Paused, ok
from tests.reliability.test_multiuser_init import (  # noqa: F401
    OsUser,
    attacker,
    swap_for_symlink,
    victim,
    victim_db,
)

from .conftest import Inst, InstFactory, needs_root, one_error, pgmgr

pytestmark = needs_root


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def attackers_instance(attacker: OsUser) -> Path:  # noqa: F811
    datadir = attacker.home / "pg" / "data"
    ok(pgmgr("init", "-d", str(datadir), "--name", "atk", "-q"))
    assert datadir.stat().st_uid == attacker.uid
    return datadir


def test_a_stale_pidfile_is_removed_as_the_server_user(
    attacker: OsUser,  # noqa: F811
    victim_db: tuple[Inst, str],  # noqa: F811
    hooks: Path,
) -> None:
    inst, canary = victim_db
    datadir = attackers_instance(attacker)
    text = f"{dead_pid()}\n{datadir}\n{int(time.time())}\n5432\n{datadir}\n*\n0 0\nready\n"
    attacker.run("import sys; open(sys.argv[1], 'w').write(sys.argv[2])",
                 str(datadir / "postmaster.pid"), text)  # fmt: skip
    with Paused(hooks, "stale-pidfile", "start", "atk", "--port", "auto") as paused:
        paused.reached()
        swap_for_symlink(attacker, datadir, inst.datadir)
        run = paused.go()
    assert "Permission denied" in one_error(run)  # the attacker's own start fails
    assert (inst.datadir / "postmaster.pid").exists()  # root removed the live one's
    assert inst.has_canary(canary)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_stale_socket_lock_is_removed_as_the_server_user(
    attacker: OsUser,  # noqa: F811
    victim: OsUser,  # noqa: F811
    hooks: Path,
) -> None:
    port = free_port()
    datadir = attackers_instance(attacker)
    lock = f".s.PGSQL.{port}.lock"
    attacker.run("import sys; open(sys.argv[1], 'w').write(sys.argv[2])",
                 str(datadir / lock), f"{dead_pid()}\n{datadir}\n")  # fmt: skip
    theirs = victim.mkdir(victim.home / "sock")
    victim.run("import sys; open(sys.argv[1], 'w').write('live')", str(theirs / lock))
    with Paused(hooks, "stale-socket-lock", "start", "atk", "--port", str(port)) as paused:
        paused.reached()
        swap_for_symlink(attacker, datadir, theirs)
        run = paused.go()
    assert "Permission denied" in one_error(run)  # the attacker's own start fails
    assert (theirs / lock).read_text() == "live"  # root removed it


def test_a_run_dir_swapped_for_a_symlink_is_never_written_through(
    work: Path,
    hooks: Path,
    attacker: OsUser,  # noqa: F811
    victim: OsUser,  # noqa: F811
) -> None:
    """As root, ``pgmgr run`` made its directory in the temp dir, then wrote its owner
    file in it and chmodded it 0755 by path: in a temp dir another user can write (not
    sticky), that user swapped it for a symlink meanwhile, and root chmodded and wrote in
    the victim's private directory."""
    shared = work / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    secret = victim.mkdir(victim.home / "secret")
    args = ("run", "-q", "--", "true")
    with Paused(hooks, "run-dir-made", *args, env={"TMPDIR": str(shared)}) as paused:
        paused.reached()
        (base,) = shared.glob("pgmgr-run-*")
        swap_for_symlink(attacker, base, secret)
        run = paused.go()
    assert run.returncode != 0, str(run)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o700  # root chmodded it 0755
    assert not (secret / "pgmgr.owner").exists()  # root wrote it


def test_a_settings_check_dir_swapped_for_a_symlink_is_never_written_through(
    work: Path,
    hooks: Path,
    attacker: OsUser,  # noqa: F811
    victim: OsUser,  # noqa: F811
) -> None:
    """``start --init -c ...`` made ``pgmgr-cfg-<pid>-*`` in the temp dir, then wrote its
    ``postgresql.conf`` and chowned both to the server user by path: swapped for a symlink
    meanwhile, root wrote in the victim's private directory and gave it to ``postgres``."""
    shared = work / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    secret = victim.mkdir(victim.home / "secret")
    args = ("start", "--init", "-d", str(work / "db"), "--version", "15", "--port", "auto")
    args += ("-c", "work_mem=8MB")
    with Paused(hooks, "settings-dir-made", *args, env={"TMPDIR": str(shared)}) as paused:
        paused.reached()
        (made,) = shared.glob("pgmgr-cfg-*")
        swap_for_symlink(attacker, made, secret)
        assert "Traceback" not in paused.go().stderr
    pgmgr("stop", "-d", str(work / "db"), "-m", "immediate")
    assert secret.stat().st_uid == victim.uid  # root gave it to postgres
    assert not (secret / "postgresql.conf").exists()  # root wrote it


def test_an_import_copy_swapped_for_a_symlink_is_never_written_through(
    cluster: InstFactory,
    work: Path,
    hooks: Path,
    attacker: OsUser,  # noqa: F811
    victim: OsUser,  # noqa: F811
) -> None:
    """As root, an import copies the archive into a ``pgmgr-imp-<pid>-*`` of the temp dir
    and gives it to the server user: by path, a symlink swapped in for it got root to copy
    into, and chown to postgres, the victim's private directory."""
    inst = cluster("db")
    ok(inst.start("--port", "auto"))
    bundle = work / "bundle"
    ok(pgmgr("export", "db", str(bundle)))
    ok(inst.stop())
    shared = work / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    secret = victim.mkdir(victim.home / "secret")
    args = ("import", str(bundle), "-d", str(work / "new"), "-v", "15", "--name", "new")
    with Paused(hooks, "import-dir-made", *args, env={"TMPDIR": str(shared)}) as paused:
        paused.reached()
        (made,) = shared.glob("pgmgr-imp-*")
        swap_for_symlink(attacker, made, secret)
        assert "Traceback" not in paused.go().stderr
    pgmgr("stop", "new", "-m", "immediate")
    assert secret.stat().st_uid == victim.uid  # root gave it to postgres
    assert list(secret.iterdir()) == []  # root copied the archive into it
