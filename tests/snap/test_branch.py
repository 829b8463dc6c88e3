"""pgmgr branch on real PostgreSQL 15 servers: independent both ways, own port, socket and
password; from a snapshot; bad inputs; interrupted branches leave nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from tests.helpers import error_lines, killed
from tests.pause import Paused
from tests.snap.conftest import Inst, leftovers
from tests.snap.test_delta import hooks_dir
from tests.snap.test_interrupt import DELAYS, big, interrupt


def scram(inst: Inst, ops_dir: Path) -> Inst:
    """A password-protected instance (the template is 'trust')."""
    datadir = ops_dir / "pw"
    inst.ok("init", "-q", "-d", str(datadir), "--name", "pw", "-v", "15")
    inst.ok("start", "pw", "-q", "-p", "auto")
    inst.sql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)", "pw")
    return Inst("pw", datadir)


def test_branch_and_source_diverge_both_ways(inst: Inst, ops_dir: Path) -> None:
    src = scram(inst, ops_dir)
    out = json.loads(inst.ok("branch", "pw", "feat", "--json").stdout)
    assert out["started"] is True and out["source_downtime_ms"] is not None
    assert out["datadir"] == str((ops_dir / "feat").resolve())
    a, b = (
        json.loads(inst.ok("status", "pw", "--json").stdout),
        json.loads(inst.ok("status", "feat", "--json").stdout),
    )
    assert a["state"] == b["state"] == "running"
    assert a["port"] != b["port"] and a["socket_dir"] != b["socket_dir"]
    inst.sql("INSERT INTO t VALUES (2)", "pw")
    inst.sql("INSERT INTO t VALUES (3); CREATE TABLE only_here ()", "feat")
    assert inst.sql("SELECT string_agg(x::text, ',' ORDER BY x) FROM t", "pw") == "1,2"
    assert inst.sql("SELECT string_agg(x::text, ',' ORDER BY x) FROM t", "feat") == "1,3"
    assert inst.sql("SELECT to_regclass('only_here') IS NULL", "pw") == "t"
    # own password, over TCP; the source's is refused by the branch
    src_pw = src.record()["password"]
    rec = json.loads((Path(inst.record.__self__.env.get("PGMGR_STATE_DIR", "") or
                           __import__("os").environ["PGMGR_STATE_DIR"]) / "instances" /
                      "feat.json").read_text())  # fmt: skip
    assert rec["password"] and rec["password"] != src_pw and rec["password_pending"] is False
    with psycopg.connect(inst.ok("url", "feat", "--tcp").stdout.strip()) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            f"host=127.0.0.1 port={b['port']} user=postgres password={src_pw} dbname=postgres"
        ).close()
    # a system identifier of its own (its history diverges), its WAL read and written
    sysid = "SELECT system_identifier FROM pg_control_system()"
    assert inst.sql(sysid, "pw") != inst.sql(sysid, "feat")
    assert inst.sql("SELECT pg_switch_wal() IS NOT NULL; CHECKPOINT", "feat") == "t"
    inst.ok("stop", "feat", "-q")
    assert inst.state("pw") == "running"  # stopping the branch leaves the source alone


def test_branch_from_snapshot_of_stopped_source(inst: Inst, ops_dir: Path) -> None:
    inst.ok("snapshot", "dev", "s1", "-q")
    inst.sql("TRUNCATE t")
    inst.ok("stop", "dev", "-q")
    out = json.loads(inst.ok("branch", "dev", "old", "--from", "s1", "-d",
                             str(ops_dir / "elsewhere"), "--json").stdout)  # fmt: skip
    assert out["started"] is False and out["from_snapshot"] == "s1"
    assert out["source_downtime_ms"] is None
    assert inst.state("old") == "stopped"
    inst.ok("start", "old", "-q")
    assert inst.sql("SELECT count(*) FROM t", "old") == "1000"
    inst.ok("start", "dev", "-q")
    assert inst.sql("SELECT count(*) FROM t") == "0"
    sysid = "SELECT system_identifier FROM pg_control_system()"
    assert inst.sql(sysid, "old") != inst.sql(sysid)
    p = inst.pid("old")
    inst.ok("branch", "dev", "third", "--start", "-p", "auto", "-q")
    assert inst.state("third") == "running" and inst.pid("old") == p


def test_branches_of_a_crashed_source_and_of_an_online_snapshot_get_their_own_identifier(
    inst: Inst,
) -> None:
    """Only a copy of a clean shutdown got an identifier of its own: a branch of a crashed
    source, or of an online snapshot, kept its source's, which a standby or WAL archive of
    the source would take for its own. Their crash (backup) recovery replays WAL over
    more than one segment, every one rewritten."""
    from pgmgr.core.pgcontrol import system_identifier

    inst.ok("snapshot", "dev", "on", "--online", "-q")
    inst.sql("CHECKPOINT; INSERT INTO t SELECT generate_series(1, 400000)")  # > 16 MB WAL
    pid = inst.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while inst.state() != "crashed" and time.monotonic() < deadline:
        time.sleep(0.05)
    inst.ok("branch", "dev", "crashed", "--start", "-q")
    inst.ok("branch", "dev", "online", "--from", "on", "--start", "-q")
    assert inst.sql("SELECT count(*) FROM t", "crashed") == "401000"
    assert inst.sql("SELECT count(*) FROM t", "online") == "1000"
    sysid = "SELECT system_identifier FROM pg_control_system()"
    ids = {system_identifier(inst.datadir), inst.sql(sysid, "crashed"), inst.sql(sysid, "online")}
    assert len(ids) == 3
    for name in ("crashed", "online"):  # their WAL is written and read on
        assert inst.sql("SELECT pg_switch_wal() IS NOT NULL; CHECKPOINT", name) == "t"
        inst.ok("restart", name, "-q")
        assert inst.sql("SELECT count(*) > 0 FROM t", name) == "t"


def test_branch_bad_inputs(inst: Inst, ops_dir: Path) -> None:
    (ops_dir / "taken").mkdir()
    port, pid = json.loads(inst.ok("status", "dev", "--json").stdout)["port"], inst.pid()
    cases = [
        (("branch", "dev", "dev"), 2, "an instance named 'dev' already exists"),
        (("branch", "dev", "taken"), 1, "already exists; a branch gets a new data directory"),
        (("branch", "dev", "x", "--from", "nope"), 4, "has no snapshot named 'nope'"),
        (("branch", "dev", "bad/name"), 2, "invalid instance name"),
        (("branch", "dev", "y", "-p", "70000"), 2, "invalid --port"),
        (("branch", "dev", "z", "-d", str(ops_dir / "no" / "such")), 1, "does not exist"),
        # the branch could take it while the source starts again: refused before the copy
        (("branch", "dev", "p", "-p", str(port)), 2, f"port {port} is the port of 'dev'"),
    ]
    for args, code, text in cases:
        proc = inst.pgmgr(*args)
        lines = error_lines(proc.stderr)
        assert proc.returncode == code, (args, proc.stderr)
        assert lines[0].startswith("Error: ") and text in lines[0], (args, lines)
    assert sorted(p.name for p in ops_dir.iterdir()) == [".pgmgr-snapshots", "data", "taken",
                                                         "tmp"]  # fmt: skip
    assert json.loads(inst.ok("status", "--json").stdout)[0]["name"] == "dev"
    assert inst.pid() == pid  # never stopped


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_branch_leaves_nothing(inst: Inst, ops_dir: Path, sig: int) -> None:
    big(inst)
    made = 0
    for i, delay in enumerate(DELAYS):
        code = interrupt(inst, ["branch", "dev", f"b{i}"], delay, sig)
        assert inst.state() == "running", (delay, code)
        assert inst.sql("SELECT count(*) FROM big") == "250000"
        exists = (ops_dir / f"b{i}").exists()
        names = [s["name"] for s in json.loads(inst.ok("status", "--json").stdout)]
        assert exists == (f"b{i}" in names) == (code == 0), (delay, code, exists, names)
        if code == 0:
            made += 1
            assert inst.state(f"b{i}") == "running"
            inst.ok("stop", f"b{i}", "-q")
        assert leftovers(ops_dir / ".pgmgr-snapshots" / f"b{i}") == []
    assert made < len(DELAYS)
    subprocess.run(["true"], check=True)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_branch_interrupted_between_copy_and_placing_leaves_no_copy(
    inst: Inst, ops_dir: Path, tmp_path: Path, sig: int
) -> None:
    """A signal after the copy, before it was registered and put in place (its record
    made, its port picked): the staged copy, a whole data directory, stayed in the new
    store until some later branch swept it (a flake of the random-delay test above, under
    load, found it)."""
    with Paused(hooks_dir(tmp_path), "branch-to-place", "branch", "dev", "late",
                env=inst.env) as making:  # fmt: skip
        making.reached()
        assert (ops_dir / ".pgmgr-snapshots" / "late" / ".tmp-branch").is_dir()
        assert making.kill(sig) == 130
    assert inst.state() == "running"
    assert not (ops_dir / "late").exists()
    assert "late" not in [s["name"] for s in json.loads(inst.ok("status", "--json").stdout)]
    assert leftovers(ops_dir / ".pgmgr-snapshots" / "late", wait=0) == []


def test_two_branches_into_one_name_at_once(inst: Inst, ops_dir: Path) -> None:
    """Two sources branched into one new name at the same moment (the sources' locks do not
    serialize them): one branch is made whole, the other is refused with one line. Without
    the target's lock each swept or renamed in the other's half-made copy ('not a
    PostgreSQL data directory', 'Directory not empty'); into two directories, the second
    record overwrote the first (a running server nobody knew)."""
    import os
    import sys

    inst.ok("branch", "dev", "c", "-q")
    inst.sql("INSERT INTO t VALUES (-2)", "c")
    runs = [([], []), (["-d", str(ops_dir / "x1-a")], ["-d", str(ops_dir / "x1-b")])]
    for i, (dirs_dev, dirs_c) in enumerate(runs):
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "pgmgr", "branch", src, f"x{i}", *dirs],
                env={**os.environ, **inst.env},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for src, dirs in (("dev", dirs_dev), ("c", dirs_c))
        ]
        results = [(p.wait(timeout=120), p.communicate()[1]) for p in procs]
        assert sorted(code for code, _ in results) in ([0, 1], [0, 2]), results
        for code, err in results:
            assert "Traceback" not in err
            if code:
                assert error_lines(err)[0].startswith("Error: "), err
        winner = ["dev", "c"][[code for code, _ in results].index(0)]
        assert inst.sql("SELECT count(*) FROM t WHERE x = -2", f"x{i}") == (
            "1" if winner == "c" else "0"
        )
        assert inst.sql("SELECT count(*) FROM t", f"x{i}") in ("1000", "1001")
        inst.ok("stop", f"x{i}", "-q")
        assert leftovers(ops_dir / ".pgmgr-snapshots" / f"x{i}") == []
    names = sorted(s["name"] for s in json.loads(inst.ok("status", "--json").stdout))
    assert names == ["c", "dev", "x0", "x1"]
    assert sum((ops_dir / d).exists() for d in ("x1-a", "x1-b")) == 1
    inst.ok("stop", "c", "-q")


def _held_branch(inst: Inst, hooks: Path, src: str, new: str) -> subprocess.Popen[str]:
    """``pgmgr branch SRC NEW`` stopped at the test hook after its copy."""
    import os
    import sys
    import time

    from pgmgr.core import testhook

    (hooks / "branch-copied").touch()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgmgr", "branch", src, new],
        env={**os.environ, **inst.env, testhook.ENV: str(hooks)}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (hooks / "branch-copied.reached").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    (hooks / "branch-copied").unlink()
    (hooks / "branch-copied.reached").unlink()
    return proc


def test_a_killed_branch_copy_is_swept_by_the_next_branch(
    inst: Inst, ops_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL after the copy left it in .pgmgr-snapshots/NEW/.tmp-branch, which only a
    branch into the same name removed: a data directory's worth of disk lost. The next
    branch beside it sweeps it, but never the copy of a branch still under way."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    hooks.chmod(0o777)
    inst.ok("branch", "dev", "c", "-q")
    held = _held_branch(inst, hooks, "dev", "k")
    killed(held)
    staged = ops_dir / ".pgmgr-snapshots" / "k" / ".tmp-branch"
    assert staged.is_dir()
    held = _held_branch(inst, hooks, "c", "h")
    try:
        inst.ok("branch", "dev", "b", "-q")  # dev stopped for the copy when the kill came
        assert not staged.exists()
        assert (ops_dir / ".pgmgr-snapshots" / "h" / ".tmp-branch").is_dir()  # under way
    finally:
        (hooks / "branch-copied.go").touch()
        err = held.communicate(timeout=60)[1]
    assert held.returncode == 0, err
    assert inst.sql("SELECT count(*) FROM t", "h") == "1000"
    for name in ("b", "h", "c"):
        inst.ok("stop", name, "-q")


def test_a_branch_whose_directory_appears_meanwhile_leaves_no_copy(
    inst: Inst, ops_dir: Path, tmp_path: Path
) -> None:
    """The new data directory made by someone else while the branch copied: the branch
    failed ('cannot create DIR: File exists') and left its whole copy in
    .pgmgr-snapshots/NEW/.tmp-branch until some later branch beside it swept it."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    hooks.chmod(0o777)
    held = _held_branch(inst, hooks, "dev", "late")
    (ops_dir / "late").mkdir()
    (hooks / "branch-copied.go").touch()
    err = held.communicate(timeout=60)[1]
    assert held.returncode == 1 and error_lines(err)[0].startswith(
        f"Error: cannot create {ops_dir / 'late'}: "
    ), err
    assert inst.state() == "running"
    assert not (ops_dir / ".pgmgr-snapshots" / "late").exists()
    assert list((ops_dir / "late").iterdir()) == []


def test_a_branch_listens_on_the_sources_loopback_addresses_only(inst: Inst, ops_dir: Path) -> None:
    """A source told to listen on every interface (``start -H '*'``: written into its
    record by hand here, never started so, as servers of the suite listen on loopback
    only) does not make its branch listen there too: nobody asked for that (a replica
    already kept only the loopback addresses)."""
    inst.ok("stop", "dev", "-q")
    record = Path(os.environ["PGMGR_STATE_DIR"]) / "instances" / "dev.json"
    for told, kept in (("*", "127.0.0.1"), ("0.0.0.0,::1", "::1")):
        doc = json.loads(record.read_text())
        doc["host"] = told
        record.write_text(json.dumps(doc))
        assert json.loads(inst.pgmgr("status", "dev", "--json").stdout)["host"] == told
        inst.ok("branch", "dev", "narrow", "-q")
        assert json.loads(inst.pgmgr("status", "narrow", "--json").stdout)["host"] == kept
        inst.ok("destroy", "narrow", "--yes", "-q")
