"""Adversarial review of :mod:`pgmgr.core.attend`: the attendant (``pgmgr start
--foreground``, the main process of a systemd unit with ``Restart=on-failure``) while other
commands remove or switch the instance under it."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from tests.helpers import killed
from tests.pause import Paused
from tests.snap.conftest import Inst
from tests.snap.test_foreground import (  # noqa: F401
    attend,
    attended,
    attending,
    done_with,
    ended,
    stop_asked_during,
)
from tests.snap.test_switch_killed import hooks_dir
from tests.snap.test_two_registrations import twice  # noqa: F401
from tests.snap.test_upgrade import up  # noqa: F401


def test_a_destroy_ends_the_attendant_as_a_stop_does(
    attended: tuple[Inst, subprocess.Popen[str]],  # noqa: F811
) -> None:
    """``pgmgr destroy`` of an attended instance stops its server and removes its record:
    the attendant failed with exit 4 ('instance 'dev' was removed while this command waited
    for it'), and systemd's Restart=on-failure then started 'pgmgr start dev' again and
    again, each failing (no such instance), until the unit failed. The user removed it on
    purpose: exit 0, as after 'pgmgr stop'."""
    inst, proc = attended
    inst.ok("destroy", "dev", "--yes", "-q")
    code, err = ended(proc)
    assert code == 0, err
    assert "'dev' was destroyed by someone else" in err, err
    assert "Error" not in err, err


def test_a_stop_asked_while_a_destroy_works_ends_cleanly(
    attended: tuple[Inst, subprocess.Popen[str]],  # noqa: F811
    tmp_path: Path,
) -> None:
    """systemctl stop while a destroy has the server stopped: the attendant waits for it
    (to stop what it starts again); it found no record then and failed with exit 4. The
    instance is gone, nothing is left to stop: exit 0."""
    inst, proc = attended
    run = Paused(hooks_dir(tmp_path), "destroy-stopped", "destroy", "dev", "--yes",
                 env=inst.env)  # fmt: skip
    code, err = stop_asked_during(run, proc)
    assert code == 0 and "Error" not in err, err
    assert "'dev' was destroyed by someone else" in err, err


def test_the_attendant_follows_an_upgrade(up: Inst) -> None:  # noqa: F811
    """An upgrade switches the data directory, its pin and the binaries under the lock:
    the attendant goes on attending the new server, and stops that one."""
    with attending("up", up.env) as proc:
        up.ok("upgrade", "up", "-v", "18", "--yes", "-q")
        time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()
        assert up.state() == "running" and up.record()["major"] == "18"
        proc.send_signal(signal.SIGTERM)
        code, err = ended(proc)
    assert code == 0 and "Stopped 'up'" in err, err
    assert up.state() == "stopped"


def test_an_attendant_killed_leaves_nothing_that_refuses_the_next(
    attended: tuple[Inst, subprocess.Popen[str]],  # noqa: F811
) -> None:
    """kill -9 of the attendant (systemd's final SIGKILL): its .attend lock goes with it
    (flock), the server runs on, and the next attendant takes it over."""
    inst, proc = attended
    killed(proc)
    assert inst.state() == "running"
    again = attend(inst)
    try:
        again.send_signal(signal.SIGTERM)
        code, err = ended(again)
    finally:
        done_with(again)
    assert code == 0 and "Stopped 'dev'" in err, err
    assert inst.state() == "stopped" and inst.record()["stopped_by"] is None


def test_the_attendant_of_another_registration_waits_for_its_commands(
    twice: tuple[Inst, Inst],  # noqa: F811
) -> None:
    """The system unit that root installs runs the attendant as the server user with a
    state directory of its own ('pgmgr start -d DIR --foreground'): another registry,
    whose instance lock and stop mark root's commands never touch. Root's snapshot stopped
    the server: the attendant took it for a stop of the user's, ended with 0 (systemd
    leaves the unit stopped), and the snapshot started the server again unattended. Now
    it waits while the snapshot store or the data directory (shared by all registrations)
    is held: a snapshot, restarts, a branch. Here with two registries of one OS user,
    which is the same to pgmgr."""
    dev, other = twice
    with attending("other", other.env) as proc:
        dev.ok("snapshot", "dev", "s2", "-q")
        time.sleep(1)
        assert proc.poll() is None, proc.communicate()
        for _ in range(3):  # no store lock: the lock on the data directory itself
            dev.ok("restart", "dev", "-q")
        dev.ok("branch", "dev", "b", "-q")
        time.sleep(1)
        assert proc.poll() is None, proc.communicate()
        dev.ok("stop", "b", "-q")
        proc.send_signal(signal.SIGTERM)
        code, err = ended(proc)
        assert code == 0 and "Stopped 'other'" in err, err
        assert dev.state() == "stopped"


def test_a_command_of_another_registration_killed_is_a_failure(
    twice: tuple[Inst, Inst],  # noqa: F811
    tmp_path: Path,
) -> None:
    """The snapshot of the other registration killed with -9 while the server is stopped:
    its mark is in the other registry, but the attendant saw it hold the store: exit 1
    (systemd starts the server again), not 'shut down by someone else' (0)."""
    _, other = twice
    with attending("other", other.env) as proc:
        run = Paused(hooks_dir(tmp_path), "snapshot-copied", "snapshot", "dev", "s2")
        run.reached()
        # It saw the store held (it said so), not just a server gone: after a fixed 0.3 s
        # instead, a starved attendant first looked once the snapshot was killed, and took
        # the clean stop for the user's (exit 0).
        proc.says("STATUS='other' is stopped for another pgmgr command")
        run.kill(signal.SIGKILL)
        code, err = ended(proc)
    assert code == 1, err
    assert "by a pgmgr command of another registration" in err, err
