"""As root, ``pgmgr import`` restores each archive from a private copy given to the server
user (pg_restore, run as that user, reads what the archive names: see
``importer.readable_archive``). That copy is made where the server user can reach it, and
removed through file descriptors, as the rest of pgmgr removes what a server user owns
(:mod:`pgmgr.core.ownerrm`), on real servers."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import error_lines, pgmgr_argv
from tests.ops.conftest import Instance
from tests.pause import Paused

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the copy is made as root only")


@pytest.fixture
def hooks(ops_dir: Path) -> Path:
    path = ops_dir / "hooks"
    path.mkdir()
    path.chmod(0o777)
    return path


@pytest.fixture
def bundle(fresh: Instance, ops_dir: Path) -> Path:
    path = ops_dir / "bundle"
    assert fresh.pgmgr("export", "fresh", str(path), "-q").returncode == 0
    return path


def test_a_copy_swapped_by_the_server_user_is_removed_not_what_took_its_name(
    fresh: Instance, ops_dir: Path, hooks: Path, bundle: Path
) -> None:
    """In /tmp (sticky) the server user owns the copy and may rename it: it moves it
    away and makes a directory of its own at its name before the removal. The removal,
    by path as that user, took the directory at the name and left the copy of the
    bundle where it went; through the fd of the directory it made, it empties the copy
    and leaves the other one alone."""
    target = ops_dir / "imp"
    args = ("import", str(bundle), "-d", str(target), "-q")
    moved = None
    try:
        with Paused(hooks, "import-archive-remove", *args, env={"TMPDIR": "/tmp"}) as run:
            run.reached()
            pid = (hooks / "import-archive-remove.reached").read_text()
            [top] = glob.glob(f"/tmp/pgmgr-imp-{pid}-*")
            moved = f"{top}.moved"
            swap = f"mv {top} {moved} && mkdir {top} && echo theirs > {top}/keep"
            subprocess.run(["runuser", "-u", "postgres", "--", "sh", "-c", swap], check=True)
            done = run.go()
        assert done.returncode == 0, done.stderr
        assert Path(top, "keep").read_text() == "theirs\n"
        assert os.listdir(moved) == []  # the archive's copy: gone, wherever it went
    finally:
        if moved is not None:
            shutil.rmtree(moved, ignore_errors=True)
            shutil.rmtree(moved.removesuffix(".moved"), ignore_errors=True)


def test_an_import_with_a_private_temp_dir_of_roots(
    fresh: Instance, ops_dir: Path, bundle: Path
) -> None:
    """``TMPDIR`` is root's own and private (0700, as pam_tmpdir's /tmp/user/0): the
    copy made there could not be opened by pg_restore as the server user ("Permission
    denied", the import undone), and its removal as that user by path could not reach
    it (left). It is made in /tmp then, and removed."""
    private = ops_dir / "private"
    private.mkdir(mode=0o700)
    proc = subprocess.Popen(
        pgmgr_argv("import", str(bundle), "-d", str(ops_dir / "imp"), "-q"),
        env={**os.environ, "TMPDIR": str(private)},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in err, error_lines(err)
    assert os.listdir(private) == []
    # Its copy, named by its pid, is gone; not every pgmgr-imp-* of /tmp: the import of a
    # test on another xdist worker may have its own there now.
    assert glob.glob(f"/tmp/pgmgr-imp-{proc.pid}-*") == []


def test_a_bundle_entry_another_user_owns_is_refused(
    fresh: Instance, ops_dir: Path, hooks: Path, bundle: Path
) -> None:
    """The bundle's own directory is root's, but a directory in it is the server user's
    (the manifest, recomputed, names ``sub/g.sql`` as the globals). That user swapped
    ``g.sql`` for a symlink to a file only root can read after the checksums were
    checked, and root fed that file to the new instance (its SQL ran there: the role it
    makes existed). Such a bundle is refused before anything is made."""
    import json
    import time

    (bundle / "sub").mkdir()
    (bundle / "globals.sql").rename(bundle / "sub" / "g.sql")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["globals"] = "sub/g.sql"
    manifest["files"]["sub/g.sql"] = manifest["files"].pop("globals.sql")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    bundle.chmod(0o755)
    shutil.chown(bundle / "sub", "postgres")
    role = "leaked_from_roots_file"
    secret = ops_dir / "secret"  # root's, 0600
    secret.write_text(f"CREATE ROLE {role};\n")
    secret.chmod(0o600)
    target = ops_dir / "imp"
    args = ("import", str(bundle), "-d", str(target), "--name", "imp", "-q")
    with Paused(hooks, "import-registered", *args) as run:
        while not (hooks / "import-registered.reached").exists() and run.proc.poll() is None:
            time.sleep(0.01)
        if run.proc.poll() is None:  # past the checks: the server user swaps the file
            swap = f"cd {bundle}/sub && mv g.sql g.old && ln -s {secret} g.sql"
            subprocess.run(["runuser", "-u", "postgres", "--", "sh", "-c", swap], check=True)
        done = run.go()
    if target.exists():
        query = "SELECT 1 FROM pg_roles WHERE rolname = 'leaked_from_roots_file'"
        leaked = fresh.pgmgr("psql", "imp", "--", "-Atc", query)
        assert leaked.stdout.strip() != "1", "root's file ran in the new instance"
    assert done.returncode == 1, done.stdout
    assert error_lines(done.stderr)[0] == (
        f"Error: refusing to import from {bundle} as root: another user can write sub in it "
        "(nothing was created)"
    )
    assert not target.exists() and "imp" not in fresh.registered()
