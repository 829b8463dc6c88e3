"""The type each field of an instance record must have (a record is a JSON file a user
may have edited): :func:`check_types` says which is wrong, in JSON's words."""

from __future__ import annotations

from collections.abc import Callable

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from typing import Any


def check_types(values: dict[str, Any]) -> None:
    """:raises ValueError: a value of ``values`` (known fields only) has the wrong type."""
    for key, value in values.items():
        check, wanted = FIELD_TYPES[key]
        if not check(value):
            raise ValueError(f"{key!r} must be {wanted}, not {_json_type(value)}")


def _is_str(v: object) -> bool:
    return isinstance(v, str)


def _is_opt_str(v: object) -> bool:
    return v is None or isinstance(v, str)


def _is_opt_int(v: object) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool))


def _is_opt_number(v: object) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool))


def _is_settings(v: object) -> bool:
    return isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(x, str) for k, x in v.items()
    )


def _is_opt_dict(v: object) -> bool:
    return v is None or isinstance(v, dict)


def _is_bool(v: object) -> bool:
    return isinstance(v, bool)


_STR = (_is_str, "a string")
_OPT_STR = (_is_opt_str, "a string or null")
_OPT_INT = (_is_opt_int, "an integer or null")
_OPT_NUMBER = (_is_opt_number, "a number or null")
#: field -> (check, what the check wants); a test keeps it in step with the dataclass.
FIELD_TYPES: dict[str, tuple[Callable[[object], bool], str]] = {
    **dict.fromkeys(
        ("name", "datadir", "major", "version", "bindir", "host", "superuser", "auth", "origin"),
        _STR,
    ),
    **dict.fromkeys(("port", "pid", "dev", "ino", "system_id"), _OPT_INT),
    **dict.fromkeys(("started_at", "created_at"), _OPT_NUMBER),
    **dict.fromkeys(("socket_dir", "log_file", "server_user", "password"), _OPT_STR),
    **dict.fromkeys(("primary", "slot", "repl_role", "repl_password"), _OPT_STR),
    **dict.fromkeys(("pending", "pending_from"), _OPT_STR),
    "settings": (_is_settings, "an object of strings"),
    **dict.fromkeys(("password_pending", "password_reset"), (_is_bool, "true or false")),
    **dict.fromkeys(("intent", "stopped_by"), (_is_opt_dict, "an object or null")),
}


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__  # pragma: no cover - not from JSON
