"""What the user keeps in the data directory besides PostgreSQL's own files (a README,
scripts, the certificate ssl_cert_file names, an ident_file, the files postgresql.conf
includes, a conf.d): pg_upgrade fills a fresh directory, and the upgrade lost them all (and
postgresql.conf's include lines) without a word. Real servers: Debian's 15, the wheel's 18
(built without SSL: ssl itself is dropped, the certificate still carried)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgmgr.core import upgradefiles
from tests.helpers import error_lines
from tests.snap.conftest import Inst, leftovers, running15, small_tmpfs


@pytest.fixture
def uf(scratch: Path) -> Iterator[Inst]:
    with running15(scratch, "uf") as it:
        yield it


def _put(it: Inst, rel: str, text: str, mode: int = 0o600) -> Path:
    """Write ``rel`` in the data directory as its owner would."""
    path = it.datadir / rel
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    st = it.datadir.stat()
    for p in (path, path.parent):
        os.chown(p, st.st_uid, st.st_gid)
    return path


def _own(it: Inst, path: Path) -> None:
    st = it.datadir.stat()
    os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)


def _tree(datadir: Path) -> dict[str, tuple[str, int, bytes | str]]:
    """The user's entries of ``datadir``: kind, mode and content (a symlink's target)."""
    out: dict[str, tuple[str, int, bytes | str]] = {}
    for top in sorted(os.listdir(datadir)):
        if upgradefiles.own(top):
            continue
        for path in [datadir / top, *sorted((datadir / top).rglob("*"))]:
            st = path.lstat()
            rel = str(path.relative_to(datadir))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), b"")
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return out


def _certificate(it: Inst) -> None:
    """server.crt and server.key in the data directory, and ssl on (the 15 server reads
    them; the wheel's 18 has no SSL: the upgrade drops ssl)."""
    crt, key = it.datadir / "server.crt", it.datadir / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True,
    )  # fmt: skip
    for path in (crt, key):
        path.chmod(0o600)
        _own(it, path)
    it.sql("ALTER SYSTEM SET ssl_cert_file = 'server.crt'")
    it.sql("ALTER SYSTEM SET ssl_key_file = 'server.key'")
    it.sql("ALTER SYSTEM SET ssl = on")


def test_the_users_files_are_carried_and_the_rollback_keeps_them(uf: Inst) -> None:
    """Everything PostgreSQL did not make in the data directory is carried over (symlinks
    as symlinks, modes kept), postgresql.conf's include lines too; --check says what would
    be, the upgrade what was (text and --json); the rollback brings back the old data
    directory as it was."""
    d = uf.datadir
    _put(uf, "README", "how this instance is run\n", 0o644)
    _put(uf, "scripts/backup.sh", "#!/bin/sh\necho backup\n", 0o750)
    _put(uf, "extra.conf", "work_mem = '7MB'\n")
    _put(uf, "conf.d/10-app.conf", "maintenance_work_mem = '77MB'\n")
    _put(uf, "my_ident", "# maps\nm1 alice postgres\n")
    os.symlink("README", d / "README.link")
    _own(uf, d / "README.link")
    os.mkfifo(d / "pipe", 0o600)
    _own(uf, d / "pipe")
    with (d / "postgresql.conf").open("a") as f:
        f.write("include 'extra.conf'\ninclude_dir = 'conf.d' # the app's\n")
    _certificate(uf)
    uf.sql(f"ALTER SYSTEM SET ident_file = '{d / 'my_ident'}'")
    uf.ok("restart", "uf", "-q")
    assert uf.sql("SHOW ssl") == "on" and uf.sql("SHOW work_mem") == "7MB"
    before = _tree(d)
    conf_before = (d / "postgresql.conf").read_bytes()
    files = ["README", "README.link", "conf.d/", "extra.conf", "my_ident", "scripts/",
             "server.crt", "server.key"]  # fmt: skip
    includes = ["include 'extra.conf'", "include_dir 'conf.d'"]

    check = json.loads(uf.ok("upgrade", "uf", "-v", "18", "--check", "--json").stdout)
    assert check["files_carried"] == files and check["include_lines_carried"] == includes
    assert check["files_not_carried"] == [{"name": "pipe", "why": "a FIFO"}]
    assert "ssl" in check["rejected_settings"]
    said = uf.ok("upgrade", "uf", "-v", "18", "--check").stderr.splitlines()
    assert (
        "Files of the data directory the upgrade would carry over: " + ", ".join(files)
        + "; the include lines of postgresql.conf (include 'extra.conf', include_dir 'conf.d')"
    ) in said  # fmt: skip
    assert "Files of the data directory would not be carried over: pipe (a FIFO)" in said
    assert _tree(d) == before and leftovers(uf.store) == []

    proc = uf.ok("upgrade", "uf", "-v", "18", "--yes")
    assert "Files of the data directory the upgrade carried over: " + ", ".join(files) in (
        proc.stderr
    )
    assert "Files of the data directory not carried over: pipe (a FIFO)" in proc.stderr
    assert uf.record()["major"] == "18" and uf.state() == "running"
    after = _tree(d)
    assert after == {k: v for k, v in before.items() if k != "pipe"}
    assert (d / "README.link").is_symlink()
    assert uf.sql("SHOW work_mem") == "7MB" and uf.sql("SHOW maintenance_work_mem") == "77MB"
    assert uf.sql("SHOW ssl_cert_file") == "server.crt" and uf.sql("SHOW ssl") == "off"
    assert uf.sql("SELECT map_name || ' ' || sys_name FROM pg_ident_file_mappings") == "m1 alice"
    carried = "# Carried over from the old postgresql.conf by 'pgmgr upgrade':\n"
    carried += "include 'extra.conf'\ninclude_dir 'conf.d'\n"
    assert (d / "postgresql.conf").read_text().endswith(carried)

    uf.ok("restore", "uf", "pre-upgrade-15", "--yes", "-q")
    assert uf.record()["major"] == "15" and uf.sql("SHOW ssl") == "on"
    # (the FIFO is not: a restore copies the snapshot, and no copy of pgmgr makes FIFOs)
    assert _tree(d) == before and (d / "postgresql.conf").read_bytes() == conf_before


def _refused(it: Inst, first: str, hint: str) -> None:
    """--check and the upgrade refuse in one line, the server never stopped."""
    record, pid = it.record(), it.pid()
    for args in (["--check"], ["--yes"]):
        proc = it.pgmgr("upgrade", "uf", "-v", "18", *args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert error_lines(proc.stderr) == [first, f"Hint: {hint}"], args
        assert it.record() == record and it.pid() == pid
        assert it.snaps() == [] and leftovers(it.store) == []


def test_what_the_new_major_cannot_use_is_refused_before_anything(uf: Inst) -> None:
    """An included file setting what 18 lacks (old_snapshot_threshold, gone in 17), a
    pg_ident.conf line 18 reads otherwise (a PostgreSQL user starting with '/' is a
    regular expression from 16 on), an ident_file in a directory the upgrade does not
    carry, a file the server user cannot read: the upgraded server would not start, or
    its maps would fail. Refused by --check and before
    anything is stopped."""
    d = uf.datadir
    _put(uf, "old.conf", "old_snapshot_threshold = -1\n")
    with (d / "postgresql.conf").open("a") as f:
        f.write("include_if_exists 'old.conf'\n")
    uf.ok("reload", "uf", "-q")
    _refused(
        uf,
        "Error: cannot upgrade 'uf': PostgreSQL 18 does not take what postgresql.conf "
        'includes (unrecognized configuration parameter "old_snapshot_threshold" in file '
        '"old.conf" line 1; configuration file "old.conf" contains errors); nothing was '
        "changed",
        "change that file (or the include line of postgresql.conf), then upgrade",
    )
    (d / "old.conf").write_text("# emptied\n")

    ident = d / "pg_ident.conf"
    text = ident.read_text()
    ident.write_text(text + "m2 bob /(\n")
    n = len(ident.read_text().splitlines())
    uf.ok("reload", "uf", "-q")
    _refused(
        uf,
        f"Error: cannot upgrade 'uf': PostgreSQL 18 would not load its pg_ident.conf (line "
        f'{n}: invalid regular expression "(": parentheses () not balanced): the '
        "connections that use its maps would fail; nothing was changed",
        "change or remove that line (or the file ident_file names), then upgrade",
    )
    ident.write_text(text)
    inner = _put(uf, "global/my_ident", "m3 carol postgres\n")  # in a directory of PostgreSQL's
    uf.sql(f"ALTER SYSTEM SET ident_file = '{inner}'")
    uf.ok("restart", "uf", "-q")
    _refused(
        uf,
        f"Error: cannot upgrade 'uf': ident_file names {inner}, in global of the data "
        "directory, which the upgrade does not carry; nothing was changed",
        "move the file to the top level of the data directory (or out of it) and set "
        "ident_file again, then upgrade",
    )
    uf.sql("ALTER SYSTEM RESET ident_file")
    uf.ok("restart", "uf", "-q")

    if os.geteuid() == 0:  # a file root put there, which the server user cannot read
        secret = _put(uf, "keys/root-only", "x")
        os.chown(secret, 0, 0)
        _refused(
            uf,
            f"Error: cannot upgrade 'uf': cannot copy {secret} to the new cluster "
            "(Permission denied); nothing was changed",
            "make it readable by the server user, or move it out of the data directory, "
            "then upgrade (the upgrade carries over what PostgreSQL did not make there)",
        )
        secret.unlink()
    uf.ok("upgrade", "uf", "-v", "18", "--check", "-q")


def test_names_the_server_user_chose_do_not_drive_the_terminal(uf: Inst) -> None:
    """The server user names the entries of the data directory and writes postgresql.conf's
    include lines; root's upgrade says them. A name with an escape sequence or a newline
    is shown escaped, and each message stays one line (--json keeps the names as they
    are)."""
    d = uf.datadir
    odd = ["new\nline.txt", "\x1b]0;owned\x07title", "\x1b[2Jclear.conf"]
    for name in odd:
        _put(uf, name, "\n")
    os.mkfifo(d / "\x1b[31mred", 0o600)
    _own(uf, d / "\x1b[31mred")
    with (d / "postgresql.conf").open("a") as f:
        f.write("include '\x1b[2Jclear.conf'\n")
    uf.ok("reload", "uf", "-q")
    said = uf.ok("upgrade", "uf", "-v", "18", "--check").stderr
    assert "\x1b" not in said and "\x07" not in said
    lines = said.splitlines()
    carried = [x for x in lines if x.startswith("Files of the data directory the upgrade")]
    assert carried == [
        "Files of the data directory the upgrade would carry over: \\x1b[2Jclear.conf, "
        "\\x1b]0;owned\\x07title, new\\x0aline.txt; the include lines of postgresql.conf "
        "(include '\\x1b[2Jclear.conf')"
    ], said
    assert "Files of the data directory would not be carried over: \\x1b[31mred (a FIFO)" in lines
    doc = json.loads(uf.ok("upgrade", "uf", "-v", "18", "--check", "--json").stdout)
    assert doc["files_carried"] == sorted(odd)


def test_included_files_behind_relative_symlinks_are_checked_where_they_will_be(
    uf: Inst,
) -> None:
    """An included file (or include_dir, or an @file of pg_hba.conf) of the data directory
    that is a relative symlink to a file beside it (site.conf -> ../shared.conf): carried
    as the symlink, it resolves after the upgrade as before. The checks read it from the
    new cluster's work directory, where ../shared.conf is nothing, and refused the
    upgrade."""
    d = uf.datadir
    shared = d.parent / "shared.conf"  # readable by all, whoever runs the test
    shared.write_text("work_mem = '9MB'\n")
    (d.parent / "shared.d").mkdir(mode=0o755)
    (d.parent / "shared.d/10.conf").write_text("maintenance_work_mem = '99MB'\n")
    (d.parent / "admins.list").write_text("alice\n")
    links = {"site.conf": "../shared.conf", "conf.d": "../shared.d", "admins": "../admins.list"}
    for name, target in links.items():
        os.symlink(target, d / name)
        _own(uf, d / name)
    with (d / "postgresql.conf").open("a") as f:
        f.write("include 'site.conf'\ninclude_dir 'conf.d'\n")
    hba = d / "pg_hba.conf"
    hba.write_text("host all @admins 127.0.0.2/32 reject\n" + hba.read_text())
    uf.ok("restart", "uf", "-q")
    assert uf.sql("SHOW work_mem") == "9MB"
    rule = "SELECT user_name FROM pg_hba_file_rules WHERE address = '127.0.0.2'"
    assert uf.sql(rule) == "{alice}"
    uf.ok("upgrade", "uf", "-v", "18", "--check", "-q")
    uf.ok("upgrade", "uf", "-v", "18", "--yes", "-q")
    assert uf.record()["major"] == "18" and os.readlink(d / "site.conf") == "../shared.conf"
    assert uf.sql("SHOW work_mem") == "9MB" and uf.sql("SHOW maintenance_work_mem") == "99MB"
    assert uf.sql(rule) == "{alice}"
    assert shared.read_text() == "work_mem = '9MB'\n" and leftovers(uf.store) == []


@pytest.mark.parametrize("spelt", ["'it\\'s.conf'", "'it''s.conf'"], ids=["backslash", "doubled"])
def test_an_include_with_an_escaped_quote_is_read_as_postgresql_reads_it(
    uf: Inst, spelt: str
) -> None:
    """include 'it\\'s.conf': PostgreSQL's lexer takes a quote escaped with a backslash as
    it takes a doubled one. The include check read 'it\\' and its trial configuration was
    a syntax error: the upgrade was refused ("does not take what postgresql.conf
    includes"). Now the name is read as PostgreSQL reads it, and the line carried."""
    _put(uf, "it's.conf", "work_mem = '7MB'\n")
    with (uf.datadir / "postgresql.conf").open("a") as f:
        f.write(f"include {spelt}  # the site's\n")
    uf.ok("restart", "uf", "-q")
    assert uf.sql("SHOW work_mem") == "7MB"
    check = json.loads(uf.ok("upgrade", "uf", "-v", "18", "--check", "--json").stdout)
    assert check["include_lines_carried"] == [f"include {spelt}"], check
    if spelt.startswith("'it''"):
        return
    uf.ok("upgrade", "uf", "-v", "18", "--yes", "-q")
    assert uf.record()["major"] == "18" and uf.sql("SHOW work_mem") == "7MB"


def test_include_lines_are_read_and_carried() -> None:
    text = (
        "#include 'no.conf'\n  INCLUDE 'a.conf'  # first\ninclude_dir=conf.d\n"
        "include_if_exists = 'it''s.conf'\ninclude_dirx = 'no'\nwork_mem = '1MB'\n"
    )
    lines = upgradefiles.include_lines(text)
    assert lines == ["include 'a.conf'", "include_dir 'conf.d'", "include_if_exists 'it''s.conf'"]
    escaped = "include 'it\\'s.conf' # x\ninclude '../a\\\\b''c.conf'\n"
    assert upgradefiles.include_lines(escaped) == [
        "include 'it\\'s.conf'",
        "include '../a\\\\b''c.conf'",
    ]
    assert upgradefiles.trial_text(
        upgradefiles.include_lines(escaped), Path("/d"), ["it's.conf"]
    ) == ("include 'postgresql.conf'\ninclude '/d/it''s.conf'\ninclude '/d/../a\\\\b''c.conf'\n")
    # octal escapes are the bytes of the name (UTF-8 here): a carried 'é.conf' is found
    assert upgradefiles.trial_text(["include '\\303\\251.conf'"], Path("/d"), ["\u00e9.conf"]) == (
        "include 'postgresql.conf'\ninclude '/d/\u00e9.conf'\n"
    )
    assert upgradefiles.with_includes("a = 1\n", lines[:1]) == (
        "a = 1\n\n# Carried over from the old postgresql.conf by 'pgmgr upgrade':\n"
        "include 'a.conf'\n"
    )
    assert upgradefiles.with_includes("a = 1\n", []) == "a = 1\n"
    trial = upgradefiles.trial_text(["include '../common.conf'", *lines[1:2]], Path("/d/data"))
    assert trial == (
        "include 'postgresql.conf'\ninclude '/d/data/../common.conf'\ninclude_dir 'conf.d'\n"
    )
    # a carried entry is read where it will be; one PostgreSQL's directory holds in the new
    trial = upgradefiles.trial_text(
        ["include 'site.conf'", "include_dir './conf.d'", "include 'global/x.conf'"],
        Path("/d/data"), ["conf.d/", "site.conf"],
    )  # fmt: skip
    assert trial == (
        "include 'postgresql.conf'\ninclude '/d/data/site.conf'\n"
        "include_dir '/d/data/conf.d'\ninclude 'global/x.conf'\n"
    )


def test_no_room_for_the_users_files_is_refused_before_they_are_copied(scratch: Path) -> None:
    """The user's entries are copied (for the check) while the server runs: a big file kept
    in the data directory filled the disk the running server writes to. Room is checked
    first. On a small tmpfs (root: a mount), so that the copy the old code made fills only
    it."""
    with small_tmpfs(scratch, "300m") as fs, running15(fs, "room") as it:
        big = _put(it, "big.img", "")
        free = os.statvfs(fs)
        with open(big, "wb") as f:  # more than half what is free: no room for its copy
            f.write(os.urandom(1 << 20) * (free.f_bavail * free.f_frsize * 6 // 10 >> 20))
        used = os.statvfs(fs)
        for args in (["--check"], ["--yes"]):
            proc = it.pgmgr("upgrade", "room", "-v", "18", *args)
            assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
            (err,) = [ln for ln in error_lines(proc.stderr) if ln.startswith("Error:")]
            assert "not enough disk space" in err and "nothing was changed" in err, err
            assert it.state() == "running"
            now = os.statvfs(fs)
            assert now.f_bfree * now.f_frsize > used.f_bfree * used.f_frsize - (20 << 20)
        assert it.record()["major"] == "15"


def test_a_sparse_file_is_carried_with_its_holes(scratch: Path) -> None:
    """A 1 GiB sparse file holding 1 MiB, on a 300 MB disk: the room checks count what
    the copies allocate (the copy keeps holes), so the check and the upgrade go through
    (they were refused for lack of 1 GiB); the carried file has its bytes and its holes."""
    with small_tmpfs(scratch, "300m") as fs, running15(fs, "sparse") as it:
        img = _put(it, "disk.img", "")
        with open(img, "r+b") as f:
            f.truncate(1 << 30)
            for i in range(16):
                f.seek(i * (64 << 20) + 99)
                f.write(os.urandom(64 << 10))
        want = _digest(img)
        for args in (["--check"], ["--yes"]):
            proc = it.pgmgr("upgrade", "sparse", "-v", "18", "-q", *args)
            assert proc.returncode == 0, (args, proc.stderr)
        assert it.record()["major"] == "18"
        st = img.stat()
        assert st.st_size == 1 << 30 and st.st_blocks * 512 < 2 << 20, st
        assert _digest(img) == want


def _digest(path: Path) -> str:
    """Of every byte (holes read as zeros)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()
