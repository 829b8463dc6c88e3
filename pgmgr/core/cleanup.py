"""Clean-up after work that failed or was interrupted, such that the original exception
wins: a Ctrl-C stays "Interrupted" (exit 130), a real error keeps its message.

A clean-up in a ``finally`` or ``except BaseException`` block that removes a work
directory, a staged copy or a held entry can fail too: something still writing in it, a
directory its user cannot empty. Raised there, its error replaced the exception on its
way out ("Error: Directory not empty: data" instead of "Interrupted"). What such a
clean-up leaves has a work name (``.tmp-*`` in a snapshot store, a pid in the name
elsewhere) that the next command's sweep removes, so dropping its error loses nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from pgmgr.core.errors import PgmgrError

#: What a failed clean-up raises that is dropped when another exception is on its way.
FAILURES = (OSError, PgmgrError)


def quietly(*steps: Callable[[], object]) -> None:
    """Run each of ``steps`` (all of them), dropping their :data:`FAILURES`: for an
    ``except BaseException:`` block that re-raises."""
    for step in steps:
        with contextlib.suppress(*FAILURES):
            step()


@contextlib.contextmanager
def always(*steps: Callable[[], object]) -> Iterator[None]:
    """Run ``steps`` in order when the block ends, however it ends (a ``finally``).
    Ended by an exception, every step runs, a step's :data:`FAILURES` are dropped and the
    exception goes on; ended normally, a step that fails raises (the later ones skipped)."""
    try:
        yield
    except BaseException:
        quietly(*steps)
        raise
    for step in steps:
        step()


@contextlib.contextmanager
def on_failure(*steps: Callable[[], object]) -> Iterator[None]:
    """Run ``steps`` if the block raises (:func:`quietly`), then re-raise."""
    try:
        yield
    except BaseException:
        quietly(*steps)
        raise
