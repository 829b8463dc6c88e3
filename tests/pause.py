"""Driving pgmgr through a race window: the test-only pause of :mod:`pgmgr.core.testhook`.

``Paused(hooks, step, *args)`` arms the pause at ``step`` (clearing what an earlier run at that
step left), starts ``pgmgr ARGS`` with ``PGMGR_TEST_PAUSE=hooks``; :meth:`Paused.reached` waits
until pgmgr waits there; :meth:`Paused.go` lets it finish and :meth:`Paused.kill` signals it.
Either disarms the step, so the next run of the same command goes through. Used as a
context manager, it interrupts a pgmgr still waiting when the block ends (a failed test).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.helpers import Run, killed, pgmgr_argv


def ok(run: Run) -> Run:
    assert run.returncode == 0, str(run)
    return run


def _caller(ignore: tuple[int, ...], block: tuple[int, ...]) -> None:
    """In the forked child: what a caller that ignores ``ignore`` and blocks ``block``
    leaves to pgmgr."""
    for s in ignore:
        signal.signal(s, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, block)


class Paused:
    """``pgmgr ARGS`` started with a pause at ``step``; :meth:`reached` waits for it."""

    def __init__(
        self,
        hooks: Path,
        step: str,
        *args: str,
        env: dict[str, str] | None = None,
        ignore: tuple[int, ...] = (),
        block: tuple[int, ...] = (),
    ):
        """``ignore``: signals pgmgr starts with ignored (as under ``nohup``, SIGHUP);
        ``block``: signals it starts with blocked."""
        self.hooks, self.step = hooks, step
        self._disarm()
        (hooks / step).touch()
        self.argv = pgmgr_argv(*args)
        self.proc = subprocess.Popen(
            self.argv,
            env={**os.environ, "PGMGR_TEST_PAUSE": str(hooks), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=(lambda: _caller(ignore, block)) if ignore or block else None,
        )

    def __enter__(self) -> Paused:
        return self

    def __exit__(self, *exc: object) -> None:
        """A test that failed while pgmgr waits: interrupt it (it cleans up), rather than
        leave it to go on by itself 60 s later, under the fixtures' clean-up."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            (self.hooks / f"{self.step}.go").touch()
            try:
                self.proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                killed(self.proc)
        self._disarm()

    def _hung(self) -> str:
        """Kill pgmgr, hung; what it printed, with where each of its threads was (the
        pause's SIGUSR2 handler prints their stacks: see pgmgr.core.testhook)."""
        self.proc.send_signal(signal.SIGUSR2)
        time.sleep(1)
        _, err = killed(self.proc)
        return f"killed; its stderr:\n{err}"

    def _disarm(self) -> None:
        for name in (self.step, f"{self.step}.reached", f"{self.step}.go"):
            (self.hooks / name).unlink(missing_ok=True)

    def reached(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not (self.hooks / f"{self.step}.reached").exists():
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, f"pgmgr never reached {self.step}"
            time.sleep(0.01)

    def reached_also(self, step: str, timeout: float = 60) -> None:
        """Wait until pgmgr, let go on, waits at a second pause ``step`` (armed by the
        test before it started pgmgr: a signal during a clean-up, say)."""
        deadline = time.monotonic() + timeout
        while not (self.hooks / f"{step}.reached").exists():
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, f"pgmgr never reached {step}"
            time.sleep(0.01)

    def go(self, timeout: float = 120) -> Run:
        """Let pgmgr go on; it must finish within ``timeout`` (it never blocks)."""
        (self.hooks / f"{self.step}.go").touch()
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"pgmgr hung after {self.step}: {self._hung()}") from None
        finally:
            self._disarm()
        assert "Traceback" not in err, err
        return Run(self.argv, self.proc.returncode, out, err)

    def kill(self, sig: int, timeout: float = 60) -> int:
        """Send ``sig`` to pgmgr where it waits; its exit code once it is gone (no traceback)."""
        self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"pgmgr did not exit after signal {sig}: {self._hung()}") from None
        finally:
            self._disarm()
        assert "Traceback" not in err, err
        return self.proc.returncode
