"""A second Ctrl-C while pgmgr cleans up after the first (or after a failure): people press
it twice. ``start --init`` then left what it had just made: the clean-up (stop the server it
spawned, remove the data directory it initialized, its record, log and socket directory)
was cut short, and an initialized, registered instance stayed that the user had cancelled.
The clean-up is short and bounded: signals are held while it runs, then a Ctrl-C held
during the clean-up of a failure says "Interrupted" (130) after the failure: dropped,
the command exited 1 as if nobody had pressed it. The test-only pause holds pgmgr inside it."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from pgmgr.core import process
from tests.helpers import postgres_pids_under, postmasters_under
from tests.pause import Paused

BAD_LIB = "shared_preload_libraries=pgmgr_no_such_lib"


def _made_nothing(work: Path, rel_isolation: Path) -> None:
    assert not (work / "new").exists()
    assert sorted(os.listdir(rel_isolation / "instances")) == []
    logs = rel_isolation / "logs"
    assert not logs.is_dir() or os.listdir(logs) == []
    assert not [n for n in os.listdir(os.environ["TMPDIR"]) if n.startswith("pgmgr-")]
    deadline = time.monotonic() + 30
    while postgres_pids_under(work) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not postgres_pids_under(work)


def _second_signal(run: Paused, hooks: Path, step: str, held: int | None = None) -> None:
    """Interrupt ``run`` at the armed ``step`` it waits at; a pgmgr that holds the signal
    goes on once told to (``held``, a process stopped meanwhile, goes on first)."""
    deadline = time.monotonic() + 60
    while not (hooks / f"{step}.reached").exists():
        assert run.proc.poll() is None, run.proc.communicate()
        assert time.monotonic() < deadline, f"pgmgr never reached {step}"
        time.sleep(0.01)
    run.proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    if held is not None:
        os.kill(held, signal.SIGCONT)
    (hooks / f"{step}.go").touch()


def test_ctrl_c_while_a_failed_start_init_cleans_up(
    work: Path, rel_isolation: Path, hooks: Path
) -> None:
    """The start fails (a preload library that does not exist), and a Ctrl-C arrives while
    the init is undone: the undo completes, nothing is left, and the command says why the
    start failed and that it was interrupted (130)."""
    run = Paused(hooks, "init-undo", "start", "--init", "-d", str(work / "new"), "-p", "auto",
                 "-c", BAD_LIB)  # fmt: skip
    _second_signal(run, hooks, "init-undo")
    done = run.go()
    assert done.returncode == 130 and done.stderr.endswith("Interrupted\n"), str(done)
    assert "pgmgr_no_such_lib" in done.stderr, str(done)
    _made_nothing(work, rel_isolation)


def test_ctrl_c_twice_during_start_init(work: Path, rel_isolation: Path, hooks: Path) -> None:
    """The first Ctrl-C once the server is spawned, the second while pgmgr stops it (the
    postmaster is held stopped meanwhile, so it is still there when pgmgr looks):
    'Interrupted' (130), and nothing is left."""
    (hooks / "start-cancelled").touch()
    run = Paused(hooks, "start-spawned", "start", "--init", "-d", str(work / "new"),
                 "-p", "auto")  # fmt: skip
    run.reached()
    # pgmgr's own child: by now the postmaster may have started its processes too, which
    # postgres_pids_under(work) lists with it (a test late by 0.2 s failed to unpack them)
    (postmaster,) = [p for p in process.children(run.proc.pid) if p in postmasters_under(work)]
    os.kill(postmaster, signal.SIGSTOP)
    try:
        run.proc.send_signal(signal.SIGINT)
        _second_signal(run, hooks, "start-cancelled", held=postmaster)
    finally:
        os.kill(postmaster, signal.SIGCONT)
    done = run.go()
    assert done.returncode == 130, str(done)
    _made_nothing(work, rel_isolation)


def test_ctrl_c_again_while_a_server_will_not_stop(
    work: Path, rel_isolation: Path, hooks: Path
) -> None:
    """The first Ctrl-C once the server is spawned; the server does not heed the fast stop
    (held stopped here, as a start-up that fsyncs a large data directory after a crash
    does not for minutes). pgmgr waited 30 s for it, deaf to a second Ctrl-C, then left
    it running unrecorded (and the data directory with it). The second Ctrl-C makes the
    stop immediate: 'Interrupted' (130), and nothing is left."""
    (hooks / "start-cancelled").touch()
    run = Paused(hooks, "start-spawned", "start", "--init", "-d", str(work / "new"),
                 "-p", "auto")  # fmt: skip
    run.reached()
    # pgmgr's own child, as above: postgres_pids_under(work) also lists the processes it may
    # have started by now (failed to unpack under load)
    (postmaster,) = [p for p in process.children(run.proc.pid) if p in postmasters_under(work)]
    pidfile = work / "new" / "postmaster.pid"
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text().startswith(f"{postmaster}\n")):
        assert time.monotonic() < deadline, "the server never wrote postmaster.pid"
        time.sleep(0.01)
    os.kill(postmaster, signal.SIGSTOP)
    try:
        run.proc.send_signal(signal.SIGINT)
        _second_signal(run, hooks, "start-cancelled")
        done = run.go()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(postmaster, signal.SIGCONT)
    assert done.returncode == 130, str(done)
    _made_nothing(work, rel_isolation)
