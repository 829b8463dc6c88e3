"""How :mod:`pgmgr.core.copy` moves one file's bytes: ``FICLONE``, else ``copy_file_range``
(in parallel ranges for a large file), else ``read``/``write``; with an optional writeback
of each chunk as it is copied (``flush``, see :func:`writeback`)."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable

FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h
_BLOCK = 1 << 20
#: Files at least this large are copied in parallel ranges (PostgreSQL's segments are 1 GiB).
PARALLEL_MIN = 64 << 20
#: With ``flush``: bytes per ``copy_file_range`` call, whose writeback then starts.
_CHUNK = 32 << 20
#: With ``flush``: smaller files are left to the final sync (a syscall each would cost
#: more than it saves).
_FLUSH_MIN = 256 << 10
_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h
Flush = Callable[[int, int, int], None]
#: Held to drop a method from a copy's list: the walk and its pool (copypool) share it.
_DROP = threading.Lock()
#: errnos that mean "this filesystem (pair) cannot do that", not "the copy failed".
_UNSUPPORTED = frozenset(
    {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM}
)


def writeback() -> Flush | None:
    """``flush(fd, offset, length)``: start writing that range to disk, without waiting
    (``sync_file_range``; a hint: errors are ignored). None where there is no such call."""
    import ctypes  # as_user pre-imports it: usable in a child that became the user

    fn = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
    if fn is None:  # pragma: no cover - not Linux
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)

    def flush(fd: int, off: int, n: int) -> None:
        fn(fd, off, n, _SYNC_FILE_RANGE_WRITE)

    return flush


def copy_data(
    fin: int, fout: int, size: int, methods: list[str], flush: Flush | None = None
) -> str:
    """Copy ``size`` bytes with the first method that works; drop from ``methods`` each one
    the filesystem refuses, so the rest of the tree does not try it again. ``flush``: see
    :func:`writeback` (nothing to write back after a reflink)."""
    if size < _FLUSH_MIN:
        flush = None
    while True:
        method = methods[0]
        try:
            if method == "reflink":
                import fcntl

                fcntl.ioctl(fout, FICLONE, fin)
            elif method == "copy_file_range":
                if size >= PARALLEL_MIN and (os.cpu_count() or 1) > 1:
                    _copy_ranges_parallel(fin, fout, size, flush)
                else:
                    _copy_range(fin, fout, size, flush)
            else:
                _copy_read(fin, fout, flush)
            return method
        except OSError as e:
            if method == "read" or e.errno not in _UNSUPPORTED:
                raise
            with _DROP:  # another thread of the copy may have dropped it already
                if methods and methods[0] == method:
                    methods.pop(0)
            os.lseek(fin, 0, os.SEEK_SET)
            os.lseek(fout, 0, os.SEEK_SET)
            os.ftruncate(fout, 0)


def _copy_range(fin: int, fout: int, size: int, flush: Flush | None = None) -> None:
    step = _CHUNK if flush else 1 << 30
    off = 0
    while off < size:
        n = os.copy_file_range(fin, fout, min(size - off, step))
        if n == 0:  # the file shrank while being copied: copy what there is
            break
        if flush:
            flush(fout, off, n)
        off += n


def _copy_ranges_parallel(fin: int, fout: int, size: int, flush: Flush | None = None) -> None:
    """``copy_file_range`` of a large file in one thread per core, each on its own range:
    the kernel's copy is CPU-bound from the page cache (1 GiB: 0.75 s in one thread, 0.43 s
    in two on this 2-core machine); the first range in this thread, and any whose thread
    cannot be started. The first error is raised after every thread ended."""
    n = min(4, os.cpu_count() or 1)
    step = -(-size // n)
    errors: list[OSError] = []
    chunk = _CHUNK if flush else size
    gate = _Gate()

    def work(start: int) -> None:
        off, end = start, min(size, start + step)
        try:
            while off < end:
                done = os.copy_file_range(fin, fout, min(end - off, chunk), off, off)
                if done == 0:
                    break
                if flush:
                    flush(fout, off, done)
                off += done
        except OSError as e:
            errors.append(e)

    def thread(start: int) -> None:  # (no Ctrl-C in a thread: it enters and leaves)
        if gate.enter():  # else started after this returned (a Ctrl-C in its start)
            try:
                work(start)
            finally:
                gate.leave()

    os.ftruncate(fout, size)
    try:
        for i in range(1, n):
            t = threading.Thread(target=thread, args=(i * step,), name="pgmgr-copy-range")
            try:
                t.start()
            except RuntimeError:  # can't start new thread (ulimit -u): this one does it
                work(i * step)
        work(0)
    finally:  # a Ctrl-C in work(0) or in a start too: no thread writes to fout after this
        gate.close()
    if errors:
        raise errors[0]


class _Gate:
    """The ranges under way: :meth:`close` waits for them to end, and a thread that gets
    to run only after it (a Ctrl-C came while its start waited for it) copies nothing."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._inside = 0
        self._closed = False

    def enter(self) -> bool:
        with self._cond:
            if self._closed:
                return False
            self._inside += 1
            return True

    def leave(self) -> None:
        with self._cond:
            self._inside -= 1
            self._cond.notify_all()

    def close(self) -> None:
        """Wait for every range to end, even through a Ctrl-C (raised once they have)."""
        interrupted: BaseException | None = None
        while True:
            try:
                with self._cond:
                    self._closed = True
                    while self._inside:
                        self._cond.wait()
                break
            except BaseException as e:
                interrupted = interrupted or e
        if interrupted is not None:
            raise interrupted


def _copy_read(fin: int, fout: int, flush: Flush | None = None) -> None:
    off = flushed = 0
    while chunk := os.read(fin, _BLOCK):
        view = memoryview(chunk)
        while view:
            n = os.write(fout, view)
            view = view[n:]
            off += n
        if flush and off - flushed >= _CHUNK:
            flush(fout, flushed, off - flushed)
            flushed = off
    if flush and off > flushed:
        flush(fout, flushed, off - flushed)
