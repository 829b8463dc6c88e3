"""Lean paths: what 'pgmgr status', '--help' and 'stop' import, and the Typer-free fast path
for 'pgmgr status [--json]' printing exactly what the Typer command prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import pgmgr

TYPER_PATH = "import sys; from pgmgr.cli import main; main(sys.argv[1:])"


def imported(*args: str) -> set[str]:
    """Modules ``python -m pgmgr ARGS`` imports, and their top-level packages (from -X
    importtime)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pgmgr", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            full = line.rsplit("|", 1)[1].strip()
            names |= {full, full.split(".")[0]}
    assert names, proc.stderr
    return names


def typer_path(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", TYPER_PATH, *args],
        # The isolated os.environ, as run_pgmgr passes it: without env= the child would get
        # the C environment, where readline (imported by some test) has set COLUMNS/LINES.
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("args", [["status"], ["status", "--json"]])
def test_status_imports_neither_typer_nor_psycopg_nor_rich(args: list[str]) -> None:
    names = imported(*args)
    assert not names & {"psycopg", "typer", "click", "rich", "pydantic"}, names
    # Core modules only a start or a copy needs (pgconf cost status ~2.5 ms when it was).
    start_only = {"pgconf", "copy", "template", "startup", "startchild", "initdir", "launch"}
    start_only |= {"listen", "logfile"}
    assert not names & {f"pgmgr.core.{m}" for m in start_only}, names


def test_help_and_stop_do_not_import_psycopg_or_rich() -> None:
    for args in (["--help"], ["status", "--help"], ["stop", "nosuch"]):
        names = imported(*args)
        assert "psycopg" not in names, args
        assert "rich" not in names, (args, "no terminal here, so no Rich")


def _strip_uptime(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "uptime"} for r in records]


def test_fast_path_matches_the_typer_command(
    base: Path, started: Callable[..., dict[str, Any]]
) -> None:
    empty_fast, empty_typer = pgmgr("status"), typer_path("status")
    assert (empty_fast.stdout, empty_fast.stderr) == (empty_typer.stdout, empty_typer.stderr)
    assert json.loads(pgmgr("status", "--json").stdout) == []

    pgmgr("init", "-d", str(base / "up"))
    pgmgr("init", "-d", str(base / "down"))
    started(base / "up")
    fast = pgmgr("status", "--json")
    slow = typer_path("status", "--json")
    assert slow.returncode == fast.returncode == 0
    assert _strip_uptime(json.loads(fast.stdout)) == _strip_uptime(json.loads(slow.stdout))
    states = {r["name"]: r["state"] for r in json.loads(fast.stdout)}
    assert states == {"up": "running", "down": "stopped"}

    pgmgr("stop", "-d", str(base / "up"))
    fast, slow = pgmgr("status"), typer_path("status")
    assert (fast.stdout, fast.stderr, fast.returncode) == (slow.stdout, slow.stderr, 0)
    assert "down" in fast.stdout and "stopped" in fast.stdout


def test_fast_path_reports_a_broken_record_like_the_typer_command(base: Path) -> None:
    pgmgr("init", "-d", str(base / "ok"))
    bad = Path(os.environ["PGMGR_STATE_DIR"]) / "instances" / "bad.json"
    bad.write_text("{not json")
    fast, slow = pgmgr("status", "--json"), typer_path("status", "--json")
    assert (fast.stdout, fast.stderr, fast.returncode) == (slow.stdout, slow.stderr, 0)
    assert "bad.json" in fast.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["status"], ("status", {})),
        (["status", "dev", "--json", "--check"], ("status", {"name": "dev", "json": True,
                                                           "check": True})),
        (["start", "-d", "data"], ("start", {"datadir": Path("data")})),
        (["start", "dev", "-p", "auto", "-q"], ("start", {"name": "dev", "port": "auto",
                                                          "quiet": True})),
        (["stop", "--datadir", "./d", "-m", "smart", "--json"],
         ("stop", {"datadir": Path("./d"), "mode": "smart", "json": True})),
        (["stop", "--all"], ("stop", {"all_": True})),
        # Everything else is Typer's: help, other options, --opt=value, odd values, repeats.
        (["start", "--help"], None),
        (["start", "-d", "x", "--init"], None),
        (["start", "-d", "x", "-c", "work_mem=1MB"], None),
        (["start", "--datadir=x"], None),
        (["start", "-d"], None),
        (["start", "-d", ""], None),
        (["start", "-p", "-1"], None),
        (["start", "a", "b"], None),
        (["stop", "-m", "fast", "-m", "smart"], None),
        (["init", "-d", "x"], None),
        ([], None),
    ],
)  # fmt: skip
def test_fast_args_takes_only_the_plain_forms(
    args: list[str], expected: tuple[str, dict[str, Any]] | None
) -> None:
    from pgmgr.entry import fast_args

    assert fast_args(args) == expected


@pytest.mark.parametrize(
    "args", [["start", "-d", "/nonexistent/x"], ["stop", "nosuch"], ["status", "nosuch"]]
)
def test_plain_start_stop_status_do_not_import_typer(args: list[str]) -> None:
    names = imported(*args)
    assert not names & {"psycopg", "typer", "click", "rich", "pydantic"}, (args, names)


def test_fast_start_and_stop_match_the_typer_commands(base: Path) -> None:
    data = str(base / "d")
    pgmgr("init", "-d", data)
    try:
        first = pgmgr("start", "-d", data, "-p", "auto")
        assert first.returncode == 0 and "Started 'd'" in first.stderr, first.stderr
        # Now both say 'already running', the same way.
        for args in (["start", "-d", data], ["start", "d", "--json"], ["status", "d", "--json"]):
            fast, slow = pgmgr(*args), typer_path(*args)
            assert fast.returncode == slow.returncode == 0, (args, fast.stderr, slow.stderr)
            if "--json" in args:
                f, s = json.loads(fast.stdout), json.loads(slow.stdout)
                for r in (f, s):
                    r.pop("uptime"), r.pop("elapsed_ms", None)
                assert f == s, args
            else:
                assert (fast.stdout, fast.stderr) == (slow.stdout, slow.stderr), args
        stopped = pgmgr("stop", "-d", data, "--json")
        assert stopped.returncode == 0 and json.loads(stopped.stdout)["was_running"] is True
    finally:
        typer_path("stop", "-d", data)
    for args in (
        ["stop", "-d", data],  # not running: a no-op, said the same way
        ["stop", "d", "-m", "bogus"],
        ["start", "nosuch"],
        ["stop", "-d", str(base / "missing")],
        ["status", "-d", data],
    ):
        fast, slow = pgmgr(*args, check=False), typer_path(*args)
        assert (fast.stdout, fast.stderr, fast.returncode) == (
            slow.stdout,
            slow.stderr,
            slow.returncode,
        ), args


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every directory: Typer takes it too")
def test_an_unreadable_datadir_option_is_left_to_typer(base: Path) -> None:
    """Typer refuses an existing -d path its user cannot read (a usage error, exit 2); the
    fast path went on and said the data directory cannot be read (exit 4)."""
    from pgmgr.entry import fast_args

    locked = base / "locked"
    locked.mkdir(mode=0o300)
    for args in (["status", "-d", str(locked)], ["stop", "-d", str(locked)]):
        assert fast_args(args) is None, args
        fast, slow = pgmgr(*args, check=False), typer_path(*args)
        assert (fast.stdout, fast.stderr, fast.returncode) == (slow.stdout, slow.stderr, 2)
    assert fast_args(["status", "-d", str(base)]) == ("status", {"datadir": base})


INSPECT_STATE = (
    "import atexit, sys\n"
    "from pgmgr.entry import main\n"
    "atexit.register(lambda: print(type(sys.modules.get('inspect')).__name__))\n"
    "main(sys.argv[1:])\n"
)


@pytest.mark.parametrize("args", [["status"], ["status", "--json"]])
def test_status_loads_neither_typing_nor_inspect(args: list[str]) -> None:
    """typing (~2 ms) and inspect (~6 ms, which dataclasses imports) stay out of status; the
    JSON form loads no table code either."""
    names = imported(*args)
    assert not names & {"typing", "inspect", "ast", "dis"}, names
    if "--json" in args:
        assert "pgmgr.tablefit" not in names
    proc = subprocess.run(
        [sys.executable, "-c", INSPECT_STATE, *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "_DeferredInspect", "inspect was used after all"


def test_the_inspect_stand_in_hands_over_on_first_use() -> None:
    """A dataclass without a docstring (its signature needs inspect) and a direct use both
    get the real module, which then replaces the stand-in."""
    code = (
        "import sys\n"
        "from pgmgr.entry import defer_inspect\n"
        "defer_inspect()\n"
        "import dataclasses, inspect\n"
        "@dataclasses.dataclass\n"
        "class A:\n"
        "    x: int\n"
        "assert A.__doc__ == 'A(x: int)', A.__doc__\n"
        "assert str(inspect.signature(lambda y: y)) == '(y)'\n"
        "import inspect as real\n"
        "assert type(real).__name__ == 'module' and real.signature is inspect.signature\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
