"""A test-only pause at a named step, so a test can race pgmgr inside its window.

``PGMGR_TEST_PAUSE=DIR`` turns it on (read once, at import: unset, :func:`pause` is one
comparison). At step ``S``, when ``DIR/S`` exists, pgmgr makes ``DIR/S.reached`` (holding
its pid, written whole) and waits until ``DIR/S.go`` exists (or 60 s passed), then goes
on. The wait is by polling regular files: a test that never answers cannot hang pgmgr for
ever. Work that runs as the server user pauses the same way (the environment is
inherited), so ``DIR`` must be writable by that user.
"""

from __future__ import annotations

import os
import time

ENV = "PGMGR_TEST_PAUSE"
_DIR = os.environ.get(ENV) or None
_WAIT = 60.0

if _DIR is not None:  # tests: SIGUSR2 prints every thread's stack (where a hung pgmgr is)
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR2, all_threads=True)


def pause(step: str) -> None:
    """Wait at ``step`` when a test asked for it (see the module docstring)."""
    if _DIR is None:
        return
    _wait(_DIR, step)


def armed(step: str) -> bool:
    """Whether a test asked for a pause at ``step`` (for a pause set up ahead of it)."""
    return _DIR is not None and os.path.exists(os.path.join(_DIR, step))


def _wait(base: str, step: str) -> None:
    if not os.path.exists(os.path.join(base, step)):
        return
    # Written whole, then renamed: a test that sees the file reads the pid (it read an
    # empty file, created but not yet written, and failed by chance).
    reached = os.path.join(base, f"{step}.reached")
    with open(f"{reached}.{os.getpid()}", "w") as f:
        f.write(str(os.getpid()))
    os.replace(f"{reached}.{os.getpid()}", reached)
    deadline = time.monotonic() + _WAIT
    go = os.path.join(base, f"{step}.go")
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.005)
