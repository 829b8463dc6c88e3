"""TEMPORARY stand-in for the lead's privilege boundary (replaced by main's on merge)."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import Any, TypeVar

from pgmgr.core.errors import DatabaseException
from pgmgr.core.privileges import ServerUser

T = TypeVar("T")


class UnsafePath(DatabaseException):
    pass


def as_user(user: ServerUser | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    if user is None or user.uid == os.geteuid():
        return fn(*args, **kwargs)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        try:
            os.setgroups(list(user.groups))
            os.setgid(user.gid)
            os.setuid(user.uid)
            os.umask(0o077)
            out: tuple[bool, Any] = (True, fn(*args, **kwargs))
        except BaseException as e:
            out = (False, e)
        try:
            data = pickle.dumps(out)
        except Exception as e:
            data = pickle.dumps((False, DatabaseException(str(e))))
        with os.fdopen(w, "wb") as f:
            f.write(data)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    if not data:
        raise DatabaseException("child process died")
    ok, value = pickle.loads(data)  # noqa: S301
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


def open_dir(path: os.PathLike[str] | str) -> int:
    p = os.path.abspath(path)
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    for part in [x for x in p.split("/") if x]:
        try:
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError as e:
            os.close(fd)
            raise UnsafePath(f"cannot open {p} safely: {e.strerror}") from None
        os.close(fd)
        fd = nfd
    return fd


def others_can_write(path: os.PathLike[str] | str) -> bool:
    return False
