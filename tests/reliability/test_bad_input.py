"""Bad input: a table of bad invocations, command-line fuzzing, hostile paths, no shell."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pgmgr.cli import app
from tests.helpers import run_pgmgr
from tests.reliability.conftest import Inst, InstFactory, one_error, pgmgr, postgres_pids_under

REPO = Path(__file__).resolve().parents[2]

# (argv, extra env); {file} {full} {reg} {dir} are filled in by the fixture.
BAD: list[tuple[list[str], dict[str, str]]] = [
    (["start", "-d", "{dir}/x", "--init", "-p", "-1"], {}),
    (["start", "-d", "{dir}/x", "--init", "-p", "70000"], {}),
    (["start", "-d", "{dir}/x", "--init", "-p", "abc"], {}),
    (["start", "-d", "{dir}/x", "--init", "-p", "0"], {}),
    (["start", "-d", "{dir}/x", "--init", "-p", ""], {}),
    (["start", "-d", "{dir}/x", "--init", "-v", "99"], {}),
    (["start", "-d", "{dir}/x", "--init", "-v", "fifteen"], {}),
    (["init", "-d", "{dir}/x", "-v", "7.x"], {}),
    (["init", "-d", "{file}"], {}),
    (["init", "-d", "{full}"], {}),
    (["start", "-d", "{file}"], {}),
    (["start", "-d", "{full}"], {}),
    (["start", "-d", "{full}", "--init", "--port", "auto"], {}),
    (["start", "nosuchinstance"], {}),
    (["stop", "nosuchinstance"], {}),
    (["status", "nosuchinstance"], {}),
    (["start", "{reg}", "-c", "work_mem"], {}),
    (["start", "{reg}", "-c", "=1"], {}),
    (["start", "{reg}", "-c", "port=1"], {}),
    (["start", "{reg}", "-c", "listen_addresses=*"], {}),
    (["start", "{reg}", "-c", "a b=1"], {}),
    (["start", "{reg}", "-c", "work_mem=1\nport=1"], {}),
    (["start", "{reg}", "-d", "{dir}"], {}),
    (["stop", "{reg}", "--all"], {}),
    (["start", "{reg}", "--init"], {}),
    (["start", "-d", "{dir}/x", "--init"], {"POSTGRES_VERSION": "garbage"}),
    (["init", "-d", "{dir}/x"], {"POSTGRES_VERSION": "99"}),
    (["stop", "{reg}", "-m", "brutal"], {}),
    (["stop", "{reg}", "--mode", ""], {}),
    (["stop", "{reg}", "--timeout", "-1"], {}),
    (["stop", "{reg}", "--timeout", "soon"], {}),
    (["reload", "{reg}", "--timeout", "0"], {}),
    (["replica", "{reg}", "--timeout", "nan"], {}),
    (["branch", "{reg}", "new", "-p", "\u00b2"], {}),  # isdigit(), yet int() refused it
    # int() refuses more than 4300 digits (a ValueError), and takes '١٢٣٤٥' as 12345
    (["branch", "{reg}", "new", "-p", "9" * 5000], {}),
    (["init", "-d", "{dir}/x", "-v", "9" * 5000], {}),
    (["start", "{reg}", "-p", "\u0661\u0662\u0663\u0664\u0665"], {}),
    (["start", "{reg}", "-p", "1_5432"], {}),
    # bytes that are not UTF-8 (surrogates): pgmgr.conf, and what initdb/postgres echo back
    (["start", "{reg}", "-c", "work_mem=\udcff"], {}),
    (["config", "{reg}", "set", "work_mem=\udcff"], {}),
    (["init", "-d", "{dir}/x", "--locale", "\udcff"], {}),
    # a line break or bytes that are not UTF-8 in what is recorded (and in postmaster.pid)
    (["start", "{reg}", "-H", "localhost\n"], {}),
    (["init", "-d", "{dir}/x", "--log-file", "{dir}/log\nx"], {}),
    (["init", "-d", "{dir}/x", "--log-file", "{dir}/log\udcff"], {}),
    (["init", "-d", "{dir}/x", "--name", "bad/name"], {}),
    (["init", "-d", "{dir}/x", "--name", "-lead"], {}),
    (["init", "-d", "{dir}/x", "--name", "x" * 80], {}),
    (["init", "-d", "{dir}/x", "--name", "{reg}"], {}),
    (["init", "-d", "{dir}/x", "--auth", "none"], {}),
    (["init", "-d", "{dir}/x", "positional"], {}),
    (["init"], {}),
    (["start"], {"PGDATA": "/nonexistent/pgdata"}),
    (["frobnicate"], {}),
    (["status", "--no-such-option"], {}),
    (["start", "{reg}", "--user", "root"], {}),
    (["start", "{reg}", "--user", "no-such-user-xyz"], {}),
]


@pytest.fixture
def bad_env(cluster: InstFactory, work: Path) -> dict[str, str]:
    inst = cluster("reg")
    (work / "file").write_text("not a directory\n")
    (work / "full").mkdir()
    (work / "full" / "notes.txt").write_text("precious\n")
    return {
        "file": str(work / "file"),
        "full": str(work / "full"),
        "reg": inst.name,
        "dir": str(work),
    }


def _fill(argv: list[str], env: dict[str, str]) -> list[str]:
    return [a.format(**env) for a in argv]


@pytest.mark.parametrize(("argv", "extra"), BAD, ids=[" ".join(a)[:50] for a, _ in BAD])
def test_bad_invocation(bad_env: dict[str, str], argv: list[str], extra: dict[str, str]) -> None:
    run = CliRunner().invoke(app, _fill(argv, bad_env), env=extra)
    assert run.exception is None or isinstance(run.exception, SystemExit), run.exception
    assert run.exit_code != 0, run.output
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("Error:")]
    others = [ln for ln in run.stderr.splitlines() if ln and not ln.startswith(("Error:", "Hint:"))]
    assert len(errors) == 1 and not others, run.stderr
    assert "Traceback" not in run.output
    assert (Path(bad_env["full"]) / "notes.txt").read_text() == "precious\n"
    assert not Path(bad_env["dir"], "x").exists() or not any(Path(bad_env["dir"], "x").iterdir())
    assert not postgres_pids_under(Path(bad_env["dir"]))


def test_bad_invocations_through_a_real_process(bad_env: dict[str, str]) -> None:
    """A sample through ``python -m pgmgr`` (what users run), not only CliRunner."""
    for argv, extra in BAD[::6]:
        one_error(pgmgr(*_fill(argv, bad_env), env=extra))


def test_at_least_thirty_bad_invocations() -> None:
    assert len(BAD) >= 30


# --------------------------------------------------------------------------- fuzzing

WORDS = [
    "init",
    "start",
    "stop",
    "status",
    "versions",
    "--help",
    "-d",
    "--datadir",
    "-p",
    "--port",
    "auto",
    "-v",
    "--version",
    "-c",
    "-m",
    "--mode",
    "smart",
    "fast",
    "immediate",
    "--timeout",
    "--json",
    "-q",
    "--all",
    "-H",
    "--host",
    "--name",
    "--auth",
    "--user",
    "--socket-dir",
    "--check",
    "--",
    "15",
    "18",
    "-1",
    "70000",
    "x=y",
    ".",
    "/",
    "..",
    "''",
    "$HOME",
    "\n",
]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=12)), max_size=7))
def test_fuzz_command_line(argv: list[str]) -> None:
    """No traceback, ever. ``--init``/``init``/``--foreground`` are left out so nothing can
    create and start a server; with no data directory anywhere nothing can start at all."""
    argv = [a for a in argv if a not in ("init", "--init", "-i", "--foreground")]
    if argv and argv[0] == "start":
        argv = ["start", "--port", "auto", *argv[1:]]
    run = CliRunner().invoke(app, argv, env={"PGDATA": ""})
    assert run.exception is None or isinstance(run.exception, SystemExit), (argv, run.exception)
    assert "Traceback" not in run.output


# --------------------------------------------------------------------------- hostile paths

HOSTILE = [
    "with space",
    "quo'te\"d",
    "dollar $HOME $(touch pwned) `touch pwned`",
    "new\nline",
    "ünïcødé-数据",
    "semi;colon -c port=1 & x",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_paths(work: Path, name: str) -> None:
    datadir = work / name / "data"
    datadir.parent.mkdir()
    if "\n" in name:  # PostgreSQL cannot run there (postmaster.pid is line-based): refused
        assert "line break" in one_error(pgmgr("init", "-d", str(datadir)))
        assert "line break" in one_error(pgmgr("start", "--init", "-d", str(datadir)))
        assert not datadir.exists()
        return
    assert pgmgr("init", "-d", str(datadir), "-v", "15", "-q").returncode == 0
    run = pgmgr("start", "-d", str(datadir), "--port", "auto", "--json")
    assert run.returncode == 0, str(run)
    try:
        port = run.json()["port"]
        inst = Inst(run.json()["name"], datadir)
        assert inst.sql("SHOW port") == [(str(port),)]  # nothing injected
        assert inst.sql("SHOW data_directory") == [(str(datadir),)]
        st_run = pgmgr("status", "-d", str(datadir), "--json")
        assert st_run.returncode == 0 and st_run.json()["state"] == "running", str(st_run)
    finally:
        stop = pgmgr("stop", "-d", str(datadir))
    assert stop.returncode == 0, str(stop)
    assert pgmgr("status", "-d", str(datadir)).returncode == 3
    assert not list(work.rglob("pwned")) and not Path("pwned").exists()


# --------------------------------------------------------------------------- no shell


def test_no_shell_true_in_pgmgr() -> None:
    hits = [
        f"{p}:{n}"
        for p in (REPO / "pgmgr").rglob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"shell\s*=\s*True|os\.system\(|os\.popen\(", line)
    ]
    assert not hits, hits


def test_ruff_bandit_shell_rules_enforced() -> None:
    text = (REPO / "pyproject.toml").read_text()
    ignored = re.search(r"(?ms)^ignore = \[(.*?)\]", text)
    for rule in ("S602", "S604", "S605"):
        assert ignored is None or rule not in ignored.group(1), rule
    assert '"S"' in text
    run = subprocess.run(
        [
            os.path.join(os.path.dirname(os.sys.executable), "ruff"),
            "check",
            "--no-cache",  # the checkout may not be the test user's to write in
            "--select",
            "S602,S604,S605",
            str(REPO / "pgmgr"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout


# --------------------------------------------------------------------------- empty values


def test_an_empty_name_or_path_is_refused_not_defaulted(cluster: InstFactory, work: Path) -> None:
    """``pgmgr destroy "$BRANCH" --yes`` with BRANCH unset: an empty NAME read as no name,
    so the command fell back to $PGDATA or the only instance registered and destroyed it;
    ``-d ""`` is ``Path("")``, the current directory: ``init -d "$DIR"`` made a data
    directory there, ``stop -d "$DIR"`` stopped the instance the shell stood in.
    Each is now one usage error, and nothing is touched."""
    inst = cluster("only")
    assert inst.start().returncode == 0
    token = inst.commit_canary()
    here = work / "here"
    here.mkdir()
    runs = [
        run_pgmgr("destroy", "", "--yes", cwd=here, stdin=subprocess.DEVNULL),
        run_pgmgr("stop", "", cwd=here, stdin=subprocess.DEVNULL),
        run_pgmgr("snapshot", "", "s1", cwd=here, stdin=subprocess.DEVNULL),
        run_pgmgr("init", "-d", "", cwd=here, stdin=subprocess.DEVNULL),
        run_pgmgr("stop", "-d", "", cwd=inst.datadir, stdin=subprocess.DEVNULL),
        run_pgmgr("start", "-d", "", "--init", cwd=here, stdin=subprocess.DEVNULL),
        run_pgmgr("status", "--datadir=", cwd=inst.datadir, stdin=subprocess.DEVNULL),
        # --name "$NEW", NEW unset: the default name (the directory's) was taken
        run_pgmgr("init", "-d", str(here / "n1"), "--name", "", stdin=subprocess.DEVNULL),
        run_pgmgr("start", "-d", str(here / "n2"), "--init", "--name=", stdin=subprocess.DEVNULL),
        run_pgmgr("replica", "only", "--name", "", stdin=subprocess.DEVNULL),
    ]
    for proc in runs:
        assert proc.returncode == 2, (proc.args, proc.stdout, proc.stderr)
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 1 and "empty" in errors[0], (proc.args, proc.stderr)
    assert not any(here.iterdir())
    assert inst.pid() is not None and inst.has_canary(token)


def test_numbers_in_the_environment_with_too_many_digits_are_ignored(
    cluster: InstFactory,
) -> None:
    """``str.isdigit()`` then ``int()``: more than 4300 digits passed the first and made the
    second raise a ValueError, so ``COLUMNS``, ``PGMGR_LOG_MAX_BYTES`` or ``PGMGR_PORT_SLICE``
    set to a long run of digits ended ``status``, ``start``, ``versions`` in a traceback.
    Such a value is not a number: the default applies, as for any other garbage."""
    inst = cluster("digits")
    many = "9" * 5000
    env = {"COLUMNS": many, "PGMGR_LOG_MAX_BYTES": many, "PGMGR_PORT_SLICE": f"{many}/{many}"}
    started = pgmgr("start", inst.name, "-p", "auto", env=env)
    assert started.returncode == 0, str(started)
    for args in (["status"], ["versions"], ["stop", inst.name]):
        run = pgmgr(*args, env=env)
        assert run.returncode == 0, str(run)


def test_a_locale_name_that_is_not_utf8_does_not_end_init(cluster: InstFactory, work: Path) -> None:
    """initdb imports a collation per installed locale, so a template's key hashes the names
    in the locale directories (and ``$LOCPATH``); a name that is not UTF-8 (a surrogate in
    Python) made that ``.encode()`` raise, and every ``init`` ended in a traceback."""
    locales = work / "locales"
    locales.mkdir()
    os.mkdir(os.fsencode(locales) + b"/de_DE.\xe4")  # as a latin-1 tool may name it
    env = {"LOCPATH": str(locales)}
    run = pgmgr("init", "-d", str(work / "fresh"), "-v", "15", "-q", env=env)
    assert run.returncode == 0, str(run)
    assert pgmgr("cache", "list", env=env).returncode == 0


def test_a_huge_value_is_not_repeated_in_full_in_the_error(cluster: InstFactory) -> None:
    """A 100 kB value (a port, a name, a path: a variable expanded by mistake; or in the
    environment) was repeated whole in the error, one 100 kB line; it is clipped where it
    appears, the rest of the line intact."""
    inst = cluster("huge")
    huge = "x" * 100_000
    for args in (["start", inst.name, "-p", huge], ["status", huge], ["init", "-d", huge]):
        error = one_error(pgmgr(*args))
        assert len(error) < 1000 and "xxxx" in error, error[:200]
    fresh = str(inst.datadir.parent / "fresh")
    error = one_error(pgmgr("init", "-d", fresh, env={"POSTGRES_VERSION": huge}))
    assert len(error) < 1000 and "POSTGRES_VERSION 'xxxx" in error, error[:200]
