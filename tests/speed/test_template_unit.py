"""Pure parts of the template cache: which initdb arguments a template may carry, the key,
and the pg_hba rewrite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgmgr.core import templatekey
from pgmgr.core.server import InitOptions
from pgmgr.core.versions import Installation

HBA = """# comment host all all 1.2.3.4/32 trust
local   all             all                                     trust
host    all             all             127.0.0.1/32            trust
host    all             all             ::1/128                 trust
local   replication     all                                     trust
host    replication     all             127.0.0.1/32            trust
"""


def test_hba_rewrites_host_lines_only() -> None:
    out = templatekey.hba_for(HBA, "scram-sha-256")
    lines = out.splitlines()
    assert lines[0] == HBA.splitlines()[0]
    assert [ln.split()[-1] for ln in lines[1:]] == [
        "trust",
        "scram-sha-256",
        "scram-sha-256",
        "trust",
        "scram-sha-256",
    ]
    assert templatekey.hba_for(HBA, "trust") == HBA


@pytest.mark.parametrize(
    ("extra", "kept"),
    [
        ([], []),
        (["--no-sync"], []),
        (["-N", "--data-checksums"], ["--data-checksums"]),
        (["-E", "SQL_ASCII", "--lc-collate=C"], ["-E", "SQL_ASCII", "--lc-collate=C"]),
        (["-c", "shared_buffers=16MB"], ["-c", "shared_buffers=16MB"]),
        (["--waldir=/elsewhere"], None),
        (["-X", "/elsewhere"], None),
        (["--pwfile=/x"], None),
        (["-A", "md5"], None),
        (["--locale"], None),  # a value option without its value
    ],
)
def test_template_args(extra: list[str], kept: list[str] | None) -> None:
    assert templatekey.template_args(extra) == kept


def _install(tmp_path: Path, version: str = "15.18") -> Installation:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for exe in ("postgres", "initdb"):
        (bindir / exe).write_text("x")
    return Installation(version.split(".")[0], version, bindir, "test")


def test_key_depends_on_binaries_and_options_not_on_auth_or_sync(tmp_path: Path) -> None:
    inst = _install(tmp_path)
    key = templatekey.key_of(templatekey.key_fields(inst, InitOptions()))
    same = InitOptions(auth="trust", no_sync=True, extra=("--no-sync",))
    assert templatekey.key_of(templatekey.key_fields(inst, same)) == key
    assert templatekey.key_of(templatekey.key_fields(inst, InitOptions(superuser="x"))) != key
    assert templatekey.key_of(templatekey.key_fields(inst, InitOptions(locale="C.UTF-8"))) != key
    (inst.bindir / "postgres").write_text("xy")  # another binary
    assert templatekey.key_of(templatekey.key_fields(inst, InitOptions())) != key


def test_old_majors_and_the_environment_opt_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert templatekey.why_not(_install(tmp_path, "13.4"), InitOptions()) is not None
    assert templatekey.why_not(_install(tmp_path), InitOptions()) is None
    monkeypatch.setenv(templatekey.ENV_DISABLE, "1")
    assert templatekey.why_not(_install(tmp_path), InitOptions()) is not None


def test_clear_and_list_on_an_empty_cache() -> None:
    from pgmgr.core import tplcache

    assert tplcache.list_templates() == []
    assert tplcache.clear() == []


DEBIAN_15 = Path("/usr/lib/postgresql/15/bin/postgres")


def test_icu_fingerprint_names_what_the_loader_loads(tmp_path: Path) -> None:
    """The ICU libraries of Debian's postgres, as ``ldd`` resolves them; none for a binary
    built without ICU; unknown for a file that is not ELF."""
    import subprocess

    from pgmgr.core import linked

    if not DEBIAN_15.exists():
        pytest.skip("needs Debian's PostgreSQL 15 (linked with ICU)")
    ldd = subprocess.run(["ldd", str(DEBIAN_15)], capture_output=True, text=True, check=True)
    want = {
        line.split()[0]: os.path.realpath(line.split()[2])
        for line in ldd.stdout.splitlines()
        if line.strip().startswith(("libicuuc", "libicui18n"))
    }
    assert want, "Debian's postgres links ICU"
    got = dict(p.split("=", 1) for p in linked.icu_fingerprint(DEBIAN_15).split(";"))
    assert {name: stamp.split(":")[0] for name, stamp in got.items()} == want
    assert linked.icu_fingerprint(Path("/bin/true")) == "none"
    (tmp_path / "script").write_text("#!/bin/sh\n")
    assert linked.icu_fingerprint(tmp_path / "script") == "unknown"


def test_key_changes_with_the_icu_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new ICU under the same soname (a patch release) invalidates the template: its key
    changes and ``cache list`` calls the old one stale. The binary is a copy of Debian's
    postgres; the library directory is a temporary one holding stand-in ICU files (only
    their stamps count), as a package upgrade would replace them."""
    import shutil

    from pgmgr.core import linked, tplcache

    if not DEBIAN_15.exists():
        pytest.skip("needs Debian's PostgreSQL 15 (linked with ICU)")
    inst = _install(tmp_path)
    shutil.copyfile(DEBIAN_15, inst.bindir / "postgres")
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("libicuuc.so.72", "libicui18n.so.72"):
        (lib / name).write_bytes(b"icu 72.1")
    monkeypatch.setattr(linked, "LIB_DIRS", (str(lib),))
    fields = templatekey.key_fields(inst, InitOptions())
    assert "libicuuc.so.72=" in fields["icu"]
    assert templatekey.key_of(templatekey.key_fields(inst, InitOptions())) == templatekey.key_of(
        fields
    )
    assert tplcache._binaries_match(fields)
    (lib / "libicuuc.so.72").unlink()
    (lib / "libicuuc.so.72").write_bytes(b"icu 72.2, same soname")
    assert templatekey.key_of(templatekey.key_fields(inst, InitOptions())) != templatekey.key_of(
        fields
    )
    assert not tplcache._binaries_match(fields)


def test_icu_fingerprint_of_a_corrupt_elf_header(tmp_path: Path) -> None:
    """A binary whose ELF header names a gigantic program header table or dynamic section
    (a truncated download, a corrupt disk) is "unknown" at once, not a MemoryError that
    breaks every init with a traceback."""
    import struct

    from pgmgr.core import linked

    def elf(phentsize: int, phnum: int, body: bytes = b"") -> Path:
        head = bytearray(64)
        head[:6] = b"\x7fELF\x02\x01"
        struct.pack_into("<Q", head, 0x20, 64)
        struct.pack_into("<HH", head, 0x36, phentsize, phnum)
        path = tmp_path / f"postgres-{phentsize}-{phnum}"
        path.write_bytes(bytes(head) + body)
        return path

    huge_dynamic = struct.pack("<IIQQQQQQ", 2, 0, 0, 0, 0, 1 << 40, 0, 0)
    assert linked.icu_fingerprint(elf(56, 1, huge_dynamic)) == "unknown"
    assert linked.icu_fingerprint(elf(0xFFFF, 0xFFFF)) == "unknown"
    assert linked.icu_fingerprint(elf(56, 0)) == "none"  # no dynamic section: static
