"""One data directory registered twice: by root and by its server user, each in their own
registry (here: two state directories of one OS user, which is the same to pgmgr). Each
pgmgr's instance lock is in its own state directory, so the two do not wait for each other
there; they share the snapshot store and its lock."""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import copy_datadir, pgmgr_argv
from tests.pause import Paused
from tests.snap.conftest import Inst


@pytest.fixture
def twice(ops_dir: Path, template: Path) -> Iterator[tuple[Inst, Inst]]:
    """A running instance 'dev' with a table t (1000 rows) and a snapshot s1, and the same
    data directory registered as 'other' in a second registry."""
    datadir = copy_datadir(template, ops_dir / "w" / "data")
    dev = Inst("dev", datadir)
    state2 = ops_dir / "state2"
    other = Inst("other", datadir, env={"PGMGR_STATE_DIR": str(state2)})
    try:
        dev.ok("start", "-q", "--init", "-d", str(datadir), "--name", "dev", "--port", "auto")
        dev.sql("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000)")
        dev.ok("snapshot", "dev", "s1", "-q")
        other.ok("init", "-q", "-d", str(datadir), "--name", "other")
        yield dev, other
    finally:
        dev.pgmgr("stop", "--all", "-m", "immediate", "-q")
        other.pgmgr("stop", "--all", "-m", "immediate", "-q")


def hooks(ops_dir: Path) -> Path:
    path = ops_dir / "hooks"
    path.mkdir(exist_ok=True)
    path.chmod(0o777)
    return path


def test_a_branch_from_a_snapshot_holds_the_store_against_a_delete(
    twice: tuple[Inst, Inst], ops_dir: Path
) -> None:
    """``branch --from SNAP`` read the source's store without its lock: a ``snapshot
    --delete`` (or a restore's sweep) by the pgmgr of the other registration removed the
    snapshot under the copy. Now the branch holds the store (shared) while it copies, and
    the delete waits for it."""
    dev, other = twice
    run = Paused(hooks(ops_dir), "branch-from-snapshot", "branch", "dev", "b1", "--from", "s1")
    delete = None
    try:
        run.reached()
        fd = os.open(dev.store, os.O_RDONLY | os.O_DIRECTORY)
        try:  # what a delete, a restore or a snapshot takes: refused while the copy runs
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        delete = subprocess.Popen(
            pgmgr_argv("snapshot", "other", "s1", "--delete"),
            env={**os.environ, **other.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        done = run.go()
        if delete is not None:
            _, err = delete.communicate(timeout=60)
    assert done.returncode == 0, done.stderr
    assert dev.sql("SELECT count(*) FROM t", "b1") == "1000"
    assert delete is not None and delete.returncode == 0, err
    assert "s1" not in os.listdir(dev.store)
