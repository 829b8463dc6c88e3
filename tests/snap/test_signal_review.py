"""Review of the signals past the point of no return (sigguard.commit, cancellable,
settle) and of userfs.as_user's signal handling: what a library caller, a child and a
server get from them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgmgr.core import sigguard
from tests.helpers import killed
from tests.snap.conftest import Inst

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def _handlers() -> dict[int, object]:
    return {s: signal.getsignal(s) for s in sigguard.SIGNALS}


@contextlib.contextmanager
def caller_handler(sig: int, handler: Any) -> Iterator[None]:
    """The caller's own disposition of ``sig`` for the duration (pytest leaves SIGTERM at
    its default, which would end this process; xdist workers ignore SIGINT)."""
    old = signal.signal(sig, handler)
    try:
        yield
    finally:
        signal.signal(sig, old)


def _kill_self(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.01)  # the handler runs (main thread, between two bytecodes)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_library_signal_after_commit_is_not_lost(sig: int) -> None:
    """In-process (the pytest plugin, a library caller) the committed work completes, and
    a Ctrl-C or SIGTERM that arrived meanwhile then reaches the caller's own handler
    (restore documents KeyboardInterrupt "after it: the restore is complete"): it was
    dropped, so the caller's Ctrl-C did nothing. The handlers from before are back."""
    with caller_handler(sig, signal.default_int_handler):
        before = _handlers()
        done = False
        with pytest.raises(KeyboardInterrupt), sigguard.interruptible():
            with sigguard.shielded():
                sigguard.commit()
            _kill_self(sig)  # only recorded: the work goes on
            done = True
        assert done
        assert _handlers() == before


def test_library_ignored_signal_after_commit_stays_ignored() -> None:
    """A caller that ignores SIGINT does not get a KeyboardInterrupt from one that came
    after commit() (commit records SIGINT too, which the caller had ignored)."""
    with caller_handler(signal.SIGINT, signal.SIG_IGN):
        with sigguard.interruptible():
            with sigguard.shielded():
                sigguard.commit()
            _kill_self(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_library_error_after_commit_keeps_its_exception() -> None:
    """A failure after commit is not replaced by a Ctrl-C recorded before it (a SIGTERM
    to a handler of the caller's is delivered: test_held_delivered)."""
    with caller_handler(signal.SIGINT, signal.default_int_handler):
        before = _handlers()
        with pytest.raises(ValueError), sigguard.interruptible():
            with sigguard.shielded():
                sigguard.commit()
            _kill_self(signal.SIGINT)
            raise ValueError("boom")
        assert _handlers() == before


def test_signal_before_cancellable_cancels_it() -> None:
    """A Ctrl-C recorded after commit (during the restart that follows an upgrade's
    swap) cancels the optional work that comes next (vacuumdb, up to an hour) instead
    of being ignored until the user presses it again; the optional work having taken
    it, the caller is not interrupted again."""
    before = _handlers()
    ran = False
    with sigguard.interruptible():
        with sigguard.shielded():
            sigguard.commit()
        _kill_self(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt), sigguard.cancellable():
            ran = True
            time.sleep(0.5)
    assert not ran
    assert _handlers() == before


def _sig_bits(pid: int) -> dict[str, int]:
    """SigIgn and SigBlk of ``pid``, as far as SIGINT, SIGTERM and SIGHUP go."""
    want = sum(1 << (s - 1) for s in sigguard.SIGNALS)
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("SigIgn", "SigBlk"):
            out[key] = int(value.strip(), 16) & want
    return out


def test_servers_started_after_commit_take_signals(inst: Inst) -> None:
    """A postmaster started after the point of no return (restore's restart; a branch's
    start) neither ignores nor blocks SIGINT/SIGTERM/SIGHUP: pg_ctl stop -m fast/smart
    and a reload must reach it. (Held: Python handlers reset to default at exec.)"""
    for step in (("start",), ("snapshot", "base"), ("restore", "base", "--yes")):
        if step[0] != "start":
            inst.ok(step[0], "dev", *step[1:], "-q")
        pid = inst.pid()  # 'pgmgr start' (the fixture's), then restarted by each step
        assert pid is not None
        assert _sig_bits(pid) == {"SigIgn": 0, "SigBlk": 0}, step
    inst.ok("branch", "dev", "feat", "--start", "-q")
    bpid = inst.pid("feat")
    assert bpid is not None
    assert _sig_bits(bpid) == {"SigIgn": 0, "SigBlk": 0}
    inst.ok("stop", "feat", "-m", "fast", "-q")
    assert inst.state("feat") == "stopped"


_HELD_CHILD = """
import sys, time
from pgmgr.core import sigguard, userfs
from pgmgr.core.privileges import lookup

user = lookup("postgres")
with sigguard.interruptible():
    with sigguard.shielded():
        sigguard.commit()
    userfs.as_user(user, time.sleep, 30)
"""


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


@needs_root
def test_as_user_child_dies_with_pgmgr_after_commit() -> None:
    """as_user's child gets SIGTERM when pgmgr dies (kill -9), "so it never outlives
    pgmgr". Forked after commit() (or inside shielded()) it inherited the handler that
    only records SIGTERM: it went on working, outside pgmgr's lock, after pgmgr was
    gone. A signal from the terminal or a process group (pgmgr alive) is still held."""
    proc = subprocess.Popen([sys.executable, "-c", _HELD_CHILD])
    child = 0
    try:
        deadline = time.monotonic() + 10
        while not (kids := _children(proc.pid)) or Path(f"/proc/{kids[0]}").stat().st_uid == 0:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        child = kids[0]
        os.kill(child, signal.SIGTERM)  # pgmgr alive: held, like the terminal's Ctrl-C
        time.sleep(0.2)
        assert _alive(child)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(child), "the child outlived pgmgr"
    finally:
        proc.kill()
        proc.wait()
        if child and _alive(child):
            os.kill(child, signal.SIGKILL)


_INTERRUPTED_FORK = """
import os, signal
from pgmgr.core import sigguard, userfs
from pgmgr.core.privileges import lookup

armed = []
# A SIGTERM while as_user holds signals around its fork: its handler raises once they
# are let through again, before the answer is read.
os.register_at_fork(before=lambda: armed and os.kill(os.getpid(), signal.SIGTERM))
user = lookup("postgres")
before = len(os.listdir("/proc/self/fd"))
for _ in range(3):  # a block each: a second SIGTERM in one block is ignored (its clean-up)
    with sigguard.interruptible():
        armed.append(1)
        try:
            userfs.as_user(user, int)
        except KeyboardInterrupt:
            print("interrupted")
        armed.clear()
print(len(os.listdir("/proc/self/fd")) - before)
print(sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])) == [])
"""


@needs_root
def test_as_user_interrupted_after_fork_closes_its_pipe() -> None:
    """A signal held over as_user's fork raises when the mask is put back: the read end
    of the answer pipe was left open, one descriptor lost per interrupted call (a library
    caller, the pytest plugin, runs out of them). No signal stays blocked (held: a395121)."""
    proc = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_FORK], capture_output=True, text=True, timeout=30
    )
    assert proc.stdout.split() == ["interrupted"] * 3 + ["0", "True"], proc.stderr


def test_library_restore_signal_after_swap(
    inst: Inst, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process restore (a library caller): a SIGTERM right after the swap lets the
    restore complete (server running, data restored), then raises KeyboardInterrupt as
    restore documents ("after it: the restore is complete"), with the caller's handlers
    back. It returned as if nothing had arrived."""
    import threading

    from pgmgr.actions import resolve
    from pgmgr.core import restore, testhook

    inst.ok("snapshot", "dev", "base", "-q")
    inst.sql("TRUNCATE t")
    monkeypatch.setattr(testhook, "_DIR", str(tmp_path))
    (tmp_path / "restore-swapped").touch()

    def signal_then_go() -> None:
        deadline = time.monotonic() + 60
        while not (tmp_path / "restore-swapped.reached").exists():
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        (tmp_path / "restore-swapped.go").touch()

    with caller_handler(signal.SIGTERM, signal.default_int_handler):
        before = _handlers()
        helper = threading.Thread(target=signal_then_go)
        helper.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                restore.restore(resolve("dev", None), "base")
        finally:
            (tmp_path / "restore-swapped.go").touch()
            helper.join()
        assert _handlers() == before
    assert inst.state() == "running"
    assert inst.sql("SELECT count(*) FROM t") == "1000"


def test_ctrl_c_during_restart_after_upgrade_skips_statistics(scratch: Path) -> None:
    """Ctrl-C right after an upgrade's swap (before the restart): the upgrade completes
    and says so (exit 0), and the optional statistics step it was pressed before is
    skipped with the command to run it later. vacuumdb ran in full (up to an hour), the
    Ctrl-C only recorded."""
    from tests.snap.test_signal_after_commit import paused_run, signal_then_go
    from tests.snap.test_upgrade import make

    up = make(scratch)
    try:
        hooks = scratch / "hooks"
        hooks.mkdir()
        proc = paused_run(up, hooks, "upgrade-swapped", "upgrade", "up", "-v", "18", "--yes")
        err = signal_then_go(proc, hooks, "upgrade-swapped", signal.SIGINT)
        assert err.startswith("Upgraded 'up' from PostgreSQL 15"), err
        assert "statistics were not rebuilt (interrupted)" in err, err
        assert up.record()["major"] == "18"
        assert up.state() == "running"
        pid = up.pid()  # started after the commit: takes the stop signals
        assert pid is not None
        assert _sig_bits(pid) == {"SigIgn": 0, "SigBlk": 0}
    finally:
        up.pgmgr("stop", "--all", "-m", "immediate", "-q")


def test_interruptible_after_commit_keeps_signals_held() -> None:
    """An interruptible block entered after commit() (more work of the same call) made
    SIGTERM raise again, and left it so when it ended (its handlers are only put back
    when nothing was committed): the rest of the committed work could be cut short."""
    with caller_handler(signal.SIGTERM, signal.default_int_handler):
        before = _handlers()
        with pytest.raises(KeyboardInterrupt), sigguard.interruptible():
            with sigguard.shielded():
                sigguard.commit()
            with sigguard.interruptible():
                _kill_self(signal.SIGTERM)  # held
            _kill_self(signal.SIGTERM)  # still held
            done = True
        assert done
        assert _handlers() == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_group_signal_right_after_restore_swap(inst: Inst, tmp_path: Path, sig: int) -> None:
    """A terminal's Ctrl-C (or hang-up) to pgmgr's whole process group right after the
    swap, before the old state is dropped and the server restarted: the restore
    completes, says so, exits 0, and the server runs with the restored data."""
    inst.ok("snapshot", "dev", "base", "-q")
    inst.sql("TRUNCATE t")
    (tmp_path / "restore-swapped").touch()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgmgr", "restore", "dev", "base", "--yes"],
        env={**os.environ, **inst.env, "PGMGR_TEST_PAUSE": str(tmp_path)},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "restore-swapped.reached").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        os.killpg(proc.pid, sig)
        time.sleep(0.2)
        (tmp_path / "restore-swapped.go").touch()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            killed(proc)
    assert proc.returncode == 0, (proc.returncode, err)
    assert err.startswith("Restored 'dev' to 'base'"), err
    assert inst.state() == "running"
    assert inst.sql("SELECT count(*) FROM t") == "1000"


_INTERRUPTED_PIPE = """
import os, signal, sys
from pgmgr.core import sigguard, userfs
from pgmgr.core.privileges import lookup

armed = []


def profile(frame, event, arg):  # a SIGTERM right after as_user made its pipe
    if event == "c_return" and arg is os.pipe and armed:
        armed.clear()
        os.kill(os.getpid(), signal.SIGTERM)


user = lookup("postgres")
before = len(os.listdir("/proc/self/fd"))
for _ in range(3):  # a block each: a second SIGTERM in one block is ignored (its clean-up)
    with sigguard.interruptible():
        armed.append(1)
        sys.setprofile(profile)
        try:
            userfs.as_user(user, int)
        except KeyboardInterrupt:
            print("interrupted")
        finally:
            sys.setprofile(None)
print(len(os.listdir("/proc/self/fd")) - before)
"""


@needs_root
def test_as_user_interrupted_before_fork_closes_its_pipe() -> None:
    """A signal right after as_user made its answer pipe (before it held signals): both
    ends were lost (made outside the block that closes them)."""
    proc = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_PIPE], capture_output=True, text=True, timeout=30
    )
    assert proc.stdout.split() == ["interrupted"] * 3 + ["0"], (proc.stdout, proc.stderr)


_INTERRUPTED_REAP = """
import os, signal, sys
from pgmgr.core import sigguard, userfs
from pgmgr.core.privileges import lookup
from tests.helpers import killed

armed, kills = [], []
real_kill = os.kill


def kill(pid, sig):  # records what as_user signals (a reused pid cannot be arranged)
    kills.append(pid)
    real_kill(pid, sig)


def profile(frame, event, arg):  # a SIGTERM right after the child was reaped
    if event == "c_return" and arg is os.waitpid and armed:
        armed.clear()
        real_kill(os.getpid(), signal.SIGTERM)


user = lookup("postgres")
with sigguard.interruptible():
    armed.append(1)
    os.kill = kill
    sys.setprofile(profile)
    try:
        userfs.as_user(user, int)
    except KeyboardInterrupt:
        print("interrupted")
    finally:
        sys.setprofile(None)
    print(kills)
"""


@needs_root
def test_as_user_interrupted_after_reap_signals_nobody() -> None:
    """A handler raising right after as_user reaped its child: the pid may be someone
    else's by then, so it is not signalled (held: a395121)."""
    proc = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_REAP], capture_output=True, text=True, timeout=30
    )
    assert proc.stdout.split("\n")[:2] == ["interrupted", "[]"], (proc.stdout, proc.stderr)
