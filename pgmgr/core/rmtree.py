"""Removing a directory tree through file descriptors, never following a symlink, with the
files of a directory unlinked by a few threads at once.

Why threads: where the filesystem frees a file's blocks inside ``unlink(2)`` and waits for
the disk to drop them (ext4 mounted ``-o discard`` without a journal, as on this project's
VMs: ~65 us per file of a data directory when the disk is quiet, 1 to 3 ms while another
process writes and syncs), removing a data directory of ~1,000 files took 0.5 to 2.6 s
(``pgmgr destroy``, the end of ``pgmgr run``, a test suite's clean-ups). Eight unlinks in
flight let the block layer overlap and merge those requests: under the same load the tree
goes in a few tenths of that (bench/rmtree.py). Elsewhere, and on a quiet disk, an unlink
costs microseconds and threads would only add to it (tmpfs: 40 ms for such a tree, 90 ms
with them), so the first :data:`SAMPLE` unlinks of a removal are timed, in line, and the
threads start only where a quarter of those waited.

The walk is :func:`shutil.rmtree`'s fd-based one (Linux), as a loop (see
:func:`_remove_dir`): each directory is opened with ``O_NOFOLLOW`` relative to its
parent's fd, so a symlink swapped in anywhere is removed itself and never followed, and no
path is resolved twice.
"""

from __future__ import annotations

import collections
import errno
import os
import stat
import threading
import time

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: unlinks in flight at once, where they wait for the disk
WORKERS = 8
#: the first unlinks of a removal are timed, in line: where a quarter of them take longer
#: than :data:`SLOW` seconds, the filesystem waits for the disk in them (an empty file has
#: nothing to discard), and the rest go to threads
SAMPLE = 16
SLOW = 250e-6


def remove_at(dir_fd: int, name: str, *, ignore_errors: bool = False) -> None:
    """Remove entry ``name`` of the directory ``dir_fd`` and everything below it; a symlink
    is removed, not what it points to. Missing (or removed meanwhile) is fine.

    :raises OSError: an entry could not be removed (unless ``ignore_errors``: then the
        rest is removed, as far as it can be, and nothing is raised).
    """
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except OSError:
        if ignore_errors:
            return
        raise
    removal = _Removal(ignore_errors)
    if stat.S_ISDIR(st.st_mode):
        _remove_dir(dir_fd, name, removal)
    else:
        removal.unlink(dir_fd, name)


def remove(path: str | os.PathLike[str], *, ignore_errors: bool = False) -> None:
    """:func:`remove_at` of a path (its parent is opened once, following symlinks in it
    as any path does: the caller trusts the path up to its last component)."""
    parent, name = os.path.split(os.path.abspath(os.fspath(path)))
    try:  # O_PATH: searched, never listed (a parent the caller may not read is enough)
        fd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError:
        if ignore_errors:
            return
        raise
    try:
        remove_at(fd, name, ignore_errors=ignore_errors)
    finally:
        os.close(fd)


class _Removal:
    """One removal: its error policy, and whether its unlinks wait for the disk."""

    def __init__(self, ignore_errors: bool) -> None:
        self.ignore_errors = ignore_errors
        self.sampled = 0
        self.times: list[float] = []
        self.slow = False

    def unlink(self, dir_fd: int, name: str) -> None:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:  # a directory swapped in for the file meanwhile
            inline = _Removal(self.ignore_errors)  # a worker must not start workers
            inline.sampled = SAMPLE
            _remove_dir(dir_fd, name, inline)
        except OSError:
            if not self.ignore_errors:
                raise

    def unlink_files(self, dir_fd: int, names: list[str], workers: list[threading.Thread]) -> None:
        """Unlink ``names`` in ``dir_fd``: in line while the first ones are timed, and
        then, if those waited for the disk, by :data:`WORKERS` threads (they go to
        ``workers``: ``dir_fd`` may be closed only once none is alive, or one could
        unlink in whatever directory its number is reused for). The first error is
        raised once all have run."""
        i = 0
        # in line: while sampling, where unlinks are quick, and for a few (not worth a thread)
        while i < len(names) and (
            self.sampled < SAMPLE or not self.slow or len(names) - i < WORKERS
        ):
            t0 = time.perf_counter()
            self.unlink(dir_fd, names[i])
            i += 1
            if self.sampled < SAMPLE:
                self.times.append(time.perf_counter() - t0)
                self.sampled += 1
                # a quarter of them: an unlink preempted on a busy machine (tmpfs taken for
                # slow), or empty files (nothing to discard) among them, decide nothing
                self.slow = (
                    self.sampled == SAMPLE and sum(t > SLOW for t in self.times) >= SAMPLE // 4
                )
        if i == len(names):
            return
        todo = collections.deque(names[i:])
        errors: list[BaseException] = []

        def work() -> None:
            while True:
                try:
                    name = todo.popleft()  # atomic
                except IndexError:
                    return
                try:
                    self.unlink(dir_fd, name)
                except BaseException as e:  # for the caller, once all are done
                    errors.append(e)

        # threading, not concurrent.futures: imported already, and a child of as_user that
        # has become the server user may not be able to import anything
        workers.extend(
            threading.Thread(target=work, name="pgmgr-rm", daemon=True)
            for _ in range(min(WORKERS, len(todo)))
        )
        try:
            for t in workers:
                try:
                    t.start()
                except RuntimeError:  # no thread to be had (a pids limit): the rest in line
                    break
            for t in workers:
                if t.ident is not None:
                    t.join()
        finally:  # interrupted (Ctrl-C): what has not begun is dropped, the rest awaited
            todo.clear()
            for t in workers:
                if t.ident is not None:
                    t.join()
        if not any(t.ident is not None for t in workers):  # none started: all left to do
            for name in names[i:]:
                self.unlink(dir_fd, name)
        if errors:
            raise errors[0]


class _Dir:
    """A directory of the walk, open: its subdirectories still to go, its files."""

    def __init__(self, parent_fd: int, name: str, fd: int) -> None:
        self.parent_fd, self.name, self.fd = parent_fd, name, fd
        self.subdirs: list[str] = []
        self.files: list[str] = []


def _remove_dir(parent_fd: int, name: str, removal: _Removal) -> None:
    """Remove the directory ``name`` of ``parent_fd`` and its entries. The walk is a loop,
    not a recursion: a tree deeper than Python's recursion limit (~1,000 levels, which any
    user can make in a directory of theirs) raised RecursionError, a traceback with the
    tree left; now its depth is bounded by the open files only (an OSError: EMFILE)."""
    stack: list[_Dir] = []
    try:
        _enter(parent_fd, name, removal, stack)
        while stack:
            top = stack[-1]
            if top.subdirs:
                _enter(top.fd, top.subdirs.pop(), removal, stack)
                continue
            stack.pop()
            _leave(top, removal)
    finally:
        for d in stack:  # an error below them (its own fd is closed already)
            os.close(d.fd)


def _enter(parent_fd: int, name: str, removal: _Removal, stack: list[_Dir]) -> None:
    """Open the directory ``name`` of ``parent_fd`` and list it onto ``stack``."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):  # not a directory now (swapped)
            removal.unlink(parent_fd, name)
        elif not removal.ignore_errors:
            raise
        return
    d = _Dir(parent_fd, name, fd)
    stack.append(d)
    try:
        with os.scandir(fd) as it:
            for entry in it:
                listed = d.subdirs if entry.is_dir(follow_symlinks=False) else d.files
                listed.append(entry.name)
    except OSError:
        d.subdirs, d.files = [], []
        if not removal.ignore_errors:
            raise
    d.subdirs.reverse()  # popped from the end: in the order listed


def _leave(d: _Dir, removal: _Removal) -> None:
    """Unlink the files of ``d`` (its subdirectories are gone), close it, remove it."""
    workers: list[threading.Thread] = []
    try:
        removal.unlink_files(d.fd, d.files, workers)
    except OSError:
        if not removal.ignore_errors:
            raise
    finally:
        # A second Ctrl-C that cut the wait for the workers short leaves the fd open.
        if not any(t.is_alive() for t in workers):
            os.close(d.fd)
    try:
        os.rmdir(d.name, dir_fd=d.parent_fd)
    except FileNotFoundError:
        pass
    except OSError:
        if not removal.ignore_errors:
            raise
