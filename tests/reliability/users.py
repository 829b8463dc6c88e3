"""Throwaway OS users for the attack tests (root only): made with ``useradd``, removed with
``userdel`` (and their home) whatever the test did."""

from __future__ import annotations

import contextlib
import pwd
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from pgmgr.core.privileges import ServerUser, lookup
from tests.helpers import REPO


@contextlib.contextmanager
def os_user(role: str, home: bool = False) -> Iterator[ServerUser]:
    """A new unprivileged OS user ``pgr-<role>-<hex>``; with ``home``, a 0755 home under
    /home (PostgreSQL, run as the user, must reach the data dirs made there)."""
    name = f"pgr-{role}-{secrets.token_hex(3)}"[:32]
    argv = ["useradd", "--shell", "/usr/sbin/nologin", "--user-group"]
    argv += ["--create-home", "--home-dir", f"/home/{name}"] if home else ["--no-create-home"]
    subprocess.run([*argv, name], check=True, capture_output=True)
    try:
        if home:
            Path(f"/home/{name}").chmod(0o755)
        user = lookup(name)
        yield user
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
        if home:
            shutil.rmtree(f"/home/{name}", ignore_errors=True)
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            raise AssertionError(f"could not remove the OS user {name}")


def run_as(
    user: str, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``argv`` run as ``user`` (runuser), with a minimal environment plus ``env``."""
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "NO_COLOR": "1"}
    return subprocess.run(
        ["runuser", "-u", user, "--", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
        env={**base, **(env or {})},
    )


def python_for_others() -> tuple[str, dict[str, str]]:
    """A Python interpreter another user can run, and the environment that gives it this
    test run's pgmgr and dependencies (this venv's interpreter may live under /root)."""
    import site

    same = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    exe = str(same) if same.exists() else sys.executable
    return exe, {"PYTHONPATH": ":".join([str(REPO), *site.getsitepackages()])}


def pgmgr_as(
    user: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A real ``pgmgr ARGS`` run as ``user``; a traceback fails the test."""
    exe, pyenv = python_for_others()
    proc = run_as(user, exe, "-m", "pgmgr", *args, env={**pyenv, **(env or {})})
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc
