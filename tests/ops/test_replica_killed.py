"""``pgmgr replica`` killed (SIGKILL) while pg_basebackup copies, on real servers: nothing
it started goes on, and the same command run again makes the standby.

pg_basebackup ``-X stream`` forks a child that streams the WAL through the new slot. The
death signal pgmgr gave pg_basebackup killed pg_basebackup alone: that child, reparented to
init, streamed for ever, holding the slot active, so neither the retry nor ``destroy``
could drop it ("replication slot ... already exists")."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg

from tests.helpers import killed, pgmgr_argv
from tests.ops.conftest import Instance


def basebackups(target: Path) -> list[int]:
    """The pids of the pg_basebackup processes writing ``target``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"pg_basebackup") and str(target).encode() in argv:
            found.append(int(pid))
    return found


def streamer(target: Path) -> int | None:
    """The child pg_basebackup forked to stream the WAL, once it runs."""
    pids = basebackups(target)
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if int(stat[stat.rfind(")") + 2 :].split()[1]) in pids:
            return pid
    return None


def test_a_replica_killed_during_its_base_backup_leaves_no_streamer(
    fresh: Instance, ops_dir: Path
) -> None:
    rec = fresh.record()
    with psycopg.connect(
        host="127.0.0.1", port=int(str(rec["port"])), user="postgres", autocommit=True
    ) as c:  # big enough for the copy to take a while
        c.execute("CREATE TABLE t AS SELECT g, md5(g::text) m FROM generate_series(1, 1500000) g")
    target = ops_dir / "rep"
    args = ("replica", "fresh", "--name", "rep", "-d", str(target), "-q")
    proc = subprocess.Popen(
        pgmgr_argv(*args), env={**os.environ, **fresh.env}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while streamer(target) is None:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "pg_basebackup never streamed"
            time.sleep(0.005)
        killed(proc)
        deadline = time.monotonic() + 15
        while basebackups(target) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert basebackups(target) == [], "pg_basebackup went on after pgmgr was killed"
        again = fresh.pgmgr(*args, timeout=120)
        assert again.returncode == 0, again.stderr
        assert fresh.pgmgr("destroy", "rep", "--yes").returncode == 0
    finally:
        killed(proc)
        for pid in basebackups(target):  # what the bug left, not to outlive the test
            os.kill(pid, signal.SIGKILL)
