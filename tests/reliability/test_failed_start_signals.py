"""Signals around a start that fails, or that is cancelled while postgres is spawned.

A start that fails (here a preload library that does not exist: postgres exits at once)
stops what it spawned and removes its socket directory with signals held, so that a
second Ctrl-C cannot cut that short. A signal held there was then dropped: the command
exited 1 with the start's error, as if nobody had pressed Ctrl-C (SIGTERM: nobody had
asked it to end), and ``pgmgr run`` returned 1 instead of 128 + the signal. Now it is
delivered once the clean-up is done. The test-only pause ``start-undo`` holds pgmgr in it.

Two Ctrl-C while postgres is spawned (both held until the child is known) counted as one:
the stop of the child that follows waited for a fast shutdown (up to 30 s, for a start-up
that does not heed it), and only a third made it immediate. The pause ``start-spawning``
holds pgmgr there, the postmaster frozen (SIGSTOP) as one that does not heed a fast stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from pgmgr.core import process
from tests.pause import Paused
from tests.reliability.conftest import InstFactory, pgmgr, wait_no_processes
from tests.reliability.test_interrupt_twice import BAD_LIB, _made_nothing


def _interrupt_at(run: Paused, sig: int, *, said: bool = True) -> int:
    """Send ``sig`` to ``run`` where it waits, let it go on; its exit code. Interrupted
    (130), it says both (``said``): why the start failed, then 'Interrupted'."""
    run.reached()
    run.proc.send_signal(sig)
    time.sleep(0.2)  # delivered (and held) before pgmgr goes on
    done = run.go()
    if done.returncode == 130 and said:
        lines = done.stderr.splitlines()
        assert lines[-1] == "Interrupted", str(done)
        (error,) = [ln for ln in lines if ln.startswith("Error:")]
        assert "pgmgr_no_such_lib" in error, str(done)
    else:  # ended by the signal, or pgmgr run's 128 + N (only that: the command's code)
        assert "Error:" not in done.stderr, str(done)
    return done.returncode


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_a_failed_start_cleans_up_is_not_dropped(
    sig: int, cluster: InstFactory, work: Path, hooks: Path
) -> None:
    """Ctrl-C, and SIGTERM (which a start takes like it): the start's error, then
    'Interrupted', 130, once the clean-up is done. Nothing left running."""
    inst = cluster("db")
    run = Paused(hooks, "start-undo", "start", "db", "-p", "auto", "-c", BAD_LIB)
    assert _interrupt_at(run, sig) == 130
    assert not wait_no_processes(work, timeout=30)
    state = inst.status().json()
    assert state["state"] == "stopped" and state["stopped_by"] is None, state
    assert not [n for n in os.listdir(os.environ["TMPDIR"]) if n.startswith("pgmgr-")]


def test_sigterm_while_a_failed_start_init_cleans_up_undoes_the_init(
    work: Path, rel_isolation: Path, hooks: Path
) -> None:
    """``start --init`` takes SIGTERM as Ctrl-C: delivered after the start's clean-up, a
    SIGTERM must not end the process before the init is undone."""
    run = Paused(hooks, "start-undo", "start", "--init", "-d", str(work / "new"), "-p", "auto",
                 "-c", BAD_LIB)  # fmt: skip
    assert _interrupt_at(run, signal.SIGTERM) == 130
    _made_nothing(work, rel_isolation)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_start_init_foreground_takes_sigterm_as_it_takes_ctrl_c(
    sig: int, work: Path, hooks: Path
) -> None:
    """In the foreground (a systemd unit) SIGTERM and Ctrl-C both ask for a stop, also
    while the init runs: the init completes, the server starts and is stopped cleanly,
    exit 0. (SIGTERM cancelled the start and undid the init there, exit 130, where a
    Ctrl-C in the same moment stopped a kept instance.)"""
    datadir = work / "fg"
    run = Paused(hooks, "init-built", "start", "--init", "--foreground", "-d", str(datadir),
                 "-p", "auto", "-q")  # fmt: skip
    run.reached()
    run.proc.send_signal(sig)
    time.sleep(0.2)  # delivered (and recorded) before pgmgr goes on
    done = run.go()
    assert done.returncode == 0, str(done)
    assert (datadir / "PG_VERSION").is_file()
    (rec,) = pgmgr("status", "--json").json()
    assert rec["state"] == "stopped" and rec["datadir"] == str(datadir), rec
    assert not wait_no_processes(work, timeout=30)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_pgmgr_run_says_the_signal_that_came_while_its_start_failed(
    sig: int, hooks: Path, rel_isolation: Path
) -> None:
    """``pgmgr run``: 128 + the signal, not the start's error (exit 1); the command never
    runs, and the temporary instance is removed."""
    run = Paused(hooks, "start-undo", "run", "-c", BAD_LIB, "--", "true")
    assert _interrupt_at(run, sig, said=False) == 128 + sig
    assert not [n for n in os.listdir(os.environ["TMPDIR"]) if n.startswith("pgmgr-")]


def test_a_second_ctrl_c_during_the_spawn_makes_the_stop_immediate(
    cluster: InstFactory, work: Path, hooks: Path
) -> None:
    """Two Ctrl-C while postgres is spawned, its postmaster not heeding a fast stop (held
    stopped): pgmgr stops it at once (immediate, SIGKILL after 5 s), 'Interrupted'. It
    waited 30 s for the fast stop first (a third Ctrl-C was needed to end that wait); the
    bound below is the functional claim (no 30 s wait), not a speed measurement."""
    inst = cluster("db")
    run = Paused(hooks, "start-spawning", "start", "db", "-p", "auto")
    run.reached()
    (child,) = [p for p in process.children(run.proc.pid) if "-D" in process.cmdline(p)]
    os.kill(child, signal.SIGSTOP)
    try:
        run.proc.send_signal(signal.SIGINT)
        time.sleep(0.5)  # two, not one: pgmgr's handler ran for the first (it polls at 5 ms)
        run.proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        done = run.go(timeout=25)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGCONT)
    assert done.returncode == 130 and done.stderr.endswith("Interrupted\n"), str(done)
    assert not wait_no_processes(work, timeout=30)
    assert inst.status().json()["state"] == "stopped"
    run = pgmgr("start", "db", "-p", "auto")  # nothing in the way of the next start
    assert run.returncode == 0, str(run)
    assert inst.stop().returncode == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_inside_popen_leaves_no_server(
    sig: int, cluster: InstFactory, work: Path, hooks: Path
) -> None:
    """A start takes SIGTERM and SIGHUP as Ctrl-C (sigguard.interruptible), but only
    Ctrl-C was held while postgres is spawned: one arriving inside ``Popen`` (the child
    forked, not yet exec'd: the test-only pause ``start-exec`` holds it there) raised
    there, the child unknown to pgmgr, which said 'Interrupted' and left the server it
    had spawned running, unrecorded. Now held until the child is known, then stopped."""
    inst = cluster("db")
    run = Paused(hooks, "start-exec", "start", "db", "-p", "auto")
    run.reached()
    child = int((hooks / "start-exec.reached").read_text())  # the forked child's pid
    run.proc.send_signal(sig)
    time.sleep(0.2)  # delivered (and held) before the child goes on
    (hooks / "start-exec.go").touch()
    # The child goes on by itself (pgmgr may be gone already): wait until it is postgres.
    deadline = time.monotonic() + 30
    while process.is_alive(child) and "-D" not in process.cmdline(child):
        assert time.monotonic() < deadline, "the child never exec'd"
        time.sleep(0.01)
    done = run.go()
    assert done.returncode == 130 and done.stderr.endswith("Interrupted\n"), str(done)
    assert not wait_no_processes(work, timeout=30)
    assert inst.status().json()["state"] == "stopped"
