"""``pgmgr config NAME [set|unset]`` against real servers: live values, reload or restart,
kept across restarts, removed by unset, and bad names or values refused in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Work
from tests.helpers import error_lines


def config(work: Work, *args: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(work.ok("config", "data", *args, "--json").stdout)
    return doc


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in doc["settings"]}


def show(work: Work, name: str) -> str:
    return work.ok("psql", "data", "--", "-Atc", f"show {name}").stdout.strip()


def kept(work: Work) -> dict[str, str]:
    return {e["name"]: e["value"] for e in config(work)["settings"]}


def test_set_reloads_keeps_across_restart_and_unset_removes(work: Work, datadir: Path) -> None:
    work.ok("start", "-d", "./data", "-p", "auto", "-q")
    assert config(work)["settings"] == []
    assert "No settings kept for 'data'" in work.ok("config", "data").stderr
    doc = config(work, "set", "work_mem=12MB", "log_statement=all")
    assert doc["reloaded"] and not doc["restarted"] and doc["restart_needed"] == []
    live = by_name(doc)
    assert live["work_mem"]["live"] == "12MB" and live["work_mem"]["context"] == "user"
    assert live["log_statement"]["live"] == "all"
    assert show(work, "work_mem") == "12MB"  # a new session sees it: the reload applied it
    # kept across a restart and a stop/start
    work.ok("restart", "data", "-q")
    assert show(work, "work_mem") == "12MB"
    work.ok("stop", "data", "-q")
    work.ok("start", "data", "-q")
    assert by_name(config(work))["work_mem"]["live"] == "12MB"
    # the table: setting, kept value, live value
    table = work.ok("config", "data").stdout
    assert any(line.split()[:3] == ["work_mem", "12MB", "12MB"] for line in table.splitlines())
    # unset: removed from what is kept, and the server is back to its own value
    doc = config(work, "unset", "work_mem")
    assert doc["reloaded"]
    assert by_name(doc)["work_mem"]["value"] is None
    assert show(work, "work_mem") == "4MB"
    assert kept(work) == {"log_statement": "all"}
    work.ok("restart", "data", "-q")
    assert show(work, "work_mem") == "4MB"


def test_restart_needed_is_said_and_restart_does_it(work: Work, datadir: Path) -> None:
    work.ok("start", "-d", "./data", "-p", "auto", "-q")
    proc = work.ok("config", "data", "set", "shared_buffers=20MB")
    assert "Restart needed for shared_buffers" in proc.stderr
    doc = config(work)
    entry = by_name(doc)["shared_buffers"]
    assert (entry["live"], entry["pending_restart"]) == ("128MB", True)
    assert "restart needed" in work.ok("config", "data").stdout
    doc = config(work, "set", "shared_buffers=20MB", "--restart")
    assert doc["restarted"] and doc["restart_needed"] == []
    assert by_name(doc)["shared_buffers"]["live"] == "20MB"
    assert show(work, "shared_buffers") == "20MB"


def test_a_restart_postgres_refuses_is_undone(work: Work, datadir: Path) -> None:
    """A value ``postgres -C`` accepts but the server cannot start with (wal_level=minimal
    beside max_wal_senders): ``set --restart`` left the server stopped and the setting
    kept, so every later start failed the same way. It keeps the previous settings again
    and the server runs with them; one Error line says so."""
    work.ok("start", "-d", "./data", "-p", "auto", "-q", "-c", "work_mem=7MB")
    proc = work.run("config", "data", "set", "wal_level=minimal", "--restart")
    assert (proc.returncode, error_lines(proc.stderr)) == (1, [
        "Error: 'data' did not start with wal_level (postgres exited during start-up: FATAL: "
        'WAL streaming (max_wal_senders > 0) requires wal_level "replica" or "logical"); '
        "not kept: it runs again with its previous settings"
    ]), proc.stderr  # fmt: skip
    assert kept(work) == {"work_mem": "7MB"}
    assert show(work, "wal_level") == "replica" and show(work, "work_mem") == "7MB"
    assert "wal_level" not in (datadir / "pgmgr.conf").read_text()
    status = json.loads(work.ok("status", "data", "--json").stdout)
    assert status["state"] == "running" and status.get("stopped_by") is None


def test_stopped_instance_and_start_c_settings(work: Work, datadir: Path) -> None:
    """-c settings given to start are the ones config lists; set on a stopped instance is
    used at the next start."""
    work.ok("start", "-d", "./data", "-p", "auto", "-q", "-c", "work_mem=5MB")
    work.ok("stop", "data", "-q")
    doc = config(work)
    assert not doc["running"]
    assert by_name(doc)["work_mem"] == {
        "name": "work_mem", "value": "5MB", "live": None, "context": None,
        "pending_restart": False, "source": None,
    }  # fmt: skip
    proc = work.ok("config", "data", "set", "work_mem=6MB")
    assert "used from the next start" in proc.stderr
    work.ok("start", "data", "-q")
    assert show(work, "work_mem") == "6MB"


BAD = [
    (["set", "work_mem="], 'invalid value for parameter "work_mem": ""'),
    (["set", "work_mem=lots"], 'invalid value for parameter "work_mem": "lots"'),
    (["set", "work_mem=1"], 'outside the valid range for parameter "work_mem"'),
    (["set", "no_such_setting=1"], 'unrecognized configuration parameter "no_such_setting"'),
    (["set", "port=5999"], "managed by pgmgr"),
    (["set", "config_file=/tmp/x"], "managed by pgmgr"),
    # the next start ran another cluster's data under this instance's name
    (["set", "data_directory=/tmp"], "'data_directory' is managed by pgmgr"),
    (["set", "work_mem"], "expected name=value"),
    (["set", "bad name=1"], "expected name=value"),
    (["set", "work_mem=1\nport=2"], "line break"),
    (["set"], "nothing to set"),
    (["unset", "work_mem"], "'work_mem' is not a setting pgmgr keeps for 'data'"),
    (["unset"], "nothing to unset"),
    (["frobnicate", "x"], "unknown action 'frobnicate'"),
]


@pytest.mark.parametrize(("args", "needle"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_names_and_values_are_one_line_errors(
    work: Work, datadir: Path, args: list[str], needle: str
) -> None:
    work.ok("init", "-d", "./data", "-q")
    proc = work.run("config", "data", *args)
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc.stderr)
    assert lines[0].startswith("Error: ") and needle in lines[0], proc.stderr
    assert all(line.startswith(("Error: ", "Hint: ")) for line in lines)
    assert config(work)["settings"] == []  # nothing kept
    work.ok("start", "data", "-p", "auto", "-q")  # and the instance still starts


def test_quiet_set_and_unset_print_nothing(work: Work, datadir: Path) -> None:
    """-q is "nothing but errors": set and unset printed their table all the same."""
    work.ok("start", "-d", "./data", "-p", "auto", "-q")
    for args in (["set", "work_mem=9MB"], ["unset", "work_mem"], []):
        proc = work.ok("config", "data", *args, "-q")
        assert (proc.stdout, proc.stderr) == ("", ""), args
    assert kept(work) == {}


def test_a_huge_name_or_value_is_not_echoed_whole(work: Work, datadir: Path) -> None:
    """A 100 KB value (a pasted file, a runaway script) is quoted by its first 60
    characters and an ellipsis, by pgmgr's own errors and in postgres's FATAL line (the
    error line held it whole)."""
    huge = "9" * 100_000
    clipped = "9" * 59 + "\u2026"
    work.ok("init", "-d", "./data", "-q")
    cases = [
        (["config", "data", "set", f"work_mem={huge}"], 2),
        (["config", "data", "set", f"x{huge}"], 2),
        (["config", "data", "set", f"w{huge}=1"], 2),
        (["config", "data", "set", f"w{huge}=1\n"], 2),
        (["config", "data", "unset", f"w{huge}"], 2),
        (["start", "data", "-p", "auto", "-c", f"work_mem={huge}"], 1),
        (["start", "--init", "-d", "./new", "-p", "auto", "-c", f"work_mem={huge}"], 1),
    ]
    for args, code in cases:
        proc = work.run(*args)
        assert proc.returncode == code, (args[:3], proc.stderr[:300])
        lines = error_lines(proc.stderr)
        assert lines[0].startswith("Error: ") and clipped in lines[0], lines[0][:300]
        assert all(len(line) < 300 for line in lines), [line[:300] for line in lines]
    assert config(work)["settings"] == []
    assert not (work.path / "new").exists()


def test_enum_hint_and_running_server_untouched(work: Work, datadir: Path) -> None:
    work.ok("start", "-d", "./data", "-p", "auto", "-q", "-c", "work_mem=7MB")
    proc = work.run("config", "data", "set", "wal_level=bogus")
    assert proc.returncode == 2
    assert error_lines(proc.stderr)[1] == "Hint: Available values: minimal, replica, logical."
    assert {e["name"]: e["live"] for e in config(work)["settings"]} == {"work_mem": "7MB"}


def test_concurrent_sets_all_kept(work: Work, datadir: Path) -> None:
    """Each pgmgr re-reads the record under the instance lock: no update is lost."""
    import subprocess
    import sys

    work.ok("init", "-d", "./data", "-q")
    names = ["work_mem", "maintenance_work_mem", "temp_buffers", "log_min_duration_statement"]
    values = ["5MB", "70MB", "9MB", "250"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pgmgr", "config", "data", "set", f"{n}={v}", "-q"],
            cwd=work.path,
        )
        for n, v in zip(names, values, strict=True)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * len(procs)
    assert kept(work) == dict(zip(names, values, strict=True))


def test_missing_data_dir_is_exit_4(work: Work, datadir: Path) -> None:
    import shutil

    work.ok("init", "-d", "./data", "-q")
    shutil.rmtree(datadir)
    proc = work.run("config", "data", "set", "work_mem=8MB")
    assert proc.returncode == 4
    assert error_lines(proc.stderr)[0].startswith(f"Error: data directory {datadir} ")


def test_quotes_and_backslashes_reach_the_server_intact(work: Work, datadir: Path) -> None:
    """pgmgr.conf quotes values as postgresql.conf wants: what is set is what is used."""
    value = "%m [%p] it's a \\ 'test' # not a comment "
    work.ok("start", "-d", "./data", "-p", "auto", "-q")
    doc = config(work, "set", f"log_line_prefix={value}")
    assert doc["reloaded"] and by_name(doc)["log_line_prefix"]["live"] == value
    assert show(work, "log_line_prefix") == value.strip()  # show() strips the trailing space


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_fifo_or_symlink_in_place_of_pgmgr_conf(work: Work, datadir: Path, kind: str) -> None:
    """The data dir's owner swaps pgmgr.conf for a FIFO (a plain open would hang) or a
    symlink to a file of value (writing through it would change that file): the next start
    replaces the entry and never opens what it points at."""
    import os
    import stat

    work.ok("start", "-d", "./data", "-p", "auto", "-q", "-c", "work_mem=9MB")
    work.ok("stop", "data", "-q")
    conf = datadir / "pgmgr.conf"
    conf.unlink()
    target = work.path / "precious.txt"
    target.write_text("precious\n")
    if kind == "fifo":
        os.mkfifo(conf)
    else:
        conf.symlink_to(target)
    proc = work.run("start", "data", "-q", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISREG(conf.lstat().st_mode)
    assert "work_mem = '9MB'" in conf.read_text()
    assert target.read_text() == "precious\n"
    assert show(work, "work_mem") == "9MB"
