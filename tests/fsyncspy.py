"""Observing fsync for the durability tests: a power cut cannot be real in a test, so they
record which files and directories ``os.fsync`` was given (the renames, files and servers
around it are real) and check the order against the step that depends on it."""

from __future__ import annotations

import os

import pytest


def spy(m: pytest.MonkeyPatch, events: list[object]) -> None:
    """Append :func:`mark` of each fd ``os.fsync`` gets to ``events``, then fsync it."""
    real = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        events.append(("fsync", st.st_dev, st.st_ino))
        real(fd)

    m.setattr(os, "fsync", fsync)


def mark(path: str | os.PathLike[str]) -> tuple[str, int, int]:
    """What :func:`spy` appends when ``path`` is fsynced."""
    st = os.stat(path)
    return ("fsync", st.st_dev, st.st_ino)
