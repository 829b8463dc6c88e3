"""Text pgmgr hands to PostgreSQL and libpq: SQL identifier and literal quoting, conninfo
values, new passwords."""

from __future__ import annotations

from collections.abc import Iterable


def new_password() -> str:
    import secrets

    return secrets.token_urlsafe(18)


def dsn_quote(value: str) -> str:
    """A conninfo (``key=value``) value, quoted when it needs to be."""
    if value and all(c.isalnum() or c in "/._-" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


#: How much of a name or value the user gave an error line quotes (a 100 KB value was
#: echoed whole, by pgmgr and by postgres's own FATAL line).
CLIP = 60


def clip(text: str, limit: int = CLIP) -> str:
    """``text``, or its first ``limit`` characters and an ellipsis."""
    return text if len(text) <= limit else text[:limit] + "\u2026"


def clip_in(text: str, given: Iterable[str], limit: int = CLIP) -> str:
    """``text`` (a message, postgres's words) with each string of ``given`` longer than
    ``limit`` :func:`clip`-ped where it appears (as given, or lower-cased: postgres says a
    parameter's name so)."""
    long = {g for s in given if len(s) > limit for g in (s, s.lower())}
    for s in sorted(long, key=len, reverse=True):
        text = text.replace(s, clip(s, limit))
    return text
