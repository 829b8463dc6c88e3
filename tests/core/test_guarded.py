"""``entry.guarded``, the one place where errors become exit codes, given an interrupt that
came while a failure cleaned up (``sigguard.redeliver`` raises it from that failure): both
are said, the failure's ``Error:`` line and then ``Interrupted``, exit 130. The failure is
made up here (the mapper's own input: the signal paths that raise it are tested on real
servers in tests/reliability/test_failed_start_signals.py); an OSError cause printed only
``Interrupted``, so the reason the command failed was lost."""

from __future__ import annotations

import errno

import pytest

from pgmgr import entry
from pgmgr.core.errors import DatabaseException


def _interrupted_during(failure: BaseException) -> None:
    raise KeyboardInterrupt from failure


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (DatabaseException("postgres exited during start-up"), "Error: postgres exited"),
        (
            OSError(errno.ENOSPC, "No space left on device", "/srv/pg/data"),
            "Error: No space left on device: /srv/pg/data",
        ),
    ],
)
def test_an_interrupt_during_a_failures_clean_up_says_both(
    failure: BaseException, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert entry.guarded(lambda: _interrupted_during(failure)) == 130
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1] == "Interrupted", lines
    (error,) = [ln for ln in lines if ln.startswith("Error:")]
    assert error.startswith(said), lines


def test_a_plain_interrupt_says_only_that(capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    assert entry.guarded(interrupted) == 130
    assert capsys.readouterr().err == "Interrupted\n"
