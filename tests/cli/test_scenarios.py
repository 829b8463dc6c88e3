"""The user's scenarios: ``pgmgr`` as a real process against real PostgreSQL servers."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.cli.conftest import Work
from tests.helpers import error_lines

#: The fields README documents for ``pgmgr status --json``; scripts rely on every one.
STATUS_FIELDS = {
    "role",
    "primary",
    "replay_lag_bytes",
    "replay_lag_ms",
    "name",
    "state",
    "pid",
    "version",
    "host",
    "port",
    "socket_dir",
    "datadir",
    "started_at",
    "uptime",
    "log_file",
    "url",
    "detail",
    "latency_ms",
    "tcp_url",
    "server_user",
    "superuser",
}


def status_json(work: Work, *target: str) -> Any:
    proc = work.run("status", "--json", *target)
    assert proc.returncode in (0, 3), proc.stderr
    return json.loads(proc.stdout)


def show(url: str, setting: str) -> str:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(f"SHOW {setting}").fetchone()
    assert row is not None
    return str(row[0])


# --------------------------------------------------------------------------- the scenario


def test_start_init_connect_status_stop(work: Work) -> None:
    """``pgmgr start -d ./data --init`` in an empty dir, connect with what status reports,
    stop, and ``status -d ./data`` exits 3."""
    started = work.ok("start", "-d", "./data", "--init", "--port", "auto")
    assert started.stdout == ""  # messages go to stderr
    assert "Initialized" in started.stderr and "Started 'data'" in started.stderr
    assert (work.path / "data" / "PG_VERSION").is_file()

    records = status_json(work)
    assert isinstance(records, list) and len(records) == 1
    rec = records[0]
    assert set(rec) >= STATUS_FIELDS, STATUS_FIELDS - set(rec)
    assert rec["name"] == "data" and rec["state"] == "running"
    assert rec["datadir"] == str((work.path / "data").resolve())
    assert isinstance(rec["pid"], int) and isinstance(rec["port"], int)
    assert rec["port"] != 5432
    assert rec["uptime"] is not None and rec["uptime"] >= 0
    assert rec["version"].startswith("15.")

    # the socket URL and the TCP URL both work, and it is really this server
    for url in (rec["url"], rec["tcp_url"]):
        assert show(url, "port") == str(rec["port"])
        assert show(url, "data_directory") == rec["datadir"]
    with psycopg.connect(rec["tcp_url"]) as conn:
        assert conn.info.host == "127.0.0.1"

    # over TCP without the password: refused (scram-sha-256 by default)
    no_password = re.sub(r"//([^:@/]+):[^@]*@", r"//\1@", rec["tcp_url"])
    assert no_password != rec["tcp_url"]
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(no_password, connect_timeout=5).close()

    # a single instance by dir: an object, not a list, and the same record
    one = status_json(work, "-d", "./data")
    assert one["pid"] == rec["pid"] and one["url"] == rec["url"]

    stopped = work.ok("stop", "-d", "./data")
    assert "Stopped 'data'" in stopped.stderr
    after = work.run("status", "-d", "./data")
    assert after.returncode == 3, after.stderr
    assert re.search(r"\bstopped\b", after.stdout)
    assert status_json(work, "data")["state"] == "stopped"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(rec["url"], connect_timeout=2).close()


def test_versions_lists_both_installs(work: Work) -> None:
    proc = work.ok("versions", "--json")
    doc = json.loads(proc.stdout)
    majors = {v["major"] for v in doc["versions"]}
    assert {"15", "18"} <= majors
    assert sum(1 for v in doc["versions"] if v["default"]) == 1
    table = work.ok("versions")
    assert "15.18" in table.stdout or "15." in table.stdout
    assert "\x1b" not in table.stdout


def test_status_of_nothing(work: Work) -> None:
    unknown = work.run("status", "nope")
    assert unknown.returncode == 4
    assert error_lines(unknown.stderr)[0] == "Error: no instance named 'nope'"
    missing = work.run("status", "-d", "./missing")
    assert missing.returncode == 4
    assert "does not exist" in error_lines(missing.stderr)[0]
    empty = work.ok("status", "--json")
    assert json.loads(empty.stdout) == []


# --------------------------------------------------------------------------- no-ops, --json


def test_start_running_and_stop_stopped_are_noops(work: Work, datadir: Path) -> None:
    first = json.loads(work.ok("start", "-d", "./data", "-p", "auto", "--json").stdout)
    assert first["already_running"] is False and first["state"] == "running"
    assert set(first) >= STATUS_FIELDS | {"elapsed_ms"}

    again = work.ok("start", "-d", "./data")
    assert "already running" in again.stderr
    again_json = json.loads(work.ok("start", "data", "--json").stdout)
    assert again_json["already_running"] is True
    assert again_json["pid"] == first["pid"] and again_json["port"] == first["port"]

    stop = json.loads(work.ok("stop", "data", "--json").stdout)
    assert stop["was_running"] is True and stop["pid"] == first["pid"]
    assert stop["state"] == "stopped"
    stop2 = work.ok("stop", "data")
    assert "not running" in stop2.stderr
    stop2_json = json.loads(work.ok("stop", "-d", "./data", "--json").stdout)
    assert stop2_json["was_running"] is False and stop2_json["state"] == "stopped"


def test_check_reports_latency(work: Work, datadir: Path) -> None:
    work.ok("start", "-d", "./data", "-p", "auto", "-q")
    rec = json.loads(work.ok("status", "data", "--json", "--check").stdout)
    assert isinstance(rec["latency_ms"], float) and 0 < rec["latency_ms"] < 5000
    plain = json.loads(work.ok("status", "data", "--json").stdout)
    assert plain["latency_ms"] is None  # only --check connects
    table = work.ok("status", "data", "--check")
    assert re.search(r"running \(\d+\.\d ms\)", table.stdout), table.stdout
    work.ok("stop", "data", "-q")
    stopped = work.run("status", "data", "--check", "--json")
    assert stopped.returncode == 3
    assert json.loads(stopped.stdout)["latency_ms"] is None


def test_quiet_prints_nothing(work: Work, datadir: Path) -> None:
    for args in (
        ("start", "-d", "./data", "-p", "auto", "-q"),
        ("start", "data", "--quiet"),
        ("stop", "data", "-q"),
        ("stop", "data", "-q"),
        ("init", "-d", "./fresh", "-q", "--", "--no-sync"),
        ("start", "-d", "./fresh", "--init", "-p", "auto", "-q"),
    ):
        proc = work.ok(*args)
        assert proc.stderr == "", (args, proc.stderr)
        assert proc.stdout == "", (args, proc.stdout)
    # errors still show
    bad = work.run("start", "nope", "-q")
    assert bad.returncode == 4 and bad.stderr.startswith("Error: ")


def test_no_escape_codes_when_piped(work: Work, datadir: Path) -> None:
    """Not a terminal: plain text on both streams, every command (NO_COLOR on a terminal is
    test_terminal's)."""
    env = {"NO_COLOR": None, "TERM": "xterm-256color"}
    outputs = [
        work.ok("start", "-d", "./data", "-p", "auto", env=env),
        work.ok("status", env=env),
        work.ok("status", "data", "--check", env=env),
        work.ok("versions", env=env),
        work.ok("stop", "--all", env=env),
        work.run("status", "nope", env=env),
    ]
    for proc in outputs:
        assert "\x1b" not in proc.stdout + proc.stderr, proc.args


# --------------------------------------------------------------------------- init


def test_init_json_refuses_nonempty_and_registers_existing(work: Work) -> None:
    made = json.loads(work.ok("init", "-d", "./db", "--name", "dev", "--json").stdout)
    assert made["initialized"] is True and made["name"] == "dev"
    assert "password" not in made  # never printed
    assert made["datadir"] == str((work.path / "db").resolve())
    assert (work.path / "db" / "PG_VERSION").is_file()
    marker = work.path / "db" / "base"
    before = {p.name for p in marker.iterdir()}

    # registering again: same instance, initdb not run (the catalog is untouched)
    again = json.loads(work.ok("init", "-d", "./db", "--json").stdout)
    assert again["initialized"] is False and again["name"] == "dev"
    assert {p.name for p in marker.iterdir()} == before

    # an existing data dir pgmgr does not know yet: registered, not re-initialized
    (work.path / "state2").mkdir()
    other = work.ok("init", "-d", "./db", env={"PGMGR_STATE_DIR": str(work.path / "state2")})
    assert "already a data directory" in other.stderr

    junk = work.path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine\n")
    refused = work.run("init", "-d", "./junk")
    assert refused.returncode == 1
    assert error_lines(refused.stderr) == [
        f"Error: {junk} is not empty and is not a PostgreSQL data directory"
    ]
    assert sorted(p.name for p in junk.iterdir()) == ["notes.txt"]  # nothing lost
    assert (junk / "notes.txt").read_text() == "mine\n"
    assert json.loads(work.ok("status", "--json").stdout)[0]["name"] == "dev"  # junk not added


def test_init_passes_extra_initdb_args(work: Work, datadir: Path) -> None:
    work.ok("init", "-d", "./sums", "--", "--data-checksums", "--no-sync")
    work.ok("start", "sums", "-p", "auto", "-q")
    assert show(status_json(work, "sums")["url"], "data_checksums") == "on"
    # the control: PostgreSQL 15 (the template) has none by default
    work.ok("start", "-d", "./data", "-p", "auto", "-q")
    assert show(status_json(work, "data")["url"], "data_checksums") == "off"


def test_failed_initdb_leaves_nothing(work: Work) -> None:
    proc = work.run("init", "-d", "./x", "--encoding", "BOGUS")
    assert proc.returncode == 1
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: initdb failed with exit code 1:")
    assert "BOGUS" in lines[0]
    assert not (work.path / "x").exists()
    assert json.loads(work.ok("status", "--json").stdout) == []


# --------------------------------------------------------------------------- start options


def test_settings_reach_the_server(work: Work, datadir: Path) -> None:
    work.ok(
        "start", "-d", "./data", "-p", "auto", "-c", "work_mem=12345kB", "--setting",
        "application_name=from-pgmgr", "-q",
    )  # fmt: skip
    url = status_json(work, "data")["url"]
    assert show(url, "work_mem") == "12345kB"
    assert show(url, "application_name") == "from-pgmgr"
    # settings are remembered for the next start
    work.ok("stop", "data", "-q")
    work.ok("start", "data", "-p", "auto", "-q")  # the last port may be taken by now
    assert show(status_json(work, "data")["url"], "work_mem") == "12345kB"


def test_version_18(work: Work, datadir: Path) -> None:
    proc = work.ok("start", "-d", "./pg18", "--init", "-v", "18", "-p", "auto")
    assert "PostgreSQL 18" in proc.stderr
    rec = status_json(work, "pg18")
    assert rec["version"].startswith("18.")
    assert show(rec["url"], "server_version").startswith("18.")
    assert show(rec["tcp_url"], "server_version").startswith("18.")

    # a 15 data dir cannot be run by 18, whether registered or not
    refused = work.run("start", "-d", "./data", "-v", "18", "-p", "auto")
    assert refused.returncode == 1
    lines = error_lines(refused.stderr)
    assert lines[0].startswith("Error: data directory") and "PostgreSQL 15" in lines[0]
    assert lines[1].startswith("Hint:") and "-v 15" in lines[1]
    work.ok("start", "-d", "./data", "-p", "auto", "-q")
    assert show(status_json(work, "data")["url"], "server_version").startswith("15.")
    work.ok("stop", "data", "-q")
    assert work.run("start", "data", "-v", "18").returncode == 1
    assert work.run("status", "data").returncode == 3  # and it did not start


def test_stop_all_and_modes(work: Work, template_dir: Path) -> None:
    import subprocess

    for name in ("a", "b", "c"):
        subprocess.run(["cp", "-a", str(template_dir), str(work.path / name)], check=True)
        work.ok("start", "-d", f"./{name}", "-p", "auto", "-q")
    pids = {r["name"]: r["pid"] for r in status_json(work)}
    assert len(set(pids.values())) == 3

    for name, mode in (("a", "smart"), ("b", "immediate")):
        proc = work.ok("stop", name, "-m", mode)
        assert f"Stopped '{name}'" in proc.stderr
        assert work.run("status", name).returncode == 3

    work.ok("start", "a", "-p", "auto", "-q")
    results = json.loads(work.ok("stop", "--all", "--mode", "fast", "--json").stdout)
    assert {r["name"]: r["was_running"] for r in results} == {"a": True, "b": False, "c": True}
    assert {r["state"] for r in results} == {"stopped"}
    assert [r["state"] for r in status_json(work)] == ["stopped"] * 3


def test_smart_mode_waits_for_clients(work: Work, datadir: Path) -> None:
    """smart waits for sessions and never escalates: with a client connected it times out."""
    work.ok("start", "-d", "./data", "-p", "auto", "-q")
    url = status_json(work, "data")["url"]
    with psycopg.connect(url):
        proc = work.run("stop", "data", "-m", "smart", "--timeout", "0.5")
        assert proc.returncode == 1
        assert "did not stop within" in error_lines(proc.stderr)[0]
        assert work.run("status", "data").returncode == 0  # still there
    work.ok("stop", "data", "-m", "fast")


def test_names_work_instead_of_dirs(work: Work, datadir: Path) -> None:
    work.ok("init", "-d", "./data", "--name", "dev")
    work.ok("start", "dev", "-p", "auto", "-q")
    assert status_json(work, "dev")["datadir"] == str(datadir.resolve())
    assert work.run("status", "dev").returncode == 0
    assert work.run("status", "-d", "./data").returncode == 0
    work.ok("stop", "dev", "-q")
    assert work.run("status", "dev").returncode == 3
    # and from another directory, the name still finds it
    assert work.run("status", "dev", cwd="/").returncode == 3


def test_port_in_use(work: Work, datadir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = work.run("start", "-d", "./data", "-p", str(port))
        assert proc.returncode == 1
        lines = error_lines(proc.stderr)
        assert lines[0] == f"Error: port {port} on 127.0.0.1 is already in use"
        assert lines[1].startswith("Hint:") and "--port auto" in lines[1]
        assert len(lines) == 2
    assert work.run("status", "-d", "./data").returncode == 3


def test_bad_host_is_one_clear_error(work: Work, datadir: Path) -> None:
    """A name that is not loopback (it would not resolve either) is refused before the port
    is looked at: servers listen on loopback only."""
    for port in ("auto", "5999"):
        proc = work.run("start", "-d", "./data", "-H", "no-such-host.invalid", "-p", port)
        assert proc.returncode == 2
        lines = error_lines(proc.stderr)
        assert lines == [
            "Error: invalid --host 'no-such-host.invalid': pgmgr servers listen on loopback "
            "only, not on no-such-host.invalid (127.0.0.1, ::1, localhost, a list of them, or "
            "'' for the unix socket only)"
        ], lines


# --------------------------------------------------------------------------- --foreground


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_foreground_stops_cleanly_on_signal(work: Work, datadir: Path, signame: str) -> None:
    import os
    import signal
    import subprocess
    import sys

    err = (work.path / "fg.err").open("w+")
    child = subprocess.Popen(
        [sys.executable, "-m", "pgmgr", "start", "-d", "./data", "-p", "auto", "--foreground"],
        cwd=work.path,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    try:
        deadline = time.monotonic() + 30
        while work.run("status", "-d", "./data").returncode != 0:
            assert child.poll() is None, "pgmgr --foreground exited early"
            assert time.monotonic() < deadline, "the server never came up"
            time.sleep(0.05)
        server_pid = status_json(work, "data")["pid"]
        time.sleep(0.3)  # attached: still running after a while
        assert child.poll() is None
        os.kill(child.pid, getattr(signal, signame))
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        err.seek(0)
        stderr = err.read()
        err.close()
    assert "Traceback" not in stderr
    assert "Stopped 'data'" in stderr
    assert work.run("status", "-d", "./data").returncode == 3
    assert not Path(f"/proc/{server_pid}").exists() or _zombie(server_pid)


def test_foreground_signal_during_start_still_stops(work: Work, datadir: Path) -> None:
    """A signal while the server is still starting must not leave it running."""
    import os
    import signal
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-m", "pgmgr", "start", "-d", "./data", "-p", "auto", "--foreground"],
        cwd=work.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # as soon as postgres exists (before pgmgr has printed anything)
    deadline = time.monotonic() + 30
    while not (datadir / "postmaster.pid").exists():
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(child.pid, signal.SIGTERM)
    _, stderr = child.communicate(timeout=30)
    assert "Traceback" not in stderr
    assert child.returncode == 0, stderr
    assert work.run("status", "-d", "./data").returncode == 3


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_failed_starts_leave_no_socket_dirs(work: Work, datadir: Path) -> None:
    """Each failed start used to leave a new private socket dir in the temp dir."""
    sockets = work.path / "tmp"  # TMPDIR of this test
    for _ in range(3):
        bad = work.run("start", "-d", "./data", "-p", "auto", "-c", "work_mem=bogus")
        assert bad.returncode == 1 and "work_mem" in bad.stderr, bad.stderr
    assert sorted(p.name for p in sockets.iterdir()) == []
    work.ok("start", "-d", "./data", "-p", "auto", "-q")
    assert sorted(p.name for p in sockets.iterdir()) == []  # the socket is in the data dir
    work.ok("stop", "data", "-q")
    assert sorted(p.name for p in sockets.iterdir()) == []


def test_check_of_an_unresponsive_server_still_lists_everything(
    work: Work, datadir: Path, template_dir: Path
) -> None:
    """A server that runs but does not answer (frozen with SIGSTOP) is 'running' with the
    reason in 'detail'; the other instances are still listed."""
    subprocess.run(["cp", "-a", str(template_dir), str(work.path / "other")], check=True)
    work.ok("start", "-d", "./data", "-p", "auto", "-q")
    work.ok("start", "-d", "./other", "-p", "auto", "-q")
    pid = json.loads(work.ok("status", "data", "--json").stdout)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        one = work.run("status", "data", "--json", "--check")
        assert one.returncode == 0, one.stderr
        rec = json.loads(one.stdout)
        assert rec["state"] == "running" and rec["latency_ms"] is None
        assert rec["detail"].startswith("unreachable"), rec
        every = work.run("status", "--json", "--check")
        assert every.returncode == 0, every.stderr
        by_name = {r["name"]: r for r in json.loads(every.stdout)}
        assert by_name["other"]["latency_ms"] is not None
        assert by_name["data"]["detail"].startswith("unreachable")
    finally:
        os.kill(pid, signal.SIGCONT)
