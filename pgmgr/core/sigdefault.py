"""PostgreSQL programs start with every signal at its default action and none blocked.

A signal ignored when a process calls exec stays ignored in the new program, and the
calling thread's signal mask is kept: a caller's ``trap '' QUIT TERM`` in a shell, ``nohup``
(SIGHUP), a Python caller that ignores SIGINT or blocks signals in a thread, or pgmgr's own
ignores at the end of a command (:func:`pgmgr.core.sigguard.settle`) reached initdb,
pg_upgrade, pg_basebackup and the servers they start, none of which resets what it does
not handle itself: a SIGTERM meant to stop pg_basebackup did nothing and the stop waited
for its SIGKILL, initdb ran with the caller's signals blocked.

:func:`preexec` gives the ``preexec_fn`` that resets them in the child, after the fork and
before the exec (never in the parent: other threads would run with the change meanwhile).
It costs nothing when nothing needs resetting (the usual case): it is then only the
caller's own ``preexec_fn`` (None keeps subprocess's vfork). SIGPIPE and SIGXFSZ, which
Python itself ignores, are reset by subprocess already (``restore_signals``).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable

#: Python ignores these itself; subprocess puts them back (``restore_signals=True``).
_RESTORED = frozenset({int(signal.SIGPIPE), int(signal.SIGXFSZ)})


def ignored() -> list[int]:
    """The signals this process ignores (less those subprocess restores by itself)."""
    if sys.platform == "linux":  # exact, whoever set them (Python or C code): ~15 µs
        try:
            with open("/proc/self/status", "rb") as f:
                for line in f:
                    if line.startswith(b"SigIgn:"):
                        bits = int(line.split()[1], 16)
                        found = (s for s in range(1, 65) if bits >> (s - 1) & 1)
                        return [s for s in found if s not in _RESTORED]
        except (OSError, ValueError):
            pass
    return [
        int(s)
        for s in signal.valid_signals()
        if int(s) not in _RESTORED and signal.getsignal(s) is signal.SIG_IGN
    ]


def preexec(then: Callable[[], None] | None = None) -> Callable[[], None] | None:
    """The ``preexec_fn`` for a child that must start with default dispositions and an
    empty signal mask (a PostgreSQL program), to pass from the thread that spawns it:
    ``then`` (the caller's own ``preexec_fn``, run last) alone when this process ignores
    none and this thread blocks none."""
    reset = ignored()
    blocked = bool(signal.pthread_sigmask(signal.SIG_BLOCK, ()))
    if not reset and not blocked:
        return then

    def defaults() -> None:  # pragma: no cover - runs in the forked child
        for sig in reset:
            with contextlib.suppress(OSError, ValueError):  # one the C library reserves
                signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        if then is not None:
            then()

    return defaults
