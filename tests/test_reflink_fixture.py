"""The loop-mount fixture of tests/reflink.py cleans up after sessions killed before their
``finally`` (kill -9, a CI timeout): a leftover mount or loop device must never stay."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests import reflink


def _make(base: Path, owner: str) -> str:
    """What the fixture leaves when killed: an image, its loop device, the mount."""
    base.mkdir()
    (base / reflink.OWNER).write_text(owner)
    image, mnt = base / "image", base / "mnt"
    mnt.mkdir()
    reflink._run("truncate", "-s", reflink.SIZE, str(image)).check_returncode()
    made = reflink._run("mkfs.xfs", "-q", "-m", "reflink=1", str(image))
    if made.returncode != 0:
        pytest.skip(f"mkfs.xfs failed: {made.stderr.strip()}")
    loop = reflink._run("losetup", "--find", "--show", str(image))
    if loop.returncode != 0:
        pytest.skip(f"no loop device: {loop.stderr.strip()}")
    dev = loop.stdout.strip()
    if reflink._run("mount", "-t", "xfs", dev, str(mnt)).returncode != 0:
        reflink._run("losetup", "-d", dev)
        pytest.skip("cannot mount a loop device here")
    return dev


def test_sweep_removes_what_a_killed_session_left(tmp_path: Path) -> None:
    why = reflink.why_no_reflink_fs()
    if why:
        pytest.skip(why)
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead, alive = tmp_path / (reflink.PREFIX + "dead"), tmp_path / (reflink.PREFIX + "alive")
    dev = _make(dead, f"{gone.pid} 1")
    alive.mkdir()
    (alive / reflink.OWNER).write_text(reflink._process_id(os.getpid()) or "")
    try:
        assert reflink.sweep_leftovers(tmp_path) == [dead]
        assert not dead.exists() and alive.is_dir()
        backing = reflink._run("losetup", "-n", "-O", "BACK-FILE", dev).stdout
        assert str(dead / "image") not in backing
    finally:  # only if the sweep failed: never detach a device another run reused since
        if dead.exists():
            reflink.sweep_leftovers(tmp_path)
