"""As root, the temporary directories a killed run left for a server user other than
``postgres`` (a killed upgrade's socket dir, import's archive copy: ``pgmgr-<what>-<pid>-*``,
that user's) were swept only by the next upgrade or import for that very user: ``pgmgr
run`` sweeps root's and ``postgres``'s. Now the start of one of that user's instances
sweeps them; another user's directory of such a name stays."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tests.helpers import dead_pid
from tests.pause import ok
from tests.reliability.test_multiuser_init import (  # noqa: F401
    OsUser,
    attacker,
    victim,
    victim_db,
)

from .conftest import Inst, needs_root, pgmgr

pytestmark = needs_root


def left_by_a_killed_run(user: OsUser, prefix: str, where: str | None = None) -> Path:
    """``pgmgr-<what>-<dead pid>-*`` of ``user`` in the temp dir (or ``where``), with a
    file in it."""
    path = Path(where or tempfile.gettempdir()) / f"{prefix}{dead_pid()}-abc"
    user.run(
        "import os, sys; os.mkdir(sys.argv[1], 0o700); open(sys.argv[1] + '/f', 'w').write('x')",
        str(path),
    )
    return path


def test_a_server_users_leftovers_go_with_the_next_start(
    victim_db: tuple[Inst, str],  # noqa: F811
    victim: OsUser,  # noqa: F811
    attacker: OsUser,  # noqa: F811
) -> None:
    inst, _ = victim_db
    assert inst.datadir.stat().st_uid == victim.uid
    Path(tempfile.gettempdir()).chmod(0o1777)  # as /tmp: every user makes its dirs there
    theirs = left_by_a_killed_run(victim, "pgmgr-up-")
    copy = left_by_a_killed_run(victim, "pgmgr-imp-")
    others = left_by_a_killed_run(attacker, "pgmgr-up-")
    ok(pgmgr("start", "victim-prod", "-q"))  # running already: the sweep all the same
    assert not theirs.exists() and not copy.exists()
    assert (others / "f").read_text() == "x"  # not a server user of this instance: kept
    ok(pgmgr("stop", "victim-prod", "-q"))
    assert os.path.isdir(inst.datadir)


def test_a_killed_upgrades_socket_dir_in_tmp_goes_too(
    victim_db: tuple[Inst, str],  # noqa: F811
    victim: OsUser,  # noqa: F811
) -> None:
    """Root's temp dir is private (``TMPDIR=/tmp/user/0`` with pam_tmpdir; here the test's,
    0755): an upgrade makes its socket dir, as the server user, in /tmp instead
    (``sockets.temp_base_for``), where no sweep looked under such a TMPDIR, not even the
    next upgrade's."""
    st = Path(tempfile.gettempdir()).stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o755)  # the server user cannot write it
    left = left_by_a_killed_run(victim, "pgmgr-up-", "/tmp")
    try:
        ok(pgmgr("start", "victim-prod", "-q"))
        assert not left.exists()
    finally:
        shutil.rmtree(left, ignore_errors=True)
