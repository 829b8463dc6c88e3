"""The lasting default version: ``pgmgr versions --set-default/--unset-default``, its
precedence (-v > POSTGRES_VERSION > the default > the seed's rule), and its private file."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from pgmgr import Manager
from pgmgr.core import userconfig, versions
from pgmgr.core.errors import DatabaseException, VersionNotFound
from tests.conftest import FakeRoot
from tests.helpers import error_lines, run_pgmgr


@pytest.fixture
def installs(fake_pg_root: FakeRoot) -> FakeRoot:
    fake_pg_root.add("15", "15.18")
    fake_pg_root.add("16", "16.4")
    fake_pg_root.add("18", "18.6")
    return fake_pg_root


def config_file() -> Path:
    return Path(os.environ["PGMGR_CONFIG_DIR"]) / "config.json"


def versions_json(*args: str, env: dict[str, str | None] | None = None) -> dict[str, object]:
    proc = run_pgmgr("versions", "--json", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, object] = json.loads(proc.stdout)
    return doc


# flag, POSTGRES_VERSION, stored default -> chosen version, reason
PRECEDENCE = [
    (None, None, None, "18.6", "highest-root"),
    (None, None, "15", "15.18", "default"),
    (None, None, "16.4", "16.4", "default"),
    (None, "16", "15", "16.4", "POSTGRES_VERSION"),
    ("15", "16", "18", "15.18", "flag"),
    ("16", None, "15", "16.4", "flag"),
]


@pytest.mark.parametrize(("flag", "env", "stored", "version", "reason"), PRECEDENCE)
def test_precedence(
    installs: FakeRoot,
    monkeypatch: pytest.MonkeyPatch,
    flag: str | None,
    env: str | None,
    stored: str | None,
    version: str,
    reason: str,
) -> None:
    if env:
        monkeypatch.setenv("POSTGRES_VERSION", env)
    if stored:
        userconfig.set_default_version(stored)
    chosen = versions.select(flag)
    assert (chosen.installation.version, reason) == (version, chosen.reason)
    # the CLI shows the same choice, and why in plain words
    doc = versions_json(*(["-v", flag] if flag else []))
    assert doc["default"] == version
    why = str(doc["why"])
    assert why.startswith(f"Default: {version}, ")
    expected_words = {
        "flag": f"as asked with --version {flag}",
        "POSTGRES_VERSION": f"from POSTGRES_VERSION={env}",
        "default": f"set with 'pgmgr versions --set-default {stored}'",
        "highest-root": f"the highest version under {installs.path}",
    }
    assert expected_words[reason] in why


def test_seed_rule_highest_anywhere(
    make_fake_root: Callable[[str], FakeRoot], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing under the root: the highest found anywhere, unless a default is set."""
    extra = make_fake_root("elsewhere")
    extra.add("14", "14.9")
    extra.add("17", "17.2")
    monkeypatch.setenv("PGMGR_PG_PATHS", str(extra.path))
    monkeypatch.setenv("PGMGR_SOURCES", "extra")
    sel = versions.select()
    assert (sel.installation.version, sel.reason) == ("17.2", "highest")
    assert "the highest version found (none under" in str(versions_json()["why"])
    userconfig.set_default_version("14")
    sel = versions.select()
    assert (sel.installation.version, sel.reason) == ("14.9", "default")


def test_set_and_unset_through_the_cli(installs: FakeRoot) -> None:
    proc = run_pgmgr("versions", "--set-default", "15")
    assert proc.returncode == 0, proc.stderr
    assert "Default version set to 15 (15.18 now" in proc.stderr
    assert "Default: 15.18, set with 'pgmgr versions --set-default 15'." in proc.stderr
    assert json.loads(config_file().read_text()) == {"default_version": "15"}
    # private like the state dir: 0700 directory, 0600 file
    assert stat.S_IMODE(config_file().parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(config_file().stat().st_mode) == 0o600
    doc = versions_json()
    assert doc["default"] == "15.18"
    marked = [v for v in doc["versions"] if v["default"]]  # type: ignore[attr-defined]
    assert [(v["version"], v["reason"]) for v in marked] == [("15.18", "--set-default")]
    # POSTGRES_VERSION still comes first, and versions says so
    doc = versions_json(env={"POSTGRES_VERSION": "16"})
    assert doc["default"] == "16.4"
    assert (
        doc["why"] == "Default: 16.4, from POSTGRES_VERSION=16 (it comes before your default, 15)."
    )
    proc = run_pgmgr("versions", "--unset-default")
    assert proc.returncode == 0, proc.stderr
    assert "Default version removed" in proc.stderr
    assert not config_file().exists()
    assert versions_json()["default"] == "18.6"
    proc = run_pgmgr("versions", "--unset-default")
    assert "No default version was set" in proc.stderr


@pytest.mark.parametrize(
    ("value", "code", "needle"),
    [
        ("11", 1, "PostgreSQL 11 (from --set-default) is not installed; installed: 18.6, 16.4"),
        ("fifteen", 2, "invalid --set-default 'fifteen'"),
        ("", 2, "invalid --set-default ''"),
    ],
)
def test_set_default_refuses(installs: FakeRoot, value: str, code: int, needle: str) -> None:
    proc = run_pgmgr("versions", "--set-default", value)
    assert proc.returncode == code
    assert proc.stdout == ""
    assert needle in error_lines(proc.stderr)[0]
    assert not config_file().exists()  # nothing kept


def test_set_and_unset_together_is_a_usage_error(installs: FakeRoot) -> None:
    proc = run_pgmgr("versions", "--set-default", "15", "--unset-default")
    assert proc.returncode == 2
    assert error_lines(proc.stderr) == [
        "Error: use either --set-default or --unset-default, not both"
    ]


def test_default_no_longer_installed(installs: FakeRoot) -> None:
    userconfig.set_default_version("17")  # as if 17 had been removed since
    with pytest.raises(VersionNotFound) as err:
        versions.select()
    assert "--unset-default" in str(err.value.hint)
    proc = run_pgmgr("versions")
    assert proc.returncode == 1
    lines = error_lines(proc.stderr)
    assert lines[0] == (
        "Error: PostgreSQL 17 (from the default set with 'pgmgr versions --set-default') "
        "is not installed; installed: 18.6, 16.4, 15.18"
    )
    assert lines[1].startswith("Hint: install it, or choose another")


def test_corrupt_file_is_one_error_and_unset_repairs_it(installs: FakeRoot) -> None:
    config_file().parent.mkdir(mode=0o700)
    config_file().write_text("{not json")
    config_file().chmod(0o600)
    proc = run_pgmgr("versions")
    assert proc.returncode == 1
    assert error_lines(proc.stderr)[0] == (
        f"Error: cannot read {config_file()}: not a pgmgr settings file"
    )
    assert run_pgmgr("versions", "--unset-default").returncode == 0
    assert versions_json()["default"] == "18.6"


def test_unsafe_file_is_refused(installs: FakeRoot) -> None:
    """A file others can write could make pgmgr run binaries of their choosing."""
    userconfig.set_default_version("15")
    config_file().chmod(0o666)
    with pytest.raises(DatabaseException, match="others can write it"):
        versions.select()
    proc = run_pgmgr("versions")
    assert proc.returncode == 1
    assert "others can write it (mode 0666)" in error_lines(proc.stderr)[0]
    config_file().chmod(0o600)
    config_file().parent.chmod(0o777)
    proc = run_pgmgr("versions")
    assert proc.returncode == 1
    assert "refusing to use the config directory" in error_lines(proc.stderr)[0]
    config_file().parent.chmod(0o700)
    # a symlink in place of the file is not followed
    target = config_file().parent / "elsewhere.json"
    config_file().rename(target)
    config_file().symlink_to(target)
    proc = run_pgmgr("versions")
    assert proc.returncode == 1
    assert f"cannot read {config_file()}" in error_lines(proc.stderr)[0]


def test_manager_honours_the_default(installs: FakeRoot, tmp_path: Path) -> None:
    userconfig.set_default_version("16")
    pg = Manager("127.0.0.1", 5432, tmp_path / "new", register=False)
    assert pg._server.inst.version == "16.4"
    pg = Manager("127.0.0.1", 5432, tmp_path / "new", pg_version="15", register=False)
    assert pg._server.inst.version == "15.18"
