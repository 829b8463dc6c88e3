"""Driving pgmgr through a race window: the test-only pause of :mod:`pgmgr.core.testhook`."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from .conftest import Run, pgmgr_argv


def ok(run: Run) -> Run:
    assert run.returncode == 0, str(run)
    return run


class Paused:
    """``pgmgr ARGS`` started with a pause at ``step``; :meth:`reached` waits for it."""

    def __init__(self, hooks: Path, step: str, *args: str, env: dict[str, str] | None = None):
        self.hooks, self.step = hooks, step
        (hooks / step).touch()
        self.proc = subprocess.Popen(
            pgmgr_argv(*args),
            env={**os.environ, "PGMGR_TEST_PAUSE": str(hooks), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def reached(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not (self.hooks / f"{self.step}.reached").exists():
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, f"pgmgr never reached {self.step}"
            time.sleep(0.01)

    def go(self, timeout: float = 60) -> Run:
        """Let pgmgr go on; it must finish within ``timeout`` (it never blocks)."""
        (self.hooks / f"{self.step}.go").touch()
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError(f"pgmgr hung after {self.step} (killed)") from None
        assert "Traceback" not in err, err
        return Run(list(map(str, self.proc.args)), self.proc.returncode, out, err)

    def kill(self, sig: int, timeout: float = 60) -> int:
        """Send ``sig`` to pgmgr where it waits; its exit code once it is gone."""
        self.proc.send_signal(sig)
        try:
            self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError(f"pgmgr did not exit after signal {sig}") from None
        return self.proc.returncode
