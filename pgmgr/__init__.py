"""pgmgr: create, run and inspect local PostgreSQL servers.

The library API (``Manager``) follows the servermgr.postgres seed; the CLI is ``pgmgr``.
Heavy modules are imported lazily so that ``import pgmgr`` stays cheap.
"""

from __future__ import annotations

from pgmgr.core.errors import DatabaseException, PgmgrError, WorkerError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms

__version__ = "0.1.0"

__all__ = ["DatabaseException", "Manager", "PgmgrError", "WorkerError", "__version__"]

if TYPE_CHECKING:
    from typing import Any

    from pgmgr.core.manager import Manager


def __getattr__(name: str) -> Any:
    if name == "Manager":
        from pgmgr.core.manager import Manager

        return Manager
    raise AttributeError(f"module 'pgmgr' has no attribute {name!r}")
