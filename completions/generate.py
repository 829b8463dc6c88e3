"""Write the bash, zsh and fish completion scripts for pgmgr into this directory.

    python completions/generate.py          # rewrite them
    python completions/generate.py --check  # exit 1 if any is out of date

The scripts call back into ``pgmgr`` for the candidates, so instance names complete
dynamically from the registry.
"""

from __future__ import annotations

import sys
from pathlib import Path

from typer._completion_shared import get_completion_script

from pgmgr import zshcomplete

HERE = Path(__file__).resolve().parent
FILES = {"bash": "pgmgr.bash", "zsh": "_pgmgr", "fish": "pgmgr.fish"}


def script(shell: str) -> str:
    zshcomplete.install()
    text = get_completion_script(prog_name="pgmgr", complete_var="_PGMGR_COMPLETE", shell=shell)
    return text.rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for shell, name in FILES.items():
        path = HERE / name
        want = script(shell)
        have = path.read_text() if path.exists() else None
        if have != want:
            stale.append(name)
            if not check:
                path.write_text(want)
    if check and stale:
        print("out of date: " + ", ".join(stale) + " (run python completions/generate.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
