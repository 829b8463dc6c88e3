"""As root, a start removes what a killed server of the instance left (its
``postmaster.pid``, its socket's ``.lock`` and the socket) by path. Where the data directory
is in the server user's own directory, that user could swap it for a symlink to another
user's directory between the check and the removal: root then removed the other cluster's
live ``postmaster.pid`` (letting a second postmaster in) or socket lock. They are removed as
the server user now: through the symlink, only what that user may remove."""

from __future__ import annotations

import time
from pathlib import Path

from pgmgr.core import listen
from tests.helpers import dead_pid
from tests.pause import Paused, ok
from tests.reliability.test_multiuser_init import (  # noqa: F401
    OsUser,
    attacker,
    swap_for_symlink,
    victim,
    victim_db,
)

from .conftest import Inst, needs_root, one_error, pgmgr

pytestmark = needs_root


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


def test_a_stale_socket_lock_is_removed_as_the_server_user(
    attacker: OsUser,  # noqa: F811
    victim: OsUser,  # noqa: F811
    hooks: Path,
) -> None:
    port = listen.free_port("127.0.0.1")  # of this xdist worker's slice (tests/conftest.py)
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


# The same swap of a directory pgmgr makes in the temp dir (run, start --init -c, import)
# never happens as root: sweep.make_dir goes to /tmp when another user can write the temp
# dir (tests/ops/test_review_edges.py swaps it there); what is written in it goes through
# its O_NOFOLLOW fd too.
