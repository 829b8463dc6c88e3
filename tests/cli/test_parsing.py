"""CliRunner tests: parsing, rendering and every error path, in process.

Each error must be exactly one ``Error:`` line (optionally followed by one ``Hint:`` line),
with the exit code of DESIGN.md: 2 usage, 1 error, 3 not running, 4 no such instance.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pgmgr import ui
from pgmgr.cli import COMMANDS, app
from tests.cli.conftest import Work


@pytest.fixture(autouse=True)
def _reset_quiet() -> Any:
    """--quiet sets a process-wide flag; in process, it must not leak into the next test."""
    yield
    ui.settings.quiet = False


def invoke(*args: str, cwd: Path | None = None, monkeypatch: Any = None) -> Any:
    result = CliRunner().invoke(app, list(args))
    # every outcome is an exit code, never an exception escaping the app
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.stdout + result.stderr
    return result


def one_error(result: Any, code: int, *fragments: str) -> str:
    """Assert the exit code and a single ``Error:`` line (plus at most one hint); return it."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code, (result.exit_code, lines)
    assert lines and lines[0].startswith("Error: "), lines
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("Hint: ")), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == ""  # nothing half-printed for scripts
    return str(lines[0])


# --------------------------------------------------------------------------- usage errors (2)

USAGE_ERRORS = [
    (["start", "-d", "x", "-p", "-1"], "invalid --port '-1'"),
    (["start", "-d", "x", "-p", "0"], "invalid --port '0'"),
    (["start", "-d", "x", "-p", "70000"], "invalid --port '70000'"),
    (["start", "-d", "x", "--port", "abc"], "invalid --port 'abc'"),
    (["start", "-d", "x", "-p", ""], "invalid --port ''"),
    (["start", "-d", "x", "-c", "bad"], "invalid setting 'bad'"),
    (["start", "-d", "x", "-c", "=1"], "invalid setting '=1'"),
    (["start", "-d", "x", "-c", "1x=1"], "invalid setting '1x=1'"),
    (["start", "-d", "x", "-c", "port=5433"], "setting 'port' is managed by pgmgr"),
    (["start", "-d", "x", "-c", "listen_addresses=*"], "managed by pgmgr"),
    (["start", "-d", "x", "-c", "work_mem=1\nport=1"], "line break"),
    (["start", "--init"], "--init needs the data directory"),
    (["start", "--init", "dev"], "--init needs the data directory: -d DIR"),
    (["start", "--init", "dev", "-d", "x"], "give -d DIR, not a NAME, with --init"),
    (["start", "dev", "-d", "x"], "not both"),
    (["start", "-d", "x", "--name", "y"], "--name names a new instance: use it with --init"),
    (["status", "dev", "-d", "x"], "not both"),
    (["stop", "dev", "-d", "x"], "not both"),
    (["start", "-d", "./x", "--init", "--name", "bad name"], "invalid instance name 'bad name'"),
    (["start", "-d", "x", "--timeout", "-5"], "--timeout"),
    (["start", "-d", "x", "--timeout", "abc"], "--timeout"),
    # 0 and nan passed the range (nan < 0 is false): refused up front, by every command
    *[
        ([*cmd, "--timeout", t, *end], f"Invalid value for '--timeout': {t} is not a number")
        for cmd, end in (
            (["start", "dev"], []),
            (["stop", "dev"], []),
            (["restart", "dev"], []),
            (["reload", "dev"], []),
            (["replica", "dev"], []),
            (["config", "dev", "set", "work_mem=1MB"], []),
            (["run"], ["--", "true"]),
        )
        for t in ("0", "nan", "-0")
    ],
    (["start", "--bogus"], "No such option: --bogus"),
    (["start", "a", "b"], "unexpected extra argument"),
    (["stop", "-m", "bogus"], "invalid --mode 'bogus'"),
    (["stop", "--mode", "FAST"], "invalid --mode 'FAST'"),
    (["stop", "--all", "dev"], "--all"),
    (["stop", "--all", "-d", "x"], "--all"),
    (["stop", "--timeout", "x"], "--timeout"),
    (["stop"], "no instance given"),
    (["status", "--bogus"], "No such option"),
    (["init"], "Missing option '-d'"),
    (["init", "-d", "x", "--auth", "foo"], "invalid --auth 'foo'"),
    (["init", "-d", "x", "--name", "bad name"], "invalid instance name 'bad name'"),
    (["init", "-d", "x", "--name", "-x"], "invalid instance name '-x'"),
    (["init", "-d", "x", "--name", "a/b"], "invalid instance name"),
    (["init", "-d", "x", "--name", "x" * 64], "invalid instance name"),
    (["init", "-d", "x", "extra"], "initdb options go after '--'"),
    (["init", "-d", "x", "-v", "abc"], "invalid --version 'abc'"),
    (["init", "-d", "x", "-v", "15.x"], "invalid --version"),
    (["versions", "-v", "abc"], "invalid --version"),
    (["nosuchcommand"], "No such command"),
    (["-q"], "No such option"),
]


@pytest.mark.parametrize(("args", "fragment"), USAGE_ERRORS, ids=lambda v: repr(v)[:40])
def test_usage_errors(args: list[str], fragment: str) -> None:
    one_error(invoke(*args), 2, fragment)


def test_usage_error_hints_at_help() -> None:
    result = invoke("start", "--bogus")
    assert result.stderr.splitlines()[1] == "Hint: see 'pgmgr start --help'"


def test_no_args_shows_help() -> None:
    result = invoke()
    assert "Usage" in result.stdout + result.stderr
    assert "start" in result.stdout + result.stderr
    assert "Error" not in result.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help(command: str) -> None:
    """README: every command has --help with an example (the cache and service groups too)."""
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert re.search(r"Example: [^\n]*pgmgr ", result.stdout), result.stdout
    short = invoke(command, "-h")
    assert short.exit_code == 0 and short.stdout == result.stdout


def test_version_flag() -> None:
    import pgmgr

    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"pgmgr {pgmgr.__version__}\n"


# --------------------------------------------------------------------------- not found (4)


@pytest.mark.parametrize("command", ["start", "stop", "status"])
def test_unknown_name(command: str) -> None:
    line = one_error(invoke(command, "nope"), 4, "no instance named 'nope'")
    assert line == "Error: no instance named 'nope'"


@pytest.mark.parametrize("command", ["start", "stop", "status"])
def test_missing_datadir(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    one_error(invoke(command, "-d", str(missing)), 4, f"data directory {missing} does not exist")
    assert not missing.exists()  # nothing created by looking


def test_not_a_datadir(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    one_error(invoke("status", "-d", str(tmp_path / "plain")), 4, "not a PostgreSQL data dir")
    one_error(invoke("start", str(tmp_path / "plain")), 4, "not a PostgreSQL data dir")


# --------------------------------------------------------------------------- errors (1)


def test_init_refuses_a_file(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    one_error(invoke("init", "-d", str(f)), 1, "exists and is not a directory")
    assert f.read_text() == "x"


def test_init_refuses_nonempty(work: Work) -> None:
    d = work.path / "d"
    d.mkdir()
    (d / "keep").write_text("x")
    one_error(invoke("init", "-d", str(d)), 1, "is not empty and is not a PostgreSQL data")
    assert [p.name for p in d.iterdir()] == ["keep"]


def test_unknown_version_is_an_error(tmp_path: Path) -> None:
    line = one_error(invoke("init", "-d", str(tmp_path / "x"), "-v", "99"), 1)
    assert "PostgreSQL 99" in line and "not installed" in line
    assert not (tmp_path / "x").exists()


def test_corrupt_record(isolation: Path) -> None:
    instances = isolation / "state" / "instances"
    instances.mkdir(parents=True)
    (instances / "broken.json").write_text("{not json")
    one_error(invoke("status", "broken"), 1, "instance record", "unreadable")
    # the list still works, reports the bad record on stderr, and prints valid JSON
    listing = invoke("status", "--json")
    assert listing.exit_code == 0
    assert [(r["name"], r["state"]) for r in json.loads(listing.stdout)] == [("broken", "broken")]
    assert listing.stderr.startswith("Error: instance record")


# --------------------------------------------------------------------------- rendering


@pytest.fixture
def registered(work: Work, datadir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The template copy registered as 'dev' (in process, no server started)."""
    monkeypatch.chdir(work.path)
    result = invoke("init", "-d", "./data", "--name", "dev")
    assert result.exit_code == 0, result.stderr
    first = result.stderr.splitlines()[0]
    assert first == f"'dev' is already a data directory ({datadir}); registered"
    return datadir


def test_init_of_a_registered_directory_under_another_name(registered: Path) -> None:
    """One OS user cannot register a data directory twice: 'init -d DIR --name other'
    keeps its one record. It said "'dev' is already a data directory; registered" (exit
    0), as if 'other' had been made; now it says it was registered already, and that
    --name was not applied."""
    result = invoke("init", "-d", "./data", "--name", "other")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"{registered} is already registered as 'dev'; nothing changed",
        f"Warning: not applied: --name other ({registered} stays 'dev')",
        "Hint: --name only names a new instance; one data directory has one record",
    ]
    assert [r["name"] for r in json.loads(invoke("status", "--json").stdout)] == ["dev"]
    again = invoke("init", "-d", "./data")
    assert again.stderr == f"{registered} is already registered as 'dev'; nothing changed\n"


def test_status_rendering_of_a_stopped_instance(registered: Path) -> None:
    result = invoke("status")
    assert result.exit_code == 0  # the list: 0 whatever the states
    rows = [re.split(r"\s{2,}", line.strip()) for line in result.stdout.splitlines()]
    assert rows[0] == [
        "name", "version", "state", "pid", "host:port", "socket dir", "data dir", "uptime",
    ]  # fmt: skip
    assert rows[1][:4] == ["dev", rows[1][1], "stopped", "-"]
    assert rows[1][1].startswith("15.")
    assert rows[1][-2:] == [str(registered), "-"]
    assert "\x1b" not in result.stdout

    one = invoke("status", "dev")
    assert one.exit_code == 3
    assert one.stdout == result.stdout  # same table, same model

    doc = invoke("status", "dev", "--json")
    assert doc.exit_code == 3
    rec = json.loads(doc.stdout)
    assert rec["state"] == "stopped" and rec["pid"] is None and rec["url"] is None
    assert rec["tcp_url"] is None and rec["uptime"] is None
    listed = json.loads(invoke("status", "--json").stdout)
    assert listed == [rec] or [{**r, "uptime": None} for r in listed] == [rec]


def test_init_name_conflict(registered: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    one_error(invoke("init", "-d", str(other), "--name", "dev"), 2, "already used")
    assert not other.exists()


def test_pick_among_several(registered: Path, work: Work) -> None:
    import subprocess

    subprocess.run(["cp", "-a", str(registered), str(work.path / "data2")], check=True)
    assert invoke("init", "-d", "./data2", "-q").exit_code == 0
    line = one_error(invoke("stop"), 2, "no instance given")
    assert "data2" in line and "dev" in line
    # the only one is the default; PGDATA names one too
    stopped = invoke("stop", "data2")
    assert stopped.exit_code == 0 and "'data2' is not running" in stopped.stderr


def test_pgdata_is_the_default(registered: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGDATA", str(registered))
    result = invoke("status", "--json")  # no NAME: PGDATA is not a list default
    assert isinstance(json.loads(result.stdout), list)
    stopped = invoke("stop")
    assert stopped.exit_code == 0 and "'dev' is not running" in stopped.stderr


def test_quiet_in_process(registered: Path) -> None:
    result = invoke("stop", "dev", "-q")
    assert result.exit_code == 0 and result.stderr == "" and result.stdout == ""
    loud = invoke("stop", "dev")
    assert loud.stderr == "'dev' is not running\n"  # the flag did not stick


@pytest.mark.skipif(
    os.geteuid() != 0, reason="as root: a link to a directory the server user can write"
)
def test_init_through_roots_link_to_a_registered_directory(registered: Path) -> None:
    """As root, a path through root's own symlink to a registered data directory (which
    the server user can write: such paths are compared as written) was not found: 'init
    -d LINK --name other' said "'other' ... registered" and a new password "for 'other'",
    and registered nothing. It is the registered one, found by the directory itself."""
    links = Path(tempfile.mkdtemp(prefix="pgmgr-link-"))
    try:
        (links / "link").symlink_to(registered)
        result = invoke("init", "-d", str(links / "link"), "--name", "other")
        assert result.exit_code == 0, result.stderr
        assert result.stderr.splitlines()[:2] == [
            f"{registered} is already registered as 'dev'; nothing changed",
            f"Warning: not applied: --name other ({registered} stays 'dev')",
        ], result.stderr
        assert [r["name"] for r in json.loads(invoke("status", "--json").stdout)] == ["dev"]
    finally:
        shutil.rmtree(links)
