"""The ``-p`` of the commands that make a new instance (``replica``, ``import``, and the
library's ``Manager(initialize=True)``), on real servers: a port the new server could never
listen on (below the kernel's ``net.ipv4.ip_unprivileged_port_start``: the server user may
not bind it) or one that is taken is refused up front, as ``start -p`` refuses it, before
anything is made (the replica was refused only after its whole base backup, the import
after its initdb, both then undone). ``branch``: tests/snap/test_low_port.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pgmgr.core import listen
from tests.helpers import error_lines
from tests.ops.conftest import Instance
from tests.pause import Paused

LOW = 80

low_ports_bindable = pytest.mark.skipif(
    listen.unprivileged_start() <= LOW, reason="this kernel lets anyone bind low ports"
)


@pytest.fixture
def hooks(ops_dir: Path) -> Path:
    path = ops_dir / "hooks"
    path.mkdir()
    path.chmod(0o777)  # the server user's work pauses here too
    return path


def refused_before(hooks: Path, step: str, *args: str) -> list[str]:
    """Run ``pgmgr ARGS`` with a pause armed at ``step`` (the first one after its checks,
    where it has registered the new instance): it must exit before it gets there. Its
    Error and Hint lines."""
    with Paused(hooks, step, *args) as run:
        deadline = time.monotonic() + 60
        while run.proc.poll() is None and not (hooks / f"{step}.reached").exists():
            assert time.monotonic() < deadline, "pgmgr neither refused nor went on"
            time.sleep(0.01)
        assert not (hooks / f"{step}.reached").exists(), f"refused only after {step}"
        _, err = run.proc.communicate(timeout=60)
        assert run.proc.returncode == 1, err
    assert "Traceback" not in err, err
    return error_lines(err)


def low_port_lines() -> list[str]:
    """What ``start -p 80`` says (the server user is 'postgres', as root or as itself)."""
    limit = listen.unprivileged_start()
    return [
        f"Error: cannot listen on port {LOW} (127.0.0.1): ports below {limit} need "
        "privileges the server user 'postgres' does not have",
        f"Hint: use --port auto, or a port from {limit} up",
    ]


def taken_lines(port: int) -> list[str]:
    return [
        f"Error: port {port} on 127.0.0.1 is already in use",
        "Hint: choose another with --port, or let pgmgr pick one with --port auto",
    ]


@low_ports_bindable
def test_replica_refuses_a_port_before_the_clone(
    fresh: Instance, ops_dir: Path, hooks: Path
) -> None:
    taken = int(str(fresh.record()["port"]))
    for port, lines in ((LOW, low_port_lines()), (taken, taken_lines(taken))):
        args = ("replica", "fresh", "--name", "rep", "-p", str(port))
        assert refused_before(hooks, "replica-registered", *args) == lines
        assert not (ops_dir / "rep").exists()
        assert "rep" not in fresh.registered()


@low_ports_bindable
def test_import_refuses_a_port_before_the_initdb(
    fresh: Instance, ops_dir: Path, hooks: Path
) -> None:
    bundle = ops_dir / "bundle"
    assert fresh.pgmgr("export", "fresh", str(bundle), "-q").returncode == 0
    taken = int(str(fresh.record()["port"]))
    for port, lines in ((LOW, low_port_lines()), (taken, taken_lines(taken))):
        args = ("import", str(bundle), "-d", str(ops_dir / "imp"), "-p", str(port))
        assert refused_before(hooks, "import-registered", *args) == lines
        assert not (ops_dir / "imp").exists()
        assert "imp" not in fresh.registered()


@low_ports_bindable
def test_a_manager_initializing_refuses_a_port_it_could_never_use(ops_dir: Path) -> None:
    """``Manager(port=80, initialize=True)`` initialized and registered the data directory,
    then every ``start()`` failed; it is refused first, as ``start --init`` refuses it."""
    from pgmgr import Manager
    from pgmgr.core import registry
    from pgmgr.core.errors import PortPrivileged

    with pytest.raises(PortPrivileged, match=f"cannot listen on port {LOW} "):
        Manager("127.0.0.1", LOW, ops_dir / "lib", initialize=True, pg_version="15")
    assert not (ops_dir / "lib").exists()
    assert "lib" not in registry.names()
