"""Regular expressions compiled on first use.

Compiling a pattern costs 0.1-0.5 ms of pure Python (``re._compiler``); a module-level
``re.compile`` pays it at import, in every command, for patterns most commands never use
(``pgmgr status`` imported eight, ~2.5 ms of its run).
"""

from __future__ import annotations

import re


class LazyRegex:
    """The ``match``/``search``/``fullmatch`` of ``re.compile(pattern, flags)``, compiled
    the first time one of them is called."""

    __slots__ = ("_compiled", "flags", "pattern")

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self.pattern = pattern
        self.flags = flags
        self._compiled: re.Pattern[str] | None = None

    @property
    def compiled(self) -> re.Pattern[str]:
        if self._compiled is None:
            self._compiled = re.compile(self.pattern, self.flags)
        return self._compiled

    def match(self, text: str) -> re.Match[str] | None:
        return self.compiled.match(text)

    def search(self, text: str) -> re.Match[str] | None:
        return self.compiled.search(text)

    def fullmatch(self, text: str) -> re.Match[str] | None:
        return self.compiled.fullmatch(text)
