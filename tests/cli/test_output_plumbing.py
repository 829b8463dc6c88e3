"""Output that cannot be written: a closed stdout or stderr (``>&-``), a full disk
(``>/dev/full``), a reader that went away (``| head -c1``), an encoding that lacks a
character (``PYTHONIOENCODING=ascii``). Never a traceback, never "Exception ignored", never a
hang, and above all never an operation left half-done because a line could not be printed:
the work is done (and its record kept), and the exit code says the output was lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Work
from tests.helpers import readline_within

#: How a standard stream of the child is set up: captured, closed, /dev/full, or a pipe
#: whose reader has gone.
MODES = ("closed", "full", "gone")


def run_with(
    work: Work,
    *args: str,
    stdout: str = "pipe",
    stderr: str = "pipe",
    stdin: str = "null",
    timeout: float = 120,
    **env: str,
) -> tuple[int, bytes, bytes]:
    """Run ``pgmgr ARGS`` in ``work`` with its stdout and stderr set up as named (MODES,
    or "pipe": captured); its exit code and what was captured. Captured stderr never holds
    a traceback nor the interpreter's "Exception ignored" complaint."""
    modes = ((0, stdin), (1, stdout), (2, stderr))
    closing = " ".join(f"{fd}>&-" for fd, m in modes if m == "closed")
    argv = ["sh", "-c", f'exec "$@" {closing}', "sh", sys.executable, "-m", "pgmgr", *args]
    opened: list[Any] = []

    def stream(mode: str) -> Any:
        if mode == "full":
            opened.append(open("/dev/full", "wb"))  # noqa: SIM115 - closed below
            return opened[-1]
        if mode == "gone":
            r, w = os.pipe()
            os.close(r)
            opened.append(os.fdopen(w, "wb"))
            return opened[-1]
        return subprocess.PIPE if mode == "pipe" else subprocess.DEVNULL

    try:
        proc = subprocess.run(
            argv,
            cwd=work.path,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=stream(stdout),
            stderr=stream(stderr),
            timeout=timeout,
            check=False,
        )
    finally:
        for f in opened:
            f.close()
    err = proc.stderr or b""
    assert b"Traceback" not in err and b"Exception ignored" not in err, err
    return proc.returncode, proc.stdout or b"", err


def status(work: Work, name: str) -> dict[str, Any]:
    doc = json.loads(work.run("status", name, "--json").stdout)  # exit 3: stopped
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("args", [("status", "--json"), ("status",), ("env", "data")])
def test_data_that_cannot_be_written_is_said_once_without_a_traceback(
    work: Work, datadir: Path, args: tuple[str, ...]
) -> None:
    work.ok("start", "-d", "./data", "-p", "auto", "-q")
    code, _, err = run_with(work, *args, stdout="closed")
    assert (code, err) == (1, b"Error: cannot write the output: Bad file descriptor\n")
    code, _, err = run_with(work, *args, stdout="full")
    assert (code, err) == (1, b"Error: cannot write the output: No space left on device\n")
    # A reader that went away (| head) is no error to tell, as for any tool.
    assert run_with(work, *args, stdout="gone")[:3:2] == (1, b"")
    assert status(work, "data")["state"] == "running"


#: What Typer (Click) prints on stdout itself, not through pgmgr.ui: help, the version, the
#: completion script, completion candidates (the environment a shell's Tab sets).
CLICK_OUTPUT: list[tuple[tuple[str, ...], dict[str, str]]] = [
    (("--help",), {}),
    (("-h",), {}),
    (("status", "--help"), {}),
    (("service", "remove", "--help"), {}),
    (("--version",), {}),
    (("--show-completion", "bash"), {}),
    ((), {"_PGMGR_COMPLETE": "complete_bash", "COMP_WORDS": "pgmgr status ", "COMP_CWORD": "2"}),
]


@pytest.mark.parametrize(("args", "env"), CLICK_OUTPUT)
def test_help_and_completion_that_cannot_be_written_fail_as_any_output(
    work: Work, datadir: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    """'pgmgr --help >&-' exited 0 (Click dropped the text without a word), and
    '>/dev/full' said "Error: No space left on device": help, completion and the version
    exit 1 with the same one line as every command's output (none for a reader gone)."""
    work.ok("start", "-d", "./data", "-p", "auto", "-q")
    code, out, err = run_with(work, *args, **env)
    assert code == 0 and out.strip() and err == b"", err
    if env:
        assert out.split() == [b"data"]  # the instance, from the registry
    code, _, err = run_with(work, *args, stdout="closed", **env)
    assert (code, err) == (1, b"Error: cannot write the output: Bad file descriptor\n")
    code, _, err = run_with(work, *args, stdout="full", **env)
    assert (code, err) == (1, b"Error: cannot write the output: No space left on device\n")
    assert run_with(work, *args, stdout="gone", **env)[:3:2] == (1, b"")


def test_usage_errors_are_said_on_stderr_whatever_stdout_is(work: Work) -> None:
    """A bad option's usage error (and 'pgmgr' alone: the help) go to stderr, exit 2,
    whatever became of stdout."""
    for mode in ("pipe", *MODES):
        code, _, err = run_with(work, "status", "--bogus", stdout=mode)
        assert (code, err) == (
            2, b"Error: No such option: --bogus\nHint: see 'pgmgr status --help'\n"
        ), (mode, err)  # fmt: skip
        code, _, err = run_with(work, stdout=mode)
        assert code == 2 and err.startswith(b"Usage: pgmgr [OPTIONS] COMMAND"), (mode, err)


@pytest.mark.parametrize("mode", MODES)
def test_start_init_is_done_and_recorded_whatever_becomes_of_its_messages(
    work: Work, mode: str
) -> None:
    """'Initialized ...' could not be said (stderr closed, full, or its reader gone): the
    start broke off there, and the fresh data directory was removed again."""
    code, _, _ = run_with(work, "start", "--init", "-d", "./d", "-p", "auto", stderr=mode)
    assert code == 0
    assert status(work, "d")["state"] == "running"
    code, _, _ = run_with(work, "snapshot", "d", "s1", stderr=mode)
    assert code == 0
    snaps = json.loads(work.ok("snapshots", "d", "--json").stdout)
    assert [s["snapshot"] for s in snaps] == ["s1"]
    assert status(work, "d")["state"] == "running"
    assert run_with(work, "stop", "d", stdout=mode, stderr=mode)[0] == 0
    assert status(work, "d")["state"] == "stopped"


def test_logs_follow_ends_when_its_reader_has_gone(work: Work, datadir: Path) -> None:
    """With nothing new in the log, 'logs -f | head -n1' waited for the next log line,
    without bound, after head had gone."""
    work.ok("start", "-d", "./data", "-p", "auto", "-q")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgmgr", "logs", "data", "-f", "-n", "1"],
        cwd=work.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert readline_within(proc.stdout)  # type: ignore[arg-type]
        proc.stdout.close()  # type: ignore[union-attr]
        assert proc.wait(timeout=10) == 1
        assert proc.stderr is not None and proc.stderr.read() == b""
    finally:
        proc.kill()
        proc.wait()
    # With no one to write to from the start (>&-), it has nothing to wait for.
    code, _, err = run_with(work, "logs", "data", "-f", "-n", "0", stdout="closed", timeout=10)
    assert (code, err) == (1, b"Error: cannot write the output: Bad file descriptor\n")


def test_a_foreground_server_stays_attended_when_its_log_reader_goes(
    work: Work, datadir: Path
) -> None:
    """'pgmgr start --foreground 2>&1 | head': the next log line could not be copied, and
    pgmgr died of it, leaving the server running with no one to stop it on Ctrl-C."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgmgr", "start", "-d", "./data", "-p", "auto", "--foreground"],
        cwd=work.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert readline_within(proc.stderr).startswith(b"Started")  # type: ignore[arg-type]
        proc.stderr.close()  # type: ignore[union-attr]
        work.ok("reload", "data")  # the server logs that: pgmgr copies it, in vain
        time.sleep(1)
        assert proc.poll() is None, "pgmgr left its server"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert status(work, "data")["state"] == "stopped"
    finally:
        proc.kill()
        proc.wait()


def test_text_the_output_encoding_lacks_is_written_as_the_file_system_has_it(
    work: Work,
) -> None:
    """Under PYTHONIOENCODING=ascii 'pgmgr env' of a data directory named dö ended in a
    traceback; backslash escapes would not do either (eval would export another path)."""
    work.ok("start", "--init", "-d", "./dö", "--name", "d", "-p", "auto", "-q")
    code, out, _ = run_with(work, "env", "d", PYTHONIOENCODING="ascii")
    assert code == 0
    assert f"export PGDATA='{work.path}/dö'\n".encode() in out
    code, out, _ = run_with(work, "status", "d", PYTHONIOENCODING="ascii")
    assert code == 0 and f"{work.path}/dö".encode() in out


def test_a_closed_descriptor_stays_closed_for_the_programs_pgmgr_runs(
    work: Work, datadir: Path
) -> None:
    """'pgmgr psql NAME -c ... >&-': psql's connection to the server took the free number
    1, psql printed its result into it (the server ended the session: "invalid frontend
    message type") and exited 0, the output lost without a word. Likewise with stdin."""
    work.ok("start", "-d", "./data", "-p", "auto", "-q")
    code, _, err = run_with(work, "psql", "data", "--", "-c", "select 'marker'", stdout="closed")
    assert code != 0 and b"could not print result table: Bad file descriptor" in err, err
    log = Path(status(work, "data")["log_file"]).read_text()
    assert "invalid frontend message" not in log, log
    # <&-: psql read its commands from its own connection (the socket took fd 0).
    code, _, err = run_with(work, "psql", "data", stdin="closed", timeout=30)
    assert code != 0 and err.endswith(b"could not read from input file: Bad file descriptor\n")
    assert status(work, "data")["state"] == "running"


def test_a_non_blocking_stdout_gets_every_line(work: Work, datadir: Path) -> None:
    """A parent that left its pipe O_NONBLOCK (Node's child_process, some CI runners) and
    reads slowly: Python's buffered stdout dropped what the pipe could not take at once,
    without an error. 'logs -n 20000' delivered some 2,500 lines and exited 0."""
    work.ok("start", "-d", "./data", "-p", "auto", "-q")
    with Path(status(work, "data")["log_file"]).open("a") as log:
        log.writelines(f"filler line {i:05d}\n" for i in range(20000))
    r, w = os.pipe()
    os.set_blocking(w, False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgmgr", "logs", "data", "-n", "20000"],
        cwd=work.path,
        stdout=w,
        stderr=subprocess.PIPE,
    )
    os.close(w)
    try:
        time.sleep(1)  # a slow reader: the pipe is full long before pgmgr is done
        with os.fdopen(r, "rb") as reader:
            out = reader.read()
        assert proc.wait(timeout=60) == 0
        assert proc.stderr is not None and proc.stderr.read() == b""
    finally:
        proc.kill()
        proc.wait()
    lines = out.splitlines()
    assert len(lines) == 20000 and lines[-1] == b"filler line 19999", lines[-3:]
