"""``pgmgr start --foreground`` (the main process of a systemd unit, Restart=on-failure)
while other pgmgr commands work on its instance: a snapshot or a restore stops the server
and starts it again under the instance's lock; the attendant took that for an exit "on its
own" (exit 1: systemd started it again, racing the command). It waits for the command now
and goes on attending. A ``pgmgr stop`` is the user's (exit 0: systemd leaves it stopped);
a command killed with the server stopped is a failure (exit 1); a second attendant is
refused."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import error_lines, killed, pgmgr_argv
from tests.pause import Paused
from tests.snap.conftest import Inst
from tests.snap.test_switch_killed import hooks_dir


class Attendant(subprocess.Popen[str]):
    """``pgmgr start NAME --foreground`` with ``$NOTIFY_SOCKET`` on a socket of the test's,
    as systemd runs it: :meth:`ready` waits for its ``READY=1``."""

    def __init__(self, name: str, env: dict[str, str], ignore: tuple[int, ...] = ()) -> None:
        """``ignore``: signals it starts with ignored (SIGHUP under ``nohup``)."""
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        address = f"pgmgr-test-attendant-{uuid.uuid4().hex}"  # abstract: any user may send
        self.notify.bind("\0" + address)
        super().__init__(
            pgmgr_argv("start", name, "--foreground"),
            env={**os.environ, **env, "NOTIFY_SOCKET": "@" + address},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
            preexec_fn=(lambda: [signal.signal(s, signal.SIG_IGN) for s in ignore])
            if ignore else None,
        )  # fmt: skip

    def ready(self) -> None:
        """Wait until it attends (READY=1: it holds its lock, the server runs, and it
        watches). A fixed sleep here was outlasted on a loaded machine: a 'pgmgr stop' or
        a second attendant then came before the first attendant had even started."""
        self.says("READY=1")

    def says(self, start: str, timeout: float = 60) -> None:
        """Wait until it sends a line that starts with ``start``."""
        deadline = time.monotonic() + timeout
        while not any(ln.startswith(start) for ln in self._datagram(0.1).decode().split("\n")):
            assert self.poll() is None, self.communicate()
            assert time.monotonic() < deadline, f"the attendant never said {start!r}"

    def _datagram(self, wait: float) -> bytes:
        if not select.select([self.notify], [], [], wait)[0]:
            return b""
        return self.notify.recv(4096)


def spawn(name: str, env: dict[str, str]) -> Attendant:
    """``pgmgr start NAME --foreground``, its stderr piped (see :func:`ended`)."""
    return Attendant(name, env)


def done_with(proc: subprocess.Popen[str]) -> None:
    """A test's clean-up: an attendant still running is asked to stop (SIGTERM: it stops
    its server), then killed if it does not within 30 s."""
    if isinstance(proc, Attendant):
        proc.notify.close()
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        killed(proc)


@contextlib.contextmanager
def attending(name: str, env: dict[str, str]) -> Iterator[Attendant]:
    """:func:`spawn`, once it attends (:meth:`Attendant.ready`), and :func:`done_with` it
    however the block ends."""
    proc = spawn(name, env)
    try:
        proc.ready()
        yield proc
    finally:
        done_with(proc)


def stop_asked_during(run: Paused, proc: subprocess.Popen[str]) -> tuple[int, str]:
    """systemctl stop (SIGTERM to the attendant ``proc``) while the paused command ``run``
    has the server stopped: the attendant must wait for it. Lets ``run`` go on (it must
    succeed) and returns how the attendant ended (:func:`ended`)."""
    run.reached()
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert proc.poll() is None, proc.communicate()
    assert run.go().returncode == 0
    return ended(proc)


def attend(inst: Inst) -> subprocess.Popen[str]:
    proc = spawn("dev", inst.env)
    try:
        proc.ready()
    except BaseException:
        done_with(proc)
        raise
    return proc


def ended(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str]:
    if isinstance(proc, Attendant):
        proc.notify.close()
    try:
        err = proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        err = killed(proc)[1]
        raise AssertionError(f"the attendant did not exit: {err}") from None
    assert "Traceback" not in err, err
    return proc.returncode, err


@pytest.fixture
def attended(inst: Inst) -> Iterator[tuple[Inst, subprocess.Popen[str]]]:
    proc = attend(inst)
    try:
        yield inst, proc
    finally:
        done_with(proc)


def test_the_attendant_waits_for_a_snapshot_and_a_restore(
    attended: tuple[Inst, subprocess.Popen[str]], tmp_path: Path
) -> None:
    inst, proc = attended
    run = Paused(hooks_dir(tmp_path), "snapshot-copied", "snapshot", "dev", "s1", env=inst.env)
    run.reached()  # the server is stopped for the copy
    time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()
    assert run.go().returncode == 0
    inst.sql("INSERT INTO t VALUES (-1)")
    inst.ok("restore", "dev", "s1", "--yes", "-q")  # another data directory, pinned anew
    time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()
    assert inst.state() == "running" and inst.sql("SELECT count(*) FROM t WHERE x = -1") == "0"
    proc.send_signal(signal.SIGTERM)  # systemctl stop: it stops the restored server
    code, err = ended(proc)
    assert code == 0 and "Stopped 'dev'" in err, err
    assert inst.state() == "stopped"


def test_a_stop_is_the_users_and_a_killed_command_a_failure(
    attended: tuple[Inst, subprocess.Popen[str]], tmp_path: Path
) -> None:
    inst, proc = attended
    inst.ok("stop", "dev", "-q")
    code, err = ended(proc)
    assert code == 0, err
    assert "'dev' was shut down by someone else" in err, err

    proc = attend(inst)
    try:
        run = Paused(hooks_dir(tmp_path), "snapshot-copied", "snapshot", "dev", "s1",
                     env=inst.env)  # fmt: skip
        run.reached()
        run.kill(signal.SIGKILL)
        code, err = ended(proc)
    finally:
        done_with(proc)
    assert code == 1, err
    assert error_lines(err)[-1].startswith("Error: 'dev' was stopped at "), err
    assert "by 'pgmgr snapshot'" in err


def test_a_second_attendant_is_refused(attended: tuple[Inst, subprocess.Popen[str]]) -> None:
    inst, proc = attended
    code, err = ended(spawn("dev", inst.env), timeout=60)
    assert code == 1 and error_lines(err)[0] == (
        "Error: 'dev' is already attended by another 'pgmgr start --foreground' (a systemd "
        "unit, or a terminal); nothing was started"
    ), err
    assert proc.poll() is None and inst.state() == "running"


def test_a_stop_asked_while_a_snapshot_works_waits_for_it(
    attended: tuple[Inst, subprocess.Popen[str]], tmp_path: Path
) -> None:
    """systemctl stop while a snapshot has the server stopped: the attendant lets it finish
    (it starts the server again), then stops that server."""
    inst, proc = attended
    run = Paused(hooks_dir(tmp_path), "snapshot-copied", "snapshot", "dev", "s1", env=inst.env)
    code, err = stop_asked_during(run, proc)
    assert code == 0 and "Stopped 'dev'" in err, err
    assert inst.state() == "stopped" and [s["snapshot"] for s in inst.snaps()] == ["s1"]


def test_nohup_attendant_survives_the_hang_up(inst: Inst) -> None:
    """``nohup pgmgr start --foreground``: a closed terminal (SIGHUP, which nohup makes
    ignored) stopped the server, the attendant having taken the signal over; a SIGTERM
    still stops it cleanly."""
    proc = Attendant("dev", inst.env, ignore=(signal.SIGHUP,))
    try:
        proc.ready()
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()
        assert inst.state() == "running"
        proc.send_signal(signal.SIGTERM)
        code, err = ended(proc)
        assert code == 0, err
        assert inst.state() == "stopped"
    finally:
        done_with(proc)
