"""The bytes of a tree's large files, copied by a background thread while
:func:`pgmgr.core.copy.copy_tree` goes on creating the other files.

A copy of a data directory is two kinds of work: creating ~1,000 small files (catalogs,
free-space maps; a few ms of CPU each when the filesystem makes inode allocation slow,
as journal-less ext4 does for a minute after many deletions) and moving the bytes of a
few large ones (relation segments, WAL: waits for the disk when the copy is flushed).
One after the other they add up; here the second overlaps the first. The walk opens
and creates each file itself (so every entry is made in order, exclusively, by the
walking thread) and hands the two descriptors over; the pool copies, sets the mode and
closes them.

The first error stops the copy: the walk raises it at its next hand-over or at
:meth:`Pool.close`. An interrupt or error in the walk makes the pool stop between chunks
and drop what is queued, and :meth:`Pool.close` returns only once the thread has ended,
so the caller removes a partial copy no thread still writes to. Where no thread can be
started (``ulimit -u``), files are copied in line as before.
"""

from __future__ import annotations

import collections
import errno
import os
import threading

from pgmgr.core import copydata

#: Files at least this large have their bytes copied by the pool (WAL segments: 16 MiB).
OFFLOAD_MIN = 8 << 20
#: Files handed over and not yet copied, at most (two descriptors each).
_QUEUE = 8
#: The attribute of an :class:`OSError`: the path (under the top) it failed on (copy.py's).
WHERE = "pgmgr_copy_where"


class Job:
    """One file to hand over: its two descriptors, closed once by whoever owns them: the
    caller until :meth:`Pool.take` has queued it, then the pool (:meth:`Pool.holds`)."""

    def __init__(self, fin: int, fout: int, size: int, mode: int | None, rel: str) -> None:
        self.fin, self.fout, self.size, self.mode, self.rel = fin, fout, size, mode, rel
        self.taken = False  # by the thread (under the pool's lock)
        self.sparse = False  # it may have holes (copydata.may_be_sparse)

    def close(self) -> None:
        try:
            os.close(self.fout)
        finally:
            os.close(self.fin)


class Pool:
    """One copy's background thread, started on the first hand-over."""

    def __init__(self, methods: list[str], flush: copydata.Flush | None) -> None:
        self.methods = methods
        self.flush = flush
        #: (method, bytes) of each file copied
        self.done: list[tuple[str, int]] = []
        self.error: BaseException | None = None
        self._pending: collections.deque[Job | None] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._cannot = False
        self._stop = threading.Event()

    def take(self, job: Job) -> bool:
        """Copy ``job.size`` bytes from ``job.fin`` to ``job.fout`` in the background,
        ``fchmod`` to ``job.mode`` if not None, and close both: True. False if no thread
        could be started: the caller copies. Whether the descriptors are the pool's, also
        when this raises (a Ctrl-C at any point of it): :meth:`holds`.

        :raises OSError: an earlier file's copy failed (what it raised)."""
        if self._thread is None:
            if self._cannot:
                return False
            # Known to close() before it starts: a Ctrl-C while start() waits for it to
            # run leaves it running (close() ends it).
            thread = self._thread = threading.Thread(
                target=self._run, name="pgmgr-copy", daemon=True
            )
            try:
                thread.start()
            except RuntimeError:  # can't start new thread
                self._thread, self._cannot = None, True
                return False
        if self.error is not None:
            raise self.error
        with self._cond:
            while len(self._pending) >= _QUEUE:
                self._cond.wait()
            self._pending.append(job)
            self._cond.notify_all()
        return True

    def holds(self, job: Job) -> bool:
        """Whether ``job``'s descriptors are the pool's (queued by :meth:`take`): from
        then on the pool closes them, and the caller must not."""
        with self._cond:
            return job.taken or job in self._pending

    def close(self, ok: bool = True) -> None:
        """Wait for the thread to end (after what is queued if ``ok``, else at once).

        :raises OSError: ``ok`` and a copy failed."""
        if self._thread is None:
            return
        if not ok:
            self._stop.set()
        interrupted: BaseException | None = None
        with self._cond:
            self._pending.append(None)
            self._cond.notify_all()
        while self._thread.is_alive():
            try:
                self._thread.join()
            except BaseException as e:  # a Ctrl-C: stop at once, still wait for the end
                self._stop.set()
                interrupted = interrupted or e
        if interrupted is not None:
            raise interrupted
        if ok and self.error is not None:
            raise self.error

    def _next(self) -> Job | None:
        with self._cond:
            while not self._pending:
                self._cond.wait()
            job = self._pending.popleft()
            if job is not None:
                job.taken = True
            self._cond.notify_all()
            return job

    def _run(self) -> None:
        while (job := self._next()) is not None:
            try:
                done = None
                try:
                    if self.error is None and not self._stop.is_set():
                        method = copydata.copy_data(
                            job.fin,
                            job.fout,
                            job.size,
                            self.methods,
                            self._checked,
                            job.sparse,
                        )
                        if job.mode is not None:
                            os.fchmod(job.fout, job.mode)
                        done = (method, job.size)
                finally:
                    job.close()  # may fail too (EIO: NFS reports a failed write at close)
                if done is not None:
                    self.done.append(done)
            except BaseException as e:  # raised by the walk: at its next hand-over or close
                if self.error is None and not (self._stop.is_set() and isinstance(e, OSError)):
                    e.__dict__.setdefault(WHERE, job.rel)
                    self.error = e

    def _checked(self, fd: int, off: int, n: int) -> None:
        """Between two chunks: stop if told to; start the chunk's writeback if flushing.
        (Passed even without flushing: a large file is then copied in chunks, so a stop
        does not wait for a whole 1 GiB segment.)"""
        if self._stop.is_set():
            raise OSError(errno.ECANCELED, "copy stopped")
        if self.flush is not None:
            self.flush(fd, off, n)
