"""PostgreSQL programs start with every signal at its default action and none blocked,
whatever the caller of pgmgr ignores or blocks (pgmgr.core.sigdefault).

An ignored signal and the signal mask survive exec: a caller's ``trap '' QUIT TERM INT HUP``
(or ``nohup``, or a Python caller's SIG_IGN) reached initdb, pg_upgrade, pg_basebackup and
postgres. A postmaster frozen before it set its own handlers (``start --timeout`` of a
server that hangs in start-up, a test's SIGSTOP) then lost the SIGQUIT of an immediate stop
(an ignored signal is discarded when sent), which waited for its whole timeout; initdb ran
with the caller's signals blocked. Checked where the exec happens: the child pauses between
the fork and the exec (the pause ``start-exec``), and initdb right after its spawn (the
pause ``run-initdb``), through ``/proc/PID/status``.
"""

from __future__ import annotations

import signal
from pathlib import Path

from pgmgr.core import process
from tests.pause import Paused
from tests.reliability.conftest import pgmgr

CALLER_IGNORES = (signal.SIGQUIT, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
CALLER_BLOCKS = (signal.SIGUSR2, signal.SIGALRM, signal.SIGCHLD)


def _signals(pid: int, field: str) -> set[int]:
    """The signals of ``/proc/PID/status``'s ``field`` (SigIgn, SigBlk)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            bits = int(line.split()[1], 16)
            return {s for s in range(1, 65) if bits >> (s - 1) & 1}
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _inherits_nothing(pid: int, what: str) -> None:
    ignored = _signals(pid, "SigIgn") & set(CALLER_IGNORES)
    blocked = _signals(pid, "SigBlk") & set(CALLER_BLOCKS)
    names = sorted(signal.Signals(s).name for s in ignored | blocked)
    assert not ignored and not blocked, f"{what} inherited the caller's {names}"


def _disarm(hooks: Path, step: str) -> None:
    for name in (step, f"{step}.reached"):
        (hooks / name).unlink(missing_ok=True)
    (hooks / f"{step}.go").touch()  # one waiting there goes on


def test_initdb_and_postgres_start_with_default_signals(work: Path, hooks: Path) -> None:
    datadir = work / "data"
    (hooks / "start-exec").touch()  # the second pause, armed ahead
    try:
        with Paused(
            hooks,
            "run-initdb",
            *("start", "-d", str(datadir), "--init", "--no-template", "-v", "15", "-p", "auto"),
            ignore=CALLER_IGNORES,
            block=CALLER_BLOCKS,
        ) as run:
            try:
                run.reached()
                (initdb,) = [
                    p
                    for p in process.children(run.proc.pid)
                    if "initdb" in " ".join(process.cmdline(p))
                ]
                _inherits_nothing(initdb, "initdb")
                (hooks / "run-initdb.go").touch()
                run.reached_also("start-exec")
                # the forked child, between its set-up and the exec of postgres
                child = int((hooks / "start-exec.reached").read_text())
                _inherits_nothing(child, "postgres (at its exec)")
            finally:  # a failure: the start goes on at once (it ignores SIGTERM here)
                _disarm(hooks, "start-exec")
            done = run.go()
            assert done.returncode == 0, str(done)
        postmaster = process.PidFile.read(datadir)
        assert postmaster is not None
        _inherits_nothing(postmaster.pid, "the postmaster")
    finally:
        (hooks / "start-exec.go").unlink(missing_ok=True)
        pgmgr("stop", "-d", str(datadir), "-m", "immediate")
