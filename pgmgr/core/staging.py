"""Atomic init: a new data directory is built in a private work directory and becomes a data
directory only when its ``PG_VERSION`` is the last entry moved into place.

Layout: the target ``D`` (made empty, or found empty) holds ``D/.pgmgr-init-<pid>/data``
while the cluster is built (by a template copy, a spare or initdb). :meth:`Stage.commit`
renames every entry of ``data`` up into ``D``, ``PG_VERSION`` last: an init killed at any
moment leaves a directory without ``PG_VERSION`` (never taken for a data directory), and the
next init of ``D`` recognises such a leftover (a ``.pgmgr-init-*`` entry, no
``PG_VERSION``, nothing PostgreSQL or pgmgr would not make there) and clears it.

Privileges (pgmgr as root, server user ``U``): root only reaches ``D``'s parent with
:func:`userfs.open_dir`, creates ``D`` itself when ``U`` cannot write the parent (a root-owned
parent nobody else can write: a brand-new directory, handed over with ``fchown``), and hands a
root-owned empty ``D`` over the same way. Everything inside ``D`` (the work directory, the
copy, initdb, ``pg_hba.conf``, the moves, the cleanup of a failed init) runs as ``U``
(:func:`userfs.as_user`). A ``D`` that another user than root and ``U`` can change is refused
before anything is made.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pgmgr.core import dirpath, removal, testhook, userfs
from pgmgr.core.errors import DatabaseException, doing
from pgmgr.core.privileges import ServerUser

WORK_PREFIX = ".pgmgr-init-"
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Stage:
    """One init of ``target`` as ``user`` (None: as ourselves). Use as::

    stage = Stage(target, user); stage.open()
    try: build(stage.data); stage.commit(sync)
    except BaseException: stage.abort(); raise
    """

    def __init__(self, target: Path, user: ServerUser | None) -> None:
        self.target = Path(os.path.abspath(target))
        self.user = user
        self.work = self.target / f"{WORK_PREFIX}{os.getpid()}"
        self.data = self.work / "data"  # where the cluster is built (absent until then)
        self.made: list[Path] = []  # directories this init created, outermost first
        self.by_root: set[Path] = set()  # of those, the ones root made (root removes them)
        self.handed: tuple[int, int, int] | None = None  # a root-owned target's uid, gid, mode

    # ------------------------------------------------------------------ open

    def open(self) -> None:
        """Make ``target`` an empty directory owned by the server user (creating it and
        its missing parents, or clearing an earlier init's leftover) and make the work dir.

        :raises DatabaseException: not empty, not a directory, or changeable by another user.
        """
        state = userfs.as_user(
            self.user, _prepare, str(self.target), self.work.name, self.user is not None
        )
        if state.startswith("blocked:"):
            raise DatabaseException(f"cannot initialize {self.target}: {state[8:]}")
        if state.startswith("not-ours:"):
            who = f"{self.user.name!r}" if self.user is not None else "you"
            raise DatabaseException(
                f"cannot initialize {self.target}: it belongs to uid {state[9:]}, not to "
                f"{who} (another user could change the cluster in it, and PostgreSQL "
                "refuses a data directory its server user does not own)",
                hint="choose a path that does not exist yet, or a directory you own",
            )
        if state == "others":
            assert self.user is not None
            raise DatabaseException(
                f"refusing to initialize {self.target} as {self.user.name!r}: another OS user "
                "than root and the server user can change it or a directory above it",
                hint="choose a data directory whose parents only root and the server user "
                "can write (or run pgmgr as that user)",
            )
        if state == "created":
            self.made.append(self.target)
        elif state == "absent":
            self._create()  # the work dir is made by the first builder (Finish.prepare)
        elif state == "root-owned":
            self._hand_over()
        elif state == "raced":
            raise DatabaseException(f"{self.target} was created by someone else meanwhile")
        elif state == "not-dir":
            raise DatabaseException(f"{self.target} exists and is not a directory")
        elif state == "not-empty":
            raise DatabaseException(
                f"{self.target} is not empty and is not a PostgreSQL data directory"
            )

    def _create(self) -> None:
        missing = []
        path = self.target
        while not os.path.lexists(path) and path != path.parent:
            missing.append(path)
            path = path.parent
        for d in reversed(missing):
            try:
                if self.user is not None and self._root_may_create(d):
                    self._root_mkdir(d)  # the server user could not: root-owned, 0755
                    self.by_root.add(d)
                else:
                    userfs.as_user(self.user, _mkdir, str(d))
            except FileExistsError:
                if d == self.target:
                    raise DatabaseException(f"{d} was created by someone else meanwhile") from None
                continue
            self.made.append(d)

    def _root_may_create(self, d: Path) -> bool:
        """Root makes ``d`` only under a root-owned parent nobody else can write."""
        fd = userfs.open_dir(d.parent)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return st.st_uid == 0 and not st.st_mode & 0o022

    def _root_mkdir(self, d: Path) -> None:
        """A brand-new directory under a root-owned parent; the target is handed over."""
        fd = userfs.open_dir(d.parent)
        try:
            final = d == self.target
            with doing("create the directory"):
                os.mkdir(d.name, 0o700 if final else 0o755, dir_fd=fd)
            if final:
                sub = os.open(d.name, _DIR, dir_fd=fd)
                try:
                    assert self.user is not None
                    os.fchown(sub, self.user.uid, self.user.gid)
                    os.fchmod(sub, 0o700)
                finally:
                    os.close(sub)
        finally:
            os.close(fd)

    def _hand_over(self) -> None:
        """An empty root-owned target (``mkdir /srv/pg/data`` beforehand) becomes the
        server user's, as initdb would have it."""
        if self.user is None:
            raise DatabaseException(f"{self.target} is owned by root; pgmgr is not root")
        fd = userfs.open_dir(self.target)
        try:
            if os.listdir(fd):
                raise DatabaseException(
                    f"{self.target} is not empty and is not a PostgreSQL data directory"
                )
            st = os.fstat(fd)
            self.handed = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
            with doing("change the owner of", self.target):
                os.fchown(fd, self.user.uid, self.user.gid)
                os.fchmod(fd, 0o700)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ commit, abort

    def finish(self, sync: bool) -> Finish:
        """What work that runs as the server user needs to make the work dir and to commit
        in the same process (one fork instead of three, as root)."""
        return Finish(str(self.target), self.work.name, sync)

    def commit(self, sync: bool, flush: bool = True) -> None:
        """Move the built cluster into ``target``, ``PG_VERSION`` last. With ``sync``, its
        filesystem is flushed first (one ``syncfs``; not when ``flush`` is False: a spare
        was synced when it was made) and the moves are fsynced."""
        userfs.as_user(self.user, _commit, str(self.target), self.work.name, sync, flush)

    def abort(self) -> None:
        """Remove what this init made: the target's contents (it was empty), then the
        directories it created, innermost first. Never raises."""
        with contextlib.suppress(Exception):
            userfs.as_user(self.user, _unmake, str(self.target), self.work.name, 2.0)
        if self.handed is not None:  # given back as it was: root's, empty
            with contextlib.suppress(Exception):
                fd = userfs.open_dir(self.target)
                try:
                    os.fchown(fd, self.handed[0], self.handed[1])
                    os.fchmod(fd, self.handed[2])
                finally:
                    os.close(fd)
        for d in reversed(self.made):
            with contextlib.suppress(Exception):
                if d in self.by_root:
                    fd = userfs.open_dir(d.parent)
                    try:
                        os.rmdir(d.name, dir_fd=fd)
                    finally:
                        os.close(fd)
                else:
                    userfs.as_user(self.user, os.rmdir, str(d))


def remove_cluster(datadir: Path, created: bool, user: ServerUser | None) -> None:
    """Undo an init after the fact (a ``start --init`` whose start failed): as the server
    user, empty ``datadir`` through fds (never following a symlink), then remove it if it was
    created (as that user, or by root under a root-owned parent). Never raises."""
    with contextlib.suppress(Exception):
        userfs.as_user(user, _unmake, str(datadir), f"{WORK_PREFIX}{os.getpid()}", 2.0)
    if not created:
        return
    try:
        userfs.as_user(user, os.rmdir, str(datadir))
    except PermissionError:
        with contextlib.suppress(Exception), userfs.opened_dir(datadir.parent) as fd:
            if os.fstat(fd).st_uid == 0:
                os.rmdir(datadir.name, dir_fd=fd)
    except Exception:  # noqa: S110 - best effort, as the cleanup of a failed command
        pass


# --------------------------------------------------------------------------- as the user


@dataclass(frozen=True)
class Finish:
    """The target and work dir of one init, for a builder that runs as the server user."""

    target: str
    work: str
    sync: bool

    @property
    def data(self) -> str:
        return os.path.join(self.target, self.work, "data")

    def prepare(self) -> None:
        """Make the work dir unless it exists (a real directory of ours)."""
        fd = os.open(self.target, _DIR)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.work, 0o700, dir_fd=fd)
            st = os.stat(self.work, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                raise DatabaseException(f"{self.target} changed while it was initialized")
        finally:
            os.close(fd)

    def commit(self, flush: bool) -> None:
        _commit(self.target, self.work, self.sync, flush)


def _prepare(target: str, work: str, check_others: bool) -> str:
    """As the server user, in one go for the common cases: refuse a target others can
    change ("others"); make an absent one ("created") or take an empty one or an earlier
    init's leftover ("ready"), with the work dir in it; else say what root must do or
    refuse (see :func:`_target_state`)."""
    if check_others and userfs.others_can_write(target):
        # A symlink loop or a file on the way is unsafe too, but that is the news.
        why = dirpath.blocker(target)
        return f"blocked:{why}" if why else "others"
    state = _target_state(target)
    if state == "absent":
        try:
            with doing("create the directory"):
                os.mkdir(target, 0o700)
        except (PermissionError, FileNotFoundError):  # root makes it, or the parents
            return "absent"
        except FileExistsError:
            return "raced"
        _make_work(target, work)
        return "created"
    if state in ("empty", "leftover"):
        if state == "leftover":
            _clear(target)
        _make_work(target, work)
        return "ready"
    if state == "not-dir":
        why = dirpath.blocker(target)
        return f"blocked:{why}" if why else state
    return state


def _target_state(target: str) -> str:
    """absent | empty | root-owned (empty) | leftover | not-empty | not-dir | not-ours:UID."""
    try:
        with doing("look at"):
            st = os.lstat(target)
    except FileNotFoundError:
        return "absent"
    if not stat.S_ISDIR(st.st_mode):
        return "not-dir"
    if st.st_uid not in (0, os.geteuid()):
        # Another user's (made first in a shared directory, /tmp): they could replace
        # any file of the cluster in it, and postgres refuses to start on it anyway.
        return f"not-ours:{st.st_uid}"
    try:
        fd = os.open(target, _DIR)
    except PermissionError:
        return "root-owned" if st.st_uid == 0 else "not-empty"
    try:
        names = os.listdir(fd)
    finally:
        os.close(fd)
    if not names:
        return "root-owned" if st.st_uid == 0 and os.geteuid() != 0 else "empty"
    # All of it an init's (its work dir, entries its commit moved up): the user's files
    # beside a stale work dir are no leftover, and clearing it deleted them.
    stale = "PG_VERSION" not in names and any(n.startswith(WORK_PREFIX) for n in names)
    if stale and all(_init_made(n) for n in names):
        return "leftover"
    return "not-empty"


def _init_made(name: str) -> bool:
    """Whether an entry of a target without ``PG_VERSION`` can be an init's own: its work
    directory, or what its commit moves up from a new cluster (and a server adds)."""
    return (
        name.startswith(WORK_PREFIX)
        or name in removal.PG_ENTRIES
        or name.startswith(".s.PGSQL.")
        or name == "backup_manifest.tmp"
    )


def _mkdir(path: str) -> None:
    with doing("create the directory"):
        os.mkdir(path, 0o700)


def _make_work(target: str, work: str) -> None:
    fd = os.open(target, _DIR)
    try:
        if os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, 0o700)
        os.mkdir(work, 0o700, dir_fd=fd)
    finally:
        os.close(fd)


def _unmake(target: str, work: str, settle: float) -> None:
    """:func:`_clear` of a target that may hold a committed cluster (an init undone after
    its commit, a ``start --init`` whose start failed), such that a kill at any moment
    leaves an init's leftover (see :func:`_target_state`: the next init clears it), never
    part of a data directory: the work dir ``work`` is made first, ``PG_VERSION`` removed
    next, the work dir last."""
    fd = os.open(target, _DIR)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(work, 0o700, dir_fd=fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink("PG_VERSION", dir_fd=fd)
        testhook.pause("unmaking")
        _clear(target, settle, keep=work)
        _clear(target, settle)  # the work dir (all of an init undone before its commit)
    finally:
        os.close(fd)


def _clear(target: str, settle: float = 0.0, keep: str | None = None) -> None:
    """Remove every entry of ``target`` (an init's own work) but ``keep``, never following
    a symlink.

    With ``settle``, retry for up to that many seconds while something still writes there:
    initdb killed by an interrupt leaves its ``postgres --boot``/``--single`` child to exit
    on its own a few ms later, and it may create a file while the tree is being removed."""
    import time

    deadline = time.monotonic() + settle
    fd = os.open(target, _DIR)
    try:
        while True:
            try:
                for name in os.listdir(fd):
                    if name != keep:
                        userfs.rmtree_at(fd, name)
                if not [n for n in os.listdir(fd) if n != keep]:
                    return
            except OSError:
                if time.monotonic() >= deadline:
                    raise
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)
    finally:
        os.close(fd)


def _commit(target: str, work: str, sync: bool, flush: bool) -> None:
    testhook.pause("commit")
    tfd = os.open(target, _DIR)
    try:
        wfd = os.open(work, _DIR, dir_fd=tfd)
        try:
            dfd = os.open("data", _DIR, dir_fd=wfd)
            try:
                names = sorted(os.listdir(dfd), key=lambda n: n == "PG_VERSION")
                if "PG_VERSION" not in names:
                    raise DatabaseException(f"the cluster built for {target} has no PG_VERSION")
                if sync and flush:
                    from pgmgr.core.copy import sync_fs

                    sync_fs(dfd)
                for name in names:
                    if name == "PG_VERSION":
                        testhook.pause("pg-version")
                    os.rename(name, name, src_dir_fd=dfd, dst_dir_fd=tfd)
            finally:
                os.close(dfd)
            os.rmdir("data", dir_fd=wfd)
        finally:
            os.close(wfd)
        with contextlib.suppress(OSError):
            os.rmdir(work, dir_fd=tfd)
        if sync:
            os.fsync(tfd)
            with contextlib.suppress(OSError):  # the target's own entry, if this init made it
                pfd = os.open(os.path.dirname(target), _DIR)
                try:
                    os.fsync(pfd)
                finally:
                    os.close(pfd)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise DatabaseException(f"{target} changed while it was initialized") from None
        raise
    finally:
        os.close(tfd)
