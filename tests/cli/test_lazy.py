"""The lazy root group: only the command that runs is imported and built, and what lists the
commands (help, completion, the "No such command" hint) says exactly what the built commands
would say."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pgmgr.cli import COMMANDS, build_command
from tests.helpers import REPO, run_pgmgr

#: In a fresh interpreter (Typer reads TYPER_USE_RICH once, at import): each case's
#: (exit code, stdout, stderr), listed from COMMANDS' lines and with every command built.
COMPARE = """
import json, sys
from typer.testing import CliRunner
from pgmgr.cli import PgmgrGroup, app
cases = {
    "help": (["--help"], {}),
    "bare": ([], {}),
    "bash": ([], {"_PGMGR_COMPLETE": "complete_bash", "COMP_WORDS": "pgmgr s", "COMP_CWORD": "1"}),
    "zsh": ([], {"_PGMGR_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "pgmgr "}),
    "fish": ([], {"_PGMGR_COMPLETE": "complete_fish", "_TYPER_COMPLETE_ARGS": "pgmgr "}),
    "typo": (["snapshto"], {}),
}
out = {}
for summaries in (True, False):
    PgmgrGroup.summaries = summaries
    for key, (args, env) in cases.items():
        for cols in ("40", "100", "250"):
            r = CliRunner().invoke(app, args, env={**env, "COLUMNS": cols}, prog_name="pgmgr")
            out.setdefault(f"{key} {cols}", []).append([r.exit_code, r.stdout, r.stderr])
print(json.dumps(out))
"""


def first_paragraph(text: str | None) -> str:
    return (text or "").split("\n\n")[0]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_listed_line_is_the_commands_own(name: str) -> None:
    """COMMANDS[name]'s line is the first paragraph of the command's help: what the help
    listing and completion show of it. Update COMMANDS when a command's help changes."""
    cmd = build_command(name)
    assert cmd.name == name
    assert COMMANDS[name][2] == first_paragraph(cmd.help), "update pgmgr.cli.COMMANDS"
    # nothing else a listing shows of a command
    assert (cmd.short_help, cmd.hidden, cmd.deprecated) == (None, False, False)
    assert not getattr(cmd, "rich_help_panel", None)  # a DefaultPlaceholder(None)


def test_every_command_module_is_listed() -> None:
    modules = {p.stem for p in (REPO / "pgmgr" / "commands").glob("*.py")} - {"__init__", "_common"}
    assert modules == {module for module, _, _ in COMMANDS.values()}


@pytest.mark.parametrize("rich", ["0", "1"])
def test_listings_are_those_of_the_built_commands(rich: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", COMPARE],
        env={"TYPER_USE_RICH": rich, "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = json.loads(proc.stdout)
    for case, (lazy, built) in out.items():
        assert lazy == built, case
    assert "snapshots" in out["help 100"][0][1] + out["help 100"][0][2]
    assert out["typo 100"][0][0] == 2
    assert "Did you mean 'snapshot', 'snapshots'?" in out["typo 100"][0][2]
    bash = out["bash 100"][0][1].split()
    assert bash == ["start", "stop", "status", "snapshot", "snapshots", "service"]


def imported(*args: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pgmgr", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if "|" in line}


@pytest.mark.parametrize(
    "args, module",
    [
        (["--help"], None),
        (["snapshot", "--help"], "snapshot"),
        (["restore", "nosuch", "s1"], "restore"),  # without --yes: the Typer command
        (["cache", "list", "--help"], "cache"),
    ],
)
def test_only_the_command_that_runs_is_imported(args: list[str], module: str | None) -> None:
    names = imported(*args)
    commands = {n.split(".")[2] for n in names if n.startswith("pgmgr.commands.") and
                n != "pgmgr.commands._common"}  # fmt: skip
    expected = {module} if module else set()
    if module == "restore":
        expected.add("snapshot")  # restore.py shares snapshot.py's NAME argument
    assert commands == expected, args


def test_a_lazily_built_command_runs(tmp_path: Path) -> None:
    proc = run_pgmgr("snapshots", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    proc = run_pgmgr("snapshto")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "Error: No such command 'snapshto'. Did you mean 'snapshot', 'snapshots'?",
        "Hint: see 'pgmgr --help'",
    ]
