"""Whole numbers written in text: ASCII digits only, and not too many of them.

``int()`` takes what no one types as a number (Arabic-Indic '١٢', '1_5', ' 15 ') and refuses what
``str.isdigit()`` lets through: '²', and more than 4300 digits (a ValueError, not a None).
Every number pgmgr reads from a user, a file or the environment goes through here.
"""

from __future__ import annotations

#: More digits than any count, size, port or pid pgmgr reads (2**63 has 19).
MAX_DIGITS = 19


def whole(text: str | None) -> int | None:
    """``text`` as an int if it is 1 to :data:`MAX_DIGITS` ASCII digits, else None."""
    if not text or len(text) > MAX_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    return int(text)
