"""README claims that follow from the code: checked against the code, so they cannot drift."""

from __future__ import annotations

import inspect
import os
import re

import typer.main

from pgmgr.cli import app
from pgmgr.core.manager import Manager
from pgmgr.core.server import AUTH_METHODS
from tests.helpers import REPO

README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    """The text of README's ``## title`` or ``### title`` section."""
    m = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ )", README, re.M | re.S)
    assert m, f"no section {title!r}"
    return m.group(1)


def takes_datadir(command: str) -> bool:
    cmd = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return any("--datadir" in p.opts for p in cmd.params)


def test_which_commands_take_a_data_dir() -> None:
    text = " ".join(section("Everyday operations").split())
    m = re.search(r"((?:`\w+`,? (?:and )?)+)take an instance NAME or `-d DIR`", text)
    assert m, "README names the commands that take -d DIR"
    with_d = re.findall(r"`(\w+)`", m.group(1))
    assert with_d and all(takes_datadir(c) for c in with_d), with_d
    m = re.search(r"((?:`\w+`,? (?:and )?)+)take only a NAME", text)
    assert m, "README names the commands that take only a NAME"
    name_only = re.findall(r"`(\w+)`", m.group(1))
    assert name_only and not any(takes_datadir(c) for c in name_only), name_only


def test_every_auth_method_is_documented() -> None:
    m = re.search(r"`--auth ([\w|-]+)`", section("`pgmgr init`"))
    assert m and set(m.group(1).split("|")) == set(AUTH_METHODS)
    api = " ".join(section("Python API").split())
    m = re.search(r"`auth` \(([^)]*)\)", api)
    assert m and set(re.findall(r"`([\w-]+)`", m.group(1))) == set(AUTH_METHODS)


def test_run_says_it_copies_the_template() -> None:
    text = " ".join(section("run: a throw-away server around a command").split())
    assert "(`initdb --no-sync`)" not in text, "run copies the cached template by default"
    assert "template" in text and "PGMGR_NO_TEMPLATE" in text


def test_the_context_manager_escalation_is_documented() -> None:
    if "immediate" in inspect.getsource(Manager.__exit__):
        api = " ".join(section("Python API").split())
        assert re.search(r"context manager's exit escalates.*immediate shutdown", api), api


def test_completion_install_is_documented() -> None:
    """Each generated script is named in README's instructions, and the bash one, sourced
    as the bash-completion directory would, registers pgmgr's completion."""
    import shutil
    import subprocess

    text = section("Shell completion")
    for shell, name in (("bash", "pgmgr.bash"), ("zsh", "_pgmgr"), ("fish", "pgmgr.fish")):
        assert (REPO / "completions" / name).is_file()
        assert f"completions/{name}" in text and f"For {shell}" in text, shell
    if shutil.which("bash"):
        script = REPO / "completions" / "pgmgr.bash"
        proc = subprocess.run(
            ["bash", "-c", f"source '{script}' && complete -p pgmgr"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert proc.returncode == 0 and "_pgmgr_completion" in proc.stdout, proc.stderr


def test_readme_documents_config_extensions_and_default_version() -> None:
    assert "pgmgr versions --set-default" in section("`pgmgr versions`")
    assert "mark this version as the default" not in README
    assert "pgmgr config dev set work_mem=64MB" in section("config: the settings pgmgr keeps")
    assert "pgmgr extensions" in section("extensions")
    assert "PGMGR_CONFIG_DIR" in section("Environment variables")


def test_completion_scripts_are_up_to_date() -> None:
    """The scripts in completions/ are what completions/generate.py writes now (pgmgr's zsh
    script included: see pgmgr.zshcomplete)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, str(REPO / "completions" / "generate.py"), "--check"],
        capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
