"""The Typer-free fast path for ``pgmgr snapshot NAME [SNAP]`` and ``pgmgr restore NAME SNAP
--yes``: what it takes, that it imports no Typer, and that it says exactly what the Typer
commands say."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import pgmgr
from .test_lean import imported, typer_path


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["snapshot", "dev"], ("snapshot", {"name": "dev"})),
        (["snapshot", "dev", "s1", "-q"], ("snapshot", {"name": "dev", "snap": "s1",
                                                        "quiet": True})),
        (["snapshot", "dev", "s1", "--delete", "--json"],
         ("snapshot", {"name": "dev", "snap": "s1", "delete": True, "json": True})),
        (["snapshot", "--online", "dev"], ("snapshot", {"name": "dev", "online": True})),
        (["restore", "dev", "s1", "--yes"], ("restore", {"name": "dev", "snap": "s1",
                                                         "yes": True})),
        (["restore", "-y", "dev", "s1", "--save-current", "--quiet"],
         ("restore", {"name": "dev", "snap": "s1", "yes": True, "save_current": True,
                      "quiet": True})),
        # Typer's: a missing argument, the question (no --yes), one too many, help, repeats.
        (["snapshot"], None),
        (["snapshot", "dev", "s1", "s2"], None),
        (["snapshot", "dev", "--help"], None),
        (["snapshot", "dev", "-d", "x"], None),
        (["restore", "dev", "s1"], None),
        (["restore", "dev", "--yes"], None),
        (["restore", "dev", "s1", "--yes", "--yes"], None),
        (["restore", "dev", "", "--yes"], None),
        (["snapshots", "dev"], None),
        (["branch", "dev", "feat"], ("branch", {"name": "dev", "new": "feat"})),
        (["branch", "dev", "feat", "--from", "s1", "-d", "/srv/f", "-p", "auto", "--start",
          "--json", "-q"],
         ("branch", {"name": "dev", "new": "feat", "from_": "s1", "datadir": Path("/srv/f"),
                     "port": "auto", "start": True, "json": True, "quiet": True})),
        (["branch", "dev"], None),
        (["branch", "dev", "feat", "extra"], None),
        (["branch", "dev", "feat", "--from=s1"], None),
        (["branch", "dev", "feat", "-p", "-1"], None),
        (["branch", "dev", "feat", "--name", "x"], None),
    ],
)  # fmt: skip
def test_fast_args_takes_the_plain_snapshot_and_restore(
    args: list[str], expected: tuple[str, dict[str, Any]] | None
) -> None:
    from pgmgr.entry import fast_args

    assert fast_args(args) == expected


@pytest.mark.parametrize(
    "args",
    [["snapshot", "nosuch", "s1"], ["restore", "nosuch", "s1", "--yes"], ["branch", "nosuch", "x"]],
)
def test_plain_snapshot_and_restore_do_not_import_typer(args: list[str]) -> None:
    names = imported(*args)
    assert "pgmgr.snapactions" in names
    assert not names & {"psycopg", "typer", "click", "rich"}, (args, names)


@pytest.mark.parametrize(
    "args", [["snapshot", "nosuch", "s1"], ["restore", "nosuch", "s1", "--yes"]]
)
def test_plain_snapshot_and_restore_import_neither_typing_nor_hashlib(args: list[str]) -> None:
    """Two commands per snapshot-and-restore, each paying its imports: typing (~2 ms, for
    annotations only) and hashlib with OpenSSL (~3 ms, for secrets.token_hex: random
    names are os.urandom's) are not needed, as root either (as_user no longer preloads
    secrets: tests/core/test_userfs.py)."""
    names = imported(*args)
    assert "pgmgr.core.restore" in names or "pgmgr.core.snapshot" in names
    assert not names & {"typing", "secrets", "hashlib"}, (args, names & {"typing", "secrets"})


def same(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``args`` on the fast path and through Typer; both must say the same."""
    fast, slow = pgmgr(*args, check=False), typer_path(*args)
    assert (fast.stdout, fast.stderr, fast.returncode) == (
        slow.stdout,
        slow.stderr,
        slow.returncode,
    ), args
    return fast


def test_fast_snapshot_and_restore_match_the_typer_commands(
    base: Path, started: Callable[..., dict[str, Any]]
) -> None:
    data = base / "d"
    pgmgr("init", "-d", str(data))
    started(data)
    # errors: no such instance, snapshot or --delete without a name; no --yes without a terminal
    for args in (
        ["snapshot", "nosuch"],
        ["restore", "nosuch", "s1", "--yes"],
        ["restore", "d", "nosuch", "--yes"],
        ["snapshot", "d", "--delete"],
    ):
        assert same(args).returncode != 0
    refused = typer_path("restore", "d", "s1")
    assert refused.returncode == 2 and "without --yes" in refused.stderr
    # the real thing, through each path; the JSON documents differ only in their timings
    took = {
        "fast": json.loads(pgmgr("snapshot", "d", "s1", "--json").stdout),
        "typer": json.loads(typer_path("snapshot", "d", "s2", "--json").stdout),
    }
    back = {
        "fast": json.loads(pgmgr("restore", "d", "s2", "--yes", "--json").stdout),
        "typer": json.loads(typer_path("restore", "d", "s1", "--yes", "--json").stdout),
    }
    # what depends on the state each path found, and the *_ms timings
    # (the second snapshot shares files with the first: snapshot by difference)
    varying = {"snapshot", "path", "created", "files", "size", "copied_bytes", "unchanged_files",
               "method", "shared_files", "shared_with"}  # fmt: skip
    for docs in (took, back):
        assert docs["fast"].keys() == docs["typer"].keys()
        keys = {k for k in docs["fast"] if k not in varying and not k.endswith("_ms")}
        assert {k: docs["fast"][k] for k in keys} == {k: docs["typer"][k] for k in keys}
    assert back["fast"]["was_running"] is True
    assert pgmgr_status(data) == "running"
    fast = pgmgr("snapshot", "d", "s1", "--delete")
    slow = typer_path("snapshot", "d", "s2", "--delete")
    assert fast.returncode == slow.returncode == 0
    assert fast.stderr.replace("'s1'", "'s2'") == slow.stderr == "Deleted snapshot 's2' of 'd'\n"


def pgmgr_status(data: Path) -> str:
    return str(json.loads(pgmgr("status", "-d", str(data), "--json").stdout)["state"])


def test_fast_branch_matches_the_typer_command(base: Path) -> None:
    """``pgmgr branch`` on the fast path says and makes what the Typer command does."""
    data = base / "d"
    pgmgr("init", "-d", str(data))
    for args in (
        ["branch", "nosuch", "x"],
        ["branch", "d", "x", "-p", "0"],
        ["branch", "d", "x", "--from", "nosuch"],
        ["branch", "d", "d"],
    ):
        assert same(args).returncode != 0, args
    docs = {
        "fast": json.loads(pgmgr("branch", "d", "b1", "--json").stdout),
        "typer": json.loads(typer_path("branch", "d", "b2", "--json").stdout),
    }
    assert docs["fast"].keys() == docs["typer"].keys()
    varying = {"name", "datadir", "port", "elapsed_ms"}
    keys = docs["fast"].keys() - varying
    assert {k: docs["fast"][k] for k in keys} == {k: docs["typer"][k] for k in keys}
    assert docs["fast"]["datadir"] == str(base / "b1")
    said = [pgmgr("branch", "d", "b3").stderr, typer_path("branch", "d", "b4").stderr]
    # The base directory first: its random part may hold "b3" or "b4" too (CI once had
    # /dev/shm/pgmgr-speed-fvg1mb40, and the names' replace changed it on one side).
    said = [t.replace(str(base), "BASE") for t in said]
    masked = [re.sub(r"\d+(\.\d+)? (ms|s|kB|MB)|port \d+", "N", t) for t in said]
    assert masked[0].replace("b3", "bX") == masked[1].replace("b4", "bX"), said
    assert "Branched 'b3' from 'd'" in said[0]
