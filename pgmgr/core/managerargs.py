"""The :class:`~pgmgr.core.manager.Manager`'s arguments, checked before anything is made.

A library caller passes Python values, not command-line text: ``None`` for a host, ``True``
for a port, bytes for a path, a string where a list belongs. Each is refused here with a
:class:`DatabaseException` naming the argument, instead of a ``TypeError`` or
``AttributeError`` from deep inside, a value silently changed (``True`` became port 1, a
string of initdb arguments was split into characters) or a record the CLI then reads as
broken (``password=5``, ``host=None``). Paths are made absolute here, once: a relative
``socket_dir`` given to the constructor was resolved against the working directory of a
later ``start()`` (after a ``chdir``, a directory in another place, ``/`` even).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pgmgr.core import loopback, numtext
from pgmgr.core.errors import DatabaseException

#: Options whose value is text (``socket_dir`` and ``log_file`` may be path-like too).
TEXT_OPTIONS = ("user", "superuser", "auth", "password", "name", "encoding", "locale", "stop_mode")
PATH_OPTIONS = ("socket_dir", "log_file")
LOOPBACK_HELP = loopback.ALLOWED


def host(value: object) -> str:
    """``value`` if every address in it is a loopback one (a Manager's server is reachable
    from this machine only, whatever the caller passes); '' is the unix socket only.

    :raises DatabaseException: not a string, or an address that is not loopback.
    """
    if not isinstance(value, str):
        raise DatabaseException(f"invalid host {value!r}: a string ({LOOPBACK_HELP})")
    if not value.strip():
        return ""
    why = loopback.message(value, "host")
    if why:
        raise DatabaseException(why)
    return value


def port(value: object) -> int:
    """A port number (an int, or a string of digits as the seed's command line gave).

    :raises DatabaseException: anything else (a bool, a float, out of range).
    """
    number = numtext.whole(value.strip()) if isinstance(value, str) else None
    if number is not None:  # '١٢' and '1_5' stay strings, refused below
        value = number
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise DatabaseException(f"invalid port {value!r}: a number from 1 to 65535")
    return value


def path(value: object, what: str) -> Path:
    """``value`` (a str or path-like) made absolute against the current directory now.

    :raises DatabaseException: not a text path, or empty.
    """
    text = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
    if not isinstance(text, str):
        raise DatabaseException(f"invalid {what} {value!r}: a path (str or os.PathLike)")
    if not text:
        raise DatabaseException(f"{what} is required")
    return Path(os.path.abspath(text))


def version(value: object) -> str | None:
    """``pg_version``: a string ('15', '15.4'; '' for pgmgr's choice) or an int (15).

    :raises DatabaseException: anything else, or not a version.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise DatabaseException(f"invalid pg_version {value!r}: a string such as '15' or '15.4'")
    if not value.strip():
        return None
    from pgmgr.core import versions
    from pgmgr.core.errors import PgmgrError

    try:
        return versions.check_version_string(value, "pg_version")
    except PgmgrError as e:
        raise DatabaseException(e.message) from None


def _setting(name: object, value: object) -> object:
    """A ``settings`` value as :func:`options` keeps it: a string or number as it is, a
    path as its text.

    :raises DatabaseException: a name that is not a string, or another type of value.
    """
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(name, str) or not isinstance(text, (str, int, float)):
        raise DatabaseException(
            f"invalid settings {{{name!r}: {value!r}}}: a name and a string, number or path"
        )
    return text


def options(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword options, checked; ``None`` (and '' for a path) means the default,
    paths are absolute.

    :raises DatabaseException: a value of the wrong type.
    """
    out = {k: v for k, v in kwargs.items() if v is not None}
    for key in PATH_OPTIONS:
        if out.get(key) == "":  # the default, as it always was
            del out[key]
    for key in TEXT_OPTIONS:
        if key in out and not isinstance(out[key], str):
            raise DatabaseException(f"invalid {key} {out[key]!r}: a string")
    for key in PATH_OPTIONS:
        if key in out:
            out[key] = str(path(out[key], key))
    if out.get("password") == "":
        raise DatabaseException(
            "invalid password '': PostgreSQL has no empty passwords (the url could not log "
            "in); leave it out for a generated one"
        )
    if "settings" in out and not isinstance(out["settings"], Mapping):
        raise DatabaseException(f"invalid settings {out['settings']!r}: a dict of name: value")
    if "settings" in out:  # None was written as 'None' into pgmgr.conf, after the init
        # a path (ssl_cert_file=Path(...)) is its text, as every path option here takes one
        out["settings"] = {k: _setting(k, v) for k, v in out["settings"].items()}
    extra = out.get("initdb_args", [])
    if not isinstance(extra, (list, tuple)) or not all(isinstance(a, str) for a in extra):
        raise DatabaseException(f"invalid initdb_args {extra!r}: a list of strings")
    if not isinstance(out.get("register", True), bool):
        raise DatabaseException(f"invalid register {out['register']!r}: True or False")
    return out


def timeout(value: object, what: str = "timeout", *, none_ok: bool = False) -> Any:
    """A number of seconds, not negative (``None`` too when ``none_ok``: no limit).

    :raises DatabaseException: anything else.
    """
    if value is None and none_ok:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise DatabaseException(f"invalid {what} {value!r}: a number of seconds, 0 or more")
    return value
