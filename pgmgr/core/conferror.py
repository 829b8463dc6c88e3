"""Why PostgreSQL says a configuration file "contains errors": the LOG line before that
FATAL names the real problem, in the file the user wrote (postgresql.conf, included by
pgmgr.conf), where the FATAL names only the file that included it.

A syntax error in a hand-edited postgresql.conf was reported by start, restart and config
set as 'configuration file ".../pgmgr.conf" contains errors': a file the user never edits.
"""

from __future__ import annotations

from pgmgr.core.lazyre import LazyRegex

#: The LOG lines that say what the error is (guc-file.l's messages).
_CAUSE_RE = LazyRegex(
    r"\bLOG:\s+(.*(?:parameter|syntax error in file|could not open configuration file|"
    r"nested too deeply|could not read configuration|could not open configuration dir).*)"
)
_CONTAINS_RE = LazyRegex(r'configuration file "([^"]+)" contains errors')


def cause(log: str, fatal: str) -> str | None:
    """What the FATAL line ``fatal`` ('configuration file "F" contains errors') stands for,
    from the LOG lines of ``log`` before it, in the words a FATAL line would use; None when
    ``fatal`` is not that or no LOG line says more."""
    m = _CONTAINS_RE.search(fatal)
    if m is None:
        return None
    causes = [c.group(1).strip() for c in map(_CAUSE_RE.search, log.splitlines()) if c]
    if not causes:
        return None
    last = causes[-1]
    if ' in file "' in last or "configuration file" in last:  # names its file and line
        return last
    return f"{last} (in {m.group(1)})"
