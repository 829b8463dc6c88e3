"""What the spinners of snapshot, restore and branch say on a terminal: the step under
way and the size it copies (they showed only the elapsed time). Each command is held at a
test-only pause inside its copy until the spinner (shown after 0.15 s) has said that step
(it was held half a second: a spinner drawn late on a loaded machine could miss it)."""

from __future__ import annotations

import re

import pytest

from tests.cli.test_terminal import run_in_pty
from tests.snap.conftest import Inst


def _plain(out: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)


@pytest.mark.parametrize(
    ("args", "step", "said"),
    [
        (["snapshot", "dev", "s1"], "snapshot-indexed",
         r"Taking a snapshot of 'dev': copying up to [\d.]+ MB \d+\.\ds"),
        (["restore", "dev", "base", "--yes"], "restore-linked",
         r"Restoring 'base' into 'dev': copying what changed of [\d.]+ MB \d+\.\ds"),
        (["restore", "dev", "base", "--yes"], "restore-staged",
         r"Restoring 'base' into 'dev': swapping it in \d+\.\ds"),
        (["branch", "dev", "feat"], "branch-copied",
         r"Branching 'dev' into 'feat': copying up to [\d.]+ MB \d+\.\ds"),
    ],
)  # fmt: skip
def test_the_spinner_says_the_step_and_the_size(
    inst: Inst, args: list[str], step: str, said: str
) -> None:
    if args[0] == "restore":
        inst.ok("snapshot", "dev", "base", "-q")
        inst.sql("DELETE FROM t WHERE x > 10")
    hooks = inst.datadir.parent / "hooks"  # reachable by the server user (pauses as_user)
    hooks.mkdir()
    hooks.chmod(0o777)
    (hooks / step).touch()

    def release(out: str) -> None:  # once the spinner said it: not after a fixed time
        if re.search(said, _plain(out)):
            (hooks / f"{step}.go").touch()

    try:
        code, out = run_in_pty(
            args, inst.datadir.parent, {"COLUMNS": "80", "PGMGR_TEST_PAUSE": str(hooks)}, release
        )
    finally:
        (hooks / f"{step}.go").touch()
    text = _plain(out)
    assert code == 0, text
    assert re.search(said, text), text
