"""Which ICU a PostgreSQL binary links, for the template cache key.

initdb records each ICU collation's version (``pg_collation.collversion``) from the ICU
library the server links, so a template made with another ICU would carry collation
versions the server disowns ("collation version mismatch"). :func:`icu_fingerprint` names
the ICU libraries ``postgres`` needs (``DT_NEEDED`` entries of its ELF dynamic section,
read with a few ``pread`` calls, ~50 us) and stamps the file each resolves to (path, size,
mtime), searching the binary's ``RUNPATH``/``RPATH`` (``$ORIGIN`` expanded) and then the
system library directories, as the dynamic loader does. A new ICU package, even a patch
release under the same soname, changes the stamp. Binaries built without ICU give
``"none"``; an unreadable or non-ELF binary gives ``"unknown"``.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

_PT_LOAD, _PT_DYNAMIC = 1, 2
_DT_NEEDED, _DT_STRTAB, _DT_RPATH, _DT_RUNPATH = 1, 5, 15, 29
#: Largest program header table or dynamic section read (real ones are a few KiB): a corrupt
#: header naming gigabytes makes the binary "unknown", not a MemoryError.
_MAX_READ = 1 << 20
_MULTIARCH = f"{os.uname().machine}-linux-gnu"  # Debian's multiarch triplet
#: Where the loader looks after the binary's own run path (Debian multiarch first).
LIB_DIRS: tuple[str, ...] = (
    f"/lib/{_MULTIARCH}",
    f"/usr/lib/{_MULTIARCH}",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
)


def needed(binary: Path) -> tuple[list[str], list[str]] | None:
    """The ``DT_NEEDED`` names and the run-path directories of a 64-bit little-endian ELF
    binary (``$ORIGIN`` expanded), or None when it is not one or cannot be read."""
    try:
        fd = os.open(binary, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _parse(fd, binary)
    except (OSError, struct.error, ValueError):
        return None
    finally:
        os.close(fd)


def _parse(fd: int, binary: Path) -> tuple[list[str], list[str]] | None:
    head = os.pread(fd, 64, 0)
    if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        return None
    phoff, phentsize, phnum = (
        struct.unpack_from("<Q", head, 0x20)[0],
        *struct.unpack_from("<HH", head, 0x36),
    )
    if phentsize * phnum > _MAX_READ:
        return None
    table = os.pread(fd, phentsize * phnum, phoff)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _, off, vaddr, _, filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
        if p_type == _PT_LOAD:
            loads.append((vaddr, filesz, off))
        elif p_type == _PT_DYNAMIC:
            dynamic = (off, filesz)
    if dynamic is None:
        return [], []
    if dynamic[1] > _MAX_READ:
        return None
    raw = os.pread(fd, dynamic[1], dynamic[0])
    entries = [struct.unpack_from("<qQ", raw, i) for i in range(0, len(raw) - 15, 16)]
    strtab = next((v for tag, v in entries if tag == _DT_STRTAB), None)
    if strtab is None:
        return None
    base = next((off + strtab - va for va, size, off in loads if va <= strtab < va + size), None)
    if base is None:
        return None

    def string(at: int) -> str:
        data = os.pread(fd, 4096, base + at)
        return data.split(b"\0", 1)[0].decode("utf-8", "replace")

    names = [string(v) for tag, v in entries if tag == _DT_NEEDED]
    origin = str(Path(os.path.realpath(binary)).parent)
    paths = [
        d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)
        for tag, v in entries
        if tag in (_DT_RPATH, _DT_RUNPATH)
        for d in string(v).split(":")
        if d
    ]
    return names, paths


def resolve(name: str, run_path: list[str], lib_dirs: tuple[str, ...] | None = None) -> str | None:
    """The file the loader would open for ``name``, resolved through symlinks, or None."""
    for d in [*run_path, *(LIB_DIRS if lib_dirs is None else lib_dirs)]:
        path = os.path.join(d, name)
        if os.path.isfile(path):
            return os.path.realpath(path)
    return None


def icu_fingerprint(binary: Path, lib_dirs: tuple[str, ...] | None = None) -> str:
    """``"none"``, ``"unknown"``, or ``name=path:size:mtime_ns`` for each ICU library
    ``binary`` needs (``;``-separated), see the module doc."""
    found = needed(binary)
    if found is None:
        return "unknown"
    names, run_path = found
    parts = []
    for name in sorted(n for n in names if n.startswith("libicu")):
        path = resolve(name, run_path, lib_dirs)
        try:
            st = os.stat(path) if path is not None else None
        except OSError:  # removed since resolve() saw it (a package upgrade under way)
            st = None
        if path is None or st is None:
            parts.append(f"{name}=missing")
            continue
        parts.append(f"{name}={path}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts) or "none"
