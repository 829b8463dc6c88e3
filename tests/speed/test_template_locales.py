"""Issue 11.12: the template key covers the installed locales, so adding a locale rebuilds the
template and ``pgmgr cache list`` calls the old one stale.

As root the real thing runs in a private mount namespace (``unshare``): a copy of
``/usr/lib/locale`` is bind-mounted over it, ``localedef`` adds ``en_US.UTF-8`` to that
copy's archive, and only processes in the namespace see it, so the machine's locales are
never touched. As any user, a locale directory in ``$LOCPATH`` (which the fingerprint covers
as glibc does) shows the same mechanism.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pgmgr.core import templatekey

from .conftest import pgmgr, pgmgr_json, templates


def test_fingerprint_follows_the_locale_dirs(tmp_path: Path) -> None:
    before = templatekey.locale_fingerprint([str(tmp_path)])
    assert templatekey.locale_fingerprint([str(tmp_path)]) == before
    (tmp_path / "de_DE.utf8").mkdir()
    added = templatekey.locale_fingerprint([str(tmp_path)])
    assert added != before
    (tmp_path / "locale-archive").write_bytes(b"x")
    assert templatekey.locale_fingerprint([str(tmp_path)]) not in (before, added)


def test_a_locale_added_to_locpath_rebuilds_the_template(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locpath = base / "locales"
    locpath.mkdir(mode=0o755)
    monkeypatch.setenv("LOCPATH", str(locpath))
    assert pgmgr_json("init", "-d", str(base / "a"))["initialized"]
    (old,) = templates()
    assert pgmgr_json("cache", "list")[0]["stale"] is False
    (locpath / "xx_XX.UTF-8").mkdir()  # as localedef would add it
    assert pgmgr_json("cache", "list")[0]["stale"] is True
    assert pgmgr_json("init", "-d", str(base / "b"))["initialized"]
    (new,) = templates()
    assert new != old, "rebuilt, and the stale one pruned"
    assert pgmgr_json("cache", "list")[0]["stale"] is False


INSIDE = textwrap.dedent(
    """
    import json, os, subprocess, sys
    base, locales = sys.argv[1], sys.argv[2]
    def pgmgr(*args):
        p = subprocess.run([sys.executable, "-m", "pgmgr", *args], capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        return p.stdout
    def collations(name):
        pgmgr("start", name, "--port", "auto", "-q")
        try:
            return pgmgr("psql", name, "--", "-XAtc",
                "SELECT count(*) FROM pg_collation WHERE collprovider = 'c' AND "
                "collname LIKE 'en\\_US%'").strip()
        finally:
            pgmgr("stop", name, "-q")
    subprocess.run(["mount", "--bind", locales, "/usr/lib/locale"], check=True)
    out = {}
    pgmgr("init", "-d", base + "/before", "-q")
    out["keys_before"] = [t["key"] for t in json.loads(pgmgr("cache", "list", "--json"))]
    subprocess.run(["localedef", "-i", "en_US", "-f", "UTF-8", "en_US.UTF-8"], check=True)
    listed = json.loads(pgmgr("cache", "list", "--json"))
    out["stale_after_localedef"] = [t["stale"] for t in listed]
    pgmgr("init", "-d", base + "/after", "-q")
    out["keys_after"] = [t["key"] for t in json.loads(pgmgr("cache", "list", "--json"))]
    out["before"] = collations("before")
    out["after"] = collations("after")
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a mount namespace)")
@pytest.mark.skipif(not shutil.which("unshare") or not shutil.which("localedef"), reason="tools")
def test_localedef_rebuilds_the_template_and_cache_list_says_stale(base: Path) -> None:
    locales = base / "usr-lib-locale"
    shutil.copytree("/usr/lib/locale", locales, symlinks=True)
    locales.chmod(0o755)
    unshare = ["unshare", "--mount", "--propagation", "private", "--"]
    proc = subprocess.run(
        [*unshare, sys.executable, "-c", INSIDE, str(base), str(locales)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["keys_before"]) == 1
    assert out["stale_after_localedef"] == [True]
    assert len(out["keys_after"]) == 1 and out["keys_after"] != out["keys_before"]
    assert out["before"] == "0", "made before the locale existed"
    assert int(out["after"]) >= 1, "the rebuilt template has the new collation"
    assert pgmgr("status", "--json", check=False).returncode in (0, 3)
