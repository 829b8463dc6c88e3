"""README's zsh completion, installed as it says (``completions/_pgmgr`` in a directory on
``$fpath``, then ``compinit``): the first Tab of a new shell completes. Typer's script only
registered its function on that Tab (the completion came from the second Tab on). Also what
``pgmgr --show-completion zsh`` (and so ``--install-completion``) writes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")

#: one Tab in a new interactive zsh, read back through zsh's own pseudo-terminal module
DRIVER = r"""
zmodload zsh/zpty
zpty z "HOME=$HOME TERM=dumb PATH=$PATH zsh -i"
sleep 1
zpty -r -t z junk
zpty -w -n z $'pgmgr sta\t'
sleep 3
out=""
while zpty -r -t z chunk; do out+=$chunk; done
zpty -d z
print -r -- "$out"
"""


def first_tab(home: Path, script: str, tmp_path: Path) -> str:
    zfunc = home / ".zfunc"
    zfunc.mkdir(parents=True)
    (zfunc / "_pgmgr").write_text(script)
    (home / ".zshrc").write_text("fpath+=~/.zfunc; autoload -Uz compinit; compinit\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "pgmgr").write_text(f'#!/bin/sh\nexec {sys.executable} -m pgmgr "$@"\n')
    (bindir / "pgmgr").chmod(0o755)
    env = {
        **os.environ,
        "HOME": str(home),
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "PGMGR_STATE_DIR": str(tmp_path / "state"),
        "PGMGR_CACHE_DIR": str(tmp_path / "cache"),
    }
    done = subprocess.run(
        ["zsh", "-f", "-c", DRIVER], env=env, capture_output=True, text=True, timeout=60
    )
    return done.stdout


def test_the_first_tab_completes(tmp_path: Path) -> None:
    script = (ROOT / "completions" / "_pgmgr").read_text()
    out = first_tab(tmp_path / "home", script, tmp_path)
    assert "status" in out and "start" in out, out


def test_show_completion_writes_the_same_script() -> None:
    # Typer finds the shell from the process tree: run pgmgr as a child of zsh
    done = subprocess.run(
        ["zsh", "-f", "-c", f"{sys.executable} -m pgmgr --show-completion; true"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == (ROOT / "completions" / "_pgmgr").read_text().strip()
