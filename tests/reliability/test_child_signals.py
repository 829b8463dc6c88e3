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

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pgmgr.core import launch, privileges, process, server
from pgmgr.core.versions import Installation
from tests.pause import Paused
from tests.reliability.conftest import InstFactory, pgmgr
from tests.snap.test_signal_review import caller_handler

CALLER_IGNORES = (signal.SIGQUIT, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
CALLER_BLOCKS = (signal.SIGUSR2, signal.SIGALRM, signal.SIGCHLD)


def _signals(pid: int, field: str) -> set[int]:
    """The signals of ``/proc/PID/status``'s ``field`` (SigIgn, SigBlk)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            bits = int(line.split()[1], 16)
            return {s for s in range(1, 65) if bits >> (s - 1) & 1}
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _inherits_nothing(pid: int, what: str, samples: int = 1) -> None:
    """``pid`` ignores none of the caller's ignored signals and blocks none of its blocked
    ones, in one of ``samples`` looks 10 ms apart: a program at work blocks and ignores
    some for a moment itself (initdb's posix_spawn and system() calls)."""
    for _ in range(samples):
        ignored = _signals(pid, "SigIgn") & set(CALLER_IGNORES)
        blocked = _signals(pid, "SigBlk") & set(CALLER_BLOCKS)
        if not ignored and not blocked:
            return
        time.sleep(0.01)
    names = sorted(signal.Signals(s).name for s in ignored | blocked)
    raise AssertionError(f"{what} inherited the caller's {names}")


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
                _inherits_nothing(initdb, "initdb", samples=50)
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


def test_an_immediate_stop_reaches_a_postmaster_frozen_before_its_handlers(
    cluster: InstFactory,
) -> None:
    """The reported case: a caller that ignores SIGQUIT (here this process, as a library
    caller), a postmaster frozen (SIGSTOP) before it set its own handlers, which takes
    milliseconds after the exec (the dynamic loader): the immediate stop's SIGQUIT was
    discarded, the server went on to start once continued, and 'pgmgr stop -m immediate'
    waited for its whole timeout. With SIGQUIT at its default, it ends there."""
    inst = cluster("frozen")
    rec = inst.record()
    install = Installation(rec["major"], rec["version"], Path(rec["bindir"]), "record")
    su = privileges.server_user(inst.datadir, rec.get("server_user"))
    argv = server.postgres_argv(
        install, inst.datadir, host="127.0.0.1", port=server.free_port("127.0.0.1"),
        socket_dir=inst.datadir, settings={},
    )  # fmt: skip
    with caller_handler(signal.SIGQUIT, signal.SIG_IGN):
        for _ in range(50):  # until the freeze lands before the handler (first try, usually)
            child = server.spawn(argv, inst.datadir.parent / "spawn.log", su)
            os.kill(child.pid, signal.SIGSTOP)
            early = signal.SIGQUIT not in _signals(child.pid, "SigCgt")
            launch.send_stop(child.pid, "immediate")  # SIGQUIT, then SIGCONT
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(child.pid, signal.SIGQUIT)  # its handler is set by now
                child.wait(timeout=30)
                raise AssertionError("the SIGQUIT was lost: the server went on") from None
            if early:
                return
    pytest.skip("never froze the postmaster before its handlers were set")
