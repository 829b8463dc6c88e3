"""Snapshots, branches and upgrades against the PostgreSQL way of doing each, side by side,
one run: ``python bench/snapshots.py [--scale 70] [--runs 3] [--xfs auto|yes|no] [--no-write]``.

On an instance of about 1 GB (``pgbench -i -s 70``, PostgreSQL 15):

- ``pgmgr snapshot`` + ``pgmgr restore`` of the running instance, against ``pg_dump -Fc``
  + ``pg_restore`` into a fresh database, and against the DSLR/Stellar way
  (``CREATE DATABASE snap TEMPLATE db``, then ``DROP DATABASE db`` + ``CREATE DATABASE db
  TEMPLATE snap``). Between pgmgr's snapshot and restore (untimed) the rows change, then a
  ``CHECKPOINT`` writes them to the files, as minutes of work would: either the small tables
  (``SMALL``: what a test or a migration of a few tables leaves) or 1% of the rows of the
  big one, spread over all its pages (``BIG``: the restore copies the whole table back);
- ``pgmgr branch`` of the running instance until the new one is ready, against
  ``pg_basebackup`` into a new directory + ``pg_ctl start -w``;
- ``pgmgr upgrade -v 18 --method copy`` of a stopped copy, against ``initdb`` (same
  options) + raw ``pg_upgrade --copy`` of an identical stopped copy.

With ``--xfs`` (``auto``, the default: when root, with xfsprogs, where loop mounts work) the
pgmgr side of the snapshot and branch cases runs a second time on a copy of the instance on a
reflink filesystem: an XFS (``mkfs.xfs -m reflink=1``) in a sparse image file under the
work directory, loop-mounted, so the copies are ``FICLONE`` clones. Those rows share the
baselines measured on the first filesystem.

Each case runs ``--runs`` times (default 3; the median is shown: on this VM's disk one run
of a case varied by up to 1.8x); the machine's page cache is flushed with ``sync``
(twice: see :meth:`Bench.timed`) before each side (untimed), and the next case waits until
the old state a restore replaced has been deleted in the background. Everything lives
under one temporary directory in /tmp with its own pgmgr state; every server started is
stopped and the directory removed at the end. As root, the baselines run as the
``postgres`` user, as pgmgr's servers do. Writes a section of bench/RESULTS.md unless
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
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pgmgr.core import server, versions  # noqa: E402

SECTION = "## Snapshots, branches and upgrades (bench/snapshots.py)"
#: The work between snapshot and restore (untimed), see the module doc.
SMALL = (
    "UPDATE pgbench_tellers SET tbalance = tbalance + 1; "
    "UPDATE pgbench_branches SET bbalance = bbalance + 1; "
    "INSERT INTO pgbench_history SELECT 1, 1, g, 1, now() FROM generate_series(1, 1000) g; "
    "CHECKPOINT"
)
BIG = "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 100 = 0; CHECKPOINT"


@dataclass
class Row:
    case: str
    ours: float
    baseline: str
    theirs: float
    target: float

    @property
    def ratio(self) -> float:
        return self.ours / self.theirs


class Bench:
    def __init__(self, work: Path, scale: int) -> None:
        self.work = work
        self.scale = scale
        self.old = versions.select("15").installation
        self.new = versions.select("18").installation
        self.root = os.geteuid() == 0
        self.pw = pwd.getpwnam("postgres") if self.root else None
        exe = Path(sys.executable).with_name("pgmgr")
        self.pgmgr_cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pgmgr"]
        self.env = dict(
            os.environ,
            PGMGR_STATE_DIR=str(work / "state"),
            PGMGR_CACHE_DIR=str(work / "cache"),
            TMPDIR=str(self.mkdir("tmp")),
        )
        # As installed (pip compiles pgmgr), not recompiling its modules on every command.
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.sock = self.mkdir("sock")
        self.loop: str | None = None  # the loop device of --xfs

    # ------------------------------------------------------------------ plumbing

    def mkdir(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(mode=0o755)
        if self.pw:
            os.chown(path, self.pw.pw_uid, self.pw.pw_gid)
        return path

    def pgmgr(self, *args: str) -> str:
        proc = subprocess.run(
            [*self.pgmgr_cmd, *args], env=self.env, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise SystemExit(f"pgmgr {' '.join(args)} failed: {proc.stderr}")
        return proc.stdout

    def run(self, argv: list[str], cwd: Path | None = None) -> None:
        """A PostgreSQL program, as the server user when root."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        kw: dict[str, object] = {}
        if self.pw:
            kw = {"user": self.pw.pw_uid, "group": self.pw.pw_gid, "extra_groups": []}
            env["HOME"] = self.pw.pw_dir
        proc = subprocess.run(
            argv, env=env, cwd=cwd or self.work, capture_output=True, text=True, check=False, **kw
        )  # type: ignore[call-overload]
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr or proc.stdout}")

    def psql(self, port: int, sql: str, db: str = "postgres", name: str = "main") -> None:
        self.run(
            [
                str(self.old.bin("psql")),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.sockdir(name),
                "-p",
                str(port),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ]
        )

    def sockdir(self, name: str) -> str:
        import json

        return str(json.loads(self.pgmgr("status", name, "--json"))["socket_dir"])

    def port(self, name: str) -> int:
        import json

        return int(json.loads(self.pgmgr("status", name, "--json"))["port"])

    @staticmethod
    def timed(fn: Callable[[], object]) -> float:
        # Twice: the first flushes the loop-mounted XFS into its image file, whose pages on
        # the host filesystem are dirty again after it; the second writes those out. With
        # one, the first fsync of a timed run on the XFS (a restore's swap) sometimes paid
        # for ~1 GB of the untimed set-up's writes (runs of 2.1 s among ones of 0.35 s).
        subprocess.run(["sync"], check=True)
        subprocess.run(["sync"], check=True)
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    # ------------------------------------------------------------------ set-up

    def setup(self) -> None:
        data = self.work / "main"
        self.pgmgr("init", "-q", "-d", str(data), "--name", "main", "-v", "15", "--auth", "trust")
        self.pgmgr("start", "main", "-q", "-p", "auto")
        port = self.port("main")
        self.psql(port, "CREATE DATABASE bench")
        self.run(
            [
                str(self.old.bin("pgbench")),
                "-i",
                "-q",
                "-s",
                str(self.scale),
                "-h",
                self.sockdir("main"),
                "-p",
                str(port),
                "-U",
                "postgres",
                "bench",
            ]
        )
        self.psql(port, "CHECKPOINT")

    # ------------------------------------------------------------------ cases

    def snapshot_restore_ours(self, name: str, change: str) -> float:
        """Snapshot, ``change`` (untimed), restore: the two commands' time."""
        out: list[str] = []
        took = self.timed(lambda: out.append(self.pgmgr("snapshot", name, "s1", "--json")))
        self.psql(self.port(name), change, "bench", name)
        took += self.timed(lambda: out.append(self.pgmgr("restore", name, "s1", "--yes", "--json")))
        self.log(name, change, took, out)
        self.pgmgr("snapshot", name, "s1", "--delete", "-q")
        self.quiesce(name)
        return took

    @staticmethod
    def log(name: str, change: str, took: float, docs: list[str]) -> None:
        """What each command copied and shared, on stderr."""
        import json

        keys = ("copied_bytes", "shared_files", "unchanged_files", "elapsed_ms", "downtime_ms")
        parts = [f"{name} {'BIG' if change == BIG else 'SMALL'} {took:.2f} s"]
        for doc in docs:
            d = json.loads(doc)
            parts.append(" ".join(f"{k}={d[k]}" for k in keys if k in d))
        print(" | ".join(parts), file=sys.stderr)

    def quiesce(self, name: str) -> None:
        """Until the old state a restore replaced is deleted (in the background, ``rm -rf``
        as the server user): the next timed case must not share the disk with it."""
        import json

        datadir = Path(json.loads(self.pgmgr("status", name, "--json"))["datadir"])
        store = datadir.parent / ".pgmgr-snapshots" / datadir.name
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if not [n for n in os.listdir(store) if n.startswith(".")]:
                    return
            except FileNotFoundError:
                return
            time.sleep(0.05)

    def with_earlier(self, name: str) -> tuple[float, float]:
        """:meth:`snapshot_restore_ours` (SMALL, then BIG) while an earlier snapshot
        (``base``, untimed) is kept: the snapshot shares what did not change since."""
        self.pgmgr("snapshot", name, "base", "-q")
        small = self.snapshot_restore_ours(name, SMALL)
        big = self.snapshot_restore_ours(name, BIG)
        self.pgmgr("snapshot", name, "base", "--delete", "-q")
        return small, big

    def snapshot_restore(self) -> tuple[float, float, float, float, float, float]:
        a = self.snapshot_restore_ours("main", SMALL)
        a_big = self.snapshot_restore_ours("main", BIG)
        k, k_big = self.with_earlier("main")
        port = self.port("main")
        sock = self.sockdir("main")
        bin_ = self.old.bindir

        def dump() -> None:
            self.run(
                [
                    str(bin_ / "pg_dump"),
                    "-Fc",
                    "-h",
                    sock,
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                    "-f",
                    str(self.work / "tmp" / "bench.dump"),
                    "bench",
                ]
            )
            self.psql(port, "CREATE DATABASE fresh")
            self.run(
                [
                    str(bin_ / "pg_restore"),
                    "-h",
                    sock,
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                    "-d",
                    "fresh",
                    str(self.work / "tmp" / "bench.dump"),
                ]
            )

        def template() -> None:
            self.psql(port, "CREATE DATABASE snap TEMPLATE bench")
            self.psql(port, "DROP DATABASE bench")
            self.psql(port, "CREATE DATABASE bench TEMPLATE snap")

        b = self.timed(dump)
        self.psql(port, "DROP DATABASE fresh")
        c = self.timed(template)
        self.psql(port, "DROP DATABASE snap")
        return a, a_big, k, k_big, b, c

    def floor(self) -> tuple[float, float, int]:
        """What a copy without reflinks is up against, for as many bytes as a first snapshot
        copies (``main``'s data directory without ``pg_wal``): the disk's own floor, zeros
        written straight to it (``dd oflag=direct conv=fsync``: no file read, no page
        cache), and a durable copy with the usual tools (``cp -a --reflink=never``, then
        ``sync -f``); their times and the bytes."""
        src, dst = self.work / "main", self.work / "floor"
        parts = [p for p in src.iterdir() if p.name not in ("pg_wal", "postmaster.pid")]
        size = sum(f.stat().st_size for p in parts for f in [p, *p.rglob("*")] if f.is_file())
        dst.mkdir()
        mib = -(-size // (1 << 20))
        zeros = [
            "dd", "if=/dev/zero", f"of={dst / 'zeros'}", "bs=1M", f"count={mib}",
            "oflag=direct", "conv=fsync", "status=none",
        ]  # fmt: skip
        disk = self.timed(lambda: subprocess.run(zeros, check=True))
        (dst / "zeros").unlink()

        def copy() -> None:
            subprocess.run(["cp", "-a", "--reflink=never", *map(str, parts), str(dst)], check=True)
            subprocess.run(["sync", "-f", str(dst)], check=True)

        cp = self.timed(copy)
        shutil.rmtree(dst)
        return disk, cp, size

    def branch_ours(self, name: str, new: str) -> float:
        took = self.timed(lambda: self.pgmgr("branch", name, new, "-q"))
        self.pgmgr("destroy", new, "--yes", "-q")
        return took

    def branch(self, run: int = 0) -> tuple[float, float]:
        a = self.branch_ours("main", f"feat{run}")
        port, sock = self.port("main"), self.sockdir("main")
        target = self.mkdir(f"bb{run}") / "data"
        free = server.free_port("127.0.0.1")

        def basebackup() -> None:
            self.run(
                [
                    str(self.old.bin("pg_basebackup")),
                    "-D",
                    str(target),
                    "-h",
                    sock,
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                ]
            )
            self.run(
                [
                    str(self.old.bin("pg_ctl")),
                    "start",
                    "-w",
                    "-D",
                    str(target),
                    "-l",
                    str(self.work / "tmp" / "bb.log"),
                    "-o",
                    f"-p {free} -k {self.sock} -c listen_addresses=''",
                ]
            )

        b = self.timed(basebackup)
        self.run([str(self.old.bin("pg_ctl")), "stop", "-w", "-m", "fast", "-D", str(target)])
        shutil.rmtree(target.parent)
        return a, b

    # ------------------------------------------------------------------ reflink filesystem

    def mount_xfs(self) -> Path:
        """A reflink XFS in a sparse image under the work directory, loop-mounted at
        ``<work>/xfs`` (see :meth:`unmount_xfs`)."""
        image, mnt = self.work / "xfs.img", self.work / "xfs"
        mnt.mkdir(mode=0o755)
        subprocess.run(["truncate", "-s", f"{max(8, self.scale // 5)}G", str(image)], check=True)
        subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
        dev = subprocess.run(
            ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=True
        ).stdout.strip()
        self.loop = dev
        subprocess.run(["mount", "-t", "xfs", dev, str(mnt)], check=True)
        mnt.chmod(0o755)
        return mnt

    def unmount_xfs(self) -> None:
        mnt = self.work / "xfs"
        if os.path.ismount(mnt):
            for _ in range(20):
                if subprocess.run(["umount", str(mnt)], check=False).returncode == 0:
                    break
                time.sleep(0.2)
        if self.loop:
            subprocess.run(["losetup", "-d", self.loop], check=False)

    def copy_to(self, mnt: Path, name: str) -> None:
        """Instance ``name``: a copy of the stopped ``main`` on ``mnt``, started."""
        self.pgmgr("stop", "main", "-q")
        subprocess.run(["cp", "-a", str(self.work / "main"), str(mnt / "main")], check=True)
        self.pgmgr("start", "main", "-q")
        self.pgmgr("start", "-q", "--init", "-d", str(mnt / "main"), "--name", name, "-p", "auto")

    def upgrade(self, run: int = 0) -> tuple[float, float]:
        self.pgmgr("stop", "--all", "-q")
        ours_dir, raw_dir = self.work / f"up-ours{run}", self.work / f"up-raw{run}"
        name = f"upours{run}"

        def ours() -> float:
            subprocess.run(["cp", "-a", str(self.work / "main"), str(ours_dir)], check=True)
            self.pgmgr("init", "-q", "-d", str(ours_dir), "--name", name)
            took = self.timed(
                lambda: self.pgmgr("upgrade", name, "-v", "18", "--method", "copy", "--yes", "-q")
            )
            self.pgmgr("destroy", name, "--yes", "--with-snapshots", "-q")
            return took

        new = self.mkdir(f"raw-new{run}") / "data"
        work = self.mkdir(f"raw-work{run}")
        p1, p2 = server.free_port("127.0.0.1"), server.free_port("127.0.0.1")

        def raw() -> None:
            self.run(
                [
                    str(self.new.bin("initdb")),
                    "-D",
                    str(new),
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--auth=trust",
                    "--no-data-checksums",
                    "-N",
                ]
            )
            self.run(
                [
                    str(self.new.bin("pg_upgrade")),
                    "-b",
                    str(self.old.bindir),
                    "-B",
                    str(self.new.bindir),
                    "-d",
                    str(raw_dir),
                    "-D",
                    str(new),
                    "-U",
                    "postgres",
                    "-p",
                    str(p1),
                    "-P",
                    str(p2 if p2 != p1 else p1 + 1),
                    "-s",
                    str(self.sock),
                    "--copy",
                ],
                cwd=work,
            )

        def theirs() -> float:
            subprocess.run(["cp", "-a", str(self.work / "main"), str(raw_dir)], check=True)
            took = self.timed(raw)
            for d in (raw_dir, new.parent, work):
                shutil.rmtree(d)
            return took

        # Each side copies the instance right before its turn and deletes everything
        # after it: with both copies made first, the side that went second found the
        # other's deleted (its page cache freed) and its pg_upgrade ran ~1 s faster on
        # this VM, whichever side it was. The order alternates too.
        if run % 2:
            b = theirs()
            a = ours()
        else:
            a = ours()
            b = theirs()
        return a, b


def why_no_xfs() -> str | None:
    if os.geteuid() != 0:
        return "not root (a loop mount needs root)"
    if shutil.which("mkfs.xfs") is None or shutil.which("losetup") is None:
        return "no mkfs.xfs/losetup (apt-get install xfsprogs)"
    return None


def machine(b: Bench, runs: int) -> list[str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    fs = (
        subprocess.run(
            ["findmnt", "-n", "-o", "FSTYPE", "--target", str(b.work)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        or "unknown"
    )
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores; filesystem ({b.work.parent}): {fs}",
        f"- PostgreSQL {b.old.version} -> {b.new.version}; pgbench scale {b.scale}; "
        f"user: {'root (servers run as postgres)' if b.root else pwd.getpwuid(os.getuid())[0]}",
        f"- load average (1 min) at the end: {os.getloadavg()[0]:.2f}; "
        f"median of {runs} runs per case, "
        f"`sync` twice (untimed) before each side; date: {time.strftime('%Y-%m-%d %H:%M')}",
    ]


def render(rows: list[Row], size: str, notes: list[str]) -> str:
    out = [
        SECTION,
        "",
        f"Instance: `pgbench -i -s` ({size}).",
        "",
        "| case | pgmgr | baseline | baseline time | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "yes" if r.ratio <= r.target else "**no**"
        out.append(
            f"| {r.case} | {r.ours:.2f} s | {r.baseline} | {r.theirs:.2f} s | "
            f"{r.ratio:.3f} | <= {r.target} | {met} |"
        )
    return "\n".join([*out, "", *notes, ""])


def write(text: str) -> None:
    path = REPO / "bench" / "RESULTS.md"
    old = path.read_text() if path.exists() else ""
    if SECTION not in old:
        path.write_text(old.rstrip() + "\n\n" + text)
        return
    # Only this section: the ones after it (bench/rmtree.py's) stay.
    head, rest = old.split(SECTION, 1)
    after = rest[rest.index("\n## ") + 1 :] if "\n## " in rest else ""
    path.write_text(head + text.rstrip() + "\n" + ("\n" + after if after else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=int, default=70)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--runs", type=int, default=3, help="runs of the snapshot and branch cases")
    ap.add_argument(
        "--xfs",
        choices=("auto", "yes", "no"),
        default="auto",
        help="also run the snapshot and branch cases on a loop-mounted XFS with reflink",
    )
    args = ap.parse_args()
    why = why_no_xfs() if args.xfs != "no" else "--xfs no"
    if why and args.xfs == "yes":
        raise SystemExit(f"--xfs yes: {why}")
    work = Path(tempfile.mkdtemp(prefix="pgmgr-bench-snap-", dir="/tmp"))
    work.chmod(0o755)
    try:
        b = Bench(work, args.scale)
    except BaseException:  # no PostgreSQL 18, say: leave nothing behind
        shutil.rmtree(work, ignore_errors=True)
        raise
    try:
        b.setup()
        size = subprocess.run(
            ["du", "-sh", str(work / "main")], capture_output=True, text=True, check=False
        ).stdout.split()[0]
        runs = [(*b.snapshot_restore(), *b.branch(i), *b.floor()) for i in range(args.runs)]
        sr, srb, ksr, ksrb, dump, tpl, br, bb, disk, cp, floor_bytes = (
            statistics.median(c) for c in zip(*runs, strict=True)
        )
        xfs: tuple[float, ...] | None = None
        if why is None:
            b.copy_to(b.mount_xfs(), "xmain")
            xruns = [
                (
                    b.snapshot_restore_ours("xmain", SMALL),
                    b.snapshot_restore_ours("xmain", BIG),
                    *b.with_earlier("xmain"),
                    b.branch_ours("xmain", f"xfeat{i}"),
                )
                for i in range(args.runs)
            ]
            xfs = tuple(statistics.median(c) for c in zip(*xruns, strict=True))
        ups = [b.upgrade(i) for i in range(args.runs)]
        up, raw = (statistics.median(c) for c in zip(*ups, strict=True))
        notes = machine(b, args.runs)
        if why is not None:
            notes.append(f"- no XFS reflink rows: {why}")
    finally:
        subprocess.run([*b.pgmgr_cmd, "stop", "--all", "-q"], env=b.env, check=False)
        b.unmount_xfs()
        shutil.rmtree(work, ignore_errors=True)
    fs = notes[0].rsplit(": ", 1)[1]
    dump_b = "`pg_dump -Fc` + `pg_restore` into a fresh db"
    tpl_b = "`CREATE DATABASE .. TEMPLATE` swap"
    bb_b = "`pg_basebackup` + `pg_ctl start -w`"
    fses: list[tuple[str, float, float, float, float, float]] = [(fs, sr, srb, ksr, ksrb, br)]
    if xfs is not None:
        x1, x2, x3, x4, x5 = xfs
        fses.append(("XFS reflink (loop)", x1, x2, x3, x4, x5))
        notes.append(
            "- XFS reflink rows: the pgmgr side on a copy of the instance on an XFS "
            "(`mkfs.xfs -m reflink=1`) image file on the same disk, loop-mounted; same "
            "baselines (measured on the first filesystem)"
        )
    notes.append(
        "- snapshot + restore: between the two (untimed), small tables changed or 1% of "
        "`pgbench_accounts` (all its pages), then `CHECKPOINT` (see bench/snapshots.py); "
        '"first snapshot": the instance has no other snapshot, so the snapshot copies '
        'everything; "earlier snapshot kept": one taken before (untimed) is kept, so the '
        "snapshot copies only what changed since (as in a loop of snapshot, work, restore)"
    )
    notes.append(
        f"- the floor on {fs} (no reflinks), for the {floor_bytes / 1e9:.2f} GB a first "
        "snapshot copies (the data directory without `pg_wal`): writing that many zeros "
        f"straight to the disk (`dd oflag=direct conv=fsync`) took {disk:.2f} s, and a "
        f"durable copy with `cp -a --reflink=never` + `sync -f` {cp:.2f} s; the 0.05 "
        f"target against `pg_dump` allows {0.05 * dump:.2f} s for a snapshot and a restore. "
        "A first snapshot writes all of it, and a restore after the big table changed "
        "writes that table back, durably"
    )
    rows = []
    for where, small, big, ksmall, kbig, _ in fses:
        for what, took in (
            ("small tables changed; first snapshot", small),
            ("1% of the big table changed; first snapshot", big),
            ("small tables changed; earlier snapshot kept", ksmall),
            ("1% of the big table changed; earlier snapshot kept", kbig),
        ):
            case = f"snapshot + restore (running; {what}), {where}"
            rows.append(Row(case, took, dump_b, dump, 0.05))
            rows.append(Row(case, took, tpl_b, tpl, 0.5))
    for where, *_, took in fses:
        rows.append(Row(f"branch of a running instance, ready, {where}", took, bb_b, bb, 0.5))
    rows.append(
        Row("upgrade 15 -> 18 `--method copy` (stopped)", up, "`initdb` + raw `pg_upgrade --copy`",
            raw, 1.2)
    )  # fmt: skip
    text = render(rows, size, notes)
    print(text)
    if not args.no_write:
        write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
