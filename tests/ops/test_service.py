"""``pgmgr service``: systemd units (checked by systemd-analyze where installed, parsed
always), and ``pgmgr start --foreground`` speaking sd_notify to a socket the test binds.

systemd itself is not running here; everything systemd would do with the unit (run its
ExecStart as its User= with its Environment=, listen on NOTIFY_SOCKET, send SIGTERM to the
main process) the test does for real.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgmgr.core import service
from tests.helpers import error_lines, postmasters_under, run_pgmgr
from tests.ops.conftest import Instance

ANALYZE = shutil.which("systemd-analyze")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line!r}"
        current.setdefault(key, []).append(value)
    return sections


@pytest.fixture
def unit_env(ops_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Unit directories inside the test's directory (never /etc or the real home)."""
    monkeypatch.setenv("PGMGR_SYSTEMD_SYSTEM_DIR", str(ops_dir / "system-units"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(ops_dir / "config"))
    return ops_dir


def unit_text(inst: Instance, mode: str) -> tuple[Path, str]:
    proc = inst.pgmgr("service", "install", inst.name, f"--{mode}")
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stderr.splitlines()[0].split(" ", 1)[1])
    return path, path.read_text()


def verify(path: Path, mode: str, runtime: Path) -> None:
    """``systemd-analyze verify`` (when installed; CI installs it and sets
    PGMGR_REQUIRE_SYSTEMD_ANALYZE, so there it never goes unchecked): no complaint."""
    if ANALYZE is None:
        assert not os.environ.get("PGMGR_REQUIRE_SYSTEMD_ANALYZE"), "no systemd-analyze"
        return
    runtime.mkdir(mode=0o700, exist_ok=True)
    argv = [ANALYZE, "verify", *(["--user"] if mode == "user" else []), str(path)]
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert path.name not in proc.stderr, proc.stderr


@pytest.mark.parametrize("mode", ["user", "system"])
def test_unit_is_valid_for_both_modes(fresh: Instance, unit_env: Path, mode: str) -> None:
    path, text = unit_text(fresh, mode)
    expected_dir = "system-units" if mode == "system" else "config/systemd/user"
    assert path == unit_env / expected_dir / "pgmgr-fresh.service"
    unit = parse_unit(text)
    svc = unit["Service"]
    assert svc["Type"] == ["notify"]
    assert svc["Restart"] == ["on-failure"]
    argv = shlex.split(svc["ExecStart"][0])
    assert os.path.isabs(argv[0]) and os.access(argv[0], os.X_OK)
    assert argv[1] == "start" and argv[-1] == "--foreground"
    envs = dict(e.split("=", 1) for e in svc["Environment"])
    if mode == "user":
        assert "User" not in svc
        assert unit["Install"]["WantedBy"] == ["default.target"]
        assert "loginctl enable-linger" in text
        assert envs["PGMGR_STATE_DIR"] == os.environ["PGMGR_STATE_DIR"]
        assert argv[2] == "fresh"
    else:
        assert unit["Install"]["WantedBy"] == ["multi-user.target"]
        me = pwd.getpwuid(os.geteuid()).pw_name
        assert svc["User"] == ["postgres" if os.geteuid() == 0 else me]
    verify(path, mode, unit_env / "runtime")


def test_install_replaces_its_own_unit_but_not_a_foreign_one(
    fresh: Instance, unit_env: Path
) -> None:
    path, _ = unit_text(fresh, "user")
    again = fresh.pgmgr("service", "install", "fresh", "--user")
    assert again.returncode == 0 and "Replaced" in again.stderr
    assert "systemd is not running here" in again.stderr
    shown = fresh.pgmgr("service", "show", "fresh")
    assert shown.returncode == 0 and f"installed: {path}" in shown.stderr
    assert "Type=notify" in shown.stdout
    removed = fresh.pgmgr("service", "remove", "fresh")
    assert removed.returncode == 0 and not path.exists()
    gone = fresh.pgmgr("service", "remove", "fresh")
    assert gone.returncode == 4 and gone.stderr.startswith("Error: no pgmgr unit")
    path.write_text("[Service]\nExecStart=/bin/true\n")
    foreign = fresh.pgmgr("service", "install", "fresh", "--user")
    assert foreign.returncode == 1 and "not written by pgmgr" in foreign.stderr
    assert path.read_text() == "[Service]\nExecStart=/bin/true\n"


def test_install_leaves_the_unit_of_another_instance_of_that_name(
    fresh: Instance, unit_env: Path
) -> None:
    """Another registry (another user's, or root's through sudo) has an instance of the same
    name elsewhere: its unit was replaced silently, and its service then ran this data
    directory. It is refused in one line; the owner of the unit still replaces it."""
    path, theirs = unit_text(fresh, "system")
    other = unit_env / "other-state"
    env = {"PGMGR_STATE_DIR": str(other)}
    made = run_pgmgr("init", "-q", "-d", str(unit_env / "elsewhere"), "--name", "fresh", env=env)
    assert made.returncode == 0, made.stderr
    clash = run_pgmgr("service", "install", "fresh", "--system", env=env)
    assert clash.returncode == 1, clash.stderr
    assert error_lines(clash.stderr)[0] == (
        f"Error: {path} is the unit of another instance 'fresh' ({fresh.datadir}); leaving it alone"
    )
    assert path.read_text() == theirs
    again = fresh.pgmgr("service", "install", "fresh", "--system")
    assert again.returncode == 0 and "Replaced" in again.stderr


def other_registry(unit_env: Path, *, init: bool = True) -> dict[str, str]:
    """The environment of a second registry (another state directory: as another user's
    pgmgr, or root's through sudo), with an instance 'fresh' of its own elsewhere."""
    env = {"PGMGR_STATE_DIR": str(unit_env / "other-state")}
    if init:
        made = run_pgmgr(
            "init", "-q", "-d", str(unit_env / "elsewhere"), "--name", "fresh", env=env
        )
        assert made.returncode == 0, made.stderr
    return env


@pytest.mark.parametrize("mode", ["user", "system"])
def test_remove_leaves_the_unit_of_another_registry(
    fresh: Instance, mock_systemctl: Path, mode: str
) -> None:
    """'pgmgr service remove fresh' from another registry with its own 'fresh' stopped,
    disabled and deleted this registry's unit. It is refused in one line, touching nothing;
    'show' there says whose the unit is. A registry whose instance is gone (forgotten) still
    removes its own unit, and only its own."""
    unit_env = mock_systemctl.parent
    path, ours = unit_text(fresh, mode)
    env = other_registry(unit_env)
    state = fresh.env.get("PGMGR_STATE_DIR") or os.environ["PGMGR_STATE_DIR"]
    whose = f"instance 'fresh' ({fresh.datadir}) of the pgmgr with state directory {state}"
    for args in ((), (f"--{mode}",)):
        clash = run_pgmgr("service", "remove", "fresh", *args, env=env)
        assert clash.returncode == 1, clash.stderr
        assert error_lines(clash.stderr)[0] == (
            f"Error: {path} is the unit of {whose}; leaving it alone"
        ), clash.stderr
        assert path.read_text() == ours and calls(mock_systemctl) == []
    shown = run_pgmgr("service", "show", "fresh", env=env)
    assert shown.returncode == 0 and shown.stdout.rstrip("\n") == ours.rstrip("\n")
    assert shown.stderr == f"# installed: {path}, the unit of {whose}\n"
    removed = fresh.pgmgr("service", "remove", "fresh", "-q")
    assert removed.returncode == 0 and not path.exists(), removed.stderr
    assert len(calls(mock_systemctl)) == 2  # disable --now, daemon-reload
    theirs = run_pgmgr("service", "install", "fresh", f"--{mode}", "-q", env=env)
    assert theirs.returncode == 0, theirs.stderr
    assert run_pgmgr("forget", "fresh", "-q", env=env).returncode == 0  # the unit stays
    text = path.read_text()
    clash = fresh.pgmgr("service", "remove", "fresh")
    assert clash.returncode == 1 and error_lines(clash.stderr)[0].startswith(
        f"Error: {path} is the unit of instance 'fresh' ({unit_env / 'elsewhere'}) of the "
        f"pgmgr with state directory {env['PGMGR_STATE_DIR']}"
    ), clash.stderr
    assert path.read_text() == text and len(calls(mock_systemctl)) == 2
    removed = run_pgmgr("service", "remove", "fresh", "-q", env=env)
    assert removed.returncode == 0 and not path.exists(), removed.stderr


def test_destroy_and_forget_say_that_their_unit_stays(fresh: Instance, unit_env: Path) -> None:
    """A destroyed or forgotten instance's unit stays (systemd goes on starting it): the
    command says so, and how to remove it; never of another registry's unit of that name."""
    path, _ = unit_text(fresh, "user")
    env = other_registry(unit_env)
    forgot = run_pgmgr("forget", "fresh", env=env)
    assert forgot.returncode == 0 and "unit" not in forgot.stderr, forgot.stderr
    assert fresh.pgmgr("service", "remove", "fresh", "-q").returncode == 0
    again = run_pgmgr("init", "-q", "-d", str(unit_env / "elsewhere"), "--name", "fresh", env=env)
    assert again.returncode == 0, again.stderr
    assert run_pgmgr("service", "install", "fresh", "--user", "-q", env=env).returncode == 0
    destroyed = run_pgmgr("destroy", "fresh", "--yes", env=env)
    assert destroyed.returncode == 0, destroyed.stderr
    assert destroyed.stderr.splitlines()[-1] == (
        f"Note: its systemd unit stays: {path} ('pgmgr service remove fresh' stops and deletes it)"
    ), destroyed.stderr
    assert run_pgmgr("service", "remove", "fresh", "-q", env=env).returncode == 0
    assert not path.exists()


def test_remove_refuses_a_hand_written_unit(fresh: Instance, mock_systemctl: Path) -> None:
    """A file pgmgr did not write, asked for by --system or --user, was "no pgmgr unit"
    (exit 4); it is refused as install refuses it. Without a mode it is someone else's
    file that happens to have the name: this registry's unit of the other mode goes."""
    path = mock_systemctl.parent / "config/systemd/user/pgmgr-fresh.service"
    path.parent.mkdir(parents=True)
    path.write_text("[Service]\nExecStart=/bin/true\n")
    proc = fresh.pgmgr("service", "remove", "fresh", "--user")
    assert (proc.returncode, error_lines(proc.stderr)) == (
        1, [f"Error: {path} exists and was not written by pgmgr; leaving it alone"]
    ), proc.stderr  # fmt: skip
    system, _ = unit_text(fresh, "system")
    proc = fresh.pgmgr("service", "remove", "fresh")
    assert proc.returncode == 0 and proc.stderr == f"Removed {system}\n", proc.stderr
    assert path.read_text() == "[Service]\nExecStart=/bin/true\n" and not system.exists()


@pytest.mark.parametrize("mode", ["user", "system"])
def test_a_unit_written_before_it_named_its_registry(
    fresh: Instance, unit_env: Path, mode: str
) -> None:
    """A unit of an older pgmgr has no state-directory line: it is this registry's if its
    PGMGR_STATE_DIR is this one, or (root's system unit, with a state directory of its own)
    if it supervises this registry's instance of that name. Else it is refused."""
    path, text = unit_text(fresh, mode)
    lines = text.splitlines(keepends=True)
    assert lines[1].startswith(service.REGISTRY)
    older = "".join(lines[:1] + lines[2:])
    path.write_text(older)
    env = other_registry(unit_env)
    clash = run_pgmgr("service", "remove", "fresh", env=env)
    assert clash.returncode == 1, clash.stderr
    assert error_lines(clash.stderr)[0] == (
        f"Error: {path} is the unit of instance 'fresh' ({fresh.datadir}) of another pgmgr; "
        "leaving it alone"
    )
    assert path.read_text() == older
    removed = fresh.pgmgr("service", "remove", "fresh", "-q")
    assert removed.returncode == 0 and not path.exists(), removed.stderr


@pytest.mark.parametrize("mode", ["user", "system"])
def test_the_registry_is_its_directory_not_how_it_is_spelt(
    fresh: Instance, mock_systemctl: Path, mode: str
) -> None:
    """The same state directory reached through a symlinked parent, or a relative path with
    '..': remove and install refused the registry's own unit as "the unit of ... of the pgmgr
    with state directory" (itself, spelt otherwise)."""
    state = Path(fresh.env.get("PGMGR_STATE_DIR") or os.environ["PGMGR_STATE_DIR"])
    link = mock_systemctl.parent / "via"
    link.symlink_to(state.parent)
    spellings = [
        ({"PGMGR_STATE_DIR": str(state)}, None),
        ({"PGMGR_STATE_DIR": f"../{state.parent.name}/{state.name}"}, state.parent),
    ]
    if os.geteuid() == 0:  # a user's is refused on a path through a symlink (not private)
        spellings.append(({"PGMGR_STATE_DIR": str(link / state.name)}, None))
    for env, cwd in spellings:
        installed = run_pgmgr("service", "install", fresh.name, f"--{mode}",
                              env={**fresh.env, **env}, cwd=cwd)  # fmt: skip
        assert installed.returncode == 0, installed.stderr
        path = Path(installed.stderr.splitlines()[0].split(" ", 1)[1])
        for other, other_cwd in spellings:
            again = run_pgmgr("service", "install", fresh.name, f"--{mode}", "-q",
                              env={**fresh.env, **other}, cwd=other_cwd)  # fmt: skip
            assert again.returncode == 0, (env, other, again.stderr)
        gone, gone_cwd = spellings[(spellings.index((env, cwd)) + 1) % len(spellings)]
        removed = run_pgmgr("service", "remove", fresh.name, "-q",
                            env={**fresh.env, **gone}, cwd=gone_cwd)  # fmt: skip
        assert removed.returncode == 0 and not path.exists(), (env, gone, removed.stderr)


def systemd_environment(line: str) -> dict[str, str]:
    """What systemd makes of an ``Environment=`` value (systemd.exec(5)): words split on
    spaces with double quotes and C escapes, ``%%`` a '%' (specifiers), and no variable
    expansion: "$ has no special meaning" there (unlike ExecStart=, where $$ is a '$')."""
    words = shlex.split(line.removeprefix("Environment="))
    return dict(w.replace("%%", "%").split("=", 1) for w in words)


@pytest.mark.parametrize("mode", ["user", "system"])
def test_the_unit_names_a_state_directory_with_a_dollar_as_it_is(
    unit_env: Path, mock_systemctl: Path, mode: str
) -> None:
    """Environment= does no variable expansion: the '$' of a state directory doubled as in
    ExecStart= reached the service as '$$', another state directory, where the instance is
    unknown. Spaces, '%' and quotes stay as they are too."""
    state = unit_env / 'st $HOME 100% "q"'
    env = {"PGMGR_STATE_DIR": str(state)}
    made = run_pgmgr("init", "-q", "-d", str(unit_env / "db"), "--name", "db", env=env)
    assert made.returncode == 0, made.stderr
    installed = run_pgmgr("service", "install", "db", f"--{mode}", env=env)
    assert installed.returncode == 0, installed.stderr
    path = Path(installed.stderr.splitlines()[0].split(" ", 1)[1])
    lines = path.read_text().splitlines()
    (line,) = [x for x in lines if x.startswith("Environment=") and "PGMGR_STATE_DIR" in x]
    if "%S/" not in line:  # else root's system unit of a server user: a state dir of its own
        assert systemd_environment(line)["PGMGR_STATE_DIR"] == str(state), line
    removed = run_pgmgr("service", "remove", "db", "-q", env=env)
    assert removed.returncode == 0 and not path.exists(), removed.stderr


def test_bad_service_inputs(fresh: Instance, unit_env: Path) -> None:
    unknown = fresh.pgmgr("service", "install", "nosuch", "--user")
    assert unknown.returncode == 4 and len(unknown.stderr.splitlines()) <= 2
    for verb in ("show", "remove"):
        proc = fresh.pgmgr("service", verb, "nosuch")
        assert proc.returncode == 4, proc.stderr
        assert error_lines(proc.stderr)[0].startswith("Error: no "), proc.stderr
    both = fresh.pgmgr("service", "install", "fresh", "--user", "--system")
    assert both.returncode == 2 and "not both" in both.stderr
    assert not (unit_env / "config").exists() and not (unit_env / "system-units").exists()


def test_quote_arg() -> None:
    assert service.quote_arg("/a/b-c.d") == "/a/b-c.d"
    assert service.quote_arg("a b") == '"a b"'
    assert service.quote_arg('x"$%\\') == '"x\\"$$%%\\\\"'
    assert service.quote_arg("") == '""'
    with pytest.raises(Exception, match="line break"):
        service.quote_arg("a\nb")


# --------------------------------------------------------------------------- sd_notify


@pytest.fixture
def notify_socket(ops_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound where the server user can send to it (as systemd's is)."""
    path = ops_dir / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    path.chmod(0o777)
    try:
        yield listen(sock), str(path)
    finally:
        sock.close()


def listen(sock: socket.socket) -> socket.socket:
    """Ask for each sender's credentials, as systemd does to enforce NotifyAccess=main."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    return sock


def receive(sock: socket.socket, main_pid: int, timeout: float = 30) -> str:
    """The next message, which must come from ``main_pid`` (a postgres built with systemd
    support would send its own READY=1 if pgmgr let NOTIFY_SOCKET through to it)."""
    sock.settimeout(timeout)
    data, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    creds = [d for level, kind, d in ancdata if kind == socket.SCM_CREDENTIALS]
    assert creds, "no sender credentials"
    pid = struct.unpack("iII", creds[0][:12])[0]
    assert pid == main_pid, (pid, main_pid, data)
    return data.decode()


def ready_then_stop(proc: subprocess.Popen[str], sock: socket.socket, port: int) -> None:
    """READY=1 comes once the server takes connections; SIGTERM brings STOPPING=1, exit 0."""
    try:
        assert receive(sock, proc.pid) == "READY=1"
        # The very next moment, a connection must work: READY=1 was not sent early.
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres"):
            pass
        proc.send_signal(signal.SIGTERM)
        assert receive(sock, proc.pid) == "STOPPING=1"
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out = proc.stderr.read() if proc.stderr else ""
        assert "Traceback" not in out, out


def test_unit_exec_start_notifies_ready_and_stopping(
    fresh: Instance, unit_env: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    """Run the system unit's ExecStart the way systemd would: as its User=, with its
    Environment= (%S and %C made under the test dir, owned by that user, as StateDirectory=
    would), NOTIFY_SOCKET set; then SIGTERM the main process.

    Where that user cannot execute this Python (a venv over a pyenv under /root), the unit
    could not run here at all: then root runs the same command line, and pgmgr runs postgres
    as that user itself.
    """
    port = int(str(fresh.record()["port"]))
    assert fresh.pgmgr("stop", "fresh", "-q").returncode == 0
    _, text = unit_text(fresh, "system")
    svc = parse_unit(text)["Service"]
    user = pwd.getpwnam(svc["User"][0])
    drop = os.geteuid() == 0 and can_run_python(user)
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket[1])
    for assignment in svc["Environment"]:
        key, value = assignment.split("=", 1)
        for spec, where in (("%S", "var-lib"), ("%C", "var-cache")):
            if value.startswith(spec):
                value = str(unit_env / where) + value[2:]
                Path(value).mkdir(parents=True, mode=0o700)
                for top, _, _ in os.walk(unit_env / where) if drop else ():
                    os.chown(top, user.pw_uid, user.pw_gid)
        env[key] = value
    proc = subprocess.Popen(
        shlex.split(svc["ExecStart"][0]),
        env=env,
        cwd="/",
        user=user.pw_uid if drop else None,
        group=user.pw_gid if drop else None,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready_then_stop(proc, notify_socket[0], port)
    assert not postmasters_under(fresh.datadir)


def can_run_python(user: pwd.struct_passwd) -> bool:
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "pass"],
            user=user.pw_uid,
            group=user.pw_gid,
            capture_output=True,
            check=False,
        )
    except PermissionError:
        return False
    return proc.returncode == 0


def test_foreground_notifies_an_abstract_socket(fresh: Instance) -> None:
    """``@name`` is the abstract namespace; no message before the server is up."""
    port = int(str(fresh.record()["port"]))
    assert fresh.pgmgr("stop", "fresh", "-q").returncode == 0
    name = f"pgmgr-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    listen(sock)
    try:
        proc = subprocess.Popen(
            [*service.pgmgr_command(), "start", "fresh", "--foreground"],
            env=dict(os.environ, NOTIFY_SOCKET="@" + name),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready_then_stop(proc, sock, port)
    finally:
        sock.close()


# A stand-in for systemctl, first on PATH: systemd cannot run in this VM (PID 1 is not
# systemd), so `install --enable` and `remove` are checked against this mock, which records
# its arguments and, when asked to, fails the way systemctl does (message, exit code 1).
MOCK_SYSTEMCTL = """#!/bin/sh
printf '%s\\n' "$*" >> "$MOCK_SYSTEMCTL_LOG"
case " $* " in
  *" enable "*)
    if [ -n "$MOCK_SYSTEMCTL_FAIL" ]; then
      echo "Failed to enable unit: Unit file is masked." >&2
      exit 1
    fi ;;
esac
exit 0
"""


@pytest.fixture
def mock_systemctl(unit_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The mock systemctl first on PATH, and systemd said to be running (its run dir)."""
    bindir = unit_env / "bin"
    bindir.mkdir()
    (bindir / "systemctl").write_text(MOCK_SYSTEMCTL)
    (bindir / "systemctl").chmod(0o755)
    (unit_env / "run-systemd").mkdir()
    log = unit_env / "systemctl.log"
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("MOCK_SYSTEMCTL_LOG", str(log))
    monkeypatch.setenv("PGMGR_SYSTEMD_RUN_DIR", str(unit_env / "run-systemd"))
    return log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("mode", ["user", "system"])
def test_install_enable_and_remove_call_systemctl(
    fresh: Instance, mock_systemctl: Path, mode: str
) -> None:
    scope = "--user " if mode == "user" else ""
    proc = fresh.pgmgr("service", "install", "fresh", f"--{mode}", "--enable", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["enabled"] is True and out["next_steps"] == []
    assert calls(mock_systemctl) == [
        f"{scope}daemon-reload",
        f"{scope}enable --now pgmgr-fresh.service",
    ]
    assert Path(out["path"]).is_file()
    removed = fresh.pgmgr("service", "remove", "fresh", f"--{mode}")
    assert removed.returncode == 0, removed.stderr
    assert calls(mock_systemctl)[2:] == [
        f"{scope}disable --now pgmgr-fresh.service",
        f"{scope}daemon-reload",
    ]
    assert not Path(out["path"]).exists()


def test_a_failing_systemctl_is_one_clear_error(
    fresh: Instance, mock_systemctl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOCK_SYSTEMCTL_FAIL", "1")
    proc = fresh.pgmgr("service", "install", "fresh", "--user", "--enable")
    assert proc.returncode == 1
    lines = error_lines(proc.stderr)
    path = mock_systemctl.parent / "config/systemd/user/pgmgr-fresh.service"
    assert lines == [
        "Error: systemctl failed with exit code 1: Failed to enable unit: Unit file is "
        f"masked.; {path} is written but not enabled",
        "Hint: see 'systemctl --user status pgmgr-fresh.service', then run "
        "'systemctl --user enable --now pgmgr-fresh.service'",
    ], proc.stderr
    assert calls(mock_systemctl) == [
        "--user daemon-reload",
        "--user enable --now pgmgr-fresh.service",
    ]


def test_without_systemd_install_enable_writes_the_file_and_says_how(
    fresh: Instance, mock_systemctl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGMGR_SYSTEMD_RUN_DIR", str(mock_systemctl.parent / "no-such-dir"))
    proc = fresh.pgmgr("service", "install", "fresh", "--user", "--enable")
    assert proc.returncode == 0, proc.stderr
    assert "systemd is not running here" in proc.stderr
    assert "systemctl --user enable --now pgmgr-fresh.service" in proc.stderr
    assert (mock_systemctl.parent / "config/systemd/user/pgmgr-fresh.service").is_file()
    assert calls(mock_systemctl) == []  # never called where systemd does not run


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a file system needs root")
def test_a_read_only_file_system_is_said_not_need_root(
    fresh: Instance, unit_env: Path, read_only: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """install into a directory on a read-only file system said "is not writable by you"
    and "system units need root", to root itself; it names the read-only file system, in
    one line, for either mode, and remove says what it could not remove."""
    monkeypatch.setenv("PGMGR_SYSTEMD_SYSTEM_DIR", str(read_only / "system-units"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(read_only / "config"))
    (read_only / "config/systemd/user").mkdir(parents=True)
    assert fresh.pgmgr("service", "install", "fresh", "--system", "-q").returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(read_only)], check=True)
    system = read_only / "system-units/pgmgr-fresh.service"
    for mode, path in (("system", system), ("user", read_only / "config/systemd/user")):
        proc = fresh.pgmgr("service", "install", "fresh", f"--{mode}")
        unit = path if mode == "system" else path / "pgmgr-fresh.service"
        assert (proc.returncode, error_lines(proc.stderr)) == (
            1, [f"Error: cannot write {unit}: {unit.parent} is on a read-only file system"]
        ), proc.stderr  # fmt: skip
    proc = fresh.pgmgr("service", "remove", "fresh", "--system")
    assert (proc.returncode, error_lines(proc.stderr)) == (
        1, [f"Error: cannot remove the unit {system}: Read-only file system"]
    ), proc.stderr  # fmt: skip
    assert system.is_file()
