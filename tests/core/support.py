"""Helpers shared by the core tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from pgmgr import Manager

VERSIONS = ("15", "18")
TEMPLATE_PASSWORD = "template-secret"
ISOLATED_ENV = ("POSTGRES_VERSION", "PGMGR_PG_ROOT", "PGMGR_PG_PATHS", "PGMGR_SOURCES")


def is_root() -> bool:
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(not is_root(), reason="needs root (privilege drop)")
needs_non_root = pytest.mark.skipif(is_root(), reason="only meaningful when not root")


ManagerFactory = Callable[..., Manager]
