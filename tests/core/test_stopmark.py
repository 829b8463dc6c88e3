"""The stop mark of a record (pgmgr.core.stopmark), read: only what pgmgr writes counts,
and a command counts as still at work only while its very process runs."""

from __future__ import annotations

import os

import pytest

from pgmgr.core import process, stopmark
from pgmgr.core.registry import Instance


def inst(mark: object) -> Instance:
    it = Instance("a", "/x", "15", "15.1", "/usr/lib/postgresql/15/bin")
    it.stopped_by = mark  # type: ignore[assignment]
    return it


@pytest.mark.parametrize(
    "mark",
    [
        None,
        {},
        {"command": "snap\nshot", "pid": 1, "at": 1.0},  # would break the one-line error
        {"command": "snapshot", "pid": "x", "at": 1.0},
        {"command": "snapshot", "pid": 0, "at": 1.0},
        {"command": "snapshot", "pid": 1, "at": 1e301},  # time.localtime would overflow
        {"command": "snapshot", "pid": 1, "at": float("nan")},
        {"command": "snapshot", "pid": 1},
    ],
)
def test_a_mark_pgmgr_does_not_write_is_ignored(mark: object) -> None:
    assert stopmark.read(inst(mark)) is None


def test_active_only_while_the_same_process_runs() -> None:
    me, parent = os.getpid(), os.getppid()
    started = process.start_time(parent)
    assert started is not None
    found = stopmark.read(inst({"command": "snapshot", "pid": parent, "at": 5.0,
                                "started": started}))  # fmt: skip
    assert found is not None and found.active
    reused = stopmark.read(inst({"command": "snapshot", "pid": parent, "at": 5.0,
                                 "started": started - 100}))  # fmt: skip
    assert reused is not None and not reused.active  # the pid names another process now
    assert stopmark.left(inst({"command": "restore", "pid": me, "at": 5.0})) is None
    gone = stopmark.left(inst({"command": "restore", "pid": 2**22 + 12345, "at": 5.0}))
    assert gone is not None and "by 'pgmgr restore' (pid" in gone.sentence("a")


def test_this_process_with_a_reused_pid_is_not_the_command() -> None:
    """A mark left by a killed command whose pid this very process got since (pid reuse):
    it read as still at work ('which starts it again when it is done')."""
    me = os.getpid()
    started = process.start_time(me)
    assert started is not None
    mine = stopmark.read(inst({"command": "snapshot", "pid": me, "at": 5.0, "started": started}))
    assert mine is not None and mine.active
    old = stopmark.read(inst({"command": "snapshot", "pid": me, "at": 5.0,
                              "started": started - 100}))  # fmt: skip
    assert old is not None and not old.active


def test_a_step_of_the_clock_does_not_make_a_command_at_work_look_gone() -> None:
    """The start time from the wall clock (boot time + ticks) moves with a step of the
    clock (NTP, settimeofday): a command at work then read as gone ('ended without
    starting it again'). The clock of a shared machine cannot be stepped in a test: the
    mark below is the one written before a step of 100 s (its wall-clock start 100 s off),
    its start in ticks since boot unchanged."""
    parent = os.getppid()
    started, ticks = process.start_time(parent), process.start_ticks(parent)
    assert started is not None and ticks is not None
    mark = {"command": "upgrade", "pid": parent, "at": 5.0, "started": started - 100,
            "ticks": ticks, "boot": process.boot_id()}  # fmt: skip
    found = stopmark.read(inst(mark))
    assert found is not None and found.active
    reused = stopmark.read(inst({**mark, "ticks": ticks - 1}))  # another process, same pid
    assert reused is not None and not reused.active
    rebooted = stopmark.read(inst({**mark, "boot": "another-boot"}))  # ticks mean nothing
    assert rebooted is not None and not rebooted.active
    hand_made = stopmark.read(inst({**mark, "ticks": "x"}))
    assert hand_made is None
