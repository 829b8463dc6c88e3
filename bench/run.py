"""pgmgr against the PostgreSQL tools, side by side: ``python bench/run.py [--rounds N]``.

Each case runs its pgmgr side and its baseline alternately (the order flips every round), so
a machine that gets busier or quieter during the run affects both sides alike; before each
sample dirty data is flushed (``sync``, untimed), so neither side pays for the other's
writeback; after a pgmgr init the bench waits (untimed) for the background refill of the
template's spare, so it does not run during the baseline's sample. It prints the
medians and the ratio pgmgr / baseline and writes ``bench/RESULTS.md`` with a description of
the machine. Everything runs under one temporary directory in /tmp with its own pgmgr state
and cache (the real ones are never touched); every server it starts is stopped, and at the end
any postmaster still running under that directory is shut down before it is removed.

As root, the baselines (initdb, pg_ctl, postgres) run as the ``postgres`` user, as pgmgr does.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import os
import platform
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pgmgr import Manager, __version__  # noqa: E402
from pgmgr.core import process, server, spare, versions  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import suite  # noqa: E402

Sample = Callable[[], float]


@dataclass
class Case:
    title: str
    baseline: str
    target: float | None
    ours: Sample
    theirs: Sample
    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.a) / statistics.median(self.b)


class Bench:
    def __init__(self, work: Path, install: versions.Installation) -> None:
        self.work = work
        self.install = install
        self.root = os.geteuid() == 0
        pw = pwd.getpwnam("postgres") if self.root else None
        self.ids = (pw.pw_uid, pw.pw_gid) if pw else None
        self.pgbase = self.mkdir(work / "pg")  # baselines' data dirs (the server user's)
        self.sock = self.mkdir(work / "sock")
        self.log = work / "pg.log"
        self.n = 0
        self.refill_waits: list[float] = []
        exe = Path(sys.executable).with_name("pgmgr")
        self.pgmgr_cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pgmgr"]
        self.env = dict(os.environ, TMPDIR=str(self.mkdir(work / "tmp")))
        self.env.update(PGMGR_CACHE_DIR=str(work / "cache"), POSTGRES_VERSION=install.version)
        self.env.pop("PGMGR_NO_TEMPLATE", None)
        # As installed packages are: with compiled bytecode (written now, if need be), not
        # recompiling pgmgr's ~35 modules on every run (~40 ms when PYTHONDONTWRITEBYTECODE).
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        compileall.compile_dir(REPO / "pgmgr", quiet=1)
        self.state("main")

    # ---------------------------------------------------------------- plumbing

    def mkdir(self, path: Path) -> Path:
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.chmod(0o755)
        if self.root and self.ids and path.name in ("pg", "sock"):
            os.chown(path, *self.ids)
        return path

    def state(self, name: str) -> None:
        self.env["PGMGR_STATE_DIR"] = str(self.work / f"state-{name}")
        os.environ.update(self.env)  # the library cases run in this process

    def fresh(self, prefix: str) -> Path:
        self.n += 1
        return self.work / "dirs" / f"{prefix}{self.n}"

    def pgmgr(self, *args: str) -> float:
        t = time.perf_counter()
        subprocess.run([*self.pgmgr_cmd, *args], env=self.env, check=True, capture_output=True)
        return time.perf_counter() - t

    def wait_refill(self) -> None:
        """Wait (untimed) for the background refill of the template's spare that an init
        started, so it neither slows the baseline's next sample nor leaves the next pgmgr
        sample without a spare."""
        t = time.perf_counter()
        spare.wait_refills(timeout=120)
        self.refill_waits.append(time.perf_counter() - t)

    def as_pg(self, argv: list[str], check: bool = True) -> float:
        """Run a PostgreSQL tool as the server user; seconds taken."""
        kw: dict[str, Any] = {}
        if self.ids:
            kw = {"user": self.ids[0], "group": self.ids[1], "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        t = time.perf_counter()
        subprocess.run(argv, env=env, cwd="/", capture_output=True, check=check, **kw)
        return time.perf_counter() - t

    def bin(self, name: str) -> str:
        return str(self.install.bin(name))

    def opts(self, port: int) -> str:
        return f"-p {port} -k {self.sock} -c listen_addresses=127.0.0.1"

    def initdb(self, datadir: Path) -> float:
        pwfile = self.work / "pw"
        pwfile.write_text("secret\n")
        if self.ids:
            os.chown(pwfile, *self.ids)
        opts = ["--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C"]
        return self.as_pg(
            [self.bin("initdb"), "-D", str(datadir), "-U", "postgres", "--auth-local=trust", *opts]
        )

    def pg_ctl_start(self, datadir: Path) -> float:
        port = server.free_port("127.0.0.1")
        argv = [self.bin("pg_ctl"), "-D", str(datadir), "-l", str(self.pgbase / "log")]
        return self.as_pg([*argv, "-o", self.opts(port), "-w", "start"])

    def pg_ctl_stop(self, datadir: Path) -> float:
        return self.as_pg([self.bin("pg_ctl"), "-D", str(datadir), "-m", "fast", "-w", "stop"])

    def raw_start(self, datadir: Path) -> tuple[float, subprocess.Popen[bytes]]:
        """Spawn postgres itself and poll postmaster.pid every 0.5 ms until 'ready'."""
        port = server.free_port("127.0.0.1")
        argv = [self.bin("postgres"), "-D", str(datadir), *self.opts(port).split()]
        kw: dict[str, Any] = {}
        if self.ids:
            kw = {"user": self.ids[0], "group": self.ids[1], "extra_groups": []}
        t = time.perf_counter()
        child = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/", **kw
        )
        while True:
            pf = process.PidFile.read(datadir)
            if pf is not None and pf.pid == child.pid and pf.status == "ready":
                return time.perf_counter() - t, child
            if child.poll() is not None:
                raise RuntimeError(f"postgres exited with {child.returncode}")
            time.sleep(0.0005)

    def raw_stop(self, datadir: Path, child: subprocess.Popen[bytes]) -> None:
        child.send_signal(signal.SIGINT)
        child.wait(30)

    def remove(self, *dirs: Path) -> None:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)

    def shutdown_all(self) -> list[int]:
        """SIGQUIT every postmaster still serving a data dir under the work dir."""
        prefix = str(self.work) + os.sep
        left = []
        for entry in os.listdir("/proc"):
            argv = process.cmdline(int(entry)) if entry.isdigit() else []
            if (
                argv
                and Path(argv[0]).name == "postgres"
                and "-D" in argv[:-1]
                and argv[argv.index("-D") + 1].startswith(prefix)
            ):
                left.append(int(entry))
                process.signal_pid(int(entry), signal.SIGQUIT)
        for pid in left:
            process.wait_gone(pid, Path("/nonexistent"), 10)
        return left


# -------------------------------------------------------------------- cases


def build_cases(b: Bench) -> list[Case]:
    b.state("main")
    seed = b.work / "dirs" / "seed"
    b.pgmgr("init", "-d", str(seed))  # builds the template: later inits are warm
    warm = b.work / "dirs" / "warm"
    b.pgmgr("init", "-d", str(warm))  # the first copy starts the refill of the spare
    b.wait_refill()
    b.pgmgr("forget", warm.name)
    b.remove(warm)
    b.pgmgr("start", "-d", str(seed), "--port", "auto")  # sets the password (first start)
    b.pgmgr("stop", "-d", str(seed))
    # not registered: the library cases must not add records to the status cases' state
    lib = Manager("127.0.0.1", server.free_port("127.0.0.1"), seed, register=False)
    raw = seed  # the baselines start the same data directory

    def lib_start() -> float:
        lib.port = server.free_port("127.0.0.1")
        t = time.perf_counter()
        lib.start()
        dt = time.perf_counter() - t
        lib.stop()
        return dt

    def raw_start() -> float:
        dt, child = b.raw_start(raw)
        b.raw_stop(raw, child)
        return dt

    def pg_ctl_start() -> float:
        dt = b.pg_ctl_start(raw)
        b.pg_ctl_stop(raw)
        return dt

    def lib_stop() -> float:
        lib.port = server.free_port("127.0.0.1")
        lib.start()
        t = time.perf_counter()
        lib.stop()
        return time.perf_counter() - t

    def pg_ctl_stop() -> float:
        b.pg_ctl_start(raw)
        return b.pg_ctl_stop(raw)

    def cli_cycle() -> float:
        port = str(server.free_port("127.0.0.1"))
        return b.pgmgr("start", "-d", str(seed), "-p", port) + b.pgmgr("stop", "-d", str(seed))

    def pg_ctl_cycle() -> float:
        return b.pg_ctl_start(raw) + b.pg_ctl_stop(raw)

    def cli_init() -> float:
        d = b.fresh("init")
        dt = b.pgmgr("init", "-d", str(d))
        b.wait_refill()
        b.pgmgr("forget", d.name)
        b.remove(d)
        return dt

    def initdb() -> float:
        d = b.pgbase / f"initdb{b.fresh('').name}"
        dt = b.initdb(d)
        b.remove(d)
        return dt

    def cli_start_init() -> float:
        d = b.fresh("si")
        dt = b.pgmgr("start", "-d", str(d), "--init", "--port", "auto")
        b.wait_refill()
        b.pgmgr("stop", "-d", str(d))
        b.pgmgr("forget", d.name)
        b.remove(d)
        return dt

    def initdb_start() -> float:
        d = b.pgbase / f"is{b.fresh('').name}"
        dt = b.initdb(d) + b.pg_ctl_start(d)
        b.pg_ctl_stop(d)
        b.remove(d)
        return dt

    # status: 20 registered instances (one running) and a state dir holding only that one
    b.state("20")
    for i in range(20):
        b.pgmgr("init", "-d", str(b.work / "dirs" / f"s{i:02d}"))
        b.wait_refill()
    b.refill_waits.clear()  # report only the waits after timed samples
    b.pgmgr("start", "-d", str(b.work / "dirs" / "s00"), "--port", "auto")
    one = b.work / "state-one" / "instances"
    one.mkdir(parents=True)
    shutil.copy2(b.work / "state-20" / "instances" / "s00.json", one / "s00.json")

    def status(state: str) -> Sample:
        def run() -> float:
            b.state(state)
            return b.pgmgr("status", "--json")

        return run

    def lsclusters() -> float:
        t = time.perf_counter()
        subprocess.run(["pg_lsclusters"], capture_output=True, check=False)
        return time.perf_counter() - t

    def with_state(state: str, sample: Sample) -> Sample:
        def run() -> float:
            b.state(state)
            return sample()

        return run

    def pgmgr_run() -> float:
        dt = b.pgmgr("run", "--", "true")
        b.wait_refill()  # a run claims the spare like an init (same filesystem as the cache)
        return dt

    def pg_virtualenv() -> float:
        t = time.perf_counter()
        subprocess.run(
            ["pg_virtualenv", "-v", b.install.version.split(".")[0], "true"],
            capture_output=True,
            check=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
        )
        return time.perf_counter() - t

    run_cases = []
    if shutil.which("pg_virtualenv"):
        run_cases.append(
            Case(
                "`pgmgr run -- true` (template warm)",
                "`pg_virtualenv true`",
                0.1,
                with_state("main", pgmgr_run),
                pg_virtualenv,
            )
        )

    return [
        *run_cases,
        Case(
            "library `Manager.start()` to ready",
            "raw `postgres` to ready",
            1.3,
            lib_start,
            raw_start,
        ),
        Case("library start to ready", "`pg_ctl start -w`", 0.4, lib_start, pg_ctl_start),
        Case("library stop", "`pg_ctl stop -m fast -w`", 0.25, lib_stop, pg_ctl_stop),
        Case(
            "CLI `pgmgr start -d D` + `pgmgr stop -d D`",
            "`pg_ctl -w start` + `pg_ctl -w stop`",
            0.8,
            with_state("main", cli_cycle),
            pg_ctl_cycle,
        ),
        Case(
            "`pgmgr init -d NEW` (template warm)",
            "`initdb -D NEW`, same options",
            0.2,
            with_state("main", cli_init),
            initdb,
        ),
        Case(
            "`pgmgr start -d NEW --init` (template warm)",
            "`initdb` + `pg_ctl -w start`",
            0.33,
            with_state("main", cli_start_init),
            initdb_start,
        ),
        Case(
            "`pgmgr status --json`, one instance", "`pg_lsclusters`", 1.5, status("one"), lsclusters
        ),
        Case(
            "`pgmgr status --json`, 20 instances",
            "the same, one instance",
            1.5,
            status("20"),
            status("one"),
        ),
    ]


def cold_run(b: Bench, samples: int) -> float:
    """``pgmgr run -- true`` with a new, empty template cache each time (untimed: the
    background refill it may start)."""
    times = []
    for i in range(samples):
        env = dict(b.env, PGMGR_CACHE_DIR=str(b.work / f"cold-cache-{i}"))
        t = time.perf_counter()
        argv = [*b.pgmgr_cmd, "run", "--", "true"]
        subprocess.run(argv, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
        spare.wait_refills(timeout=120)
    return statistics.median(times)


def status_imports(b: Bench, runs: int, top: int = 8) -> str:
    """What ``pgmgr status --json`` imports (``-X importtime``): the sum of the modules' own
    times and the largest ones, each the minimum over ``runs`` runs (the least disturbed)."""
    b.state("one")
    best: dict[str, int] = {}
    for _ in range(runs):
        env = dict(b.env, PYTHONPROFILEIMPORTTIME="1")
        err = subprocess.run(
            [*b.pgmgr_cmd, "status", "--json"], env=env, capture_output=True, text=True
        ).stderr
        for line in err.splitlines():
            parts = line.removeprefix("import time:").split("|")
            if len(parts) == 3 and parts[0].strip().isdigit():
                name = parts[2].strip()
                best[name] = min(best.get(name, 1 << 60), int(parts[0]))
    largest = sorted(best.items(), key=lambda kv: -kv[1])[:top]
    text = ", ".join(f"{name} {us / 1000:.1f}" for name, us in largest)
    return f"{sum(best.values()) / 1000:.1f} ms in {len(best)} modules; largest (ms): {text}"


def python_floor(rounds: int) -> float:
    """``python -c pass`` with this interpreter: the start-up no Python CLI can go below."""
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_rss_kb(b: Bench, state: str) -> int:
    """maxrss of one ``pgmgr status --json`` (wait4's rusage of that child alone)."""
    b.state(state)
    proc = subprocess.Popen(
        [*b.pgmgr_cmd, "status", "--json"], env=b.env, stdout=subprocess.DEVNULL
    )
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return int(usage.ru_maxrss)


# -------------------------------------------------------------------- report


def machine() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    fs = subprocess.run(["df", "-T", "/tmp"], capture_output=True, text=True).stdout.split("\n")
    return {
        "CPU": f"{cpu}, {os.cpu_count()} cores",
        "memory": mem,
        "OS": f"{platform.system()} {platform.release()}",
        "filesystem (/tmp)": fs[1].split()[1] if len(fs) > 1 and fs[1] else "?",
        "Python": platform.python_version(),
        "pgmgr": __version__,
        "user": pwd.getpwuid(os.geteuid()).pw_name,
    }


def ms(s: float) -> str:
    return f"{s * 1000:.1f} ms"


def report(
    cases: list[Case], install: versions.Installation, rounds: int, extra: dict[str, str]
) -> str:
    lines = [
        "| case | pgmgr (median) | baseline | baseline (median) | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        ok = "yes" if c.target is None or c.ratio <= c.target else "**no**"
        lines.append(
            f"| {c.title} | {ms(statistics.median(c.a))} | {c.baseline} | "
            f"{ms(statistics.median(c.b))} | {c.ratio:.2f} | <= {c.target} | {ok} |"
        )
    info = {"PostgreSQL": f"{install.version} ({install.bindir})", "rounds": str(rounds)}
    desc = "\n".join(f"- {k}: {v}" for k, v in {**machine(), **info, **extra}.items())
    return "\n".join(lines) + "\n\n" + desc + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="samples per side (default 9)")
    parser.add_argument("--version", help="PostgreSQL version (default: pgmgr's choice)")
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    parser.add_argument(
        "--suite-python",
        help="Python of the environment with pytest-postgresql and testing.postgresql for the "
        "generated suites (default: this one); the server user must be able to run it",
    )
    parser.add_argument("--suite-rounds", type=int, default=3, help="runs per suite (default 3)")
    parser.add_argument(
        "--sizes", default="40,200", help="tests per generated suite (default 40,200; '' skips)"
    )
    args = parser.parse_args()
    install = versions.select(args.version).installation
    work = Path(tempfile.mkdtemp(prefix="pgmgr-bench-", dir="/tmp"))
    work.chmod(0o755)
    b = Bench(work, install)
    load0 = os.getloadavg()
    try:
        cases = build_cases(b)
        for r in range(args.rounds):
            for c in cases:
                pair = [(c.a, c.ours), (c.b, c.theirs)]
                for dest, sample in pair if r % 2 == 0 else pair[::-1]:
                    os.sync()  # neither side pays for the other's writeback (untimed)
                    dest.append(sample())
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        floor = python_floor(args.rounds)
        rss = {n: max(peak_rss_kb(b, s) for _ in range(3)) for n, s in (("1", "one"), ("20", "20"))}
        cold = cold_run(b, 3) if shutil.which("pg_virtualenv") else None
        imports = status_imports(b, args.rounds)
        load1 = os.getloadavg()
        suites = ""
        sizes = [int(n) for n in args.sizes.split(",") if n.strip()]
        if sizes:
            b.state("main")
            suites = suite.run_all(
                work / "suites",
                b.ids,
                dict(b.env),
                args.suite_python or sys.executable,
                install,
                sizes,
                args.suite_rounds,
            )
    finally:
        with contextlib.suppress(Exception):
            spare.wait_refills(timeout=120)
        with contextlib.suppress(Exception):
            b.state("20")
            b.pgmgr("stop", "--all")
        left = b.shutdown_all()
        shutil.rmtree(work, ignore_errors=True)
    extra = {
        "`python -c pass` (interpreter start-up, median)": ms(floor),
        "peak memory of `pgmgr status --json` (maxrss, target <= 40 MB)": (
            f"{rss['1'] / 1024:.1f} MB (1 instance), {rss['20'] / 1024:.1f} MB (20 instances)"
        ),
        "`pgmgr status --json` imports (`-X importtime`, own time, min over the rounds)": imports,
        "load average (1 min) before / after the cases above": f"{load0[0]:.2f} / {load1[0]:.2f}",
        "`pgmgr run -- true` with an empty template cache (initdb + template build; median of 3)": (
            ms(cold) if cold is not None else "-"
        ),
        "spare refill after an init (background, waited for untimed before the next sample)": (
            f"median wait {ms(statistics.median(b.refill_waits))}" if b.refill_waits else "-"
        ),
        "bytecode": "compiled (.pyc), as in an installed package",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    text = report(cases, install, args.rounds, extra)
    if suites:
        text += "\n## A generated test suite: pgmgr's pytest plugin and the baselines\n\n"
        text += "What runs and how: bench/suite.py. Set-up is each test's fixtures.\n\n" + suites
    print(text)
    if left:
        print(
            f"warning: {len(left)} server(s) were still running and were stopped", file=sys.stderr
        )
    if not args.no_write:
        out = Path(__file__).with_name("RESULTS.md")
        head = "# Benchmark results\n\nWritten by `python bench/run.py` (see bench/README.md).\n\n"
        out.write_text(head + text)
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
