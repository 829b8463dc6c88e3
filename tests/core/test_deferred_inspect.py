"""The fast paths defer importing inspect (pgmgr.entry.defer_inspect); a child of as_user,
which as root may no longer reach Python's library, must find it imported already."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHILD_USES_INSPECT = """
import sys
from pgmgr.entry import defer_inspect
defer_inspect()
from pgmgr.core import privileges, userfs

def work():
    import inspect  # the stand-in, or the real module
    return inspect.isclass(int)

assert type(sys.modules["inspect"]).__name__ == "_DeferredInspect"
print(userfs.as_user(privileges.lookup("postgres"), work))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="as_user forks only as root")
def test_as_user_child_can_use_a_deferred_inspect() -> None:
    # As root this interpreter lives under /root (unreachable by postgres): the child could
    # not import inspect itself.
    proc = subprocess.run(
        [sys.executable, "-c", CHILD_USES_INSPECT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "True\n"


def test_every_dataclass_has_a_docstring() -> None:
    """dataclasses imports inspect to write a signature as the docstring of a class that has
    none: one such class on a fast path loads it (~5 ms) for nothing."""
    import ast

    from tests.helpers import REPO

    missing = []
    for path in sorted((REPO / "pgmgr").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ClassDef)
                and any("dataclass" in ast.unparse(d) for d in node.decorator_list)
                and ast.get_docstring(node) is None
            ):
                missing.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not missing
