"""The instance registry under stress, through a real ``pgmgr`` and real servers: corrupt
record files (issue 11.7), and names allocated atomically by concurrent inits (11.2)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pgmgr.core import process
from tests.helpers import kill_postmasters
from tests.reliability.conftest import InstFactory, pgmgr, pgmgr_argv

#: Record files no JSON parser or type check should survive without help.
GARBAGE: dict[str, bytes] = {
    "not-utf8": b'{"name": "bad", "datadir": "/tmp/\xff\xfe"}',
    "deep": b"[" * 100_000,
    "nul-in-datadir": json.dumps({"datadir": "/tmp/a\u0000b"}).encode(),
    "wrong-types": json.dumps({"datadir": 7, "port": "x", "settings": []}).encode(),
    "relative-datadir": json.dumps({"datadir": "data"}).encode(),
    "empty": b"",
}


def break_record(state: Path, name: str, garbage: bytes) -> Path:
    """Replace the record of ``name`` with ``garbage`` (merged into the real record when
    it is a JSON object, so that only the bad fields are bad)."""
    path = state / "instances" / f"{name}.json"
    try:
        extra = json.loads(garbage)
    except (ValueError, RecursionError):
        extra = None
    if isinstance(extra, dict):
        data = json.loads(path.read_text())
        data.update(extra)
        garbage = json.dumps(data).encode()
    path.write_bytes(garbage)
    return path


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_corrupt_record_never_tracebacks(
    cluster: InstFactory, rel_isolation: Path, kind: str
) -> None:
    good, bad = cluster("good"), cluster("bad")
    assert good.start("--port", "auto").returncode == 0
    record = break_record(rel_isolation, "bad", GARBAGE[kind])
    try:
        listing = pgmgr("status", "--json")  # pgmgr() fails the test on any traceback
        assert listing.returncode == 0, str(listing)
        rows = {r["name"]: r for r in listing.json()}
        assert rows["good"]["state"] == "running", str(listing)
        assert rows["bad"]["state"] == "broken" and rows["bad"]["detail"], str(listing)
        assert rows["bad"]["datadir"] is None
        table = pgmgr("status")
        assert table.returncode == 0 and "broken" in table.stdout, str(table)
        assert "good" in table.stdout and "running" in table.stdout, str(table)

        destroy = pgmgr("destroy", "bad", "--yes")
        assert destroy.returncode != 0 and len(destroy.errors()) == 1, str(destroy)
        assert bad.datadir.is_dir() and record.exists()

        stop = pgmgr("stop", "--all")
        assert stop.returncode == 0, str(stop)
        assert "'bad': skipped" in stop.stderr, str(stop)
        assert good.pid() is None

        forget = pgmgr("forget", "bad")
        assert forget.returncode == 0, str(forget)
        assert not record.exists() and bad.datadir.is_dir()
        after = pgmgr("status", "--json")
        assert [r["name"] for r in after.json()] == ["good"], str(after)
    finally:
        pgmgr("stop", "good")


def test_a_record_is_named_by_its_file(cluster: InstFactory, rel_isolation: Path) -> None:
    """A record ``a.json`` whose ``name`` field says ``b`` is ``a``: ``destroy a`` removes
    a's data and a.json, and leaves b (record and data) alone."""
    a, b = cluster("a"), cluster("b")
    rec_a = rel_isolation / "instances" / "a.json"
    data = json.loads(rec_a.read_text())
    data["name"] = "b"
    rec_a.write_text(json.dumps(data))
    listing = pgmgr("status", "--json")
    assert sorted(r["name"] for r in listing.json()) == ["a", "b"], str(listing)
    run = pgmgr("destroy", "a", "--yes")
    assert run.returncode == 0, str(run)
    assert not rec_a.exists() and not a.datadir.exists()
    assert (rel_isolation / "instances" / "b.json").exists() and b.datadir.is_dir()
    assert json.loads((rel_isolation / "instances" / "b.json").read_text())["name"] == "b"


def test_concurrent_inits_get_distinct_names(work: Path, rel_isolation: Path) -> None:
    """Ten ``pgmgr start --init -d <work>/pN/data -p auto`` at once: ten names, ten records,
    ten servers, and ``stop --all`` stops all ten (before: all named 'data', one record)."""
    dirs = [work / f"p{i}" / "data" for i in range(10)]
    procs = [
        subprocess.Popen(
            pgmgr_argv("start", "--init", "-d", str(d), "-p", "auto", "--json"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for d in dirs
    ]
    try:
        outs = [p.communicate(timeout=180) for p in procs]
        for p, (_out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0 and "Traceback" not in err, err
        names = [json.loads(out)["name"] for out, _ in outs]
        assert len(set(names)) == 10, names
        records = sorted(f.stem for f in (rel_isolation / "instances").glob("*.json"))
        assert records == sorted(names)
        by_dir = {
            json.loads(f.read_text())["datadir"]
            for f in (rel_isolation / "instances").glob("*.json")
        }
        assert by_dir == {str(d) for d in dirs}
        pids = [pf.pid for d in dirs if (pf := process.PidFile.read(d)) is not None]
        assert len(pids) == 10
        stop = pgmgr("stop", "--all", "--json", timeout=120)
        assert stop.returncode == 0, str(stop)
        assert sum(r["was_running"] for r in stop.json()) == 10, str(stop)
        assert all(process.running_postmaster(d) is None for d in dirs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        left = [pf.pid for d in dirs if (pf := process.running_postmaster(d)) is not None]
        kill_postmasters(left)
