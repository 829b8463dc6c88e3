"""An instance is what it was (issue 10): the record pins its data directory (device, inode,
pg_control's system identifier); stop, restart, destroy and status act only on that very
directory, and say what changed otherwise."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from pgmgr.core import process
from tests.helpers import copy_datadir, run_pgmgr
from tests.reliability.conftest import Inst, InstFactory, needs_root, one_error, pgmgr
from tests.reliability.users import os_user, run_as


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_size for p in sorted(root.rglob("*"))}


def refuses(inst_name: str, state: str) -> None:
    """status says ``state`` (exit 4); stop, restart and destroy refuse with exit 4."""
    run = pgmgr("status", inst_name, "--json")
    assert run.returncode == 4 and run.json()["state"] == state, str(run)
    listing = pgmgr("status", "--json")
    assert {r["name"]: r["state"] for r in listing.json()}[inst_name] == state
    for args in (["stop"], ["restart"], ["destroy", "--yes"], ["start", "--port", "auto"]):
        run = pgmgr(args[0], inst_name, *args[1:])
        err = one_error(run)
        assert run.returncode == 4 and f"was {state}" in err, str(run)


def test_record_pins_the_datadir(cluster: InstFactory, rel_isolation: Path) -> None:
    inst = cluster("db")
    rec = inst.record()
    st = inst.datadir.stat()
    assert (rec["dev"], rec["ino"]) == (st.st_dev, st.st_ino)
    raw = (inst.datadir / "global" / "pg_control").read_bytes()[:8]
    assert rec["system_id"] == int.from_bytes(raw, "little") != 0


def test_replaced_by_a_copy_or_another_cluster(
    cluster: InstFactory, template: Path, work: Path
) -> None:
    """A copy moved into place (same system identifier, another directory), or another
    cluster: the running server in the old directory is not stopped through the record."""
    inst = cluster("db")
    assert inst.start("--port", "auto").returncode == 0
    pid = inst.pid()
    try:
        inst.datadir.rename(work / "db.real")
        copy_datadir(work / "db.real", inst.datadir)  # a copy, postmaster.pid and all
        refuses("db", "replaced")
        shutil.rmtree(inst.datadir)
        other = Inst("other", work / "other")
        copy_datadir(template, other.datadir)
        with open(other.datadir / "global" / "pg_control", "r+b") as f:
            f.write((12345).to_bytes(8, "little"))  # another system identifier
        other.datadir.rename(inst.datadir)
        refuses("db", "replaced")
        assert tree(inst.datadir)  # nothing removed
        assert process.PidFile.read(work / "db.real") is not None
        assert process.serves(pid or 0, work / "db.real", None)
    finally:
        shutil.rmtree(inst.datadir, ignore_errors=True)
        (work / "db.real").rename(inst.datadir)
    assert inst.stop().returncode == 0  # back in place: it is the instance again


def _moved_while_running(cluster: InstFactory, work: Path) -> tuple[Inst, int | None, Path]:
    """Instance 'db' started, then its data directory renamed to ``work/db.moved`` while
    its server runs: the instance, the server's pid and where its directory is now."""
    inst = cluster("db")
    assert inst.start("--port", "auto").returncode == 0
    pid = inst.pid()
    moved = work / "db.moved"
    inst.datadir.rename(moved)
    return inst, pid, moved


def test_moved_away_while_running_is_not_forgotten(cluster: InstFactory, work: Path) -> None:
    """``mv data elsewhere`` while the server runs: status showed a ``missing`` instance with
    no pid, and forget and destroy ("already gone") removed its record, leaving that server
    running with nothing to show it. Now status names the pid and where it runs, and forget
    and destroy refuse until it is stopped."""
    inst, pid, moved = _moved_while_running(cluster, work)
    try:
        run = pgmgr("status", "db", "--json")
        assert run.returncode == 4, str(run)
        doc = run.json()
        assert doc["state"] == "missing" and doc["pid"] == pid, str(run)
        assert doc["running_from"] == str(moved), str(run)
        listing = pgmgr("status")
        assert f"still runs (pid {pid}) from {moved}" in listing.stdout + listing.stderr
        for args in (["forget", "db"], ["destroy", "db", "--yes"]):
            run = pgmgr(*args)
            err = one_error(run)
            assert run.returncode != 0 and f"still runs (pid {pid}) from {moved}" in err, str(run)
            assert inst.record()["pid"] == pid  # the record stays
        assert process.serves(pid or 0, moved, None) and (moved / "PG_VERSION").exists()
        inst.datadir.mkdir()  # another directory at the path: still not forgotten
        err = one_error(pgmgr("forget", "db"))
        assert f"still runs (pid {pid}) from {moved}" in err and inst.record()["pid"] == pid
    finally:
        with contextlib.suppress(OSError):
            inst.datadir.rmdir()
        moved.rename(inst.datadir)
    assert inst.stop().returncode == 0
    assert pgmgr("forget", "db").returncode == 0  # stopped: forgotten as before


def test_deleted_while_running_is_not_said_moved(cluster: InstFactory) -> None:
    """``rm -rf data`` (or a ``mv`` to another filesystem) while the server runs: it runs on
    in the deleted directory until its next check of postmaster.pid (a minute). forget and
    init said it "runs from DATADIR (deleted), where its data directory was moved from
    DATADIR" and hinted "mv 'DATADIR (deleted)' DATADIR", which nobody can follow."""
    inst = cluster("db")
    assert inst.start("--port", "auto").returncode == 0
    pid = inst.pid() or 0
    try:
        shutil.rmtree(inst.datadir)
        for args in (["forget", "db"], ["init", "-d", str(inst.datadir)]):
            run = pgmgr(*args)
            err = one_error(run)
            assert f"still runs (pid {pid}) in its deleted data directory" in err, str(run)
            assert "(deleted)" not in run.stderr and "mv " not in run.stderr, str(run)
            assert f"kill -QUIT {pid}" in run.stderr, str(run)
        assert not inst.datadir.exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
    assert process.wait_gone(pid, inst.datadir, 10)
    assert pgmgr("forget", "db").returncode == 0


def test_no_new_cluster_where_a_running_one_was_moved_from(
    cluster: InstFactory, work: Path
) -> None:
    """'pgmgr start' of an instance whose data directory was moved while running says
    "create it with 'pgmgr init -d DIR'": that built a new cluster at the old path and the
    record took it (status: stopped), the server with the data ran on unseen, and its
    shutdown then wrote its pg_control into the new cluster (PostgreSQL writes it under the
    path it was started with). Now init and start --init refuse and make nothing."""
    inst, pid, moved = _moved_while_running(cluster, work)
    try:
        for args in (
            ["init", "-d", str(inst.datadir)],
            ["start", "-d", str(inst.datadir), "--init", "--port", "auto"],
        ):
            run = pgmgr(*args)
            err = one_error(run)
            assert run.returncode != 0 and f"still runs (pid {pid}) from {moved}" in err, str(run)
            assert not inst.datadir.exists(), str(run)
        assert pgmgr("status", "db", "--json").json()["pid"] == pid
        assert pgmgr("init", "-d", str(moved)).returncode == 0  # registered where it runs
        assert pgmgr("status", "db", "--json").json()["pid"] is None  # shown there now
        err = one_error(pgmgr("init", "-d", str(inst.datadir)))  # still refused
        assert f"still runs (pid {pid}) from {moved}" in err and not inst.datadir.exists()
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(inst.datadir)
        moved.rename(inst.datadir)
    assert inst.stop().returncode == 0  # moved back, as the hint says: a clean shutdown
    log = Path(inst.record()["log_file"]).read_text(errors="replace")
    assert "PANIC" not in log
    assert pgmgr("forget", "db.moved").returncode == 0


def test_no_fast_stop_of_a_server_started_at_another_path(
    cluster: InstFactory, work: Path, template: Path
) -> None:
    """A server whose data directory was moved while it ran, stopped through the new path
    ('pgmgr stop -d NEWDIR'): its shutdown checkpoint writes global/pg_control under the
    path it was started with: a PANIC when nothing is there, and another cluster's
    pg_control overwritten when one is. pgmgr said "Stopped". Now a smart or fast stop is
    refused; an immediate one (no checkpoint) is not."""
    inst, pid, moved = _moved_while_running(cluster, work)
    copy_datadir(template, inst.datadir)  # another cluster at the old path
    control = (inst.datadir / "global" / "pg_control").read_bytes()
    try:
        for args in (["stop", "-d", str(moved)], ["restart", "-d", str(moved)]):
            run = pgmgr(*args)
            err = one_error(run)
            assert f"was started as {inst.datadir}" in err and "-m immediate" in run.stderr, err
            assert process.serves(pid or 0, moved, None)
        run = pgmgr("stop", "-d", str(moved), "-m", "immediate")
        assert run.returncode == 0, str(run)
    finally:
        if process.serves(pid or 0, moved, None):
            os.kill(pid or 0, signal.SIGQUIT)  # immediate: no checkpoint
    assert process.wait_gone(pid or 0, moved, 10)
    assert (inst.datadir / "global" / "pg_control").read_bytes() == control
    log = Path(inst.record()["log_file"]).read_text(errors="replace")
    assert "PANIC" not in log


def test_stop_of_a_server_started_with_a_configuration_directory(
    cluster: InstFactory, work: Path
) -> None:
    """'postgres -D CONFDIR' whose postgresql.conf names the data directory (data_directory),
    a layout PostgreSQL documents: 'pgmgr stop -d DATADIR' refused a fast stop, saying the
    data directory was moved from CONFDIR since, and hinted an immediate stop."""
    inst = cluster("db", register=False)
    confdir = work / "conf"
    confdir.mkdir()
    for name in ("pg_hba.conf", "pg_ident.conf"):
        shutil.copy2(inst.datadir / name, confdir / name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (confdir / "postgresql.conf").write_text(
        f"data_directory = '{inst.datadir}'\nport = {port}\nlisten_addresses = ''\n"
        f"unix_socket_directories = '{inst.datadir}'\n"
    )
    owner = inst.datadir.stat()
    for path in (confdir, *confdir.iterdir()):
        os.chown(path, owner.st_uid, owner.st_gid)
    pg_ctl = ["/usr/lib/postgresql/15/bin/pg_ctl", "-D", str(confdir), "-w", "start"]
    pg_ctl += ["-l", str(confdir / "server.log")]
    if os.geteuid() == 0:
        pg_ctl = ["runuser", "-u", pwd.getpwuid(owner.st_uid).pw_name, "--", *pg_ctl]
    subprocess.run(pg_ctl, check=True, capture_output=True, timeout=60)
    pf = process.PidFile.read(inst.datadir)
    assert pf is not None and process.serves(pf.pid, inst.datadir, None)
    run = pgmgr("stop", "-d", str(inst.datadir))
    assert run.returncode == 0, str(run)
    assert process.wait_gone(pf.pid, inst.datadir, 10)
    assert "PANIC" not in (confdir / "server.log").read_text(errors="replace")


def test_old_record_gets_its_identity(cluster: InstFactory, rel_isolation: Path) -> None:
    inst = cluster("db")
    path = rel_isolation / "instances" / "db.json"
    data = json.loads(path.read_text())
    for key in ("dev", "ino", "system_id"):
        del data[key]
    path.write_text(json.dumps(data))
    assert pgmgr("status", "db", "--json").json()["state"] == "stopped"
    assert pgmgr("stop", "db").returncode == 0
    assert inst.record()["ino"] == inst.datadir.stat().st_ino


@needs_root
def test_attack4_destroy_through_a_swapped_parent(rel_isolation: Path) -> None:
    """Issue 10, attack 4: root runs victim-prod (in /home/victim/pg/data) and has
    attacker-scratch stopped in /home/attacker/pg/data; the attacker replaces ~/pg with a
    symlink to /home/victim/pg. Neither destroy, stop, restart nor status of
    attacker-scratch (by name or by its path) may touch the victim."""
    with os_user("victim", home=True) as victim, os_user("attacker", home=True) as attacker:
        vdata = Path(victim.home) / "pg" / "data"
        adata = Path(attacker.home) / "pg" / "data"
        for user, data in ((victim, vdata), (attacker, adata)):
            made = run_as(user.name, "mkdir", "-p", "-m", "0700", str(data))
            assert made.returncode == 0, made
            run_as(user.name, "chmod", "0755", str(data.parent))
        start = pgmgr(
            "start",
            "--init",
            "-d",
            str(vdata),
            "--name",
            "victim-prod",
            "-v",
            "15",
            "-p",
            "auto",
            "--json",
        )
        assert start.returncode == 0, str(start)
        victim_inst = Inst("victim-prod", vdata)
        try:
            assert start.json()["server_user"] == victim.name
            token = victim_inst.commit_canary()
            pid = victim_inst.pid()
            init = pgmgr("init", "-d", str(adata), "--name", "attacker-scratch", "-v", "15")
            assert init.returncode == 0, str(init)
            before = tree(vdata)

            apg = Path(attacker.home) / "pg"
            assert run_as(attacker.name, "mv", str(apg), f"{apg}.old").returncode == 0
            assert run_as(attacker.name, "ln", "-s", str(vdata.parent), str(apg)).returncode == 0

            refuses("attacker-scratch", "moved")
            for args in (["destroy", str(adata), "--yes"], ["stop", "-d", str(adata)]):
                run = pgmgr(*args)
                assert "symlink" in one_error(run), str(run)
            assert victim_inst.pid() == pid and process.serves(pid or 0, vdata, None)
            assert victim_inst.has_canary(token)
            after = tree(vdata)
            assert set(before) <= set(after)
            assert (Path(f"{apg}.old") / "data" / "PG_VERSION").is_file()
        finally:
            assert pgmgr("stop", "victim-prod").returncode == 0


def tcp_login(url: str) -> None:
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


def test_reregistration_sets_a_fresh_password(cluster: InstFactory) -> None:
    """Issue 11.10: forget, then init -d (the README's advice) lost the TCP password; now a
    new one is generated, said, and set through the local socket at the next start."""
    inst = cluster("db")
    assert inst.start("--port", "auto").returncode == 0
    tcp_login(pgmgr("url", "db", "--tcp").stdout.strip())
    assert inst.stop().returncode == 0
    assert pgmgr("forget", "db").returncode == 0
    again = pgmgr("init", "-d", str(inst.datadir), "--name", "db")
    assert again.returncode == 0 and "no password is known" in again.stderr, str(again)
    start = inst.start("--port", "auto")
    assert start.returncode == 0 and "set the new password" in start.stderr, str(start)
    try:
        url = pgmgr("url", "db", "--tcp").stdout.strip()
        assert ":" in url.split("@")[0].removeprefix("postgresql://"), url  # has a password
        tcp_login(url)
        assert not inst.record()["password_pending"]
    finally:
        assert inst.stop().returncode == 0


def test_init_through_a_link_of_a_registered_directory(cluster: InstFactory, work: Path) -> None:
    """'init -d LINK' (or 'start --init -d LINK') of a registered data directory: as root,
    a link in a directory the server user can write is compared as written, so the record
    was found only when saved, and init said "a new one was generated" and "registered"
    though the record and its password stayed as they were. Every spelling of the path
    (relative, with '..') now says it is registered, and nothing of a new password."""
    inst = cluster("db")
    assert inst.start("--port", "auto").returncode == 0  # sets its pending password
    assert inst.stop().returncode == 0
    before = inst.record()
    side = work / "side"
    side.mkdir()
    st = inst.datadir.stat()
    os.chown(side, st.st_uid, st.st_gid)  # as root: a directory the server user writes
    (side / "via").symlink_to(inst.datadir)
    spellings = [str(side / "via"), "side/via", "side/../side/via", "./side/via"]
    for spelt in spellings:
        for extra in ([], ["--name", "other"]):
            proc = run_pgmgr("init", "-d", spelt, *extra, cwd=work, stdin=subprocess.DEVNULL)
            out = proc.stderr
            assert proc.returncode == 0 and "already registered as 'db'" in out, out
            assert "password" not in out and "; registered" not in out, out
    start = run_pgmgr("start", "-d", "side/via", "--init", "--port", "auto", cwd=work)
    try:
        assert start.returncode == 0 and "password" not in start.stderr, start.stderr
    finally:
        assert inst.stop().returncode == 0
    after = inst.record()
    assert after["password"] == before["password"] and not after["password_pending"]
    assert [r["name"] for r in pgmgr("status", "--json").json()] == ["db"]


@needs_root
def test_root_link_to_an_attackers_link(
    rel_isolation: Path, work: Path, cluster: InstFactory
) -> None:
    """Root's link (/srv/pg -> ~attacker/pg) that leads to the attacker's own link
    (~attacker/pg -> /home/victim/data): the check of the links on a path passed root's
    and resolved the rest with realpath(), never looking at the attacker's, who points it
    where they like. init, start --init, status, destroy by path and a --log-file there
    are refused in one line; the victim's data is untouched."""
    with os_user("victim", home=True) as victim, os_user("attacker", home=True) as attacker:
        vdata = Path(victim.home) / "data"
        assert run_as(victim.name, "mkdir", "-m", "0700", str(vdata)).returncode == 0
        apg = Path(attacker.home) / "pg"
        assert run_as(attacker.name, "ln", "-s", str(vdata), str(apg)).returncode == 0
        side = work / "srv"
        side.mkdir()
        (side / "pg").symlink_to(apg)  # root's
        runs = [
            pgmgr("init", "-d", str(side / "pg"), "-q"),
            pgmgr("start", "--init", "-d", str(side / "pg" / "."), "-p", "auto", "-q"),
            pgmgr("status", "-d", str(side / "pg")),
            pgmgr("destroy", str(side / "pg"), "--yes"),
        ]
        src = cluster("src")
        assert src.start("-q").returncode == 0
        try:  # a branch or a replica made there: written as the server user, where pointed
            runs.append(pgmgr("branch", "src", "b1", "-d", str(side / "pg" / "b1")))
            runs.append(pgmgr("replica", "src", "--name", "r1", "-d", str(side / "pg" / "r1")))
        finally:
            assert src.stop("-q").returncode == 0
        for run in runs:
            assert run.returncode != 0, str(run)
            assert f"{apg} is a symlink of another user" in one_error(run), str(run)
        assert list(vdata.iterdir()) == [] and not (Path(victim.home) / "server.log").exists()
        # The attacker's link to a place of root's, through root's link: the log was
        # opened there (the check saw only root's places), and the attacker could point
        # the link at another of root's directories between the check and the open.
        roots = work / "roots"
        roots.mkdir(mode=0o700)
        alog = Path(attacker.home) / "logs"
        assert run_as(attacker.name, "ln", "-s", str(roots), str(alog)).returncode == 0
        (side / "logs").symlink_to(alog)  # root's
        logged = pgmgr(
            "start", "--init", "-d", str(work / "mine"), "-p", "auto", "-q",
            "--log-file", str(side / "logs" / "server.log"),
        )  # fmt: skip
        assert logged.returncode != 0, str(logged)
        assert "another user can change that place" in one_error(logged), str(logged)
        assert list(roots.iterdir()) == []
        assert [r["name"] for r in pgmgr("status", "--json").json()] == ["src"]
