"""Removing a data directory, against ``rm -rf``, side by side, one run:
``python bench/rmtree.py [--runs 5] [--no-write]``.

- ``pgmgr destroy NAME`` of a stopped instance made by ``pgmgr init`` (the whole command:
  process start, checks, rename, removal, record), against ``rm -rf`` of a data directory
  made by ``initdb`` with the same options;
- the removal alone: :func:`pgmgr.core.rmtree.remove` (in-process) against ``rm -rf`` and
  :func:`shutil.rmtree` of the same kind of directory.

Each case runs on a quiet disk and again while another process writes to it and syncs (a
test suite, a build): on this VM's ext4 (``-o discard``, no journal) an unlink that frees
blocks waits for the disk, ~65 us when it is quiet and 1 to 3 ms when it is busy.

Each data directory is written to the disk (``sync``, untimed) before it is removed, as the
files of an instance that has lived half a minute are: a file whose blocks are not yet
allocated (delayed allocation) is freed without a word to the disk, and would measure
nothing. The sides alternate, flipping the order every run. Everything lives under one
temporary directory in /tmp with its own pgmgr state; as root the directories belong to
the ``postgres`` user, as pgmgr's do. Writes a section of bench/RESULTS.md unless
``--no-write``.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pgmgr.core import rmtree, versions  # noqa: E402

SECTION = "## Removing a data directory (bench/rmtree.py)"


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.inst = versions.select("15").installation
        self.pw = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        exe = Path(sys.executable).with_name("pgmgr")
        self.pgmgr_cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pgmgr"]
        self.env = dict(
            os.environ, PGMGR_STATE_DIR=str(work / "state"), PGMGR_CACHE_DIR=str(work / "cache")
        )
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.data = work / "data"  # the server user's, as the parent of a user's instances
        self.data.mkdir(mode=0o755)
        if self.pw:
            os.chown(self.data, self.pw.pw_uid, self.pw.pw_gid)
        self.n = 0

    def pgmgr(self, *args: str) -> None:
        proc = subprocess.run(
            [*self.pgmgr_cmd, *args], env=self.env, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise SystemExit(f"pgmgr {' '.join(args)} failed: {proc.stderr}")

    def initdb(self) -> Path:
        self.n += 1
        path = self.data / f"d{self.n}"
        kw: dict[str, object] = {}
        if self.pw:
            kw = {"user": self.pw.pw_uid, "group": self.pw.pw_gid, "extra_groups": []}
        subprocess.run(
            [str(self.inst.bin("initdb")), "-D", str(path), "-U", "postgres", "-A", "trust",
             "--no-sync"],
            check=True, capture_output=True, cwd=self.data, **kw,
        )  # type: ignore[call-overload]  # fmt: skip
        return path

    def init(self) -> str:
        self.n += 1
        name = f"i{self.n}"
        self.pgmgr("init", "-q", "-d", str(self.data / name), "--name", name, "-v", "15")
        return name

    def timed(
        self, make: Callable[[], object], remove: Callable[[object], object], busy: bool
    ) -> float:
        made = make()
        subprocess.run(["sync"], check=True)
        load = self.load() if busy else None
        try:
            t0 = time.perf_counter()
            remove(made)
            return time.perf_counter() - t0
        finally:
            if load is not None:
                load.kill()
                load.wait()

    def load(self) -> subprocess.Popen[bytes]:
        """Another process writing to the same disk: 16 MiB at a time, each synced (a test
        suite, a build, a database next door), started before the removal."""
        code = (
            "import os,sys\n"
            "buf = b'x' * (16 << 20)\n"
            "while True:\n"
            "    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)\n"
            "    os.write(fd, buf); os.fsync(fd); os.close(fd)\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code, str(self.work / "load")])
        time.sleep(0.3)  # under way
        return proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pgmgr-bench-rm-", dir="/tmp"))
    work.chmod(0o755)
    try:
        b = Bench(work)
        b.init()  # the template (untimed)
        files = sum(len(f) for _, _, f in os.walk(b.initdb()))
        rm = ["rm", "-rf", "--"]
        sides: dict[str, tuple[Callable[[], object], Callable[[object], object]]] = {
            "destroy": (b.init, lambda n: b.pgmgr("destroy", str(n), "--yes", "-q")),
            "rm -rf": (b.initdb, lambda p: subprocess.run([*rm, str(p)], check=True)),
            "rmtree": (b.initdb, lambda p: rmtree.remove(str(p))),
            "shutil": (b.initdb, lambda p: shutil.rmtree(str(p))),
        }
        took: dict[tuple[str, bool], list[float]] = {
            (k, x): [] for k in sides for x in (False, True)
        }
        for run in range(args.runs):
            order = list(sides) if run % 2 == 0 else list(reversed(sides))
            for busy in (False, True):
                for k in order:
                    took[k, busy].append(b.timed(*sides[k], busy))
        med = {k: statistics.median(v) for k, v in took.items()}
        fs = subprocess.run(
            ["findmnt", "-n", "-o", "FSTYPE,OPTIONS", "--target", str(work)],
            capture_output=True, text=True, check=False,
        ).stdout.split()  # fmt: skip
    finally:
        subprocess.run([*b.pgmgr_cmd, "stop", "--all", "-q"], env=b.env, check=False)
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for busy, where in ((False, "quiet disk"), (True, "disk busy")):
        rows += [
            (f"`pgmgr destroy` of a stopped instance, {where}", med["destroy", busy],
             "`rm -rf` of its data directory", med["rm -rf", busy]),
            (f"`pgmgr.core.rmtree.remove` (in-process), {where}", med["rmtree", busy],
             "`rm -rf`", med["rm -rf", busy]),
            (f"`pgmgr.core.rmtree.remove` (in-process), {where}", med["rmtree", busy],
             "`shutil.rmtree` (in-process)", med["shutil", busy]),
        ]  # fmt: skip
    out = [
        SECTION,
        "",
        f"A data directory of PostgreSQL {b.inst.version} as `initdb` makes it ({files} files), "
        "written to the disk before it is removed.",
        "",
        "| case | pgmgr | baseline | baseline time | ratio |",
        "|---|---|---|---|---|",
        *(f"| {c} | {a * 1000:.0f} ms | {base} | {t * 1000:.0f} ms | {a / t:.2f} |"
          for c, a, base, t in rows),
        "",
        f"- filesystem (/tmp): {' '.join(fs) or 'unknown'}; CPU cores: {os.cpu_count()}",
        "- disk busy: another process writes 16 MiB and fsyncs it, over and over, while the "
        "directory is removed (each side under the same load)",
        f"- median of {args.runs} runs, the sides alternating; load average (1 min) at the end: "
        f"{os.getloadavg()[0]:.2f}; date: {time.strftime('%Y-%m-%d %H:%M')}",
        "",
    ]  # fmt: skip
    text = "\n".join(out)
    print(text)
    if not args.no_write:
        path = REPO / "bench" / "RESULTS.md"
        old = path.read_text() if path.exists() else ""
        if SECTION in old:
            start = old.index(SECTION)
            nxt = old.find("\n## ", start + len(SECTION))
            old = old[:start] + (old[nxt + 1 :] if nxt != -1 else "")
        path.write_text(old.rstrip() + "\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
