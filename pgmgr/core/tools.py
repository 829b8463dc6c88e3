"""Run a PostgreSQL client program (pg_basebackup, pg_upgrade, vacuumdb ...) as the server
user, in a given working directory, and stop it when pgmgr is interrupted.

:func:`pgmgr.core.server.run` (always in ``/``, with an optional input) goes through the
same interrupt handling; this one takes a working directory: pg_upgrade writes its logs and
sockets there and may run for minutes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from pgmgr.core import server, sigdefault, testhook
from pgmgr.core.errors import CommandFailed, WorkerError
from pgmgr.core.privileges import ServerUser

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    import subprocess

_DEFERRED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run(
    argv: Sequence[str],
    user: ServerUser | None,
    *,
    cwd: Path | str = "/",
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    reap: bool = False,
    watch: Callable[[int], str | None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (never through a shell) as ``user`` in ``cwd``, in its own session.

    On any exception while waiting (Ctrl-C, SIGTERM turned into one, a timeout) the
    program's whole process group gets SIGTERM, then SIGKILL after 10 s.

    ``reap``: run it under :mod:`pgmgr.core.subreaper`, so that no process it starts
    survives it, even one in a session of its own (pg_upgrade's servers): stopped, the
    wrapper stops them all (a fast shutdown first) before it exits.

    ``watch``: called with the program's pid about once a second while it runs; what it
    returns, if anything, says why the program cannot go on (see
    :func:`pgmgr.core.fifowait.watchdog`): it is stopped, :class:`Stuck` says that.

    :raises CommandFailed: it exits non-zero (stdout and stderr kept).
    :raises Stuck: ``watch`` found it stuck.
    """
    import subprocess

    uid, gid, groups = server._ids(user)
    child_env = server._child_env(user)
    child_env.update(env or {})
    command = list(argv)
    if user is not None and str(cwd) != "/":
        # Popen changes directory before it drops to the user: as root, that would resolve
        # a path inside the user's directories. env(1) changes it after, as the user.
        command, cwd = ["env", "-C", str(cwd), *command], "/"
    grace = 10.0
    if reap:
        from pgmgr.core import subreaper

        # The wrapper runs as pgmgr (root can signal the user's processes); it drops to
        # the user for the program only, and bounds its own clean-up.
        command = subreaper.argv(command, uid, gid, groups)
        uid = gid = groups = None
        grace = subreaper.GRACE + 10
    proc = None
    try:
        # A Ctrl-C raised inside Popen, once it has forked, left the program running,
        # unknown here: the caller's clean-up then removed the directory it wrote in
        # (initdb, pg_upgrade). It waits until the program is ours to stop.
        with _deferred() as held:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",  # initdb, postgres -C echo the bytes they were given
                cwd=str(cwd),
                env=child_env,
                start_new_session=True,
                umask=0o077,
                user=uid,
                group=gid,
                extra_groups=groups,
                preexec_fn=sigdefault.preexec(),  # default dispositions, none blocked
            )
            testhook.pause(f"run-{os.path.basename(argv[0])}")
        for sig in held:
            signal.raise_signal(sig)  # now, to the handler it was meant for
        out, err = _communicate(proc, timeout, watch)
    except BaseException as e:
        if proc is not None:
            _stop_group(proc, grace)
        if isinstance(e, subprocess.TimeoutExpired):
            raise timed_out(argv, timeout) from None
        raise
    if proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, err.strip() or out)
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


class Stuck(WorkerError):
    """The program cannot go on (what a ``watch`` of :func:`run` found); it was stopped."""


#: Seconds between two calls of a :func:`run` ``watch``.
WATCH_EVERY = 1.0


def _communicate(
    proc: subprocess.Popen[str],
    timeout: float | None,
    watch: Callable[[int], str | None] | None,
) -> tuple[str, str]:
    """``proc.communicate(timeout=timeout)``, calling ``watch`` between slices of it.

    :raises subprocess.TimeoutExpired: ``timeout`` passed.
    :raises Stuck: ``watch`` said why the program cannot go on.
    """
    import subprocess

    if watch is None:
        return proc.communicate(timeout=timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = WATCH_EVERY if deadline is None else deadline - time.monotonic()
        try:  # a slice that ends keeps what was read: the next call goes on from there
            return proc.communicate(timeout=max(0.0, min(WATCH_EVERY, left)))
        except subprocess.TimeoutExpired:
            if deadline is not None and time.monotonic() >= deadline:
                raise
        why = watch(proc.pid)
        if why:
            raise Stuck(why)


def timed_out(argv: Sequence[str], timeout: float | None) -> WorkerError:
    """A program stopped because it ran past its timeout: one line, not a traceback."""
    return WorkerError(
        f"{os.path.basename(argv[0])} did not finish within {timeout:g} s and was stopped"
    )


@contextlib.contextmanager
def _deferred() -> Iterator[list[int]]:
    """SIGINT, SIGTERM and SIGHUP, where a Python handler takes them (a Ctrl-C, one
    :mod:`pgmgr.core.sigguard` turned into one), are only recorded in the yielded list
    for the block; the caller delivers them after it (main thread only)."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def _record(signum: int, frame: object) -> None:
        got.append(signum)

    old = {}
    for sig in _DEFERRED:
        handler = signal.getsignal(sig)
        if callable(handler):  # not SIG_DFL, SIG_IGN or one set outside Python
            old[sig] = handler
            signal.signal(sig, _record)
    try:
        yield got
    finally:
        raised: KeyboardInterrupt | None = None
        for sig, handler in old.items():
            while True:  # signal.signal runs a pending handler (one put back) first
                try:
                    signal.signal(sig, handler)
                    break
                except KeyboardInterrupt as e:
                    raised = e
        if raised is not None:
            raise raised


def _stop_group(proc: subprocess.Popen[str] | subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the program's process group, SIGKILL it after ``grace`` seconds; return
    once the program is reaped and its group is empty (bounded): its clean-up may
    remove the directory they wrote in."""
    import subprocess

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
            os.killpg(proc.pid, signal.SIGCONT)  # a stopped one acts on it too
        try:
            proc.communicate(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        proc.wait()  # SIGKILLed: it dies
    # Members that closed their output (not waited for above) are SIGKILLed too; the id
    # of a group that still has members is not given to a new process.
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.01)
