"""Outputs of PostgreSQL binaries (``postgres --version``, ``pg_config --bindir``), run in
parallel and cached by the binary's path, size and mtime in the user's cache directory
(``binaries.json``), so a warm ``pgmgr versions`` runs no subprocess at all. The cache only
ever saves time: one that cannot be read, written or trusted is ignored."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path

from pgmgr.core import paths
from pgmgr.core.errors import PgmgrError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    import subprocess


def _cache_file() -> Path:
    return paths.cache_dir() / "binaries.json"


def _stamp(path: Path) -> str | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


class _OutputCache:
    """Outputs of ``<binary> <args>`` keyed by the binary's real path, size and mtime."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, str]] = {}
        self.dirty = False
        try:  # an unusable or unsafe cache directory only costs speed: nothing is read from it
            self.path: Path | None = _cache_file()
        except PgmgrError:
            self.path = None
            return
        try:
            self.data = json.loads(self.path.read_text())
            if not isinstance(self.data, dict):
                self.data = {}
        except (OSError, ValueError):
            self.data = {}

    def get(self, argv: Sequence[str]) -> str | None:
        key = " ".join(argv)
        entry = self.data.get(key)
        if isinstance(entry, dict) and entry.get("stamp") == _stamp(Path(argv[0])):
            out = entry.get("out")
            return out if isinstance(out, str) else None
        return None

    def put(self, argv: Sequence[str], out: str) -> None:
        stamp = _stamp(Path(argv[0]))
        if stamp is not None:
            self.data[" ".join(argv)] = {"stamp": stamp, "out": out}
            self.dirty = True

    def save(self) -> None:
        if not self.dirty or self.path is None:
            return
        with contextlib.suppress(OSError):  # a cache that cannot be written only costs speed
            paths.write_json_atomic(self.path, self.data)


def run_all(argvs: Sequence[Sequence[str]]) -> list[str | None]:
    """Run the commands concurrently; stdout stripped, or None when one fails."""
    cache = _OutputCache()
    results: list[str | None] = [cache.get(a) for a in argvs]
    import subprocess

    procs: dict[int, subprocess.Popen[str]] = {}
    for i, argv in enumerate(argvs):
        if results[i] is None:
            try:
                procs[i] = subprocess.Popen(
                    list(argv),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    stdin=subprocess.DEVNULL,
                    text=True,
                    errors="replace",  # a stray binary may print anything
                )
            except OSError:
                continue
    for i, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            _abandon(proc)
            continue
        if proc.returncode == 0:
            results[i] = out.strip()
            cache.put(argvs[i], results[i] or "")
    cache.save()
    return results


def _abandon(proc: subprocess.Popen[str]) -> None:
    """Kill a binary that did not finish within its time, and reap it without reading its
    output to the end: a process it left in the background (a wrapper script's daemon)
    may hold that output open for as long as it runs, and reading to the end waited for
    it (for ever, after the 10 s)."""
    proc.kill()
    proc.wait()  # killed: it goes, whatever it left behind
    if proc.stdout is not None:
        proc.stdout.close()


def cached_output(argv: Sequence[str]) -> str | None:
    return run_all([argv])[0]
