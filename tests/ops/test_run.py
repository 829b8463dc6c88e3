"""``pgmgr run``: a temporary instance around a command, removed whatever happens."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgmgr.core import versions
from tests.conftest import FakeRoot
from tests.helpers import postmasters_under, readline_within, run_pgmgr


def assert_nothing_left(ops_dir: Path) -> None:
    """No server, no temporary directory, no record."""
    assert postmasters_under(ops_dir / "tmp") == []
    assert list((ops_dir / "tmp").iterdir()) == []
    state = Path(os.environ["PGMGR_STATE_DIR"]) / "instances"
    assert not state.exists() or list(state.iterdir()) == []


def test_exit_code_of_a_failing_command_and_nothing_left(ops_dir: Path) -> None:
    proc = run_pgmgr("run", "-q", "--", "false")
    assert proc.returncode == 1, proc.stderr
    assert_nothing_left(ops_dir)


def test_exit_code_is_passed_through(ops_dir: Path) -> None:
    proc = run_pgmgr("run", "-q", "--", "sh", "-c", "exit 7")
    assert proc.returncode == 7, proc.stderr
    assert_nothing_left(ops_dir)


def test_command_sees_a_fast_server_through_pg_vars_and_database_url(ops_dir: Path) -> None:
    psql = versions.select("15").installation.bin("psql")
    script = (
        f'{psql} -XAtc "show fsync" -c "show work_mem" && '
        f'{sys.executable} -c "import os, psycopg; '
        "conn = psycopg.connect(os.environ['DATABASE_URL']); "
        "print(conn.execute('select 40 + 2').fetchone()[0])\""
    )
    proc = run_pgmgr("run", "-v", "15", "-c", "work_mem=5MB", "--", "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["off", "5MB", "42"]
    assert "Temporary PostgreSQL 15" in proc.stderr
    assert_nothing_left(ops_dir)


def test_interrupt_from_the_command_leaves_nothing(ops_dir: Path) -> None:
    proc = run_pgmgr("run", "-q", "--", "sh", "-c", "kill -INT $PPID; sleep 0.2")
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "Interrupted\n"  # as every command says on Ctrl-C
    assert_nothing_left(ops_dir)


def test_sigterm_is_forwarded_to_the_command_and_cleaned_up(ops_dir: Path) -> None:
    t0 = time.monotonic()
    proc = run_pgmgr("run", "-q", "--", "sh", "-c", "kill -TERM $PPID; exec sleep 30")
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert time.monotonic() - t0 < 20
    assert_nothing_left(ops_dir)


@pytest.mark.parametrize("phase", ["init", "start", "command"])
def test_ctrl_c_at_any_moment_leaves_nothing(ops_dir: Path, phase: str) -> None:
    """SIGINT while initdb runs, while the server starts, or while the command runs.

    SIGINT is reset to its default in the child: xdist workers ignore it, and an ignored
    signal stays ignored across exec (so ``sleep`` would not die of the forwarded one).
    """
    child = subprocess.Popen(
        [sys.executable, "-m", "pgmgr", "run", "--", "sleep", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        if phase == "command":
            assert child.stderr is not None
            assert "ready" in readline_within(child.stderr)
        else:
            want = "data" if phase == "init" else "sock"
            while not any((d / want).exists() for d in (ops_dir / "tmp").iterdir()):
                assert time.monotonic() < deadline and child.poll() is None
                time.sleep(0.002)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 130, err
    assert "Traceback" not in err
    assert_nothing_left(ops_dir)


def test_command_not_found_exits_127(ops_dir: Path) -> None:
    proc = run_pgmgr("run", "-q", "--", "no-such-command-pgmgr")
    assert proc.returncode == 127
    assert proc.stderr.startswith("Error: cannot run 'no-such-command-pgmgr'")
    assert_nothing_left(ops_dir)


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("no-such-command-pgmgr", "not found"),
        ("./no-such-file", "not found"),
        ("./not-executable", "not executable"),
        ("./a-directory", "is a directory"),
    ],
)
def test_a_command_that_cannot_run_starts_nothing(
    ops_dir: Path, fake_pg_root: FakeRoot, command: str, why: str
) -> None:
    """Checked before anything: the only PostgreSQL is a fake that logs every run of its
    ``postgres`` (version probes included), and it never runs."""
    fake_pg_root.add("15")
    (ops_dir / "not-executable").write_text("#!/bin/sh\n")
    (ops_dir / "a-directory").mkdir()
    t0 = time.monotonic()
    proc = run_pgmgr("run", "--", command, "arg", cwd=ops_dir)
    assert proc.returncode == 127
    assert proc.stderr.splitlines()[0] == f"Error: cannot run {command!r}: {why}"
    assert fake_pg_root.call_count() == 0  # no postgres was spawned, not even --version
    assert time.monotonic() - t0 < 10
    assert_nothing_left(ops_dir)


def test_unknown_version_is_one_error(ops_dir: Path) -> None:
    proc = run_pgmgr("run", "-v", "9.1", "--", "true")
    assert proc.returncode == 1 and proc.stderr.startswith("Error: PostgreSQL 9.1")
    assert_nothing_left(ops_dir)


@pytest.mark.parametrize("bad", ['q"uote', "line\nbreak"], ids=["quote", "line-break"])
def test_a_temp_dir_no_socket_can_be_in_is_not_used(ops_dir: Path, bad: str) -> None:
    """TMPDIR (or the plugin's pgmgr_tmpdir) whose path holds a double quote or a line
    break: every 'pgmgr run' and plugin session failed ("invalid socket directory ...: it
    holds a double quote"). /tmp is used instead, as for one too deep for a socket path."""
    odd = ops_dir / "tmp" / bad
    odd.mkdir()
    odd.chmod(0o755)
    proc = run_pgmgr("run", "-q", "--", "sh", "-c", 'echo "$PGHOST"', env={"TMPDIR": str(odd)})
    assert proc.returncode == 0, proc.stderr
    sock = Path(proc.stdout.strip())
    assert sock.is_absolute() and not str(sock).startswith(str(odd)), sock
    assert not sock.parent.exists()  # removed at the end, like any run's
    odd.rmdir()
    assert_nothing_left(ops_dir)
