"""How :mod:`pgmgr.core.copy` moves one file's bytes: ``FICLONE``, else ``copy_file_range``
(in parallel ranges for a large file), else ``read``/``write``; with an optional writeback
of each chunk as it is copied (``flush``, see :func:`writeback`).

A sparse file (a user's disk image or preallocated log in the data directory) keeps its
holes when it is not cloned: only its data extents (``SEEK_DATA``/``SEEK_HOLE``) are
copied, into a copy given its size by ``ftruncate``. ``copy_file_range`` and ``read`` would
write the holes out as zeros (on ext4: a 1 GiB file with 1 MiB of data would take 1 GiB).
The caller says which files may be sparse (fewer blocks than bytes: ``st_blocks``, which
its ``fstat`` gave); a dense one, as PostgreSQL's files are, costs no probe at all."""

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


def may_be_sparse(st: os.stat_result) -> bool:
    """Whether the file of ``st`` may have holes: fewer bytes allocated than its size.
    (A compressing filesystem's dense file passes too: :func:`extents` then finds no hole.)"""
    return st.st_blocks * 512 < st.st_size


def allocation(name: str | os.PathLike[str], st: os.stat_result, dir_fd: int | None = None) -> int:
    """The bytes a copy of the regular file ``name`` (of ``dir_fd``), whose ``lstat`` is
    ``st``, writes when it does not clone: its size, less a sparse file's holes as
    ``SEEK_HOLE`` finds them (:func:`copy_data`). Not its ``st_blocks`` alone: where
    ``SEEK_HOLE`` cannot tell (NFSv3, FUSE) or finds no hole (a compressing
    filesystem), fewer blocks than bytes and the copy still writes every byte. A room
    check before such a copy asks for this; a dense file costs no ``open``."""
    if not may_be_sparse(st):
        return st.st_size
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)  # fmt: skip
    except OSError:  # unreadable: the copy says so; gone: it copies nothing
        return st.st_size
    try:
        found = extents(fd, st.st_size)
    except OSError:
        return st.st_size
    finally:
        os.close(fd)
    return st.st_size if found is None else sum(end - start for start, end in found)


def extents(fd: int, size: int) -> list[tuple[int, int]] | None:
    """The data extents ``(start, end)`` of the first ``size`` bytes of ``fd``, in order,
    or None if there is no hole in them (or the filesystem cannot tell). Moves ``fd``'s
    offset."""
    try:
        if os.lseek(fd, 0, os.SEEK_HOLE) >= size:
            return None
        found: list[tuple[int, int]] = []
        off = 0
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno != errno.ENXIO:  # ENXIO: no data after off
                    raise
                break
            if start >= size:
                break
            off = min(size, os.lseek(fd, start, os.SEEK_HOLE))
            found.append((start, off))
        return found
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENXIO):
            return None  # no SEEK_HOLE here (or the file shrank): copied whole
        raise


def copy_data(
    fin: int, fout: int, size: int, methods: list[str], flush: Flush | None = None,
    sparse: bool = False,
) -> str:  # fmt: skip
    """Copy ``size`` bytes with the first method that works; drop from ``methods`` each one
    the filesystem refuses, so the rest of the tree does not try it again. ``flush``: see
    :func:`writeback` (nothing to write back after a reflink). ``sparse``: the file may
    have holes (:func:`may_be_sparse`), which a copy that is not a clone keeps."""
    if size < _FLUSH_MIN:
        flush = None
    while True:
        method = methods[0]
        try:
            if method == "reflink":
                import fcntl

                fcntl.ioctl(fout, FICLONE, fin)
            elif sparse and (data := extents(fin, size)) is not None:
                _copy_extents(fin, fout, size, data, method, flush)
                _trim(fin, fout, size)
            elif method == "copy_file_range":
                if size >= PARALLEL_MIN and (os.cpu_count() or 1) > 1:
                    _copy_ranges_parallel(fin, fout, size, flush)
                    _trim(fin, fout, size)
                else:
                    if sparse:  # extents() moved the offset this copies from
                        os.lseek(fin, 0, os.SEEK_SET)
                    _copy_range(fin, fout, size, flush)
            else:  # to the end of the file, as it is now (it may have grown or shrunk)
                _copy_pread(fin, fout, 0, _TO_THE_END, flush)
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


def _trim(fin: int, fout: int, size: int) -> None:
    """The copy ``fout``, made ``size`` bytes long before its bytes were copied, cut to
    its source's end if the source shrank meanwhile (a log truncated during the copy): no
    zeros past the end that the file never had, as a copy by offset or ``read`` ends."""
    end = os.fstat(fin).st_size
    if end < size:
        os.ftruncate(fout, end)


def _copy_extents(
    fin: int, fout: int, size: int, data: list[tuple[int, int]], method: str,
    flush: Flush | None,
) -> None:  # fmt: skip
    """Copy the ``data`` extents of ``fin`` (:func:`extents`) at the same offsets of the
    new ``fout``, made ``size`` bytes long first: what is not copied stays a hole."""
    os.ftruncate(fout, size)
    total = sum(end - start for start, end in data)
    if method == "read":
        for start, end in data:
            _copy_pread(fin, fout, start, end, flush)
    elif total >= PARALLEL_MIN and (os.cpu_count() or 1) > 1:
        _copy_ranges_parallel(fin, fout, size, flush, data)
    else:
        for start, end in data:
            _copy_span(fin, fout, start, end, _CHUNK if flush else end - start, flush)


def _copy_span(fin: int, fout: int, off: int, end: int, chunk: int, flush: Flush | None) -> None:
    """``copy_file_range`` of the bytes from ``off`` to ``end``, at the same offsets."""
    while off < end:
        done = os.copy_file_range(fin, fout, min(end - off, chunk), off, off)
        if done == 0:  # the file shrank while being copied: copy what there is
            break
        if flush:
            flush(fout, off, done)
        off += done


#: An end past any file: :func:`_copy_pread` stops where the file ends.
_TO_THE_END = 1 << 62


def _copy_pread(fin: int, fout: int, off: int, end: int, flush: Flush | None) -> None:
    """``pread``/``pwrite`` of the bytes from ``off`` to ``end``, at the same offsets."""
    flushed = off
    while off < end and (chunk := os.pread(fin, min(_BLOCK, end - off), off)):
        view = memoryview(chunk)
        while view:
            n = os.pwrite(fout, view, off)
            view = view[n:]
            off += n
        if flush and off - flushed >= _CHUNK:
            flush(fout, flushed, off - flushed)
            flushed = off
    if flush and off > flushed:
        flush(fout, flushed, off - flushed)


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


def _copy_ranges_parallel(
    fin: int, fout: int, size: int, flush: Flush | None = None,
    data: list[tuple[int, int]] | None = None,
) -> None:  # fmt: skip
    """``copy_file_range`` of a large file in one thread per core, each on its own range:
    the kernel's copy is CPU-bound from the page cache (1 GiB: 0.75 s in one thread, 0.43 s
    in two on this 2-core machine); the first range in this thread, and any whose thread
    cannot be started. ``data``: only these extents of a sparse file (:func:`extents`).
    The first error is raised after every thread ended."""
    n = min(4, os.cpu_count() or 1)
    step = -(-size // n)
    errors: list[OSError] = []
    chunk = _CHUNK if flush else size
    gate = _Gate()
    spans = [(0, size)] if data is None else data

    def work(start: int) -> None:
        end = min(size, start + step)
        try:
            for a, b in spans:
                if a < end and b > start:
                    _copy_span(fin, fout, max(a, start), min(b, end), chunk, flush)
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
