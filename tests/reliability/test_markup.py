"""Names, paths and messages are printed as typed, never parsed as Rich markup (issue 10):
a data directory named ``[/oops]`` must not crash ``pgmgr status`` on a terminal, and
``[bold red]x`` prints literally. Through a real terminal (a pty), through a Rich console
forced to be a terminal, and through CliRunner."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pgmgr import statusview, ui
from pgmgr.cli import app
from tests.cli.test_terminal import run_in_pty
from tests.helpers import copy_datadir
from tests.reliability.conftest import pgmgr

NASTY = ["[/oops]", "[bold red]x", "[link=file:///etc]y"]


def _register(template: Path, work: Path, i: int, text: str) -> Path:
    datadir = copy_datadir(template, work / f"d{i}" / text)
    run = pgmgr("init", "-q", "-d", str(datadir), "--name", f"m{i}")
    assert run.returncode == 0, str(run)
    return datadir


@pytest.fixture
def nasty_instances(template: Path, work: Path) -> list[Path]:
    return [_register(template, work, i, text) for i, text in enumerate(NASTY)]


def test_status_on_a_real_terminal(nasty_instances: list[Path], work: Path) -> None:
    start = pgmgr("start", "m0", "-p", "auto")  # a running one has a socket dir and uptime
    assert start.returncode == 0, str(start)
    try:
        code, out = run_in_pty(["status"], work)
        assert code == 0, out
        assert "Traceback" not in out and "MarkupError" not in out, out
        assert "\x1b[" in out  # Rich did draw it (so this test can fail)
        flat = out.replace("\r", "")
        for datadir in nasty_instances:
            assert datadir.name in flat, flat
        assert "[bold red]x" in flat
        assert "\x1b[1;31mx" not in out  # not turned bold red
        code, out = run_in_pty(["status", "m1"], work)
        assert code == 3 and "[bold red]x" in out and "Traceback" not in out, out
    finally:
        assert pgmgr("stop", "m0").returncode == 0


def _forced_terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """Rich as on a terminal (force_terminal), drawing the spinner into a buffer; a table
    it renders reaches stdout (through ui.write, as all output)."""
    from rich.console import Console

    buf = io.StringIO()
    monkeypatch.setattr(ui, "_fancy", lambda stream: True)
    monkeypatch.setattr(
        ui, "_console", lambda stream: Console(file=buf, force_terminal=True, width=250)
    )
    return buf


def test_table_through_a_forced_rich_terminal(
    nasty_instances: list[Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _forced_terminal(monkeypatch)
    assert statusview.show() == 0
    out = capsys.readouterr().out
    assert "\x1b[" in out
    for datadir in nasty_instances:
        assert str(datadir) in out, out
    ui.table(["[/c]"], [["[bold]cell"]], title="[/title]")
    out = capsys.readouterr().out
    assert "[/c]" in out and "[bold]cell" in out and "[/title]" in out


def test_spinner_text_is_not_markup(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = _forced_terminal(monkeypatch)
    errors: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    monkeypatch.setattr(ui.settings, "quiet", False)
    with ui.spinner("Initializing in /tmp/[/oops] and [bold red]x"):
        # Until it is drawn (or its thread failed): a fixed sleep could end before the
        # spinner's thread, late on a loaded machine, drew it (and then it never is).
        deadline = time.monotonic() + 30
        while "[/oops]" not in buf.getvalue() and not errors and time.monotonic() < deadline:
            time.sleep(0.01)
    assert errors == []
    assert "[/oops]" in buf.getvalue()


def test_cli_runner_prints_names_literally(nasty_instances: list[Path]) -> None:
    run = CliRunner().invoke(app, ["status", "--json"])
    assert run.exit_code == 0, run.output
    for datadir in nasty_instances:
        assert str(datadir) in run.stdout
    run = CliRunner().invoke(app, ["status"])
    assert run.exit_code == 0 and not isinstance(run.exception, Exception), run.output
    assert "[bold red]x" in run.stdout
    run = CliRunner().invoke(app, ["status", "[bold red]nope"])
    assert run.exit_code == 4 and isinstance(run.exception, SystemExit)
    assert "[bold red]nope" in run.stderr
