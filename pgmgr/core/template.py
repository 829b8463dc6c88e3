"""Template data directories: initdb once per (server user, binaries, initdb options,
installed locales), copy afterwards.

``initdb`` costs ~600 ms on the reference machine; copying an initialized data directory
costs ~50 ms. So the first :func:`init_from_template` for a key runs initdb (trust
authentication, no password) into the new data directory's work dir (see
:mod:`pgmgr.core.staging`), keeps a copy of it under ``<cache>/templates/u<uid>/<key>/`` and
then applies the per-instance parts; every later init with the same key copies the template
and applies the same per-instance parts:

- ``pg_hba.conf``: the ``host`` lines get the instance's method (``scram-sha-256`` unless
  ``trust``); ``local`` lines stay ``trust``, exactly as pgmgr's initdb command line does;
- the superuser's password: set over the private unix socket on the first start
  (``Instance.password_pending``), so TCP logins are impossible until then.

Templates are per server user: ``u<uid>`` is owned by that user, everything in it is made by
that user (the initdb, the copy into the cache, the copy out, spares), and it serves only
instances that run as that user: what a user could have written reaches nobody else. As
root, pgmgr makes ``u<uid>`` in its own cache, opens it and hands the descriptor to a process
that has become the user (:func:`pgmgr.core.userfs.as_user`), which works through
``/proc/self/fd/N`` (the user cannot traverse root's cache by path).

The key covers the server user, the version, the bin dir, the size and mtime of ``postgres``
and ``initdb``, the initdb options, a fingerprint of the installed locales (the entries
of ``/usr/lib/locale``, the locale archive among them, and of ``$LOCPATH``: ~20 us) and of
the ICU libraries ``postgres`` links (:mod:`pgmgr.core.linked`: ICU collations record their
version), so new binaries, a new locale or a new ICU get a new template (and the old one is
pruned).
Each copy gets a database system identifier of its own (:func:`own_identity`).

Concurrency: one lock file per key, in root's part of the cache. Copiers hold it shared;
the builder holds it exclusive, builds under a temporary name and renames it into place, so
nobody sees a half-made template. Durability: the new data directory (and a new template) is
flushed with ``syncfs(2)`` (one call) unless the caller asked for ``--no-sync``.

Spares (:mod:`pgmgr.core.spare`): once a template has been copied, a background process
keeps one more synced copy of it, ``<key>.spare``, which the next init claims with one
``rename(2)``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from pgmgr.core import cleanup, dirpath, paths, pgcontrol, server, testhook, userfs
from pgmgr.core.copy import copy_tree, sync_fs
from pgmgr.core.errors import DatabaseException
from pgmgr.core.privileges import ServerUser
from pgmgr.core.server import InitOptions
from pgmgr.core.staging import Finish
from pgmgr.core.templatekey import hba_for, key_fields, key_of, owner_of, why_not
from pgmgr.core.versions import Installation

LOCK_TIMEOUT = 300.0
SPARE = ".spare"  # <templates>/u<uid>/<key>.spare: a synced copy ready to be renamed
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Errors of a cache that cannot be written: an init goes on without a template.
UNUSABLE = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM})


def templates_dir() -> Path:
    return paths.cache_dir() / "templates"


# --------------------------------------------------------------------------- locking, places


@contextlib.contextmanager
def locked(
    key: str, *, exclusive: bool, timeout: float = LOCK_TIMEOUT, root: Path | None = None
) -> Iterator[bool]:
    """Hold ``<templates>/<key>.lock``; yields False when ``timeout`` is 0 and it is busy."""
    root = paths.ensure_private_dir(root or templates_dir())
    with paths.flocked(
        root / f"{key}.lock", exclusive=exclusive, timeout=timeout, busy=f"template {key} is busy"
    ) as held:
        yield held


def open_user_dir(user: ServerUser | None, root: Path | None = None) -> int:
    """An fd of ``<templates>/u<uid>``, the server user's part of the cache: made here
    (0700, then handed over) if missing; anything else under that name (a symlink, another
    owner's directory) is removed first. The caller closes it."""
    root = paths.ensure_private_dir(root or templates_dir())
    uid, gid = owner_of(user)
    name = f"u{uid}"
    rfd = os.open(root, _DIR)
    try:
        for _ in range(3):
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=rfd)
            try:
                fd = os.open(name, _DIR, dir_fd=rfd)
            except OSError:  # a symlink or a file: not ours to trust
                userfs.rmtree_at(rfd, name)
                continue
            st = os.fstat(fd)
            if st.st_uid == uid and not st.st_mode & 0o077:
                return fd
            os.close(fd)
            if st.st_uid == os.geteuid() and uid != st.st_uid:  # made just now, by root
                fd = os.open(name, _DIR, dir_fd=rfd)
                os.fchown(fd, uid, gid)
                os.fchmod(fd, 0o700)
                return fd
            from pgmgr.core import ownerrm

            ownerrm.remove_at(rfd, name)  # a user's: emptied as that user
        raise OSError(errno.EAGAIN, "cannot make the template directory", str(root / name))
    finally:
        os.close(rfd)


def fd_path(fd: int) -> Path:
    """A path to the directory open as ``fd``: lets a process that became the server user
    work inside root's cache without traversing it."""
    return Path(f"/proc/self/fd/{fd}")


# --------------------------------------------------------------------------- init


def init_from_template(
    install: Installation, fin: Finish, opts: InitOptions, *, user: ServerUser | None
) -> str | None:
    """Make the init's cluster (``fin.data``, in its private work directory, see
    :mod:`pgmgr.core.staging`) from the template for ``opts`` and ``user``, building the
    template first if there is none, and commit it into place. Authentication is set for
    ``opts.auth``; no password is set (the caller marks it pending for the first start).
    As root, the claim or copy and the commit run in one process that is the server user.

    :returns: how: ``"spare"``, ``"copy"`` or ``"build"``; None, having touched nothing,
        when no template can serve ``opts``.
    :raises UsageError: ``PGMGR_NO_TEMPLATE`` is neither a yes nor a no (nothing touched).
    :raises CommandFailed: initdb failed while building the template.
    """
    if why_not(install, opts) is not None:
        return None
    from pgmgr.core import spare

    fields = key_fields(install, opts, user)
    key = key_of(fields)
    try:
        ufd = open_user_dir(user)
        with locked(key, exclusive=False):  # its lock file made: a cache that takes none
            pass
    except OSError as e:
        if e.errno not in UNUSABLE:
            raise
        return None  # serves no template: initdb it is
    try:
        claimed = spare.claim(key, ufd, fin, opts, user)
        if claimed:
            refill, built = True, False
        else:
            with locked(key, exclusive=False):
                done, refill = userfs.as_user(user, _copy_in, ufd, key, fin, opts.auth)
            if not done:
                with locked(key, exclusive=True):
                    done, refill = userfs.as_user(user, _copy_in, ufd, key, fin, opts.auth)
                    if not done:
                        _build(install, fin, opts, user, key, fields, ufd)
            built = not done  # a key used once costs no spare (and a build has no time)
    finally:
        os.close(ufd)
    if refill and not built:
        spare.start_refill(key, user)
    return "build" if built else ("spare" if claimed else "copy")


def _copy_in(ufd: int, key: str, fin: Finish, auth: str) -> tuple[bool, bool]:
    """As the server user: copy template ``key`` into the work dir, set its authentication
    and commit it.

    :returns: (copied, whether a spare should be made: none is ready and the data directory
        is on the cache's filesystem, so that one could be renamed there).
    """
    from pgmgr.core import spare

    base = fd_path(ufd)
    if not server.is_datadir(base / key):
        return False, False
    fin.prepare()
    testhook.pause("copy")
    copy_tree(base / key, fin.data)
    own_identity(fin.data, sync=False)  # the commit's syncfs flushes it
    set_hba(fin.data, auth)
    same_fs = _same_mount(fin.data, ufd)
    fin.commit(flush=True)
    return True, same_fs and not spare.ready(base / f"{key}{SPARE}")


def _same_mount(data: str, ufd: int) -> bool:
    """Whether ``data`` is on the mount of the cache ``ufd``, so that a spare made there
    could be renamed to a data directory beside ``data`` (not across filesystems, nor
    across two mounts of one: a bind mount)."""
    fd = os.open(data, os.O_PATH | os.O_CLOEXEC)
    try:
        return dirpath.other_mount(fd, ufd) is None
    finally:
        os.close(fd)


def own_identity(data: str, *, sync: bool) -> None:
    """As the server user: the copy ``data`` of a template gets a database system
    identifier of its own (:func:`pgcontrol.new_identity`): snapshots, standbys and WAL
    archives tell instances apart by it.

    :raises DatabaseException: the template's copy is damaged.
    """
    try:
        pgcontrol.new_identity(Path(data), sync=sync)
    except ValueError as e:
        raise DatabaseException(
            f"the template copied into {data} is unusable: {e}",
            hint="'pgmgr cache clear' removes the templates; the next init builds a new one",
        ) from None


def set_hba(data: str, auth: str, sync: bool = False) -> None:
    """As the server user: ``pg_hba.conf`` of ``data`` with ``auth`` for TCP, through an fd
    (a FIFO or symlink swapped in is refused, never waited on or followed); with ``sync``
    the new file and the directory are fsynced."""
    testhook.pause("hba")
    fd = os.open(data, _DIR)
    try:
        mode = os.stat("pg_hba.conf", dir_fd=fd, follow_symlinks=False).st_mode & 0o777
        text = userfs.read_file_at(fd, "pg_hba.conf").decode()
        userfs.write_file_at(fd, "pg_hba.conf", hba_for(text, auth).encode(), mode, sync=sync)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _build(
    install: Installation,
    fin: Finish,
    opts: InitOptions,
    user: ServerUser | None,
    key: str,
    fields: dict[str, Any],
    ufd: int,
) -> None:
    """initdb (as the server user) into ``data``, then, as that user, copy it into the
    user's part of the cache under a temporary name, sync, rename it into place. Called
    with the key's lock held exclusively."""
    base = replace(opts, auth="trust", no_sync=True)
    server.initdb(install, Path(fin.data), base, password=None, user=user)
    try:
        info = {**fields, "created_at": time.time()}
        paths.write_json_atomic(templates_dir() / f"{key}.json", info)
        userfs.as_user(user, _publish, ufd, key, fin, opts.auth)
    except OSError as e:
        if e.errno not in UNUSABLE:
            raise
        # The cache cannot keep it (full, read-only): the init goes on without a template.
        with contextlib.suppress(OSError):
            os.unlink(templates_dir() / f"{key}.json")
        userfs.as_user(user, _commit, fin, opts.auth)
        return
    from pgmgr.core import tplcache

    tplcache.prune(fields, keep=key)


def _publish(ufd: int, key: str, fin: Finish, auth: str) -> None:
    """As the server user: the new cluster becomes template ``key``, then gets the
    instance's authentication and is committed."""
    testhook.pause("build")
    base = fd_path(ufd)
    for stale in base.glob(f".{key}.tmp-*"):  # left by a builder that died
        userfs.rmtree_at(ufd, stale.name)
    userfs.rmtree_at(ufd, key)  # a broken one (no PG_VERSION), or nothing
    tmp = base / f".{key}.tmp-{os.getpid()}"
    try:
        copy_tree(fin.data, tmp)
        sync_fs(tmp)
        os.rename(tmp, base / key)
    except BaseException:  # what cannot be removed goes with the next build's stale ones
        cleanup.quietly(lambda: userfs.rmtree_at(ufd, tmp.name))
        raise
    os.fsync(ufd)
    _commit(fin, auth)


def _commit(fin: Finish, auth: str) -> None:
    """As the server user: the instance's authentication, and the cluster in place."""
    set_hba(fin.data, auth)
    fin.commit(flush=True)


if __name__ == "__main__":
    from pgmgr.core.spare import refill_main

    raise SystemExit(refill_main(sys.argv[1:]))
