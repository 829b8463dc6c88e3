"""Spare copies of a template: one more synced copy, ready to be renamed into a new init.

Creating ~1000 files is most of a copy's cost, so once a template has been copied, a
background process (``python -m pgmgr.core.template refill``) keeps one more synced copy of
it, ``<templates>/u<uid>/<key>.spare``, made (like the template) by the server user. The next
init of that user claims it with one ``rename(2)`` into its work directory (atomic: two inits
can never both get it) and refills it after returning. Anything wrong with the spare means
the normal copy. See docs/speed.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import subprocess
import sys
import threading
import time
from pathlib import Path

from pgmgr.core import cleanup, ownconn, server, testhook, userfs
from pgmgr.core.copy import copy_tree, sync_fs
from pgmgr.core.errors import Busy
from pgmgr.core.privileges import ServerUser
from pgmgr.core.server import InitOptions
from pgmgr.core.staging import Finish
from pgmgr.core.template import (
    LOCK_TIMEOUT,
    SPARE,
    fd_path,
    locked,
    open_user_dir,
    own_identity,
    set_hba,
    templates_dir,
)
from pgmgr.core.templatekey import owner_of

REFILL_LOCK = ".refill.lock"  # <templates>/<key>.refill.lock, held while a spare is made


def ready(spare: Path) -> bool:
    """Whether ``spare`` is a real directory (not a symlink) holding a cluster."""
    try:
        return (
            os.path.isdir(spare)
            and not os.path.islink(spare)
            and (spare / "PG_VERSION").is_file()
            and (spare / "global/pg_control").is_file()
        )
    except OSError:
        return False


def claim(key: str, ufd: int, fin: Finish, opts: InitOptions, user: ServerUser | None) -> bool:
    """Rename the user's spare of ``key`` to ``data`` (in the init's work directory) and set
    its authentication, all as the server user. The rename is the atomic claim: a second
    init gets ENOENT.

    :returns: False, with nothing done, when there is no usable spare or the template is
        being cleared or rebuilt.
    """
    with locked(key, exclusive=False, timeout=0) as got:
        if not got:
            return False
        taken: bool = userfs.as_user(user, _take, ufd, key, fin, opts.auth)
        return taken


def _take(ufd: int, key: str, fin: Finish, auth: str) -> bool:
    """As the server user: the claim, ``pg_hba.conf`` for ``auth``, the commit (no
    ``syncfs``: the spare was synced when it was made; the edit and moves are fsynced)."""
    spare = fd_path(ufd) / f"{key}{SPARE}"
    if not ready(spare):
        return False
    testhook.pause("claim-ready")
    fin.prepare()
    try:
        if os.lstat(spare).st_dev != os.stat(Path(fin.data).parent).st_dev:
            return False
    except FileNotFoundError:  # another init claimed it since it was ready
        return False
    testhook.pause("claim")
    try:
        os.rename(spare, fin.data)
    except OSError:  # ENOENT: another init claimed it first
        return False
    own_identity(fin.data, sync=fin.sync)
    set_hba(fin.data, auth, fin.sync)
    fin.commit(flush=False)
    return True


#: Refill processes this process started, reaped by later calls and by wait_refills().
_refills: list[subprocess.Popen[bytes]] = []


def start_refill(key: str, user: ServerUser | None, root: Path | None = None) -> bool:
    """Spawn ``python -m pgmgr.core.template refill`` for ``key`` (detached, own session,
    no shell, stdio to /dev/null). This process takes ``<key>.refill.lock`` before
    spawning and hands it over (the child inherits the open lock), so the lock is held
    from before this returns until the refill ends: :func:`wait_refills` can wait on it.
    Never raises: the spare is an optimisation.

    :returns: False when a refill is already under way (the lock is taken), or failed.
    """
    for done in [p for p in _refills if p.poll() is not None]:
        _refills.remove(done)
    try:
        root = root or templates_dir()
        fd = os.open(root / f"{key}{REFILL_LOCK}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        uid, gid = owner_of(user)
        env = ownconn.own_environ()
        here = str(Path(__file__).resolve().parents[2])  # the same pgmgr in the child
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        argv = [sys.executable, "-m", "pgmgr.core.template", "refill", str(root), key]
        child = subprocess.Popen(  # our own interpreter and module, no shell
            [*argv, str(uid), str(gid), str(fd)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=(fd,),
            cwd="/",
            env=env,
        )
        _refills.append(child)
        # reaped as soon as it ends: a long-lived library caller that initializes one
        # directory kept it as a zombie until its next init, or its exit
        threading.Thread(target=child.wait, name="pgmgr-refill", daemon=True).start()
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # the child's copy keeps the lock


def refill(root: Path, key: str, owner: tuple[int, int]) -> bool:
    """Make ``<key>.spare`` from template ``key`` of user ``owner``, as that user. Holds
    the template's lock shared throughout (so ``cache clear`` and a rebuild wait for it, as
    for a copy); the caller holds ``<key>.refill.lock``. Never runs postgres.

    :returns: whether a spare was made (False: the template is gone, or a spare is ready).
    """
    user = None
    if owner[0] != os.geteuid():
        pw = pwd.getpwuid(owner[0])
        groups = tuple(os.getgrouplist(pw.pw_name, owner[1]))
        user = ServerUser(pw.pw_name, owner[0], owner[1], groups, pw.pw_dir)
    with locked(key, exclusive=False, root=root):
        ufd = open_user_dir(user, root)
        try:
            made: bool = userfs.as_user(user, _refill, ufd, key)
            return made
        finally:
            os.close(ufd)


def _refill(ufd: int, key: str) -> bool:
    """As the server user: copy template ``key`` to a temporary name, sync, rename it to
    ``<key>.spare``."""
    base = fd_path(ufd)
    spare = base / f"{key}{SPARE}"
    if not server.is_datadir(base / key) or ready(spare):
        return False
    for stale in base.glob(f".{key}.tmp-spare-*"):  # a refill that died
        userfs.rmtree_at(ufd, stale.name)
    userfs.rmtree_at(ufd, spare.name)  # broken: replace it
    tmp = base / f".{key}.tmp-spare-{os.getpid()}"
    try:
        copy_tree(base / key, tmp)
        sync_fs(tmp)
        os.rename(tmp, spare)
    except BaseException:  # what cannot be removed goes with the next refill's stale ones
        cleanup.quietly(lambda: userfs.rmtree_at(ufd, tmp.name))
        raise
    os.fsync(ufd)
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


def refill_main(argv: list[str]) -> int:
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
