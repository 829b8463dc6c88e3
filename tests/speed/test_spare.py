"""Spare copies of a template against real PostgreSQL 15 servers: an init claims the spare
with one rename, a background refill makes the next one, instances made from spares are
independent, concurrent inits are safe, anything wrong with a spare means a normal copy,
and ``cache clear`` removes spares."""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgmgr.core import pgcontrol, registry
from tests.helpers import copy_datadir

from .conftest import (
    init_concurrently,
    pgmgr,
    pgmgr_json,
    templates,
    user_templates,
    wait_refills,
)
from .test_template import connect, scalar


def cache() -> Path:
    """The server user's part of the template cache (``u<uid>``)."""
    return user_templates()


def spare() -> Path:
    (key,) = templates()
    return cache() / f"{key}.spare"


def ready(base: Path) -> int:
    """Build the template (first init), copy it once (second init: starts the refill), wait
    for the spare; the inode of its ``global/pg_control`` (a claim moves the spare's entries
    into the data directory: the same files, not copies)."""
    assert pgmgr_json("init", "-d", str(base / "first"))["initialized"]
    assert not spare().exists(), "a key used once costs no spare"
    assert pgmgr_json("init", "-d", str(base / "second"))["initialized"]
    wait_refills()
    assert (spare() / "global" / "pg_control").is_file()
    assert pgmgr_json("cache", "list")[0]["spare"] is True
    return control_inode(spare())


def control_inode(datadir: Path) -> int:
    return (datadir / "global" / "pg_control").stat().st_ino


def check_owner_and_mode(datadir: Path) -> None:
    st = datadir.stat()
    assert st.st_mode & 0o777 == 0o700
    if os.geteuid() == 0:
        assert pwd.getpwuid(st.st_uid).pw_name == "postgres"
        owners = {p.lstat().st_uid for p in datadir.rglob("*")}
        assert owners == {st.st_uid}


def test_init_claims_the_spare_and_the_refill_makes_a_new_one(
    base: Path, started: Callable[..., dict[str, Any]]
) -> None:
    inode = ready(base)
    datadir = base / "claimed"
    assert pgmgr_json("init", "-d", str(datadir))["initialized"]
    assert control_inode(datadir) == inode, "the spare itself was moved into place"
    check_owner_and_mode(datadir)
    hba = (datadir / "pg_hba.conf").read_text()
    methods = {ln.split()[-1] for ln in hba.splitlines() if ln.startswith("host")}
    assert methods == {"scram-sha-256"}
    assert not [p for p in datadir.iterdir() if "pgmgr-init" in p.name], "the work dir is gone"
    inst = registry.load("claimed")
    assert inst.password and inst.password_pending

    wait_refills()
    assert spare().is_dir() and control_inode(spare()) != inode, "refilled"
    assert not [p.name for p in cache().iterdir() if ".tmp-" in p.name]

    port = started(datadir)["port"]
    assert scalar(port, inst.password, "SELECT count(*) FROM pg_database") == 3
    # a database system identifier of its own (a spare is a template's copy)
    sysid = scalar(port, inst.password, "SELECT system_identifier FROM pg_control_system()")
    ids = {pgcontrol.system_identifier(base / n) for n in ("first", "second")}
    assert str(sysid) == pgcontrol.system_identifier(datadir) and len(ids | {str(sysid)}) == 3


def test_instances_from_spares_are_independent(
    base: Path, started: Callable[..., dict[str, Any]]
) -> None:
    ready(base)
    for name in ("a", "b"):
        inode = control_inode(spare())
        pgmgr("init", "-d", str(base / name))
        assert control_inode(base / name) == inode
        wait_refills()
    a, b = registry.load("a"), registry.load("b")
    assert a.password and b.password and a.password != b.password
    pa = started(base / "a")["port"]
    pb = started(base / "b")["port"]
    assert scalar(pa, a.password, "SELECT 1") == 1
    assert scalar(pb, b.password, "SELECT 1") == 1
    for port, wrong in ((pa, b.password), (pb, a.password), (pa, None)):
        with pytest.raises(psycopg.OperationalError, match="password"):
            connect(port, wrong).close()
    with connect(pa, a.password) as conn:
        conn.execute("CREATE TABLE only_in_a AS SELECT 1 AS x")
    assert scalar(pb, b.password, "SELECT to_regclass('only_in_a') IS NULL") is True
    assert scalar(pa, a.password, "SELECT count(*) FROM only_in_a") == 1


def test_concurrent_inits_with_a_spare(base: Path, started: Callable[..., dict[str, Any]]) -> None:
    inode = ready(base)
    dirs = [base / f"c{i}" for i in range(4)]
    init_concurrently(dirs)
    inodes = [control_inode(d) for d in dirs]
    assert len(set(inodes)) == 4
    assert inodes.count(inode) == 1, "exactly one init got the spare, the others copied"
    wait_refills()
    assert not [p.name for p in cache().iterdir() if ".tmp-" in p.name]
    for d in dirs:
        check_owner_and_mode(d)
        port = started(d)["port"]
        assert scalar(port, registry.load(d.name).password, "SELECT 1") == 1


def test_spare_claimed_between_its_check_and_the_claim(
    base: Path, started: Callable[..., dict[str, Any]]
) -> None:
    """Init A finds the spare ready and pauses; init B claims it meanwhile; A copies the
    template instead. (A failed with 'No such file or directory: …spare' when B's claim
    fell between its check and its look at the spare's filesystem: seen once in CI.)"""
    from tests.pause import Paused

    inode = ready(base)
    hooks = base / "hooks"
    hooks.mkdir()
    hooks.chmod(0o777)  # the claim pauses as the server user
    a = Paused(hooks, "claim-ready", "init", "-d", str(base / "a"), "-q")
    try:
        a.reached()
        pgmgr("init", "-d", str(base / "b"), "-q")
        assert control_inode(base / "b") == inode  # B got the spare
    finally:
        run = a.go()
    assert run.returncode == 0, str(run)
    assert control_inode(base / "a") != inode  # A copied the template
    wait_refills()
    port = started(base / "a")["port"]
    assert scalar(port, registry.load("a").password, "SELECT 1") == 1


def test_missing_or_half_made_spare_falls_back_to_a_copy(
    base: Path, started: Callable[..., dict[str, Any]]
) -> None:
    ready(base)
    key = templates()[0]
    # a refill that died part-way leaves only a temporary name, never <key>.spare
    dead = cache() / f".{key}.tmp-spare-999999"
    copy_datadir(spare(), dead)  # cp -a: the server user's, as a refill makes it
    shutil.rmtree(dead / "global")
    # a broken spare (only by hand): not a complete cluster, so not used
    shutil.rmtree(spare() / "global")
    broken = spare().stat().st_ino
    pgmgr("init", "-d", str(base / "copy1"))
    assert (base / "copy1").stat().st_ino != broken
    assert (base / "copy1" / "global" / "pg_control").is_file()
    wait_refills()  # the refill replaces the broken spare and removes the dead one's files
    assert (spare() / "global" / "pg_control").is_file() and not dead.exists()

    shutil.rmtree(spare())  # missing
    pgmgr("init", "-d", str(base / "copy2"))
    assert registry.load("copy2").password_pending
    for name in ("copy1", "copy2"):
        check_owner_and_mode(base / name)
        port = started(base / name)["port"]
        assert scalar(port, registry.load(name).password, "SELECT 1") == 1


def test_existing_empty_dir_is_replaced_and_a_symlink_stays(base: Path) -> None:
    inode = ready(base)
    mine = base / "mine"
    mine.mkdir(mode=0o755)
    mine.chmod(0o755)
    pgmgr("init", "-d", str(mine))
    assert control_inode(mine) == inode
    check_owner_and_mode(mine)
    wait_refills()

    target = base / "target"
    target.mkdir(mode=0o755)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(target, pw.pw_uid, pw.pw_gid)
    link = base / "link"
    link.symlink_to(target)
    pgmgr("init", "-d", str(link))  # pgmgr resolves -d: the empty target gets the spare
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert (target / "PG_VERSION").is_file()
    check_owner_and_mode(target)


def test_parents_are_made_for_a_claimed_spare(base: Path) -> None:
    inode = ready(base)
    datadir = base / "p" / "q" / "data"
    pgmgr("init", "-d", str(datadir))
    assert control_inode(datadir) == inode


def test_no_template_and_cache_clear(base: Path) -> None:
    inode = ready(base)
    out = pgmgr_json("init", "-d", str(base / "plain"), "--no-template")
    assert out["initialized"] and not registry.load("plain").password_pending
    assert control_inode(spare()) == inode, "--no-template leaves the spare alone"
    (key,) = templates()
    assert pgmgr_json("cache", "clear")["removed"] == [key]
    assert not (cache() / f"{key}.spare").exists()
    assert [p.name for p in cache().iterdir() if p.is_dir()] == []
    assert pgmgr_json("cache", "list") == []


def test_no_spare_for_a_cache_bind_mounted_from_the_same_filesystem(base: Path) -> None:
    """A template cache that is a bind mount of the data directories' own filesystem: the
    device numbers match, so a spare was made (a data directory's worth of disk), but its
    claim is a rename, which does not cross mounts: every init tried it and copied anyway,
    and the spare stayed unused. Now none is made, as for a cache on another filesystem."""
    if os.geteuid() != 0:
        pytest.skip("needs root to bind-mount")
    import subprocess

    real, mnt = base / "real-cache", base / "cache"
    real.mkdir(mode=0o700)
    mnt.mkdir(mode=0o700)
    subprocess.run(["mount", "--bind", str(real), str(mnt)], check=True)
    try:
        assert pgmgr_json("init", "-d", str(base / "first"))["initialized"]
        assert pgmgr_json("init", "-d", str(base / "second"))["initialized"]
        wait_refills()
        assert templates(), "the template is in the cache"
        assert not spare().exists(), "a spare that can never be claimed is not made"
        assert pgmgr_json("init", "-d", str(base / "third"))["initialized"]
        assert (base / "third" / "PG_VERSION").is_file()
    finally:
        wait_refills()
        subprocess.run(["umount", str(mnt)], check=True)
