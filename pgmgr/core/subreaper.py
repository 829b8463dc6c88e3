"""Run a program so that nothing it starts outlives it: a small wrapper process, the
program's parent, made a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``).

pg_upgrade starts the old and the new cluster's servers with pg_ctl, which puts each
postmaster in a session of its own; killing pg_upgrade's process group (an interrupt) does
not reach them, and a postmaster pg_ctl has just forked has no ``postmaster.pid`` yet, so
it cannot be found through its data directory either. Under this wrapper every process the
program started, once orphaned, becomes the wrapper's child instead of init's: when the
program has exited, or the wrapper is told to stop (SIGTERM, SIGINT, SIGHUP, or its parent
died: its death signal; it then stops the program's process group first), it asks each of
its remaining children to stop (SIGINT: a postmaster's fast shutdown), SIGKILLs what is left
after :data:`GRACE` seconds, and reaps them all before it exits with the program's status.
Only its own children are signalled: their pids cannot be reused before it reaps them.

The wrapper runs as pgmgr's own user (root drops to the server user for the program only),
as ``python -I -S subreaper.py PARENT UID GID GROUPS -- ARGV...``: it imports the standard
library only, so it runs without pgmgr's packages. :func:`argv` builds that command line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
#: Seconds the remaining children get to stop (a fast shutdown) before SIGKILL.
GRACE = 20.0
_STOP = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def argv(
    command: list[str], uid: int | None, gid: int | None, groups: list[int] | None
) -> list[str]:
    """The command line that runs ``command`` under the wrapper (as ``uid``/``gid``/
    ``groups`` when given: pgmgr is root)."""
    ids = ["-" if uid is None else str(uid), "-" if gid is None else str(gid)]
    ids.append(",".join(str(g) for g in groups or []) if groups is not None else "-")
    here = os.path.abspath(__file__)
    return [sys.executable or "python3", "-I", "-S", here, str(os.getpid()), *ids, "--", *command]


class _Stop(Exception):
    pass


#: While true, a stop signal raises :class:`_Stop` (once); after, it does nothing: the
#: clean-up that follows must not be cut short by a second signal.
_armed = [True]


def _raise_stop(signum: int, frame: object) -> None:
    if _armed[0]:
        _armed[0] = False
        raise _Stop


def _prctl(option: int, value: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl")


def _children() -> list[int]:
    """The pids whose parent is this process (read from /proc)."""
    me, kids = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == me:
            kids.append(int(name))
    return kids


def _reap_all(grace: float) -> None:
    """Stop and reap every child: SIGINT each once, SIGKILL after ``grace`` seconds."""
    deadline = time.monotonic() + grace
    sent: dict[int, int] = {}
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] != 0:
                pass
        except ChildProcessError:
            return
        sig = signal.SIGINT if time.monotonic() < deadline else signal.SIGKILL
        for pid in _children():
            if sent.get(pid) != sig:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
                    os.kill(pid, signal.SIGCONT)  # a stopped one acts on it too
                sent[pid] = sig
        time.sleep(0.02)


def _ids(text: str) -> int | None:
    return None if text == "-" else int(text)


def main(args: list[str]) -> int:
    import subprocess

    parent, uid, gid, groups_text, sep, *command = args
    assert sep == "--" and command, "usage: subreaper.py PARENT UID GID GROUPS -- ARGV..."
    groups = None if groups_text == "-" else [int(g) for g in groups_text.split(",") if g]
    for sig in _STOP:
        signal.signal(sig, _raise_stop)
    code = 128 + signal.SIGTERM
    proc = None
    try:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != int(parent):  # it died before the death signal was set
            _armed[0] = False
        else:
            proc = subprocess.Popen(
                command, start_new_session=True, user=_ids(uid), group=_ids(gid),
                extra_groups=groups,
            )  # fmt: skip
            code = proc.wait()
        _armed[0] = False  # from here on, a signal is ignored: the clean-up runs whole
    except _Stop:
        # Not reaped yet, the program's pid still names its group: stop that group (its
        # children in it, pg_dump say, are not this process's children until it is gone).
        # SIGCONT too: a stopped one (SIGSTOP, a debugger) acted on it only once SIGKILLed,
        # after the whole GRACE (20 s of an interrupted replica's pg_basebackup).
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGTERM)
                os.killpg(proc.pid, signal.SIGCONT)
    _reap_all(GRACE)
    return 128 - code if code < 0 else code


if __name__ == "__main__":  # pragma: no cover - runs as its own process
    sys.exit(main(sys.argv[1:]))
