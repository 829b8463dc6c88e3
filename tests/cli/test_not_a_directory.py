"""A directory pgmgr makes for the user under a path with a file (or a FIFO, or a dangling
symlink) on the way is refused in one line that names that component and what it is: not
``mkdir -p``'s "File exists", nor (as root) "another OS user can change it"."""

from __future__ import annotations

import os
from pathlib import Path

from tests.cli.conftest import Work


def _blockers(work: Work) -> dict[str, str]:
    """Components that are not directories, in the root-owned (as root) 0755 work dir."""
    afile, fifo = work.path / "afile", work.path / "fifo"
    afile.write_text("")
    os.mkfifo(fifo)
    return {
        str(afile): "a regular file, not a directory",
        str(fifo): "a FIFO, not a directory",
    }


def test_init_under_a_file_says_it_is_not_a_directory(work: Work) -> None:
    for blocker, what in _blockers(work).items():
        for target in (f"{blocker}/sub", f"{blocker}/sub/data"):
            proc = work.run("init", "-d", target, "-q")
            assert (proc.returncode, proc.stderr) == (
                1, f"Error: cannot make data directory {target}: {blocker} is {what}\n"
            )  # fmt: skip
    assert sorted(p.name for p in work.path.iterdir()) == ["afile", "fifo", "tmp"]


def test_socket_dir_under_a_file_says_it_is_not_a_directory(work: Work, datadir: Path) -> None:
    blockers = _blockers(work)
    dangling = work.path / "dangling"
    dangling.symlink_to(work.path / "nowhere")
    blockers[str(dangling)] = f"a dangling symlink (to {work.path / 'nowhere'})"
    for blocker, what in blockers.items():
        for sockdir in (f"{blocker}/s", f"{blocker}/s/t", blocker):
            proc = work.run("start", "-d", "./data", "-p", "auto", "--socket-dir", sockdir, "-q")
            assert (proc.returncode, proc.stderr) == (
                1, f"Error: cannot use socket directory {sockdir}: {blocker} is {what}\n"
            )  # fmt: skip
    assert not (work.path / "nowhere").exists()


def test_new_directories_of_branch_replica_export_import_under_a_file(
    work: Work, datadir: Path
) -> None:
    """Their parent must exist (no ``mkdir -p``): a file on the way is named as the cause,
    not its missing child ("afile/x does not exist")."""
    blockers = _blockers(work)
    work.ok("start", "-d", "./data", "-p", "auto", "-q")
    work.ok("export", "data", "bundle", "-q")
    for blocker, what in blockers.items():
        for new in (f"{blocker}/x", f"{blocker}/x/y"):
            for args in (
                ("branch", "data", "nb", "-d", new),
                ("replica", "data", "-d", new),
                ("export", "data", new),
                ("import", "bundle", "-d", new),
            ):
                proc = work.run(*args, "-q")
                assert (proc.returncode, proc.stderr) == (
                    1, f"Error: cannot create {new}: {blocker} is {what}\n"
                ), args  # fmt: skip
    listed = work.ok("status", "--json").stdout
    assert '"nb"' not in listed and "replica" not in listed, listed


def test_snapshot_store_that_is_not_a_directory_is_named(work: Work, datadir: Path) -> None:
    """The store beside the data directory (never made through a symlink) says what it is,
    not "not a directory (Not a directory)" for every kind."""
    work.ok("start", "-d", "./data", "-p", "auto", "-q")
    work.ok("stop", "data", "-q")
    store = work.path / ".pgmgr-snapshots"
    for make, what in (
        (lambda: store.write_text(""), "a regular file"),
        (lambda: os.mkfifo(store), "a FIFO"),
        (lambda: store.symlink_to(work.path / "nowhere"), "a symlink"),
    ):
        make()
        proc = work.run("snapshot", "data", "-q")
        assert (proc.returncode, proc.stderr) == (
            1,
            f"Error: refusing to use {store}: it is {what}, not a directory\n"
            "Hint: remove or rename it; pgmgr keeps snapshots there\n",
        )
        store.unlink()


def test_init_and_socket_dir_under_a_symlink_loop(work: Work, datadir: Path) -> None:
    """As root, a loop on the way once ran userfs.others_can_write into a RecursionError
    traceback (os.path.realpath leaves a loop unresolved)."""
    loop = work.path / "loop"
    loop.symlink_to(loop)
    proc = work.run("init", "-d", f"{loop}/x", "-q")
    assert (proc.returncode, proc.stderr) == (
        1, f"Error: cannot make data directory {loop}/x: {loop} is a symlink loop\n"
    )  # fmt: skip
    # The loop itself as the data directory: as root it was refused as "another OS user
    # can change it", as a user as "exists and is not a directory".
    proc = work.run("init", "-d", str(loop), "-q")
    assert (proc.returncode, proc.stderr) == (
        1, f"Error: cannot initialize {loop}: {loop} is a symlink loop\n"
    )  # fmt: skip
    proc = work.run("start", "-d", "./data", "-p", "auto", "--socket-dir", f"{loop}/s", "-q")
    assert (proc.returncode, proc.stderr) == (
        1, f"Error: cannot use socket directory {loop}/s: {loop} is a symlink loop\n"
    )  # fmt: skip
