"""A signal whose handler raises while Python runs code whose exceptions it ignores (a
weakref callback, a ``__del__``): Python printed "Exception ignored in ... Traceback ...
KeyboardInterrupt" and went on. Seen in the ordinary-user suite: a SIGTERM landed in the
import system's module-lock callback during ``pgmgr upgrade``, which then ran to its end
("Upgraded 'up' ...") under that traceback, and took a second SIGTERM for the first one's.

Real signals, in a child process (its handlers and ``sys.unraisablehook`` are its own):
the signal is sent from inside a weakref callback, whose next bytecode runs the handler,
as a signal arriving at that moment would."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.helpers import REPO

CHILD = """
import os, signal, sys, time, weakref
from pgmgr.core import sigguard

class Thing:
    pass

def callback(ref, signum=int(sys.argv[1])):
    os.kill(os.getpid(), signum)  # handled at the next bytecode: inside this callback
    for _ in range(100):
        pass

try:
    with sigguard.interruptible():
        thing = Thing()
        ref = weakref.ref(thing, callback)
        del thing  # the callback runs here, and its exception is ignored
        print("work goes on", flush=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)
        print("never interrupted", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
print("hook put back:", sys.unraisablehook is sys.__unraisablehook__, flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=str)
def test_an_interrupt_raised_where_python_ignores_exceptions_is_not_lost(
    sig: signal.Signals,
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(int(sig))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        # the default disposition a shell gives (xdist workers ignore SIGINT, inherited)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # The interrupt comes back at the main thread's next check: before or inside the print
    # that follows the callback ("work goes oninterrupted"), or in the loop after it.
    assert "never interrupted" not in proc.stdout, (proc.stdout, proc.stderr)
    assert proc.stdout.endswith("interrupted\nhook put back: True\n"), (proc.stdout, proc.stderr)
    assert proc.stderr == ""  # no "Exception ignored ... Traceback"
