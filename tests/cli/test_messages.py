"""What pgmgr says in the everyday cases of issue 14: options a running server did not take,
hints that fit the command, a crash named as one, help without ``Error:``, Ctrl-C said the
same way everywhere, times counted once, and what ``stop --all --json`` did per instance."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import sys
import time
from pathlib import Path

import pytest

from pgmgr.core import privileges
from pgmgr.core.errors import DatabaseException
from tests.cli.conftest import Work
from tests.helpers import error_lines

# --------------------------------------------------------------------------- item 4


def test_start_of_a_running_server_names_the_options_it_did_not_apply(
    work: Work, datadir: Path
) -> None:
    first = json.loads(work.ok("start", "-d", "./data", "-p", "auto", "--json").stdout)
    port = first["port"]
    other = str(port + 1 if port < 65535 else port - 1)
    args = ["-p", other, "-H", "::1", "-c", "work_mem=7MB", "--init", "--name", "renamed"]
    proc = work.ok("start", "-d", "./data", *args)  # still exit 0: it is running
    lines = error_lines(proc.stderr)
    assert lines[0].startswith("'data' is already running"), lines
    assert lines[1] == (
        f"Warning: 'data' was already running; not applied: --port {other}, --host ::1, "
        "-c work_mem=7MB, --name renamed"
    )
    assert lines[2].startswith("Hint: to apply them, stop it and start it with them: ")
    assert (
        f"'pgmgr stop data && pgmgr start data --port {other} --host ::1 -c work_mem=7MB'"
        in (lines[2])
    )
    assert "this one stays 'data'" in lines[2]
    # -q silences the chatter, not the warning; --json lists the same options.
    quiet = work.ok("start", "data", "-q", "-p", other)
    assert (
        error_lines(quiet.stderr)[0]
        == f"Warning: 'data' was already running; not applied: --port {other}"
    )
    doc = json.loads(work.ok("start", "data", "--json", "-c", "work_mem=7MB").stdout)
    assert doc["already_running"] is True and doc["port"] == port
    assert doc["not_applied"] == [{"option": "-c", "value": "work_mem=7MB"}]
    # What matches the running server is not reported; -p auto asks for any port.
    same = work.ok("start", "data", "-p", str(port), "-H", "127.0.0.1")
    assert "Warning" not in same.stderr
    assert "Warning" not in work.ok("start", "data", "-p", "auto").stderr
    assert json.loads(work.ok("status", "data", "--json").stdout)["port"] == port


# --------------------------------------------------------------------------- item 9


@pytest.mark.parametrize("target", ["./notpg", "/", "./absent"])
def test_destroy_of_no_data_directory_does_not_suggest_creating_one(
    work: Work, target: str
) -> None:
    (work.path / "notpg").mkdir()
    (work.path / "notpg" / "keep.txt").write_text("mine")
    proc = work.run("destroy", target, "-y")
    assert proc.returncode == 4
    lines = error_lines(proc.stderr)
    assert len(lines) == 2 and lines[0].startswith("Error: data directory ")
    assert (
        lines[1] == "Hint: nothing to destroy there; 'pgmgr status' lists the instances pgmgr knows"
    )
    assert (work.path / "notpg" / "keep.txt").read_text() == "mine"


def test_init_is_suggested_only_where_init_could_make_a_data_directory(work: Work) -> None:
    (work.path / "full").mkdir()
    (work.path / "full" / "f").write_text("x")
    (work.path / "empty").mkdir()
    assert "Hint: create it with 'pgmgr init -d " in work.run("status", "./empty").stderr
    assert "Hint: create it with 'pgmgr init -d " in work.run("status", "./nothere").stderr
    for target in ("./full", "/"):
        proc = work.run("status", target)
        assert proc.returncode == 4 and "pgmgr init" not in proc.stderr, proc.stderr


def test_unreachable_directory_hint_is_grammatical(tmp_path: Path) -> None:
    """The hint reads for both things checked: "the data directory", "the PostgreSQL
    binaries". ``nobody`` stands in for the server user; it cannot enter a 0700 dir."""
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    nobody = privileges.ServerUser("nobody", 65534, 65534, (65534,), "/")
    for what in ("data directory", "PostgreSQL binaries"):
        with pytest.raises(DatabaseException) as e:
            privileges.check_reachable(closed / "x", nobody, what)
        assert e.value.hint is not None
        assert e.value.hint.startswith(f"put the {what} elsewhere (e.g. under /srv or /var/lib)")


def test_status_after_kill_9_says_the_server_is_gone(work: Work, datadir: Path) -> None:
    pid = json.loads(work.ok("start", "-d", "./data", "-p", "auto", "--json").stdout)["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # a zombie until its parent (the init process) reaps it
    proc = work.run("status", "data", "--json")
    assert proc.returncode == 3
    doc = json.loads(proc.stdout)
    assert doc["state"] == "crashed"
    assert (
        doc["detail"] == f"stale postmaster.pid: the server (pid {pid}) is gone without "
        "shutting down (crashed or killed)"
    )


@pytest.mark.parametrize("args", [["cache"], []])
def test_a_group_without_subcommand_prints_its_help_not_an_error(
    work: Work, args: list[str]
) -> None:
    proc = work.run(*args)
    assert proc.returncode == 2
    assert "Error" not in proc.stderr
    assert proc.stderr.startswith(f"Usage: pgmgr {' '.join(args)}".rstrip() + " [OPTIONS] COMMAND")
    assert "\nCommands:\n" in proc.stderr and len(proc.stderr.splitlines()) > 5


def test_started_time_does_not_count_the_init(work: Work) -> None:
    """With --no-template, init (initdb) takes far longer than the start; the two reported
    times must add up to less than the whole command took (the init counted once)."""
    t0 = time.monotonic()
    proc = work.ok("start", "-d", "./fresh", "--init", "--no-template", "-p", "auto", "-v", "15")
    wall = time.monotonic() - t0

    def seconds(word: str) -> float:
        m = re.search(rf"^{word} .* in ([\d.]+) (ms|s)", proc.stderr, re.M)
        assert m, proc.stderr
        return float(m[1]) / (1000 if m[2] == "ms" else 1)

    assert seconds("Initialized") + seconds("Started") <= wall


def _answer_prompt(work: Work, args: list[str], keys: list[bytes]) -> tuple[int, list[str]]:
    """Run ``pgmgr ARGS`` on a pty (its controlling terminal) and type each of ``keys`` at
    the next ``[y/N]`` question; its exit code and output lines."""
    work.ok("init", "-q", "-d", "./data", "-v", "15")
    if args[0] == "restore":
        work.ok("snapshot", "data", "s1", "-q")
    pid, fd = pty.fork()
    if pid == 0:  # the child: pgmgr with the pty as its controlling terminal
        os.chdir(work.path)
        os.execv(sys.executable, [sys.executable, "-m", "pgmgr", *args])  # noqa: S606
    out, typed = b"", 0
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if typed < len(keys) and out.count(b"[y/N]") > typed:
                os.write(fd, keys[typed])  # at once: the question is out, input() may not be
                typed += 1  # reached yet
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
        status = _exit_status(pid, out)
    finally:
        os.close(fd)
    assert (work.path / "data" / "PG_VERSION").exists()
    return os.waitstatus_to_exitcode(status), out.decode().replace("\r", "").splitlines()


def _exit_status(pid: int, out: bytes, wait: float = 10) -> int:
    """The wait status of ``pid``, which must exit within ``wait`` s of the end of its
    output; else it is killed and the test fails with what it printed (not a wait without
    end: an ordinary-user run once hung here, after a Ctrl-C at restore's prompt)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    state = Path(f"/proc/{pid}/status").read_text() if Path(f"/proc/{pid}").exists() else ""
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    sig = [ln for ln in state.splitlines() if ln.startswith(("State", "Sig", "Shd"))]
    raise AssertionError(f"pgmgr did not exit; it printed {out!r}; {sig}")


@pytest.mark.parametrize(
    ("args", "said"),
    [(["destroy", "data"], "Nothing removed"), (["restore", "data", "s1"], "Nothing changed")],
)
def test_ctrl_d_at_a_prompt_is_no(work: Work, datadir: Path, args: list[str], said: str) -> None:
    """End of input at '[y/N]' is a refusal, as an empty answer is: it said "Interrupted"
    (exit 130), as a Ctrl-C does. A wrong answer asks again."""
    code, lines = _answer_prompt(work, args, [b"maybe\n", b"\x04"])  # \x04: Ctrl-D
    assert code == 1, lines
    assert "Error: answer y or n" in lines and lines[-1] == said, lines


@pytest.mark.parametrize(
    "args", [["destroy", "data"], ["restore", "data", "s1"], ["upgrade", "data", "-v", "18"]]
)
def test_ctrl_c_at_a_prompt_ends_the_line_and_says_interrupted(
    work: Work, datadir: Path, args: list[str]
) -> None:
    """destroy, restore and upgrade alike (restore's and upgrade's said '[y/N]: ^CInterrupted'
    on one line)."""
    # the terminal's Ctrl-C: SIGINT to its foreground group
    code, lines = _answer_prompt(work, args, [b"\x03"])
    assert code == 130, lines
    assert lines[-1] == "Interrupted", lines
    assert lines[-2].endswith("[y/N]: ^C"), lines  # ^C: the terminal's echo


@pytest.mark.parametrize(("snap", "code"), [("typo", 4), ("../s1", 2)])
def test_restore_asks_nothing_about_a_snapshot_that_is_not_there(
    work: Work, datadir: Path, snap: str, code: int
) -> None:
    """On a terminal, 'restore data typo' asked "Replace the data of 'data' by snapshot
    'typo'? [y/N]" and only after a 'y' said there is no such snapshot (an invalid name
    too): the error comes first now, as upgrade's do."""
    got, lines = _answer_prompt(work, ["restore", "data", snap], [b"n\n"])  # if asked (the bug)
    text = "\n".join(lines)
    assert "[y/N]" not in text, text
    assert got == code, text
    assert text.startswith("Error: ") and "Traceback" not in text, text


def test_stop_all_json_says_what_happened_to_each(work: Work, template_dir: Path) -> None:
    import subprocess

    for name in ("up", "down"):
        subprocess.run(["cp", "-a", str(template_dir), str(work.path / name)], check=True)
    work.ok("start", "-d", "./up", "-p", "auto", "-q")
    work.ok("init", "-d", "./down", "-q")
    results = json.loads(work.ok("stop", "--all", "--json").stdout)
    by_name = {r["name"]: r for r in results}
    assert by_name["up"]["was_running"] is True and isinstance(by_name["up"]["pid"], int)
    assert by_name["down"]["was_running"] is False and by_name["down"]["pid"] is None
    assert {r["state"] for r in results} == {"stopped"}
    assert "stopped" not in by_name["down"]  # no "stopped": false for a stopped instance


# --------------------------------------------------------------------------- item 5


def _foreground(work: Work, *extra: str) -> str:
    """Run ``start --foreground``, make the server log a line while attached, stop it with
    SIGINT; pgmgr's stderr."""
    import subprocess

    err = (work.path / "fg.err").open("w+")
    child = subprocess.Popen(
        [sys.executable, "-m", "pgmgr", "start", "-d", "./data", "-p", "auto", "--foreground",
         *extra],
        cwd=work.path, stdout=subprocess.DEVNULL, stderr=err,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while work.run("status", "-d", "./data", "-q").returncode != 0:
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        work.run("psql", "data", "--", "-X", "-d", "no_such_db_logged", "-c", "select 1")
        time.sleep(0.5)  # the log is copied every 0.1 s
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        err.seek(0)
        text = err.read()
        err.close()
    return text


def test_foreground_streams_the_server_log_and_quiet_silences_it(work: Work, datadir: Path) -> None:
    text = _foreground(work)
    for line in (
        "database system is ready to accept connections",
        'FATAL:  database "no_such_db_logged" does not exist',  # while attached
        "received fast shutdown request",
        "database system is shut down",
    ):
        assert line in text, text
    # In order: started, attached, the server's own lines, stopped.
    assert text.index("Started 'data'") < text.index("ready to accept connections")
    assert text.index("database system is shut down") < text.index("Stopped 'data'")
    assert _foreground(work, "-q") == ""


def test_error_lines_show_control_characters(tmp_path: Path) -> None:
    """A path (or anything else) holding ESC sequences is shown, not obeyed, in an error."""
    from tests.helpers import run_pgmgr

    bad = tmp_path / "x\x1b]0;pwned\x07\x1b[2J"
    proc = run_pgmgr("status", "-d", str(bad))
    assert proc.returncode == 4, proc.stderr
    assert "x\\x1b]0;pwned\\x07\\x1b[2J" in proc.stderr
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr


def test_os_errors_name_the_operation_they_were_doing(tmp_path: Path) -> None:
    """An OSError that reaches the user says what pgmgr was doing, as the failing call named
    it with ``doing``, not just 'Not a directory: X' (real failing calls on a path under a
    regular file)."""
    from pgmgr.core import paths
    from pgmgr.core.errors import describe_os_error, doing

    afile = tmp_path / "afile"
    afile.write_text("")
    nd = f"{afile} is a regular file, not a directory"  # "Not a directory", explained
    with pytest.raises(OSError) as made, doing("create the directory"):
        (afile / "sub").mkdir(parents=True)  # raised inside pathlib
    assert describe_os_error(made.value) == f"cannot create the directory {afile}/sub: {nd}"
    with pytest.raises(OSError) as inner, doing("copy"), doing("open"):
        os.open(afile / "x", os.O_RDONLY)  # the innermost name counts
    assert describe_os_error(inner.value) == f"cannot open {afile}/x: {nd}"
    with pytest.raises(OSError) as moved, doing("rename"):
        os.rename(afile / "x", afile / "y")
    assert describe_os_error(moved.value) == f"cannot rename {afile}/x -> {afile}/y: {nd}"
    with pytest.raises(OSError) as unnamed:
        os.open(afile / "x", os.O_RDONLY)  # no name: the error and its file, as before
    assert describe_os_error(unnamed.value) == f"{afile}/x: {nd}"
    with pytest.raises(OSError) as temp:  # the error names the temporary file, not its dir
        paths.write_atomic(afile / "x.json", b"")
    assert describe_os_error(temp.value).startswith(
        f"cannot create the temporary file {afile}/.x.json."
    )
    assert describe_os_error(OSError(5, "Input/output error")) == "Input/output error"


def test_the_operation_needs_no_source_and_survives_the_privilege_boundary(work: Work) -> None:
    """The name is carried by the exception: code whose source cannot be read (a .pyc-only
    install, a file changed since it was imported) names it all the same, and so does an
    error raised as the server user (as_user pickles it back to root)."""
    import pickle

    from pgmgr.core import userfs
    from pgmgr.core.errors import describe_os_error

    afile = work.path / "afile"  # the server user can reach it
    afile.write_text("")
    src = (
        "import os\nfrom pgmgr.core.errors import doing\n"
        "def make(p):\n    with doing('create the directory'):\n        os.mkdir(p)\n"
    )
    space: dict[str, object] = {}
    exec(compile(src, str(work.path / "gone.py"), "exec"), space)  # noqa: S102 - our constant
    want = f"cannot create the directory {afile}/sub: {afile} is a regular file, not a directory"
    with pytest.raises(OSError) as made:
        space["make"](afile / "sub")  # type: ignore[operator]
    assert describe_os_error(made.value) == want
    assert describe_os_error(pickle.loads(pickle.dumps(made.value))) == want  # noqa: S301
    user = privileges.lookup("postgres") if os.geteuid() == 0 else None
    with pytest.raises(OSError) as crossed:
        userfs.as_user(user, space["make"], afile / "sub")  # type: ignore[arg-type]
    assert describe_os_error(crossed.value) == want


def test_os_errors_users_meet_name_the_operation(work: Work) -> None:
    """The places a user meets an OSError keep saying what failed, and a file on the way
    is named as the cause (tests/cli/test_not_a_directory): a config directory, a data
    directory and a log file under a file; the same lines as root."""
    afile = work.path / "afile"
    afile.write_text("")
    is_a_file = f"{afile} is a regular file, not a directory"
    proc = work.run("versions", "--set-default", "15", env={"PGMGR_CONFIG_DIR": f"{afile}/c"})
    assert (proc.returncode, proc.stderr) == (1, f"Error: cannot look at {afile}/c: {is_a_file}\n")
    proc = work.run("init", "-d", f"{afile}/sub", "-q")
    assert (proc.returncode, proc.stderr) == (
        1, f"Error: cannot make data directory {afile}/sub: {is_a_file}\n"
    )  # fmt: skip
    work.ok("init", "-d", "data", "-q")
    proc = work.run("start", "data", "-p", "auto", "--log-file", f"{afile}/x.log", "-q")
    assert (proc.returncode, proc.stderr) == (
        2, f"Error: invalid --log-file '{afile}/x.log': {is_a_file}\n"
    )  # fmt: skip


def test_unusable_state_dir_is_named_and_an_unusable_cache_is_no_error(tmp_path: Path) -> None:
    from tests.helpers import run_pgmgr

    afile = tmp_path / "afile"
    afile.write_text("")
    proc = run_pgmgr("init", "-d", str(tmp_path / "d"), env={"PGMGR_STATE_DIR": f"{afile}/s"})
    assert (proc.returncode, proc.stderr) == (
        1,
        f"Error: cannot use {afile}/s as pgmgr's state directory: {afile} is a regular file, "
        "not a directory\n"
        "Hint: set PGMGR_STATE_DIR to a directory of your own\n",
    )
    # an unusable cache only costs speed where it can (see test_versions)
    proc = run_pgmgr("status", env={"PGMGR_CACHE_DIR": f"{afile}/c"})
    assert proc.returncode == 0 and "Error" not in proc.stderr, proc.stderr


def test_status_of_an_unlistable_registry_is_an_error_not_no_instances(tmp_path: Path) -> None:
    """An instances directory that cannot be listed (here: not a directory; EACCES alike)
    is said, not taken for an empty registry ('No instances; create one ...', exit 0)."""
    from tests.helpers import run_pgmgr

    state = tmp_path / "state"
    state.mkdir()
    (state / "instances").write_text("")
    for args in (["status"], ["status", "--json"]):
        proc = run_pgmgr(*args, env={"PGMGR_STATE_DIR": str(state)})
        assert (proc.returncode, proc.stdout, proc.stderr) == (
            1,
            "",
            f"Error: cannot list {state}/instances: Not a directory\n",
        ), args


@pytest.mark.parametrize(
    "args", [["destroy", "data"], ["restore", "data", "s1"], ["upgrade", "data", "-v", "18"]]
)
def test_a_closed_stdin_is_no_terminal_to_ask_on(work: Work, args: list[str]) -> None:
    """``pgmgr destroy data <&-``: with stdin closed, Python's sys.stdin is None, and the
    check for a terminal ended in an AttributeError traceback."""
    import subprocess

    work.ok("init", "-q", "-d", "./data", "-v", "15")
    if args[0] == "restore":
        work.ok("snapshot", "data", "s1", "-q")
    proc = subprocess.run(
        ["sh", "-c", 'exec "$0" "$@" <&-', sys.executable, "-m", "pgmgr", *args],
        cwd=work.path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert error_lines(proc.stderr)[0].startswith(
        f"Error: refusing to {args[0]} 'data' without --yes"
    )
    assert (work.path / "data" / "PG_VERSION").exists()
