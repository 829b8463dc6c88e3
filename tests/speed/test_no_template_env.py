"""PGMGR_NO_TEMPLATE has one meaning everywhere: the core parses it, the CLI does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgmgr.core import registry, templatekey
from pgmgr.core.errors import UsageError
from tests.helpers import error_lines, run_pgmgr

from .conftest import templates

OFF = ["1", "true", "TRUE", "yes", "on", " On "]  # no template
ON = ["", "0", "false", "False", "no", "off"]  # templates


@pytest.mark.parametrize("value", OFF)
def test_yes_values_disable_templates(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(templatekey.ENV_DISABLE, value)
    assert templatekey.disabled_by_env() is True


@pytest.mark.parametrize("value", ON)
def test_no_values_keep_templates(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(templatekey.ENV_DISABLE, value)
    assert templatekey.disabled_by_env() is False


def test_unset_keeps_templates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(templatekey.ENV_DISABLE, raising=False)
    assert templatekey.disabled_by_env() is False


@pytest.mark.parametrize("value", ["abc", "2", "y", "disable"])
def test_other_values_are_a_usage_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(templatekey.ENV_DISABLE, value)
    with pytest.raises(UsageError, match=templatekey.ENV_DISABLE):
        templatekey.disabled_by_env()


@pytest.mark.parametrize(("value", "copied"), [("false", True), ("off", True), ("yes", False)])
def test_cli_init_follows_the_core_parser(base: Path, value: str, copied: bool) -> None:
    """Typer used to read the variable too, as a bool: 'false' then meant 'templates' to
    the CLI and 'no templates' to the core."""
    datadir = base / "data"
    proc = run_pgmgr("init", "-d", str(datadir), env={templatekey.ENV_DISABLE: value})
    assert proc.returncode == 0, proc.stderr
    assert (datadir / "PG_VERSION").is_file()
    assert bool(templates()) is copied
    assert registry.load("data").password_pending is copied


@pytest.mark.parametrize("args", [["init", "-d"], ["start", "--port", "auto", "--init", "-d"]])
def test_cli_refuses_another_value_naming_the_variable(base: Path, args: list[str]) -> None:
    datadir = base / "data"
    proc = run_pgmgr(*args, str(datadir), env={templatekey.ENV_DISABLE: "abc"})
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
    assert "PGMGR_NO_TEMPLATE" in lines[0] and "'abc'" in lines[0]
    assert not datadir.exists() and templates() == []
    assert registry.names() == []
