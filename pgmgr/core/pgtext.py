"""Text pgmgr hands to PostgreSQL and libpq: SQL identifier and literal quoting, conninfo
values, new passwords."""

from __future__ import annotations


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
