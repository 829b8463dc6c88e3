"""Template data directories: initdb once per (binaries, initdb options), copy afterwards.

``initdb`` costs ~600 ms on the reference machine; copying an initialized data directory
costs ~50 ms. So the first :func:`init_from_template` for a key runs initdb (trust
authentication, no password) straight into the new data directory, keeps a copy of it under
``<cache dir>/templates/<key>/`` and then applies the per-instance parts; every later init
with the same key copies the template and applies the same per-instance parts:

- ``pg_hba.conf``: the ``host`` lines get the instance's method (``scram-sha-256`` unless
  ``trust``); ``local`` lines stay ``trust``, exactly as pgmgr's initdb command line does;
- the superuser's password: set over the private unix socket on the first start
  (``Instance.password_pending``), so TCP logins are impossible until then;
- ownership (as root, the server user's) and modes (those initdb gave the template).

The key covers the version, the bin dir, the size and mtime of ``postgres`` and ``initdb``,
and the initdb options, so new binaries get a new template (and the old one is pruned).
Copies share the template's database system identifier: see docs/speed.md.

Concurrency: one lock file per key. Copiers hold it shared; the builder holds it exclusive,
builds under a temporary name and renames it into place, so nobody sees a half-made template.
Durability: a copy is not on disk until synced, so the new data directory (and a new
template) is flushed with ``syncfs(2)`` (one call, ~25 ms here, against ~500 ms for an
fsync per file) unless the caller asked for ``--no-sync``.

Spares: creating ~1000 files is most of a copy's cost, so once a template has been copied,
a background process (``python -m pgmgr.core.template refill``) keeps one more synced copy
of it, ``<key>.spare``, owned by the server user. The next init claims it with one
``rename(2)`` (atomic: two inits can never both get it) and refills it after returning.
Anything wrong with the spare means the normal copy. See docs/speed.md.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pgmgr.core import paths, server
from pgmgr.core.copy import sync_fs
from pgmgr.core.errors import Busy, DatabaseException, UsageError
from pgmgr.core.privileges import ServerUser
from pgmgr.core.server import InitOptions
from pgmgr.core.versions import Installation, version_key

FORMAT = 1  # bump when what a template holds changes
ENV_DISABLE = "PGMGR_NO_TEMPLATE"
#: initdb < 14 also edits password_encryption for scram; templates are only used from 14 on.
MIN_MAJOR = 14
LOCK_TIMEOUT = 300.0
_FLAGS = frozenset(
    {"-k", "--data-checksums", "--no-data-checksums", "-N", "--no-sync", "-g"}
    | {"--allow-group-access", "--no-instructions", "--no-locale", "--sync-method=fsync"}
)
_VALUED = frozenset(
    {"-E", "--encoding", "-c", "--set", "-T", "--text-search-config", "--wal-segsize"}
    | {"--locale", "--lc-collate", "--lc-ctype", "--lc-messages", "--lc-monetary"}
    | {"--lc-numeric", "--lc-time", "--locale-provider", "--icu-locale", "--icu-rules"}
    | {"--builtin-locale"}
)
_NO_SYNC = frozenset({"-N", "--no-sync"})
SPARE = ".spare"  # <templates>/<key>.spare: a synced copy ready to be renamed into place
REFILL_LOCK = ".refill.lock"  # held by the refill process while it makes a spare
#: type, database, user, address, then the method (initdb writes no mask column).
_HOST_LINE = re.compile(r"^(host(?:ssl|nossl)?[ \t]+\S+[ \t]+\S+[ \t]+\S+[ \t]+)\S+", re.M)


def templates_dir() -> Path:
    return paths.cache_dir() / "templates"


# --------------------------------------------------------------------------- pure parts


def template_args(extra: Sequence[str]) -> list[str] | None:
    """The initdb arguments that shape a template (sync flags dropped), or None when some
    argument is not known to be safe to share (``--waldir``, ``--pwfile``, ``-A`` ...)."""
    kept: list[str] = []
    args = list(extra)
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg.split("=", 1)[0]
        if arg in _NO_SYNC:
            pass
        elif arg in _FLAGS or (name in _VALUED and "=" in arg):
            kept.append(arg)
        elif arg in _VALUED and i + 1 < len(args):
            kept += [arg, args[i + 1]]
            i += 1
        elif arg[:2] in ("-E", "-c", "-T") and len(arg) > 2:
            kept.append(arg)
        else:
            return None
        i += 1
    return kept


def disabled_by_env() -> bool:
    """Whether ``PGMGR_NO_TEMPLATE`` turns templates off: ``1``/``true``/``yes``/``on`` do;
    unset, empty, ``0``/``false``/``no``/``off`` do not (any case, spaces ignored). The one
    parser of the variable: the CLI's ``--no-template`` does not read it.

    :raises UsageError: any other value (rather than guess which was meant).
    """
    raw = os.environ.get(ENV_DISABLE, "")
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise UsageError(
        f"invalid {ENV_DISABLE}={raw!r}: use 1, true, yes or on (initdb, no template) or "
        "0, false, no, off or empty (templates)"
    )


def why_not(install: Installation, opts: InitOptions) -> str | None:
    """Why a template cannot serve this init, or None when it can.

    :raises UsageError: ``PGMGR_NO_TEMPLATE`` holds a value that is not a yes or a no.
    """
    if disabled_by_env():
        return f"{ENV_DISABLE} is set"
    if version_key(install.major) < (MIN_MAJOR,):
        return f"PostgreSQL {install.major} is older than {MIN_MAJOR}"
    if template_args(opts.extra) is None:
        return "an initdb argument is not known to be safe to share"
    return None


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def key_fields(install: Installation, opts: InitOptions) -> dict[str, Any]:
    """What a template depends on (stored next to it, shown by ``pgmgr cache list``).

    :raises OSError: the binaries cannot be read.
    """
    return {
        "format": FORMAT,
        "version": install.version,
        "bindir": os.path.realpath(install.bindir),
        "postgres": _stamp(install.bin("postgres")),
        "initdb": _stamp(install.bin("initdb")),
        "superuser": opts.superuser,
        "encoding": opts.encoding,
        "locale": opts.locale,
        "initdb_args": template_args(opts.extra) or [],
    }


def key_of(fields: dict[str, Any]) -> str:
    blob = json.dumps(fields, sort_keys=True).encode()
    return f"pg{fields['version']}-" + hashlib.sha256(blob).hexdigest()[:16]


def hba_for(text: str, auth: str) -> str:
    """``pg_hba.conf`` with the method of every ``host*`` line set to ``auth``."""
    return _HOST_LINE.sub(lambda m: m.group(1) + auth, text)


# --------------------------------------------------------------------------- copy and sync


def copy_tree(src: Path, dst: Path, user: ServerUser | None) -> None:
    """Copy a data directory into ``dst`` (absent or empty): modes kept, owned by ``user``
    when given. File data moves with ``copy_file_range`` (in-kernel; ext4 here has no
    reflink), falling back to a plain copy across filesystems that refuse it."""
    dst.mkdir(mode=0o700, exist_ok=True)
    os.chmod(dst, src.stat().st_mode & 0o7777)
    _chown(dst, user)
    _copy_dir(src, dst, user)


def _chown(path: Path | int, user: ServerUser | None) -> None:
    if user is not None:
        if isinstance(path, int):
            os.fchown(path, user.uid, user.gid)
        else:
            os.chown(path, user.uid, user.gid, follow_symlinks=False)


def _copy_dir(src: Path, dst: Path, user: ServerUser | None) -> None:
    with os.scandir(src) as entries:
        for entry in entries:
            target = dst / entry.name
            st = entry.stat(follow_symlinks=False)
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
                _chown(target, user)
            elif entry.is_dir(follow_symlinks=False):
                target.mkdir(mode=0o700)
                os.chmod(target, st.st_mode & 0o7777)
                _chown(target, user)
                _copy_dir(Path(entry.path), target, user)
            else:
                _copy_file(entry.path, target, st.st_size, st.st_mode & 0o7777, user)


def _copy_file(src: str, dst: Path, size: int, mode: int, user: ServerUser | None) -> None:
    fin = os.open(src, os.O_RDONLY)
    try:
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            left = size
            try:
                while left > 0:
                    n = os.copy_file_range(fin, fout, left)
                    if n == 0:
                        break
                    left -= n
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                os.lseek(fin, size - left, os.SEEK_SET)
                with open(fin, "rb", closefd=False) as r, open(fout, "wb", closefd=False) as w:
                    shutil.copyfileobj(r, w)
            os.fchmod(fout, mode)
            _chown(fout, user)
        finally:
            os.close(fout)
    finally:
        os.close(fin)


# --------------------------------------------------------------------------- locking


@contextlib.contextmanager
def _locked(
    key: str, *, exclusive: bool, timeout: float = LOCK_TIMEOUT, root: Path | None = None
) -> Iterator[bool]:
    """Hold ``<templates>/<key>.lock``; yields False when ``timeout`` is 0 and it is busy."""
    root = paths.ensure_private_dir(root or templates_dir())
    with paths.flocked(
        root / f"{key}.lock", exclusive=exclusive, timeout=timeout, busy=f"template {key} is busy"
    ) as held:
        yield held


# --------------------------------------------------------------------------- init


def init_from_template(
    install: Installation, datadir: Path, opts: InitOptions, *, user: ServerUser | None
) -> bool:
    """Initialize ``datadir`` (absent or empty) from the template for ``opts``, building the
    template first if there is none. Authentication is set for ``opts.auth``; no password
    is set (the caller marks it pending for the first start).

    :returns: False, having touched nothing, when no template can serve ``opts``.
    :raises UsageError: ``PGMGR_NO_TEMPLATE`` is neither a yes nor a no (nothing touched).
    :raises DatabaseException: ``datadir`` is not empty.
    :raises CommandFailed: initdb failed while building the template.
    """
    if why_not(install, opts) is not None:
        return False
    fields = key_fields(install, opts)
    key = key_of(fields)
    tpl = templates_dir() / key
    created = not datadir.exists()
    if not created and any(datadir.iterdir()):
        raise DatabaseException(f"{datadir} is not empty and is not a PostgreSQL data directory")
    made_parents: list[Path] = []
    built = False
    try:
        make_parents(datadir, made_parents)
        claimed = _claim(key, datadir, opts, user, created, made_parents)
        if not claimed:
            copied = False
            with _locked(key, exclusive=False):
                if server.is_datadir(tpl):
                    copy_tree(tpl, datadir, user)
                    copied = True
            if not copied:
                with _locked(key, exclusive=True):
                    if server.is_datadir(tpl):
                        copy_tree(tpl, datadir, user)
                    else:
                        _build(install, datadir, opts, user, key, fields)
                        built = True
            hba = datadir / "pg_hba.conf"
            hba.write_text(hba_for(hba.read_text(), opts.auth))
            if not opts.no_sync:
                sync_fs(datadir)
    except BaseException:
        server.remove_partial(datadir, created)
        remove_made(made_parents)
        raise
    if not built:  # a key used once costs no spare (and a build leaves no time to save)
        _maybe_refill(key, datadir, user)
    return True


# --------------------------------------------------------------------------- spares


def spare_path(key: str, root: Path | None = None) -> Path:
    return (root or templates_dir()) / f"{key}{SPARE}"


def _owner(user: ServerUser | None) -> tuple[int, int]:
    return (user.uid, user.gid) if user is not None else (os.geteuid(), os.getegid())


def _spare_ready(spare: Path, owner: tuple[int, int] | None) -> os.stat_result | None:
    """The spare's stat when it is a real directory holding a cluster (``PG_VERSION`` and
    ``global/pg_control``) owned by ``owner`` (any owner if None); else None."""
    try:
        st = os.lstat(spare)
        if not stat.S_ISDIR(st.st_mode):
            return None
        if owner is not None and (st.st_uid, st.st_gid) != owner:
            return None
        if not (spare / "PG_VERSION").is_file() or not (spare / "global/pg_control").is_file():
            return None
    except OSError:
        return None
    return st


def _claim(
    key: str,
    datadir: Path,
    opts: InitOptions,
    user: ServerUser | None,
    created: bool,
    made: list[Path],
) -> bool:
    """Move the key's spare into ``datadir`` (absent, or an empty real directory on the same
    filesystem, which the rename replaces) and apply the per-instance parts.

    The spare is first renamed to a private name in the cache (the atomic claim: a second
    init gets ENOENT), gets its ``pg_hba.conf`` there, and only then is renamed to
    ``datadir``, so the data directory never appears with the template's ``trust`` lines.
    Each step is fsynced (file, then the directories of both renames) unless ``no_sync``:
    the spare's contents were synced before it was published.

    :returns: False, with ``datadir`` as it was (or emptied, if the failure came after the
        last rename), when there is no usable spare or anything fails.
    """
    root = templates_dir()
    spare = spare_path(key, root)
    claim = root / f".{key}.tmp-claim-{os.getpid()}"
    st = _spare_ready(spare, _owner(user))
    if st is None:
        return False
    placed = False
    try:
        try:
            dst = os.lstat(datadir)
        except FileNotFoundError:
            dst = os.stat(datadir.parent)  # make_parents made it: same filesystem?
        else:
            if not stat.S_ISDIR(dst.st_mode):  # a symlink to an empty dir stays: copy into it
                return False
        if dst.st_dev != st.st_dev:  # another filesystem, or a mount point: copy
            return False
        with _locked(key, exclusive=False, timeout=0, root=root) as got:
            if not got:  # being cleared or rebuilt
                return False
            try:
                os.rename(spare, claim)
            except OSError:  # ENOENT: another init claimed it first
                return False
        sync = not opts.no_sync
        hba = claim / "pg_hba.conf"
        new = claim / "pg_hba.conf.pgmgr-new"
        hba_st = hba.stat()
        fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL, hba_st.st_mode & 0o7777)
        try:
            os.write(fd, hba_for(hba.read_text(), opts.auth).encode())
            os.fchmod(fd, hba_st.st_mode & 0o7777)
            os.fchown(fd, hba_st.st_uid, hba_st.st_gid)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(new, hba)
        if sync:
            _fsync_dir(claim)
        os.rename(claim, datadir)  # EBUSY/ENOTEMPTY/EXDEV: the user's dir stays as it was
        placed = True
        if sync:
            for d in {datadir.parent, root, *(m.parent for m in made)}:
                _fsync_dir(d)
        return True
    except Exception:
        if placed:
            server.remove_partial(datadir, created)
        else:
            shutil.rmtree(claim, ignore_errors=True)
        return False
    except BaseException:
        shutil.rmtree(claim, ignore_errors=True)
        raise


#: Refill processes this process started, reaped by later calls and by wait_refills().
_refills: list[subprocess.Popen[bytes]] = []


def _maybe_refill(key: str, datadir: Path, user: ServerUser | None) -> None:
    """Start a background refill of the key's spare unless one is ready, one is being made,
    or ``datadir`` is on another filesystem than the cache (a spare could not be renamed
    there). Never raises: the spare is an optimisation."""
    try:
        root = templates_dir()
        if os.stat(datadir).st_dev != os.stat(root).st_dev:
            return
        if _spare_ready(spare_path(key, root), _owner(user)) is not None:
            return
        start_refill(key, user, root)
    except Exception:  # noqa: S110 - the next init copies, as without spares
        pass


def start_refill(key: str, user: ServerUser | None, root: Path | None = None) -> bool:
    """Spawn ``python -m pgmgr.core.template refill`` for ``key`` (detached, own session,
    no shell, stdio to /dev/null). This process takes ``<key>.refill.lock`` before
    spawning and hands it over (the child inherits the open lock), so the lock is held
    from before this returns until the refill ends: :func:`wait_refills` can wait on it.

    :returns: False when a refill is already under way (the lock is taken).
    """
    for done in [p for p in _refills if p.poll() is not None]:
        _refills.remove(done)
    root = root or templates_dir()
    fd = os.open(root / f"{key}{REFILL_LOCK}", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        uid, gid = _owner(user)
        env = dict(os.environ)
        here = str(Path(__file__).resolve().parents[2])  # the same pgmgr in the child
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        argv = [sys.executable, "-m", "pgmgr.core.template", "refill", str(root), key]
        _refills.append(
            subprocess.Popen(  # our own interpreter and module, no shell
                [*argv, str(uid), str(gid), str(fd)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=(fd,),
                cwd="/",
                env=env,
            )
        )
        return True
    finally:
        os.close(fd)  # the child's copy keeps the lock


def refill(root: Path, key: str, owner: tuple[int, int]) -> bool:
    """Make ``<key>.spare`` from template ``key``: copy to ``.<key>.tmp-spare-<pid>``
    (owned by ``owner``), ``syncfs``, rename into place, fsync the directory. Holds the
    template's lock shared throughout (so ``cache clear`` and a rebuild wait for it, as
    for a copy); the caller holds ``<key>.refill.lock``. Never runs postgres.

    :returns: whether a spare was made (False: the template is gone, or a spare is ready).
    """
    tpl = root / key
    spare = spare_path(key, root)
    if not tpl.is_dir():
        return False
    with _locked(key, exclusive=False, root=root):
        if not server.is_datadir(tpl) or _spare_ready(spare, owner) is not None:
            return False
        for stale in root.glob(f".{key}.tmp-spare-*"):  # a refill that died
            shutil.rmtree(stale, ignore_errors=True)
        if os.path.lexists(spare):  # broken, or another user's: replace it
            trash = root / f".{key}.tmp-spare-trash-{os.getpid()}"
            os.rename(spare, trash)
            shutil.rmtree(trash, ignore_errors=True)
        user = None
        if owner != (os.geteuid(), os.getegid()):
            user = ServerUser(name="", uid=owner[0], gid=owner[1], groups=(), home="")
        tmp = root / f".{key}.tmp-spare-{os.getpid()}"
        try:
            copy_tree(tpl, tmp, user)
            sync_fs(tmp)
            os.rename(tmp, spare)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(root)
    return True


def wait_refills(timeout: float = LOCK_TIMEOUT) -> None:
    """Wait until no refill is running for any template of the cache (tests, benchmarks)."""
    deadline = time.monotonic() + timeout
    for p in list(_refills):
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.0, deadline - time.monotonic()))
        if p.returncode is not None:
            _refills.remove(p)
    root = templates_dir()
    try:
        locks = sorted(root.glob(f"*{REFILL_LOCK}"))
    except OSError:
        return
    for lock in locks:
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            continue
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise Busy(f"a refill of {lock.name} is still running") from None
                    time.sleep(0.01)
        finally:
            os.close(fd)


def _refill_main(argv: list[str]) -> int:
    """``refill ROOT KEY UID GID LOCKFD`` (as started by :func:`start_refill`)."""
    if len(argv) != 6 or argv[0] != "refill":
        print("usage: python -m pgmgr.core.template refill ROOT KEY UID GID LOCKFD")
        return 2
    _, root, key, uid, gid, fd = argv
    with contextlib.suppress(OSError):
        os.nice(10)  # background work: let the foreground (initdb, postgres) go first
    try:
        refill(Path(root), key, (int(uid), int(gid)))
    except Exception:
        return 1
    finally:
        with contextlib.suppress(OSError):
            os.close(int(fd))
    return 0


def make_parents(path: Path, made: list[Path]) -> None:
    """Create the missing parent directories of ``path`` (mode as ``mkdir -p``), outermost
    first, appending each one this call created to ``made`` as soon as it exists, so that a
    failure part-way can undo exactly these (see :func:`remove_made`)."""
    missing = []
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:  # made meanwhile by someone else: not ours to remove
            continue
        made.append(d)


def remove_made(made: list[Path]) -> None:
    """Remove the directories :func:`make_parents` created, innermost first, each only if it
    is empty (what someone else put there meanwhile stays)."""
    for d in reversed(made):
        with contextlib.suppress(OSError):
            d.rmdir()


def _build(
    install: Installation,
    datadir: Path,
    opts: InitOptions,
    user: ServerUser | None,
    key: str,
    fields: dict[str, Any],
) -> None:
    """initdb into ``datadir`` (where the server user can write, unlike a cache under
    /root), then copy it to a temporary name in the cache, sync, and rename it into place.
    Called with the key's lock held exclusively."""
    root = templates_dir()
    for stale in root.glob(f".{key}.tmp-*"):  # left by a builder that died
        shutil.rmtree(stale, ignore_errors=True)
    base = replace(opts, auth="trust", no_sync=True)
    server.initdb(install, datadir, base, password=None, user=user)
    tmp = root / f".{key}.tmp-{os.getpid()}"
    try:
        copy_tree(datadir, tmp, None)
        paths.write_json_atomic(root / f"{key}.json", {**fields, "created_at": time.time()})
        sync_fs(tmp)
        os.rename(tmp, root / key)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)
    prune(fields, keep=key)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- list, prune, clear


def list_templates() -> list[dict[str, Any]]:
    """Every template in the cache: its key, path, size and what it was built from."""
    root = templates_dir()
    found = []
    try:
        dirs = sorted(
            p
            for p in root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and not p.name.endswith(SPARE)
        )
    except FileNotFoundError:
        return []
    for path in dirs:
        try:
            meta = json.loads((root / f"{path.name}.json").read_text())
        except (OSError, ValueError):
            meta = {}
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        stale = not _binaries_match(meta)
        spare = _spare_ready(spare_path(path.name, root), None) is not None
        found.append(
            {"key": path.name, "path": str(path), "bytes": size, "stale": stale, **meta}
            | {"spare": spare}
        )
    return found


def _binaries_match(meta: dict[str, Any]) -> bool:
    try:
        bindir = Path(meta["bindir"])
        return bool(
            _stamp(bindir / "postgres") == meta["postgres"]
            and _stamp(bindir / "initdb") == meta["initdb"]
        )
    except (KeyError, OSError, TypeError):
        return False


def _remove(key: str, *, wait: bool) -> bool:
    """Remove template ``key`` under its exclusive lock; False if busy and not ``wait``."""
    root = templates_dir()
    with _locked(key, exclusive=True, timeout=LOCK_TIMEOUT if wait else 0) as got:
        if not got:
            return False
        existed = (root / key).exists()
        if existed:
            trash = root / f".{key}.tmp-trash-{os.getpid()}"
            os.rename(root / key, trash)
            shutil.rmtree(trash, ignore_errors=True)
        if os.path.lexists(
            spare_path(key, root)
        ):  # renamed away first: a claim gets all or nothing
            trash = root / f".{key}.tmp-trash-spare-{os.getpid()}"
            os.rename(spare_path(key, root), trash)
            shutil.rmtree(trash, ignore_errors=True)
            existed = True
        with contextlib.suppress(FileNotFoundError):
            (root / f"{key}.json").unlink()
        for stale in root.glob(f".{key}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        return existed


def prune(fields: dict[str, Any], keep: str) -> list[str]:
    """Remove templates of the same bin dir built from other binaries (not waiting on
    one in use), and templates whose binaries are gone."""
    removed = []
    for t in list_templates():
        if t["key"] == keep:
            continue
        same_dir = t.get("bindir") == fields["bindir"]
        gone = not Path(str(t.get("bindir", ""))).is_dir()
        if ((same_dir and t["stale"]) or gone) and _remove(t["key"], wait=False):
            removed.append(t["key"])
    return removed


def clear() -> list[str]:
    """Remove every template (waiting for inits that are copying one).

    :returns: the keys removed.
    """
    root = templates_dir()
    keys = {t["key"] for t in list_templates()}
    with contextlib.suppress(FileNotFoundError):
        keys |= {p.stem for p in root.glob("*.json")}
        keys |= {p.name[: -len(SPARE)] for p in root.glob(f"*{SPARE}")}
        keys |= {p.name.split(".tmp-")[0][1:] for p in root.glob(".*.tmp-*")}
    return [key for key in sorted(keys) if _remove(key, wait=True)]


if __name__ == "__main__":
    raise SystemExit(_refill_main(sys.argv[1:]))
