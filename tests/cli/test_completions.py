"""Shell completion: the committed scripts are current, names complete, install works."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import Work
from tests.helpers import REPO, run_pgmgr

GENERATE = REPO / "completions" / "generate.py"


def test_committed_scripts_are_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(GENERATE), "--check"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr + " -> run completions/generate.py"


def test_check_catches_a_stale_script(tmp_path: Path) -> None:
    """The check itself must fail on a stale script, and regenerating must fix it."""
    copy = tmp_path / "completions"
    shutil.copytree(GENERATE.parent, copy)
    (copy / "pgmgr.fish").write_text("# stale\n")
    (copy / "_pgmgr").unlink()
    check = [sys.executable, str(copy / "generate.py"), "--check"]
    stale = subprocess.run(check, capture_output=True, text=True, check=False)
    assert stale.returncode == 1
    assert "pgmgr.fish" in stale.stdout and "_pgmgr" in stale.stdout
    assert "pgmgr.bash" not in stale.stdout
    assert (copy / "pgmgr.fish").read_text() == "# stale\n"  # --check writes nothing
    subprocess.run([sys.executable, str(copy / "generate.py")], check=True)
    assert subprocess.run(check, capture_output=True, check=False).returncode == 0
    for name in ("pgmgr.bash", "_pgmgr", "pgmgr.fish"):
        assert (copy / name).read_text() == (GENERATE.parent / name).read_text()


def complete(words: str, cword: int) -> list[str]:
    proc = run_pgmgr(env={"_PGMGR_COMPLETE": "complete_bash", "COMP_WORDS": words,
                          "COMP_CWORD": str(cword)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout.split()


def test_instance_names_complete(work: Work, datadir: Path) -> None:
    assert complete("pgmgr stop d", 2) == []  # nothing registered yet
    subprocess.run(["cp", "-a", str(datadir), str(work.path / "data2")], check=True)
    work.ok("init", "-d", "./data", "--name", "dev", "-q")
    work.ok("init", "-d", "./data2", "--name", "demo", "-q")
    (work.path / "x").mkdir()
    assert sorted(complete("pgmgr stop d", 2)) == ["demo", "dev"]
    assert complete("pgmgr status dev", 2) == ["dev"]
    assert sorted(complete("pgmgr start ", 2)) == ["demo", "dev"]
    assert complete("pgmgr stop q", 2) == []
    assert "--mode" in complete("pgmgr stop --m", 2)
    assert {"init", "start", "stop", "status", "versions"} <= set(complete("pgmgr ", 1))


def _install_from_bash(home: Path) -> subprocess.CompletedProcess[str]:
    """``pgmgr --install-completion`` typed in bash: Typer finds the shell in the process tree.

    (It ignores a shell named after the option, so a test run with no shell among its
    ancestors, e.g. pytest started from a detached job, would see 'Shell None'.) The trailing
    ``; exit`` keeps bash from exec'ing pgmgr, so bash stays its parent.
    """
    cmd = f"{sys.executable} -m pgmgr --install-completion; exit $?"
    env = dict(os.environ, HOME=str(home), SHELL="/bin/bash")
    return subprocess.run(
        ["/bin/bash", "-c", cmd], capture_output=True, text=True, env=env, check=False, timeout=60
    )


def test_install_completion_bash(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    proc = _install_from_bash(home)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 0, proc.stderr
    rc = (home / ".bashrc").read_text()
    installed = home / ".bash_completions" / "pgmgr.sh"
    assert f"source '{installed}'" in rc
    # what is installed is what completions/ ships
    shipped = (REPO / "completions" / "pgmgr.bash").read_text()
    assert installed.read_text().strip() == shipped.strip()
    # idempotent: a second install does not add a second line
    assert _install_from_bash(home).returncode == 0
    assert (home / ".bashrc").read_text().count("pgmgr.sh") == 1
