"""restart, reload, logs, env, url, psql, destroy, forget against real servers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pgmgr.core import ops
from tests.helpers import LogFollower, error_lines, run_pgmgr
from tests.ops.conftest import Instance


def psql(inst: Instance, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [inst.bin("psql"), "-X", "-At", *args],
        capture_output=True, text=True, timeout=30, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def one_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in error_lines(proc.stderr) if not ln.startswith("Hint:")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    return lines[0]


# --------------------------------------------------------------------------- url


@pytest.mark.parametrize("flag", ["--socket", "--tcp"])
def test_url_is_accepted_by_psql_and_psycopg(shared: Instance, flag: str) -> None:
    proc = shared.pgmgr("url", "shared", flag)
    assert proc.returncode == 0, proc.stderr
    url = proc.stdout.strip()
    assert url.startswith("postgresql://") and proc.stdout.count("\n") == 1
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    assert psql(shared, url, "-c", "select 41 + 1", env=clean) == "42"
    with psycopg.connect(url) as conn:
        row = conn.execute("select inet_server_addr() is null").fetchone()
    assert row == (flag == "--socket",)


def test_url_defaults_to_the_socket_and_the_only_instance(shared: Instance) -> None:
    assert shared.pgmgr("url").stdout == shared.pgmgr("url", "shared", "--socket").stdout


def test_url_of_a_never_started_instance_is_a_usage_error(ops_dir: Path, template: Path) -> None:
    subprocess.run(["cp", "-a", str(template), str(ops_dir / "d")], check=True)
    assert run_pgmgr("init", "-q", "-d", str(ops_dir / "d"), "--name", "idle").returncode == 0
    assert "never been started" in one_error(run_pgmgr("url", "idle"), 2)


# --------------------------------------------------------------------------- env


def test_env_eval_then_psql_round_trip(shared: Instance) -> None:
    script = (
        f'eval "$({sys.executable} -m pgmgr env shared)" && {shared.bin("psql")} -XAtc "select 1"'
    )
    proc = subprocess.run(
        ["bash", "-c", script], env={**os.environ, **shared.env},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"


def test_env_tcp_puts_the_password_in_a_private_passfile(shared: Instance) -> None:
    script = (
        f'eval "$({sys.executable} -m pgmgr env shared --tcp)" && '
        f'{shared.bin("psql")} -XAtc "select inet_server_addr()" && echo "$PGPASSFILE"'
    )
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    proc = subprocess.run(
        ["bash", "-c", script], env={**env, **shared.env},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    addr, passfile = proc.stdout.split()
    assert addr == "127.0.0.1"
    assert stat.S_IMODE(os.stat(passfile).st_mode) == 0o600
    assert str(shared.record()["password"]) in Path(passfile).read_text()


def test_env_values_survive_eval_with_spaces_quotes_and_dollars(shared: Instance) -> None:
    proc = shared.pgmgr("env", "shared")
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run(
        ["bash", "-c", proc.stdout + '\nprintf "%s" "$PGDATA"'],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out == str(shared.datadir)
    assert "'" in out and "$x" in out


@pytest.mark.parametrize(
    "value", ["plain", "sp ace", "it's", 'dq"', "$HOME", "back\\slash", "`id`", "a\nb"]
)
def test_shell_exports_quote_every_value(value: str) -> None:
    text = ops.shell_exports({"PGX": value})
    out = subprocess.run(
        ["sh", "-c", text + '\nprintf "%s" "$PGX"'], capture_output=True, text=True, check=True
    ).stdout
    assert out == value


def test_fish_syntax() -> None:
    text = ops.shell_exports({"PGDATA": "/a b/it's\\x"}, "fish")
    assert text == "set -gx PGDATA '/a b/it\\'s\\\\x';"


def test_env_json_and_bad_shell(shared: Instance) -> None:
    proc = shared.pgmgr("env", "shared", "--json")
    assert proc.returncode == 0
    assert set(json.loads(proc.stdout)) == {
        "PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGDATA",
    }  # fmt: skip
    assert "--shell" in one_error(shared.pgmgr("env", "shared", "--shell", "csh"), 2)


# --------------------------------------------------------------------------- psql


def test_psql_runs_the_instances_psql_and_passes_the_exit_code(shared: Instance) -> None:
    proc = shared.pgmgr(
        "psql", "shared", "--", "-XAtc", "select current_setting('server_version_num')::int / 10000"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "15"
    proc = shared.pgmgr("psql", "--", "-XAtc", "select 7")  # the only instance
    assert (proc.returncode, proc.stdout.strip()) == (0, "7")
    proc = shared.pgmgr("psql", "shared", "--", "-X", "-v", "ON_ERROR_STOP=1", "-c", "select nope")
    assert proc.returncode == 1
    assert "nope" in proc.stderr and "Error:" not in proc.stderr


def test_psql_of_a_stopped_instance_exits_3(fresh: Instance) -> None:
    assert fresh.pgmgr("stop", "fresh", "-q").returncode == 0
    assert "not running" in one_error(fresh.pgmgr("psql", "fresh"), 3)


# --------------------------------------------------------------------------- logs


def test_logs_tail(shared: Instance) -> None:
    proc = shared.pgmgr("logs", "shared", "-n", "100")
    assert proc.returncode == 0, proc.stderr
    assert "ready to accept connections" in proc.stdout
    # The server may log between two reads (a timed checkpoint: log_checkpoints is on):
    # '-n 2' is compared with the lines read just before it, once nothing came meanwhile.
    for _ in range(50):
        before = shared.pgmgr("logs", "shared", "-n", "100").stdout
        two = shared.pgmgr("logs", "shared", "-n", "2").stdout.splitlines()
        if shared.pgmgr("logs", "shared", "-n", "100").stdout == before:
            break
    assert len(two) == 2 and two == before.splitlines()[-2:]
    assert shared.pgmgr("logs", "shared", "-n", "0").stdout == ""
    one_error(shared.pgmgr("logs", "shared", "-n", "-1"), 2)


def test_logs_follow_prints_new_lines_and_ctrl_c_says_interrupted(shared: Instance) -> None:
    """Ctrl-C ends ``logs -f`` as it ends every command: "Interrupted", exit 130."""
    follower = LogFollower("shared", shared.env)
    try:
        log = Path(str(shared.status()["log_file"]))
        follower.following(log)
        assert shared.pgmgr("reload", "shared", "-q").returncode == 0
        follower.wait_for("reloading")  # "received SIGHUP, reloading configuration files"
        # What it printed is the log's own run of lines, in order, none lost, none twice;
        # not "the reload is the first line after the sync marker": the server may log
        # lines of its own meanwhile (a timed checkpoint), and a second marker may follow
        # the first one it printed.
        printed, lines = list(follower.lines), log.read_text().splitlines(keepends=True)
        assert any(lines[i : i + len(printed)] == printed for i in range(len(lines))), printed
        follower.proc.send_signal(signal.SIGINT)
        assert follower.proc.wait(timeout=30) == 130
        assert follower.proc.stderr.read() == "Interrupted\n"  # type: ignore[union-attr]
    finally:
        follower.proc.kill()
        follower.proc.wait()


@pytest.mark.parametrize("follow", [False, True], ids=["tail", "follow"])
def test_logs_of_a_log_that_is_a_fifo_is_one_error_at_once(fresh: Instance, follow: bool) -> None:
    """The log file replaced by a FIFO, which no one writes to: 'pgmgr logs' waited for
    ever to open it (start already refused to log into one)."""
    log = Path(str(fresh.status()["log_file"]))
    log.unlink()  # the server goes on writing into the file it has open
    os.mkfifo(log, 0o600)
    proc = fresh.pgmgr("logs", "fresh", *(["-f"] if follow else []), timeout=30)
    assert proc.returncode == 1, proc.stderr
    assert error_lines(proc.stderr) == [f"Error: the server log {log} is not a regular file"]


# --------------------------------------------------------------------------- reload, restart


def test_reload_applies_a_changed_setting(fresh: Instance) -> None:
    assert (
        fresh.pgmgr("psql", "fresh", "--", "-Xqc", "alter system set work_mem = '7MB'").returncode
        == 0
    )
    proc = fresh.pgmgr("reload", "fresh", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["conf_load_time"] > doc["conf_load_time_before"]
    assert fresh.pgmgr("psql", "fresh", "--", "-XAtc", "show work_mem").stdout.strip() == "7MB"


def show(inst: Instance, setting: str) -> str:
    return inst.pgmgr("psql", inst.name, "--", "-XAtc", f"show {setting}").stdout.strip()


def test_reload_says_what_postgresql_conf_holds_that_postgres_rejects(fresh: Instance) -> None:
    """A hand-edited postgresql.conf: a syntax error (or an unknown setting) makes PostgreSQL
    apply none of it: reload waited its whole timeout, then said "did not confirm". An
    invalid value is skipped while the rest applies: reload said "Reloaded". Now each is
    one error naming the file and line, at once."""
    conf = fresh.datadir / "postgresql.conf"
    original = conf.read_text()
    lines = len(original.splitlines())
    hba = fresh.datadir / "pg_hba.conf"
    hba_was = hba.read_text()
    port = fresh.status()["port"]
    psql = ["psql", "fresh", "--", "-Xq", "-v", "ON_ERROR_STOP=1"]
    assert fresh.pgmgr(*psql, "-c", "create role locked login").returncode == 0
    tcp = f"host=127.0.0.1 port={port} dbname=postgres user=locked connect_timeout=10"
    for bad, what in (("foo bar baz", "syntax error"), ("no_such_setting = 1", "no_such_setting")):
        conf.write_text(f"{original}maintenance_work_mem = '77MB'\n{bad}\n")
        # and a role locked out in pg_hba.conf: PostgreSQL reads it again all the same
        hba.write_text("host all locked 127.0.0.1/32 reject\n" + hba_was)
        psycopg.connect(tcp).close()  # not yet
        proc = fresh.pgmgr("reload", "fresh", "--timeout", "8")
        err = one_error(proc, 1)
        assert f"postgresql.conf line {lines + 2}: " in err and what in err, err
        assert "read pg_hba.conf and pg_ident.conf again, but none of" in err, err
        assert show(fresh, "maintenance_work_mem") != "77MB"  # still as it was
        with pytest.raises(psycopg.OperationalError, match="rejects connection"):
            psycopg.connect(tcp).close()  # before, nothing was sent: the role got in
        hba.write_text(hba_was)
        conf.write_text(original)
        assert fresh.pgmgr("reload", "fresh").returncode == 0
    conf.write_text(f"{original}maintenance_work_mem = '77MB'\nwork_mem = 'zz'\n")
    err = one_error(fresh.pgmgr("reload", "fresh"), 1)
    assert f"postgresql.conf line {lines + 2}: invalid value for work_mem: 'zz'" in err, err
    assert show(fresh, "maintenance_work_mem") == "77MB"  # the rest was applied
    conf.write_text(f"{original}shared_buffers = '17MB'\n")  # needs a restart: not an error
    assert fresh.pgmgr("reload", "fresh").returncode == 0


def test_reload_says_an_invalid_value_of_a_restart_only_setting(fresh: Instance) -> None:
    """pg_file_settings says "could not be applied" of a setting only a restart applies
    both when its value is invalid and when it is a valid change: reload said nothing of
    either. Now an invalid one is an error like any invalid value, and a valid one a note
    that it needs a restart (--json: restart_needed). pending_restart cannot tell them
    apart: it stays set by an earlier valid change, so 'banana' is checked after '17MB'."""
    conf = fresh.datadir / "postgresql.conf"
    original = conf.read_text()
    line = len(original.splitlines()) + 1
    where = f"postgresql.conf line {line}"
    bad = [
        ("shared_buffers = 'banana'", "shared_buffers: 'banana'"),
        ("max_connections = -5", "max_connections: '-5'"),
    ]
    for text, said in bad:
        conf.write_text(f"{original}{text}\n")
        err = one_error(fresh.pgmgr("reload", "fresh"), 1)
        assert f"{where}: invalid value for {said} (it keeps the current value)" in err, err
    conf.write_text(f"{original}shared_buffers = '17MB'\n")
    proc = fresh.pgmgr("reload", "fresh")
    assert proc.returncode == 0, proc.stderr
    assert f"{where}: shared_buffers = '17MB' needs a restart to apply" in proc.stderr
    doc = json.loads(fresh.pgmgr("reload", "fresh", "--json").stdout)
    assert doc["restart_needed"] == ["shared_buffers"], doc
    for text, said in bad:  # pending_restart is set now: still rejected
        conf.write_text(f"{original}{text}\n")
        err = one_error(fresh.pgmgr("reload", "fresh"), 1)
        assert f"{where}: invalid value for {said}" in err, err
    conf.write_text(original)
    plain = fresh.pgmgr("reload", "fresh", "--json")
    assert plain.returncode == 0 and json.loads(plain.stdout)["restart_needed"] == []
    assert show(fresh, "shared_buffers") == "128MB"


def test_reload_reads_a_setting_name_in_any_case(fresh: Instance) -> None:
    """PostgreSQL takes a setting's name in any case (Shared_Buffers); reload looked its
    context up by the exact name, found none, and took a valid change only a restart
    applies for an invalid value ("rejected ... invalid value for Shared_Buffers: '17MB'",
    exit 1). A valid change in another case is the note; an invalid one still an error."""
    conf = fresh.datadir / "postgresql.conf"
    original = conf.read_text()
    where = f"postgresql.conf line {len(original.splitlines()) + 1}"
    conf.write_text(f"{original}Shared_Buffers = '17MB'\n")
    proc = fresh.pgmgr("reload", "fresh")
    assert proc.returncode == 0, proc.stderr
    assert f"{where}: Shared_Buffers = '17MB' needs a restart to apply" in proc.stderr
    conf.write_text(f"{original}Shared_Buffers = 'banana'\n")
    err = one_error(fresh.pgmgr("reload", "fresh"), 1)
    assert f"{where}: invalid value for Shared_Buffers: 'banana'" in err, err
    conf.write_text(original)
    assert fresh.pgmgr("reload", "fresh").returncode == 0


def test_reload_checks_a_restart_only_value_without_postgresql_auto_conf(fresh: Instance) -> None:
    """Each changed value only a restart applies is checked by postgres -C: with -D the data
    directory it read postgresql.auto.conf too, and one invalid value there (edited by
    hand) failed the check of every such value: "rejected ... invalid value for
    shared_buffers: '17MB'", a valid one. Only the invalid one is named now."""
    conf = fresh.datadir / "postgresql.conf"
    auto = fresh.datadir / "postgresql.auto.conf"
    original, auto_text = conf.read_text(), auto.read_text()
    conf.write_text(f"{original}shared_buffers = '17MB'\n")
    auto.write_text(f"{auto_text}work_mem = 'zz'\n")
    try:
        err = one_error(fresh.pgmgr("reload", "fresh"), 1)
        assert "invalid value for work_mem: 'zz'" in err, err
        assert "shared_buffers" not in err, err
    finally:
        conf.write_text(original)
        auto.write_text(auto_text)
    assert fresh.pgmgr("reload", "fresh").returncode == 0


def test_reload_does_not_promise_a_restart_applies_what_pgmgr_sets(fresh: Instance) -> None:
    """port, listen_addresses and unix_socket_directories are set on the server's command
    line by pgmgr, which overrides the files: a changed one in postgresql.conf was "needs a
    restart to apply", though a restart keeps pgmgr's value. Now a note that it never
    applies (--json: overridden, not restart_needed); an invalid one is still an error."""
    conf = fresh.datadir / "postgresql.conf"
    original = conf.read_text()
    where = f"postgresql.conf line {len(original.splitlines()) + 1}"
    port = show(fresh, "port")
    conf.write_text(f"{original}port = 5\nlisten_addresses = '*'\n")
    proc = fresh.pgmgr("reload", "fresh")
    assert proc.returncode == 0, proc.stderr
    assert "needs a restart" not in proc.stderr, proc.stderr
    assert f"{where}: port = '5' never applies: pgmgr sets port" in proc.stderr, proc.stderr
    doc = json.loads(fresh.pgmgr("reload", "fresh", "--json").stdout)
    assert doc["restart_needed"] == [] and doc["overridden"] == ["port", "listen_addresses"]
    conf.write_text(f"{original}port = 'banana'\n")
    err = one_error(fresh.pgmgr("reload", "fresh"), 1)
    assert f"{where}: invalid value for port: 'banana'" in err, err
    conf.write_text(original)
    assert fresh.pgmgr("restart", "fresh").returncode == 0
    assert show(fresh, "port") == port


def test_reload_does_not_vouch_for_an_extensions_restart_only_value(fresh: Instance) -> None:
    """An extension's setting only a restart applies (pg_stat_statements.max, the library
    preloaded) is a placeholder to postgres -C, which takes any value: 'banana' was "needs a
    restart to apply", and the restart then ignores it with a WARNING. The note now says
    the extension checks the value only at that restart."""
    top = Path(fresh.bin("postgres")).parent.parent
    if not any(
        (d / "pg_stat_statements.so").exists() for d in (top / "lib", top / "lib/postgresql")
    ):
        pytest.skip("pg_stat_statements is not installed")
    set_ = "shared_preload_libraries=pg_stat_statements"
    assert fresh.pgmgr("config", "fresh", "set", set_, "--restart").returncode == 0
    conf = fresh.datadir / "postgresql.conf"
    original = conf.read_text()
    try:
        conf.write_text(f"{original}pg_stat_statements.max = 'banana'\n")
        proc = fresh.pgmgr("reload", "fresh")
        assert proc.returncode == 0, proc.stderr
        assert (
            "needs a restart to apply ('pgmgr restart fresh'); its extension checks the "
            "value only then" in proc.stderr
        ), proc.stderr
    finally:
        conf.write_text(original)
        fresh.pgmgr("config", "fresh", "unset", "shared_preload_libraries", "--restart")


def test_reload_of_a_value_valid_in_another_database_is_not_rejected(fresh: Instance) -> None:
    """pg_file_settings checks the files in the database pgmgr connects to ('postgres'): a
    default_text_search_config made in another database is "setting could not be applied"
    there, while the server applies it (its check is outside any database then): reload
    said PostgreSQL rejected it and exited 1."""
    psql = ["psql", "fresh", "--", "-Xq", "-v", "ON_ERROR_STOP=1"]
    assert fresh.pgmgr(*psql, "-c", "create database app").returncode == 0
    made = "create text search configuration public.appconf (copy = english)"
    assert fresh.pgmgr(*psql, "-d", "app", "-c", made).returncode == 0
    conf = fresh.datadir / "postgresql.conf"
    conf.write_text(conf.read_text() + "default_text_search_config = 'public.appconf'\n")
    proc = fresh.pgmgr("reload", "fresh")
    assert proc.returncode == 0, proc.stderr
    show = ["psql", "fresh", "--", "-d", "app", "-XAtc", "show default_text_search_config"]
    assert fresh.pgmgr(*show).stdout.strip() == "public.appconf"


def test_reload_of_a_stopped_instance_exits_3(fresh: Instance) -> None:
    assert fresh.pgmgr("stop", "fresh", "-q").returncode == 0
    one_error(fresh.pgmgr("reload", "fresh"), 3)


def test_restart_keeps_port_and_settings(ops_dir: Path, template: Path) -> None:
    datadir = ops_dir / "r"
    subprocess.run(["cp", "-a", str(template), str(datadir)], check=True)
    inst = Instance("r", datadir)
    try:
        proc = inst.pgmgr("start", "-q", "-d", str(datadir), "--port", "auto", "-c", "work_mem=3MB")
        assert proc.returncode == 0, proc.stderr
        before = inst.status()
        proc = inst.pgmgr("restart", "r", "--json")
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["was_running"] is True and doc["state"] == "running"
        assert doc["port"] == before["port"] and doc["pid"] != before["pid"]
        assert inst.pgmgr("psql", "r", "--", "-XAtc", "show work_mem").stdout.strip() == "3MB"
        assert inst.pgmgr("stop", "r", "-q").returncode == 0
        proc = inst.pgmgr("restart", "r", "-m", "smart")
        assert proc.returncode == 0 and "Was not running; started" in proc.stderr
        assert inst.status()["state"] == "running"
        one_error(inst.pgmgr("restart", "r", "-m", "gentle"), 2)
    finally:
        inst.pgmgr("stop", "--all", "-q")


# --------------------------------------------------------------------------- destroy, forget


def test_destroy_refuses_without_yes_when_not_interactive(fresh: Instance) -> None:
    assert "--yes" in one_error(fresh.pgmgr("destroy", "fresh", input=""), 2)
    assert fresh.status()["state"] == "running" and fresh.datadir.is_dir()


def test_destroy_stops_and_removes_everything(fresh: Instance) -> None:
    log = Path(str(fresh.status()["log_file"]))
    proc = fresh.pgmgr("destroy", "fresh", "--yes", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["was_running"] and doc["removed_datadir"] and doc["removed_record"]
    assert not fresh.datadir.exists() and not log.exists()
    one_error(fresh.pgmgr("status", "fresh"), 4)
    one_error(fresh.pgmgr("destroy", "fresh", "--yes"), 4)


def test_destroy_of_a_registered_instance_without_pg_version(fresh: Instance) -> None:
    """Its pinned identity still matches (the very directory pgmgr made): it is provably the
    instance, so destroy finishes (issue 11.4: a half-deleted one was refused forever)."""
    assert fresh.pgmgr("stop", "fresh", "-q").returncode == 0
    (fresh.datadir / "PG_VERSION").unlink()
    proc = fresh.pgmgr("destroy", "fresh", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert not fresh.datadir.exists()


def test_forget_refuses_a_running_instance_then_keeps_the_data(fresh: Instance) -> None:
    assert "running" in one_error(fresh.pgmgr("forget", "fresh"), 1)
    assert fresh.pgmgr("stop", "fresh", "-q").returncode == 0
    proc = fresh.pgmgr("forget", "fresh")
    assert proc.returncode == 0, proc.stderr
    assert (fresh.datadir / "PG_VERSION").is_file()
    one_error(fresh.pgmgr("status", "fresh"), 4)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args",
    [
        ["url", "nope"], ["env", "nope"], ["logs", "nope"], ["reload", "nope"],
        ["restart", "nope"], ["psql", "nope"], ["destroy", "nope", "--yes"], ["forget", "nope"],
    ],
)  # fmt: skip
def test_unknown_instance_exits_4(args: list[str]) -> None:
    assert "nope" in one_error(run_pgmgr(*args), 4)


@pytest.mark.parametrize(
    "args",
    [
        ["url", "--tcp", "--socket", "x"], ["destroy"], ["forget"], ["run"],
        ["run", "-c", "nonsense", "--", "true"], ["run", "-c", "port=1", "--", "true"],
        ["logs", "-n", "lots"],
    ],
)  # fmt: skip
def test_usage_errors_exit_2(args: list[str]) -> None:
    one_error(run_pgmgr(*args), 2)


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux 'script' (a pty)")
def test_destroy_asks_on_a_terminal(fresh: Instance) -> None:
    cmd = f"{sys.executable} -m pgmgr destroy fresh"

    def answer(text: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["script", "-qec", cmd, "/dev/null"], input=text, env={**os.environ, **fresh.env},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    proc = answer("n\n")
    assert proc.returncode == 1 and "Nothing removed" in proc.stdout
    assert fresh.datadir.is_dir() and fresh.status()["state"] == "running"
    proc = answer("y\n")
    assert proc.returncode == 0 and "Destroyed 'fresh'" in proc.stdout
    assert not fresh.datadir.exists()


def test_a_server_started_by_hand_is_reached_where_it_listens(
    ops_dir: Path, template: Path
) -> None:
    """A data directory whose server was started by hand (pg_ctl, on a port of its own) is
    registered with 'init -d': 'url' said "has never been started, so it has no port yet"
    (the record has none) and 'psql' could not connect, though 'status' showed it running
    on that port. Both now use where it really listens (its postmaster.pid)."""
    import pwd

    from pgmgr.core import versions
    from pgmgr.core.listen import free_port
    from tests.ops.conftest import VERSION

    datadir, sock = ops_dir / "hand", ops_dir / "handsock"
    subprocess.run(["cp", "-a", str(template), str(datadir)], check=True)
    sock.mkdir()
    sock.chmod(0o777)
    port = free_port("127.0.0.1")  # of this xdist worker's slice (tests/conftest.py)
    owner = pwd.getpwuid(datadir.stat().st_uid).pw_name
    prefix = ["runuser", "-u", owner, "--"] if os.geteuid() == 0 else []
    bindir = versions.select(VERSION).installation.bindir
    pg_ctl = [*prefix, str(bindir / "pg_ctl"), "-D", str(datadir), "-l", str(sock / "log")]
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1"
    assert subprocess.run([*pg_ctl, "-o", opts, "-w", "start"], capture_output=True).returncode == 0
    try:
        inst = Instance("hand", datadir)
        assert inst.pgmgr("init", "-q", "-d", str(datadir), "--name", "hand").returncode == 0
        url = inst.pgmgr("url", "hand")
        assert url.returncode == 0 and f"port={port}" in url.stdout, url.stderr
        proc = inst.pgmgr("psql", "hand", "--", "-XAtc", "SELECT 1")
        assert proc.returncode == 0 and proc.stdout.strip() == "1", proc.stderr
        assert inst.pgmgr("stop", "hand", "-q").returncode == 0
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True)
