"""Issue 14 item 6: ``env --shell`` bash/zsh, ``status -q``, ``--log-file`` on init and start,
bounded logs (rotation at start) and ``logs -f`` across a rotation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pgmgr.core import logfile
from tests.helpers import LogFollower, run_pgmgr
from tests.ops.conftest import Instance

# --------------------------------------------------------------------------- env --shell


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_env_shell_bash_and_zsh_are_sh(shared: Instance, shell: str) -> None:
    sh = shared.pgmgr("env", "shared", "--shell", "sh")
    other = shared.pgmgr("env", "shared", "--shell", shell)
    assert other.returncode == 0, other.stderr
    assert other.stdout == sh.stdout and other.stdout.startswith("export PGHOST=")
    if shell == "bash" or shutil.which(shell):
        script = f'eval "$({sys.executable} -m pgmgr env shared --shell {shell})"; echo "$PGDATA"'
        out = subprocess.run(
            [shell, "-c", script], env={**os.environ, **shared.env},
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert out.stdout.strip() == str(shared.datadir)


def test_env_shell_names_the_choices(shared: Instance) -> None:
    proc = shared.pgmgr("env", "shared", "--shell", "csh")
    assert proc.returncode == 2
    assert proc.stderr == "Error: invalid --shell 'csh': use sh, bash, zsh, fish\n"


# --------------------------------------------------------------------------- status -q


def test_status_quiet_says_it_with_the_exit_code_only(fresh: Instance) -> None:
    for args in (["status", "fresh", "-q"], ["status", "--quiet", "-d", str(fresh.datadir)]):
        proc = fresh.pgmgr(*args)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), args
    typer_path = fresh.pgmgr("status", "fresh", "-q", "--check", "--json")  # not the fast path
    assert (typer_path.returncode, typer_path.stdout, typer_path.stderr) == (0, "", "")
    assert fresh.pgmgr("stop", "fresh", "-q").returncode == 0
    stopped = fresh.pgmgr("status", "fresh", "-q")
    assert (stopped.returncode, stopped.stdout, stopped.stderr) == (3, "", "")
    everything = fresh.pgmgr("status", "-q")
    assert (everything.returncode, everything.stdout, everything.stderr) == (0, "", "")
    missing = fresh.pgmgr("status", "nosuch", "-q")
    assert missing.returncode == 4 and missing.stderr.startswith("Error: no instance named")


# --------------------------------------------------------------------------- --log-file


def test_log_file_on_init_and_on_start(ops_dir: Path, template: Path) -> None:
    subprocess.run(["cp", "-a", str(template), str(ops_dir / "a")], check=True)
    logs = ops_dir / "logs"
    logs.mkdir(mode=0o755)
    try:
        init = run_pgmgr("init", "-q", "-d", str(ops_dir / "a"), "--log-file", str(logs / "a.log"))
        assert init.returncode == 0, init.stderr
        start = run_pgmgr("start", "a", "-q", "-p", "auto")
        assert start.returncode == 0, start.stderr
        assert "ready to accept connections" in (logs / "a.log").read_text()
        assert json.loads(run_pgmgr("status", "a", "--json").stdout)["log_file"] == str(
            logs / "a.log"
        )
        assert "ready to accept" in run_pgmgr("logs", "a", "-n", "50").stdout
        # A running server keeps its log: said, not done.
        again = run_pgmgr("start", "a", "--log-file", str(logs / "b.log"))
        assert again.returncode == 0 and f"not applied: --log-file {logs / 'b.log'}" in again.stderr
        assert run_pgmgr("stop", "a", "-q").returncode == 0
        moved = run_pgmgr("start", "a", "-q", "--log-file", "logs/b.log", cwd=ops_dir)
        assert moved.returncode == 0, moved.stderr
        assert "ready to accept connections" in (logs / "b.log").read_text()
        assert run_pgmgr("status", "a", "--json").stdout.count(str(logs / "b.log")) == 1
        bad = run_pgmgr("start", "a", "--log-file", str(logs))
        assert bad.returncode == 2 and "is a directory" in bad.stderr
    finally:
        run_pgmgr("stop", "--all", "-q", "-m", "immediate")


# --------------------------------------------------------------------------- rotation


def test_logs_rotate_at_start_and_stay_bounded(
    fresh: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = Path(json.loads(fresh.pgmgr("status", "fresh", "--json").stdout)["log_file"])
    monkeypatch.setenv(logfile.ENV_MAX_BYTES, "600")  # every start's lines exceed it
    for _ in range(4):
        assert fresh.pgmgr("restart", "fresh", "-q").returncode == 0
    names = sorted(p.name for p in log.parent.iterdir() if p.name.startswith(log.name))
    assert names == [log.name, f"{log.name}.1", f"{log.name}.2"]  # KEEP = 2 old ones
    for path in (log, logfile.rotated(log, 1), logfile.rotated(log, 2)):
        text = path.read_text()
        assert text.count("ready to accept connections") == 1 and len(text) < 20_000, path
    # Without the limit (10 MB by default) nothing rotates.
    monkeypatch.delenv(logfile.ENV_MAX_BYTES)
    assert fresh.pgmgr("restart", "fresh", "-q").returncode == 0
    assert "ready to accept connections" in log.read_text()
    assert not logfile.rotated(log, 3).exists()
    # destroy takes the old logs too
    assert fresh.pgmgr("destroy", "fresh", "-y", "-q").returncode == 0
    assert [p for p in log.parent.iterdir() if p.name.startswith(log.name)] == []


def test_logs_follow_goes_on_across_a_rotation(
    fresh: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(logfile.ENV_MAX_BYTES, "600")
    follower = LogFollower("fresh", fresh.env)
    try:
        follower.following(Path(str(fresh.status()["log_file"])))
        for _ in range(2):
            assert fresh.pgmgr("restart", "fresh", "-q").returncode == 0
        text = follower.wait_for("ready to accept connections", 2)
        assert text.count("ready to accept connections") == 2, text
        assert text.count("database system is shut down") == 2, text  # the old files' ends
    finally:
        follower.close()


def test_follow_reads_the_old_file_to_its_end_then_the_new_one(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("old 1\n")
    lines = logfile.follow(log, 0, poll=0.01)
    assert next(lines) == "old 1\n"
    with open(log, "a") as f:
        f.write("old 2\n")
        log.rename(logfile.rotated(log, 1))  # rotated while its writer still has it open
        log.write_text("new 1\n")
        f.write("old 3\n")
    assert next(lines) == "old 2\nold 3\n"
    assert next(lines) == "new 1\n"
    with open(log, "w") as f:  # truncated in place, then written again
        f.write("n\n")
    assert next(lines) == "n\n"


def test_logs_lines_end_at_newlines_only(tmp_path: Path) -> None:
    """A log line holding \\r, \\x0b, \\x1c or U+2028 (from a role name) stays one line,
    as logs -f shows it: to a pipe as written, on a terminal with those shown as \\xNN."""
    from pgmgr.core import ops

    log = tmp_path / "x.log"
    log.write_bytes("one\rtwo\x0bthree\x1cfour\u2028five\u0085six\nlast\n".encode())
    assert ops.tail(log, 5) == (
        ["one\rtwo\x0bthree\x1cfour\u2028five\u0085six", "last"],
        log.stat().st_size,
    )
    assert ops.tail(log, 1)[0] == ["last"]
    log.write_bytes(b"no newline at the end")
    assert ops.tail(log, 5)[0] == ["no newline at the end"]
    log.write_bytes(b"")
    assert ops.tail(log, 5) == ([], 0)


# --------------------------------------------------------------------------- hostile log text


def test_logs_shows_control_characters_on_a_terminal_and_keeps_them_for_a_pipe(
    shared: Instance, tmp_path: Path
) -> None:
    """Whoever can connect writes into the server log: a role name holding ESC sequences
    (retitle the window, clear the screen) is logged in the FATAL line. On a terminal
    ``pgmgr logs`` shows them as ``\\x1b``; to a pipe the log stays byte for byte."""
    from tests.cli.test_terminal import run_in_pty

    evil = "evil\x1b]0;pwned\x07\x1b[2J"
    st = shared.status()
    psql = subprocess.run(
        [shared.bin("psql"), "-X", "-w", "-h", str(st["socket_dir"]), "-p", str(st["port"]),
         "-U", evil, "-d", "postgres", "-c", "select 1"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert "does not exist" in psql.stderr, psql.stderr
    piped = shared.pgmgr("logs", "shared", "-n", "5")
    assert piped.returncode == 0, piped.stderr
    assert evil in piped.stdout  # raw for grep: the server really logged the sequences
    code, out = run_in_pty(["logs", "shared", "-n", "5"], tmp_path, env=shared.env)
    assert code == 0, out
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J" in out
    assert "\x1b" not in out and "\x07" not in out
