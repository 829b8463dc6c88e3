"""Output on a real terminal (a pty): Rich there, and no escape code at all with NO_COLOR."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.cli.conftest import Work


def run_in_pty(
    args: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    watch: Callable[[str], None] | None = None,
) -> tuple[int, str]:
    """Run ``pgmgr ARGS`` with stdout and stderr on one pty; its exit code and output.
    ``watch`` is given the output so far each time more comes."""
    main, secondary = pty.openpty()
    child_env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    child_env.update({"TERM": "xterm-256color", "COLUMNS": "200", **(env or {})})
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgmgr", *args],
        cwd=cwd,
        env=child_env,
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        close_fds=True,
    )
    os.close(secondary)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    exited = False
    while time.monotonic() < deadline:
        # Once it has exited, only what is left in the pty (a process it started in the
        # background may hold the pty open): what it wrote between the last select() and
        # its exit was lost when the loop stopped at the exit.
        ready, _, _ = select.select([main], [], [], 0 if exited else 0.1)
        if ready:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the child closed the pty
                break
            if not data:
                break
            chunks.append(data)
            if watch is not None:
                watch(b"".join(chunks).decode(errors="replace"))
        elif exited:
            break
        else:
            exited = proc.poll() is not None
    os.close(main)
    code = proc.wait(timeout=30)
    return code, b"".join(chunks).decode(errors="replace")


def test_terminal_gets_rich_and_no_color_gets_plain(work: Work, datadir: Path) -> None:
    code, out = run_in_pty(["start", "-d", "./data", "-p", "auto"], work.path)
    assert code == 0, out
    assert "Started 'data'" in out
    code, table = run_in_pty(["status"], work.path)
    assert code == 0
    assert "\x1b[" in table  # Rich on a terminal (bold header): the check below can fail
    assert "━" in table or "─" in table  # a drawn table
    assert "Traceback" not in out + table

    commands = [
        ["status"],
        ["status", "data", "--check"],
        ["versions"],
        ["stop", "data"],
        ["start", "data", "-p", "auto"],
        ["stop", "--all"],
        ["status", "nope"],
    ]
    for args in commands:
        code, out = run_in_pty(args, work.path, env={"NO_COLOR": "1"})
        assert "\x1b" not in out, (args, out)
        assert "Traceback" not in out
    assert code == 4


def test_a_message_wider_than_the_terminal_breaks_between_words(work: Work, datadir: Path) -> None:
    """A message line wider than the terminal was broken by the terminal wherever the
    edge fell: in the middle of a snapshot's name, or of the command that rolls an upgrade
    back. It now breaks between words; a word wider than the line (a URL) stays whole,
    on a row of its own, and a pipe gets the line unbroken."""
    env = {"COLUMNS": "40", "NO_COLOR": "1"}
    code, out = run_in_pty(["start", "-d", "./data", "-p", "auto"], work.path, env=env)
    try:
        assert code == 0, out
        rows = out.replace("\r", "").splitlines()
        assert "Started 'data' (PostgreSQL" in out, out
        for row in rows:
            assert len(row) <= 40 or " " not in row, rows
        assert any(row.startswith("postgresql://") for row in rows), rows  # whole
    finally:
        code, out = run_in_pty(["stop", "data"], work.path, env=env)
        assert code == 0, out
    piped = work.run("start", "data", "-p", "auto", env={"COLUMNS": "40"})
    assert next(ln for ln in piped.stderr.splitlines() if ln.startswith("Started")).count(" ") > 5
    assert work.run("stop", "data").returncode == 0
