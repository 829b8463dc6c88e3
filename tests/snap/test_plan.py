"""Pure parts of snapshots and upgrades: names, metadata, command lines, settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgmgr.core import pgcontrol, snapstore
from pgmgr.core import upgradeplan as plan
from pgmgr.core.errors import UsageError
from pgmgr.core.versions import Installation

OLD = Installation("15", "15.18", Path("/usr/lib/postgresql/15/bin"), "debian")
NEW = Installation("18", "18.6", Path("/opt/pg18/bin"), "embedded")


def test_snapshot_names() -> None:
    for good in ("s1", "before-migration", "2026.01.01_x"):
        assert snapstore.check_snap_name(good) == good
    for bad in ("", ".hidden", "../x", "a/b", "-x", "x" * 64, ".tmp-snap-1"):
        with pytest.raises(UsageError):
            snapstore.check_snap_name(bad)
    name = snapstore.default_name(set())
    assert len(name) == 15 and snapstore.default_name({name}) == name + "-2"


def test_meta_round_trip_and_validation() -> None:
    meta = snapstore.Meta("s", "dev", "/d", "123", "15", "15.18", "/b", 1.5, size=10)
    assert snapstore.Meta.from_dict(meta.to_dict()) == meta
    with pytest.raises(ValueError):
        snapstore.Meta.from_dict([1])
    with pytest.raises((ValueError, TypeError)):
        snapstore.Meta.from_dict({"name": "s"})
    bad = meta.to_dict() | {"major": 15}
    with pytest.raises(ValueError, match="'major' must be a string"):
        snapstore.Meta.from_dict(bad)


def test_direction_and_method() -> None:
    plan.check_direction("15", "18")
    with pytest.raises(UsageError, match="already PostgreSQL 15"):
        plan.check_direction("15", "15")
    with pytest.raises(UsageError, match="downgrade"):
        plan.check_direction("18", "15")
    with pytest.raises(UsageError, match="downgrade"):
        plan.check_direction("10", "9")  # numerically, not as text
    assert plan.check_method("clone") == "clone"
    with pytest.raises(UsageError, match="invalid --method"):
        plan.check_method("swap")


def test_initdb_argv_matches_the_old_cluster() -> None:
    opts = plan.ClusterOptions("UTF8", "C", "C")
    argv = plan.initdb_argv(NEW, Path("/n"), "postgres", opts)
    assert argv[:7] == ["/opt/pg18/bin/initdb", "-D", "/n", "-U", "postgres", "-E", "UTF8"]
    assert "--no-data-checksums" in argv and "--data-checksums" not in argv
    icu = plan.ClusterOptions("UTF8", "en_US.UTF-8", "en_US.UTF-8", "i", "en-US", True)
    argv = plan.initdb_argv(NEW, Path("/n"), "admin", icu)
    assert {"--locale-provider=icu", "--icu-locale=en-US", "--data-checksums"} <= set(argv)
    assert "--no-data-checksums" not in plan.initdb_argv(OLD, Path("/n"), "p", opts)


def test_pg_upgrade_argv() -> None:
    a = plan.UpgradeArgs(OLD, NEW, Path("/o"), Path("/n"), "postgres", 5001, 5002, "/s", "copy")
    argv = plan.pg_upgrade_argv(a)
    assert argv == [
        "/opt/pg18/bin/pg_upgrade", "-b", "/usr/lib/postgresql/15/bin", "-B", "/opt/pg18/bin",
        "-d", "/o", "-D", "/n", "-U", "postgres", "-p", "5001", "-P", "5002", "-s", "/s",
        "--copy", "--no-sync",
    ]  # fmt: skip
    checked = plan.UpgradeArgs(OLD, NEW, Path("/o"), Path("/n"), "p", 1, 2, "/s", "link", True)
    assert plan.pg_upgrade_argv(checked)[-2:] == ["--link", "--check"]


def test_missing_binaries(tmp_path: Path) -> None:
    old = Installation("15", "15.1", tmp_path / "old", "x")
    new = Installation("18", "18.1", tmp_path / "new", "x")
    for d, progs in ((old.bindir, plan.OLD_BINARIES), (new.bindir, plan.NEW_BINARIES)):
        d.mkdir()
        for p in progs:
            (d / p).touch()
    assert plan.missing_binaries(old, new) == []
    (new.bindir / "pg_upgrade").unlink()
    (old.bindir / "pg_ctl").unlink()
    assert plan.missing_binaries(old, new) == [str(old.bin("pg_ctl")), str(new.bin("pg_upgrade"))]


def test_auto_conf() -> None:
    text = "# Do not edit\nwork_mem = '8MB'\nold_thing = 'x''y'\n#commented = 1\n"
    assert plan.auto_conf_settings(text) == {"work_mem": "'8MB'", "old_thing": "'x''y'"}
    assert plan.unquote("'x''y'") == "x'y" and plan.unquote("8") == "8"
    dropped = plan.drop_from_auto_conf(text, {"old_thing"})
    assert "\n# rejected by the new major at upgrade (pgmgr): old_thing = 'x''y'\n" in dropped
    assert plan.auto_conf_settings(dropped) == {"work_mem": "'8MB'"}


def _cluster(tmp_path: Path, state: int, redo: int, segments: list[str], crc: bool = True) -> Path:
    """A pg_control of PostgreSQL 15's layout (its CRC at 288) and ``segments``."""
    (tmp_path / "global").mkdir(parents=True)
    head = bytearray(8192)
    head[16:20] = state.to_bytes(4, "little")
    head[40:48] = redo.to_bytes(8, "little")
    head[288:292] = pgcontrol._crc32c(bytes(head[:288])).to_bytes(4, "little")
    if not crc:
        head[100] ^= 1
    (tmp_path / "global" / "pg_control").write_bytes(bytes(head))
    (tmp_path / "pg_wal" / "archive_status").mkdir(parents=True)
    for name in segments:
        with open(tmp_path / "pg_wal" / name, "wb") as f:
            f.truncate(16 << 20)  # sparse: only the size matters
    return tmp_path


def test_unneeded_wal_after_a_clean_shutdown(tmp_path: Path) -> None:
    segs = [f"00000001000000000000001{c}" for c in "456789"] + ["000000010000000100000000"]
    redo = 0x15 * (16 << 20) + 0x28  # in segment ...15
    clean = _cluster(tmp_path / "a", 1, redo, segs)
    # ...14 (older) and ...15 (the checkpoint's), ...16 (a straddling record) are kept
    assert pgcontrol.unneeded_wal(clean) == set(segs[3:])
    crashed = _cluster(tmp_path / "b", 6, redo, segs)  # in production: recovery reads on
    assert pgcontrol.unneeded_wal(crashed) == set()
    damaged = _cluster(tmp_path / "c", 1, redo, segs, crc=False)  # its redo may be wrong
    assert pgcontrol.unneeded_wal(damaged) == set()


def test_branch_port_is_never_the_source_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source restarts while the branch starts, so its port may look free: the branch's
    automatic port is never it, an explicit one is kept. Mock: the kernel's choice of a
    free port (it cannot be made to repeat one on demand)."""
    from pgmgr.core import branch, server
    from pgmgr.core.instance import Server
    from pgmgr.core.registry import Instance

    src = Server(Instance("src", str(tmp_path / "src"), "15", "15.18", "/bin", port=5500))
    offers = iter([5500, 5500, 5501])
    monkeypatch.setattr(server, "free_port", lambda host: next(offers))
    assert branch.new_record(src, "b", tmp_path / "b", "auto").port == 5501
    assert branch.new_record(src, "b", tmp_path / "b", 5500).port == 5500  # refused at start


PG_UPGRADE_OUT = """Performing Consistency Checks on Old Live Server
------------------------------------------------
Checking cluster versions                                     ok
Checking for presence of required libraries                   fatal

Your installation references loadable libraries that are missing from the
new installation.  You can add these libraries to the new installation,
or remove the functions using them from the old installation.  A list of
problem libraries is in the file:
    /w/data/pg_upgrade_output.d/x/loadable_libraries.txt
Failure, exiting
"""


def test_failure_reason_is_the_whole_first_sentence_and_names_the_problem() -> None:
    logs = ("==> /w/data/pg_upgrade_output.d/x/loadable_libraries.txt <==\n"
            'could not load library "$libdir/adminpack":   ERROR:  no such file\n'
            "In database: postgres\n\n==> /w/x.log <==\nother\n")  # fmt: skip
    assert plan.failure_reason(PG_UPGRADE_OUT, logs, 1) == (
        "Your installation references loadable libraries that are missing from the new "
        'installation (could not load library "$libdir/adminpack": ERROR: no such file)'
    )
    assert plan.failure_reason(PG_UPGRADE_OUT, "", 1).endswith("from the new installation")
    clone = "Checking for file cloning\ncould not clone file: Operation not supported\n"
    assert plan.failure_reason(clone, "", 1) == "could not clone file: Operation not supported"
    assert plan.failure_reason("", "", 3) == "exit code 3"


def test_analyze_steps_keep_what_pg_upgrade_carried_over() -> None:
    assert plan.analyze_steps("17") == [["--all", "--analyze-in-stages"]]
    assert plan.analyze_steps("18") == [
        ["--all", "--analyze-in-stages", "--missing-stats-only"],
        ["--all", "--analyze-only"],
    ]
    assert plan.vacuumdb_argv(NEW, ["--all"], "/s", 5432, "pg") == [
        "/opt/pg18/bin/vacuumdb", "--all", "-h", "/s", "-p", "5432", "-U", "pg",
    ]  # fmt: skip


def test_postgresql_conf_settings_not_carried() -> None:
    old = ("max_connections = 100\t# (change requires restart)\nwork_mem '3MB'\n"
           "#shared_buffers = 1GB\ninclude_if_exists 'x.conf'\nsearch_path = '\"$user\", a'\n"
           "lc_time = 'C'\n")  # fmt: skip
    assert plan.conf_settings(old)["search_path"] == '"$user", a'
    new = "max_connections = 100\nlc_time = 'C.UTF-8'\n"
    assert plan.not_carried(old, new, {"lc_time"}) == {
        "search_path": '"$user", a', "work_mem": "3MB"
    }  # fmt: skip
    opts = plan.ClusterOptions("UTF8", "C", "C", lc_other=("C", "de_DE", "C", "C"))
    argv = plan.initdb_argv(NEW, Path("/n"), "postgres", opts)
    assert {"--lc-messages=C", "--lc-monetary=de_DE", "--lc-time=C"} <= set(argv)
