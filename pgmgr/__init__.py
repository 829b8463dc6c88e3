"""pgmgr: create, run and inspect local PostgreSQL servers.

The library API (``Manager``) follows the servermgr.postgres seed; the CLI is ``pgmgr``.
Heavy modules are imported lazily so that ``import pgmgr`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgmgr.core.errors import DatabaseException, PgmgrError, WorkerError

__version__ = "0.1.0"

__all__ = ["DatabaseException", "Manager", "PgmgrError", "WorkerError", "__version__"]

if TYPE_CHECKING:
    from pgmgr.core.manager import Manager


def __getattr__(name: str) -> Any:
    if name == "Manager":
        from pgmgr.core.manager import Manager

        return Manager
    raise AttributeError(f"module 'pgmgr' has no attribute {name!r}")
