"""The privilege boundary (pgmgr.core.userfs) and the copy engine (pgmgr.core.copy).

Real files, real users (as root: the ``postgres`` OS user), real fork and setuid. Two mocks,
each said where it is: a filesystem with reflink (ext4 here has none) and one that refuses
copy_file_range; both stand for hardware this machine does not have.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgmgr.core import copy, copydata, userfs
from pgmgr.core.errors import CommandFailed, DatabaseException, PgmgrError
from pgmgr.core.privileges import ServerUser, lookup

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


@pytest.fixture
def other() -> ServerUser:
    return lookup("postgres")


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A 0755 directory under /tmp (pytest's tmp_path is 0700 root's: no other user gets in)."""
    d = Path(tempfile.mkdtemp(prefix="pgmgr-test-userfs-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        import shutil

        shutil.rmtree(d, ignore_errors=True)


def _whoami() -> tuple[int, int, int]:
    mask = os.umask(0)
    os.umask(mask)
    return os.geteuid(), os.getegid(), mask


def _fail_command() -> None:
    raise CommandFailed(["/usr/bin/initdb", "-D", "x"], 1, "initdb: error: boom\n")


def _fail_oserror(path: str) -> None:
    os.rmdir(path)


def _die() -> None:
    os._exit(3)


# --------------------------------------------------------------------------- as_user


def test_as_user_none_runs_here() -> None:
    assert userfs.as_user(None, os.getpid) == os.getpid()


@needs_root
def test_as_user_becomes_the_user(other: ServerUser) -> None:
    uid, gid, mask = userfs.as_user(other, _whoami)
    assert (uid, gid, mask) == (other.uid, other.gid, 0o077)
    assert os.geteuid() == 0  # the caller is unchanged


@needs_root
def test_as_user_keeps_error_types_and_fields(other: ServerUser, shared_tmp: Path) -> None:
    with pytest.raises(CommandFailed) as info:
        userfs.as_user(other, _fail_command)
    assert info.value.returncode == 1 and "boom" in str(info.value)
    assert info.value.argv[0] == "/usr/bin/initdb"
    with pytest.raises(OSError) as oinfo:
        userfs.as_user(other, _fail_oserror, str(shared_tmp / "missing"))
    assert oinfo.value.errno == errno.ENOENT


@needs_root
def test_as_user_cannot_touch_what_the_user_cannot(other: ServerUser, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root only")
    secret.chmod(0o600)
    with pytest.raises(PermissionError):
        userfs.as_user(other, secret.read_text)


@needs_root
def test_as_user_child_dying_is_an_error(other: ServerUser) -> None:
    with pytest.raises(DatabaseException, match="died without answer"):
        userfs.as_user(other, _die)


@needs_root
def test_as_user_passes_fds_opened_by_root(other: ServerUser, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("from root's private dir")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert userfs.as_user(other, os.pread, fd, 100, 0) == b"from root's private dir"
    finally:
        os.close(fd)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may switch users")
def test_as_user_refused_when_not_root() -> None:
    someone = ServerUser("nobody", 65534, 65534, (65534,), "/")
    with pytest.raises(DatabaseException, match="pgmgr is not root"):
        userfs.as_user(someone, os.getpid)


def test_errors_pickle_whatever_their_init() -> None:
    import pickle

    e = CommandFailed(["initdb"], 2, "initdb: error: x")
    e.hint = "a hint"
    back = pickle.loads(pickle.dumps(e))  # noqa: S301 - our own bytes
    assert type(back) is CommandFailed and str(back) == str(e) and back.hint == "a hint"
    assert isinstance(back, PgmgrError) and back.returncode == 2


# --------------------------------------------------------------------------- fd helpers


def test_open_dir_refuses_a_users_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    if os.geteuid() == 0:  # a link root made would be trusted: make it another user's
        os.lchown(tmp_path / "link", 65534, 65534)
    fd = userfs.open_dir(tmp_path / "real")
    os.close(fd)
    with pytest.raises(userfs.UnsafePath, match="'link' on its way is a symlink"):
        userfs.open_dir(tmp_path / "link" / ".")
    with pytest.raises(userfs.UnsafePath):
        userfs.open_dir(tmp_path / "link")


@needs_root
def test_open_dir_follows_roots_own_symlink(shared_tmp: Path) -> None:
    (shared_tmp / "real").mkdir()
    (shared_tmp / "link").symlink_to("real")  # root's link in root's 0755 dir
    fd = userfs.open_dir(shared_tmp / "link")
    try:
        assert os.fstat(fd).st_ino == (shared_tmp / "real").stat().st_ino
    finally:
        os.close(fd)


def test_rmtree_at_never_follows(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "link").symlink_to(outside)
    (tree / "file").write_text("y")
    with userfs.opened_dir(tmp_path) as fd:
        userfs.rmtree_at(fd, "tree")
        userfs.rmtree_at(fd, "tree")  # gone already: fine
        (tmp_path / "top-link").symlink_to(outside)
        userfs.rmtree_at(fd, "top-link")  # the link goes, not its target
    assert not tree.exists() and not (tmp_path / "top-link").exists()
    assert (outside / "keep").read_text() == "x"


def test_read_file_at_never_blocks_or_follows(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "big").write_bytes(b"x" * 100)
    (tmp_path / "ok").write_bytes(b"hello")
    (tmp_path / "link").symlink_to(tmp_path / "ok")
    with userfs.opened_dir(tmp_path) as fd:
        assert userfs.read_file_at(fd, "ok") == b"hello"
        with pytest.raises(userfs.UnsafePath, match="not a regular file"):
            userfs.read_file_at(fd, "fifo")  # returns at once: no writer needed
        with pytest.raises(userfs.UnsafePath, match="larger than"):
            userfs.read_file_at(fd, "big", limit=10)
        with pytest.raises(OSError) as info:
            userfs.read_file_at(fd, "link")
        assert info.value.errno == errno.ELOOP


def test_write_file_at_replaces_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (tmp_path / "conf").symlink_to(victim)
    with userfs.opened_dir(tmp_path) as fd:
        userfs.write_file_at(fd, "conf", b"new", 0o640)
    assert victim.read_text() == "untouched"
    conf = tmp_path / "conf"
    assert not conf.is_symlink() and conf.read_text() == "new"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf", "victim"]


def test_others_can_write(tmp_path: Path, shared_tmp: Path) -> None:
    assert not userfs.others_can_write(tmp_path / "new" / "deeper")
    open_dir = shared_tmp / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    assert userfs.others_can_write(open_dir / "data")
    sticky = shared_tmp / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "mine").mkdir()
    assert not userfs.others_can_write(sticky / "mine")  # like a dir of ours in /tmp
    assert userfs.others_can_write(sticky)


@needs_root
def test_others_can_write_a_users_dir(other: ServerUser, shared_tmp: Path) -> None:
    home = shared_tmp / "home"
    home.mkdir(mode=0o700)
    os.chown(home, other.uid, other.gid)
    assert userfs.others_can_write(home / "pg" / "data")
    (shared_tmp / "link").symlink_to(home)
    os.lchown(shared_tmp / "link", other.uid, other.gid)
    assert userfs.others_can_write(shared_tmp / "link")
    assert pwd.getpwuid(home.stat().st_uid).pw_name == other.name


@needs_root
def test_a_roots_link_to_a_users_link_is_the_users(other: ServerUser, shared_tmp: Path) -> None:
    """Root's link that leads to another user's link: both checks went through it with
    realpath(), so the user's link on the way was never looked at, and the user could
    point it anywhere (another user's data directory, one of root's files) at any time."""
    from pgmgr.core import identity

    home = shared_tmp / "home"
    home.mkdir()
    os.chown(home, other.uid, other.gid)
    victim = shared_tmp / "victim"
    victim.mkdir(mode=0o700)
    (home / "data").symlink_to(victim)  # the user's link, in the user's directory
    os.lchown(home / "data", other.uid, other.gid)
    (shared_tmp / "rel").symlink_to("home/./data")  # root's, relative
    (shared_tmp / "abs").symlink_to(home / "data")  # root's, absolute
    (shared_tmp / "chain").symlink_to("rel")  # root's link to root's link to the user's
    for link in ("rel", "abs", "chain"):
        assert userfs.others_can_write(shared_tmp / link), link
        assert userfs.others_can_write(shared_tmp / link / "server.log"), link
        with pytest.raises(userfs.UnsafePath, match="data is a symlink of another user"):
            identity.check_links(shared_tmp / link / "pg")
    # A chain of root's links padded with "./" ran the walk out of steps, and the rest was
    # then resolved unchecked; the kernel counts links, and so does the check now.
    (shared_tmp / "pad1").symlink_to("./" * 1500 + "pad2")
    (shared_tmp / "pad2").symlink_to("./" * 1500 + "home/data")
    with pytest.raises(userfs.UnsafePath, match="data is a symlink of another user"):
        identity.check_links(shared_tmp / "pad1" / "pg")
    (shared_tmp / "loop1").symlink_to("loop2")
    (shared_tmp / "loop2").symlink_to("loop1")
    # a loop: left as it is, for the kernel to refuse (ELOOP) where it is used
    assert identity.check_links(shared_tmp / "loop1" / "pg") == str(shared_tmp / "loop1" / "pg")
    # root's own links that lead to root's directories stay trusted, and resolved as
    # realpath resolves them
    (shared_tmp / "mine").symlink_to("victim/../victim/./")
    assert not userfs.others_can_write(shared_tmp / "mine" / "x")
    assert identity.check_links(shared_tmp / "mine" / "x") == str(victim / "x")
    assert identity.check_links(shared_tmp / "mine" / ".." / "y") == str(shared_tmp / "y")


# --------------------------------------------------------------------------- copy engine


def _make_tree(root: Path) -> None:
    (root / "base" / "1").mkdir(parents=True)
    (root / "base" / "1" / "1259").write_bytes(os.urandom(300_000))
    (root / "PG_VERSION").write_text("15\n")
    (root / "empty").write_bytes(b"")
    (root / "pg_wal").mkdir(mode=0o700)
    (root / "pg_wal" / "seg").write_bytes(os.urandom(3 << 20))
    (root / "ro").write_text("read only")
    (root / "ro").chmod(0o400)
    (root / "link").symlink_to("/etc/passwd")
    os.mkfifo(root / "fifo")
    (root / "postmaster.pid").write_text("1\n")


def _snapshot(root: Path) -> dict[str, tuple[int, bytes | str]]:
    out: dict[str, tuple[int, bytes | str]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = (0, os.readlink(p))
        elif stat.S_ISREG(st.st_mode):
            out[rel] = (stat.S_IMODE(st.st_mode), p.read_bytes())
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = (stat.S_IMODE(st.st_mode), "dir")
    return out


@pytest.mark.parametrize("method", ["", "copy_file_range", "read"])
def test_copy_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    monkeypatch.setenv(copy.ENV_METHOD, method)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir(mode=0o750)
    _make_tree(src)
    stats = copy.copy_tree(src, dst, exclude={"postmaster.pid"})
    expected = _snapshot(src)
    del expected["postmaster.pid"]
    assert _snapshot(dst) == expected  # fifo skipped, link copied as a link
    assert stat.S_IMODE(dst.stat().st_mode) == 0o750
    assert stats.skipped == 1 and stats.links == 1 and stats.files == 5
    assert stats.bytes == 300_000 + 3 + (3 << 20) + 9
    assert stats.method == (method or stats.method)
    assert stats.method in ("reflink", "copy_file_range", "read")
    with pytest.raises(FileExistsError):
        copy.copy_tree(src, dst)


def test_copy_tree_from_an_fd_into_a_dir_fd(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data")
    (tmp_path / "out").mkdir()
    with userfs.opened_dir(src) as sfd, userfs.opened_dir(tmp_path / "out") as dfd:
        copy.copy_tree(sfd, "copy", dst_dir_fd=dfd)
    assert (tmp_path / "out" / "copy" / "f").read_text() == "data"


def test_reflink_refused_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mock: FICLONE answering EOPNOTSUPP as on ext4, then copy_file_range answering EXDEV
    as across some filesystems; each is tried once per tree, not once per file."""
    import fcntl

    calls = {"ioctl": 0, "cfr": 0}

    def no_reflink(fd: int, req: int, arg: int) -> int:
        calls["ioctl"] += 1
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    def no_cfr(*args: object, **kwargs: object) -> int:
        calls["cfr"] += 1
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(fcntl, "ioctl", no_reflink)
    monkeypatch.setattr(os, "copy_file_range", no_cfr)
    src = tmp_path / "src"
    src.mkdir()
    _make_tree(src)
    stats = copy.copy_tree(src, tmp_path / "dst")
    assert stats.method == "read" and calls == {"ioctl": 1, "cfr": 1}
    assert (tmp_path / "dst" / "pg_wal" / "seg").read_bytes() == (
        src / "pg_wal" / "seg"
    ).read_bytes()


def test_reflink_used_when_the_filesystem_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mock: a filesystem with reflink (this ext4 has none): FICLONE does the copy."""
    import fcntl

    def clone(fout: int, req: int, fin: int) -> int:
        assert req == copy.FICLONE
        os.lseek(fin, 0, os.SEEK_SET)
        while chunk := os.read(fin, 1 << 20):
            os.write(fout, chunk)
        return 0

    monkeypatch.setattr(fcntl, "ioctl", clone)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"z" * 5000)
    stats = copy.copy_tree(src, tmp_path / "dst")
    assert stats.method == "reflink" and (tmp_path / "dst" / "f").read_bytes() == b"z" * 5000


def test_copy_method_env_is_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pgmgr.core.errors import UsageError

    monkeypatch.setenv(copy.ENV_METHOD, "teleport")
    with pytest.raises(UsageError, match="PGMGR_COPY_METHOD"):
        copy.copy_tree(tmp_path, tmp_path / "x")


@needs_root
def test_copy_as_user_owns_the_copy(other: ServerUser, shared_tmp: Path, tmp_path: Path) -> None:
    """Root opens its private source, the copy runs as the user into the user's dir."""
    src = tmp_path / "src"  # under root's 0700 pytest dir: the user cannot reach it by path
    src.mkdir()
    _make_tree(src)
    for p in [src, *src.rglob("*")]:  # the user's own template, in root's private cache
        os.lchown(p, other.uid, other.gid)
    target = shared_tmp / "userdir"
    target.mkdir()
    os.chown(target, other.uid, other.gid)
    with userfs.opened_dir(src) as sfd:
        stats = userfs.as_user(other, copy.copy_tree, sfd, str(target / "copy"))
    assert stats.files == 6
    owners = {p.lstat().st_uid for p in (target / "copy").rglob("*")}
    assert owners == {other.uid}


def test_large_files_copy_in_parallel_ranges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(copydata, "PARALLEL_MIN", 1 << 20)
    monkeypatch.setenv(copy.ENV_METHOD, "copy_file_range")
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom((5 << 20) + 12345)  # not a multiple of the thread count
    (src / "seg").write_bytes(data)
    stats = copy.copy_tree(src, tmp_path / "dst")
    assert stats.method == "copy_file_range"
    assert (tmp_path / "dst" / "seg").read_bytes() == data


@pytest.mark.parametrize("method", ["", "copy_file_range", "read"])
def test_flushed_copy_is_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """``flush=True`` copies in chunks and starts each chunk's writeback: the same bytes,
    in every method, for files below the flush threshold, across chunks and in parallel
    ranges (the chunk and thresholds made small so that a few MB cross them all)."""
    monkeypatch.setenv(copy.ENV_METHOD, method)
    monkeypatch.setattr(copydata, "_CHUNK", 1 << 20)
    monkeypatch.setattr(copydata, "PARALLEL_MIN", 4 << 20)
    flushed: list[tuple[int, int]] = []
    real = copydata.writeback

    def spy() -> copy.Flush | None:
        fn = real()
        assert fn is not None

        def flush(fd: int, off: int, n: int) -> None:
            flushed.append((off, n))
            fn(fd, off, n)

        return flush

    monkeypatch.setattr(copydata, "writeback", spy)
    src = tmp_path / "src"
    src.mkdir()
    files = {"small": os.urandom(1000), "mid": os.urandom((3 << 20) + 7),
             "big": os.urandom((6 << 20) + 12345)}  # fmt: skip
    for name, data in files.items():
        (src / name).write_bytes(data)
    stats = copy.copy_tree(src, tmp_path / "dst", flush=True)
    for name, data in files.items():
        assert (tmp_path / "dst" / name).read_bytes() == data
    if stats.method != "reflink":  # a clone moves no data: nothing to write back
        assert sum(n for _, n in flushed) >= len(files["big"]) + (3 << 20)


def test_link_dest_links_only_the_unchanged(tmp_path: Path) -> None:
    """rsync's --link-dest: a file the callback calls unchanged is hard-linked from
    link_dest; a changed one, one missing there, a symlink or a directory in its place
    are not (the file is copied from src)."""
    src, ref = tmp_path / "src", tmp_path / "ref"
    for top in (src, ref):
        (top / "sub").mkdir(parents=True)
    for rel in ("same", "sub/same", "changed", "gone", "islink", "isdir"):
        (src / rel).write_text(f"src {rel}")
    (ref / "same").write_text("ref same")
    (ref / "sub" / "same").write_text("ref sub/same")
    (ref / "changed").write_text("ref changed")
    (ref / "islink").symlink_to(ref / "same")
    (ref / "isdir").mkdir()
    asked: list[str] = []

    def unchanged(rel: str, st: os.stat_result) -> bool:
        asked.append(rel)
        return rel != "changed"

    with userfs.opened_dir(ref) as lfd:
        stats = copy.copy_tree(src, tmp_path / "dst", link_dest=lfd, unchanged=unchanged)
    dst = tmp_path / "dst"
    assert sorted(asked) == ["changed", "same", "sub/same"]
    assert (dst / "same").stat().st_ino == (ref / "same").stat().st_ino
    assert (dst / "sub" / "same").read_text() == "ref sub/same"
    for rel in ("changed", "gone", "islink", "isdir"):
        assert not (dst / rel).is_symlink() and (dst / rel).read_text() == f"src {rel}"
    assert stats.linked == 2 and stats.files == 6
    assert stats.linked_bytes == len("ref same") + len("ref sub/same")


@pytest.mark.parametrize("how", ["renamed over", "written", "removed"])
def test_link_dest_live_file_changed_before_the_link(tmp_path: Path, how: str) -> None:
    """link_dest may be live (a restore stages while the server runs): a file renamed
    over the checked name, or written, between the check and the link must not be the
    one linked (it was: the new file, never checked, went into the copy); one removed
    meanwhile is copied (the copy failed: ENOENT). The callback runs in that very
    window. ``linked`` gets the stamps of what was linked."""
    src, ref = tmp_path / "src", tmp_path / "ref"
    src.mkdir()
    ref.mkdir()
    for rel in ("f", "g"):
        (src / rel).write_text(f"src {rel}")
        (ref / rel).write_text(f"ref {rel}")

    def unchanged(rel: str, st: os.stat_result) -> bool:
        if rel == "f" and how == "renamed over":
            (ref / "new").write_text("new f")
            os.rename(ref / "new", ref / "f")
        elif rel == "f" and how == "removed":
            (ref / "f").unlink()
        elif rel == "f":
            with open(ref / "f", "a") as fh:
                fh.write(" and more")
        return True

    linked: dict[str, tuple[int, int, int, int]] = {}
    with userfs.opened_dir(ref) as lfd:
        stats = copy.copy_tree(
            src, tmp_path / "dst", link_dest=lfd, unchanged=unchanged, linked=linked
        )
    dst = tmp_path / "dst"
    assert (dst / "f").read_text() == "src f"
    assert (dst / "f").stat().st_nlink == 1
    assert (dst / "g").stat().st_ino == (ref / "g").stat().st_ino
    assert stats.linked == 1 and stats.files == 2
    st = (dst / "g").stat()
    assert linked == {"g": (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)}


def test_copy_reads_the_umask_without_changing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """copy_tree set the umask to 077 and back to learn it: meanwhile, files another
    thread of a library caller created got 077. It reads /proc/self/status instead (a
    spy on os.umask: any call fails the test), and still gives new files the modes of
    the copied ones."""
    old = os.umask(0o027)
    try:
        calls: list[int] = []
        monkeypatch.setattr(os, "umask", lambda m: calls.append(m) or 0o022)
        assert copy.current_umask() == 0o027
        src = tmp_path / "src"
        src.mkdir()
        (src / "f").write_bytes(b"x")
        (src / "f").chmod(0o644)  # bits the umask strips: copy_tree must put them back
        copy.copy_tree(src, tmp_path / "dst")
        assert calls == []
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "dst" / "f").stat().st_mode) == 0o644


_NO_SECRETS = """
import os, sys
from pgmgr.core import userfs
from pgmgr.core.privileges import lookup

def write(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        userfs.write_file_at(fd, "f", b"x")
    finally:
        os.close(fd)

userfs.as_user(lookup("postgres"), write, sys.argv[1])
print(sorted({"secrets", "hashlib"} & set(sys.modules)))
"""


@needs_root
def test_as_user_imports_neither_secrets_nor_hashlib(shared_tmp: Path, other: ServerUser) -> None:
    """Each command as root paid ~3 ms (hashlib, OpenSSL) at its first as_user, which
    preloaded ``secrets`` for the child's random names: they are ``os.urandom``'s now."""
    import subprocess
    import sys

    os.chown(shared_tmp, other.uid, other.gid)
    proc = subprocess.run([sys.executable, "-c", _NO_SECRETS, str(shared_tmp)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    assert (shared_tmp / "f").read_bytes() == b"x"
