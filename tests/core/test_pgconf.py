"""Pure pieces of the kept settings: pgmgr.conf's text and the postgres command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgmgr.core import pgconf
from pgmgr.core.errors import UsageError
from pgmgr.core.server import parse_setting, postgres_argv
from pgmgr.core.versions import Installation

INSTALL = Installation("15", "15.4", Path("/pg/15/bin"), "debian")


def test_render_includes_postgresql_conf_first_and_quotes_values() -> None:
    text = pgconf.render({"work_mem": "64MB", "log_line_prefix": "it's \\ #x"}).decode()
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert lines == [
        "unix_socket_permissions = '0700'",  # pgmgr's default, before the user's files
        "include_if_exists = 'postgresql.conf'",
        "work_mem = '64MB'",
        "log_line_prefix = 'it''s \\\\ #x'",
    ]


def test_argv_reads_pgmgr_conf_and_keeps_pgmgrs_own_settings_on_the_command_line() -> None:
    argv = postgres_argv(
        INSTALL, Path("/d"), host="127.0.0.1", port=5433, socket_dir=Path("/s"),
        settings={}, config_file=Path("/d/pgmgr.conf"),
    )  # fmt: skip
    assert argv[argv.index("-c", argv.index("-k")) :] == [
        "-c", "listen_addresses=127.0.0.1", "-c", "config_file=/d/pgmgr.conf",
    ]  # fmt: skip


def test_config_file_is_pgmgrs() -> None:
    with pytest.raises(UsageError, match="config_file"):
        parse_setting("config_file=/etc/evil.conf")


def test_parse_assignments_needs_something() -> None:
    with pytest.raises(UsageError, match="nothing to set"):
        pgconf.parse_assignments([])
    assert pgconf.parse_assignments(["a.b=1", "work_mem=2MB"]) == {"a.b": "1", "work_mem": "2MB"}


@pytest.mark.parametrize(
    ("quoted", "value"),
    [
        ("'it''s'", "it's"),
        ("'it\\'s'", "it's"),  # both escapes of guc-file.l's STRING
        ("'a\\\\b'", "a\\b"),
        ("'tab\\there\\n'", "tab\there\n"),
        ("'\\101\\60x\\q'", "A0xq"),  # octal, and any other escaped character is itself
        ("''", ""),
        ("unquoted", "unquoted"),
        # octal escapes are bytes, the string ends at a NUL (postgres -C prints 'aéb', 'a')
        ("'a\\303\\251b'", "a\u00e9b"),
        ("'a\\000b'", "a"),
    ],
)
def test_unquote_value_reads_as_postgresql_does(quoted: str, value: str) -> None:
    import re

    assert pgconf.unquote_value(quoted) == value
    if quoted.startswith("'"):
        assert re.fullmatch(pgconf.QUOTED, quoted)
    assert pgconf.unquote_value(pgconf.quote_value(value)) == value
