"""Make a table fit a terminal's width without cutting what matters (pure functions).

Widths are counted in terminal cells (:func:`cells`): a CJK character takes two, as on the
screen, so a data directory named ``日本語`` neither pushes its row's later columns out of
line nor its table past the width.

Only columns marked ``path`` are ever shortened: first ``~`` stands for the home directory,
then paths lose characters in the middle (``/opt/pgmgr-…/pginstall/bin``: the start and the
last components stay), never below :data:`MIN_PATH` characters. If even that does not fit,
the path columns (and long free-text columns marked ``below``) move to a second table below,
next to the row's key columns, where they have the width to themselves (one table each when
they do not fit whole side by side). Every other column
(names, versions, states, host:port) is never touched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

#: The gap between two columns, in the plain and the Rich rendering alike.
GAP = 2
#: Narrower than this, an elided path says too little: move it below instead.
MIN_PATH = 24
#: In the table below, paths may be elided down to this.
MIN_PATH_BELOW = 12
#: A ``wrap`` column narrower than this would be a word per line: it moves below instead.
MIN_WRAP = 20
ELLIPSIS = "…"


@dataclass(frozen=True)
class Col:
    """A column: ``path`` cells may be shortened or moved below, ``below`` ones (long free
    text) only moved; ``key`` columns identify the row in the table below (the first column
    when none is marked)."""

    title: str
    path: bool = False
    key: bool = False
    below: bool = False
    wrap: bool = False  # free text that may go on over continuation lines

    @property
    def movable(self) -> bool:
        return self.path or self.below


Table = tuple[list[Col], list[list[str]]]


def cells(text: str) -> int:
    """The terminal cells ``text`` takes: East Asian wide and full-width characters two,
    combining marks none, any other one (as Rich counts them)."""
    if text.isascii():
        return len(text)
    import unicodedata

    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


def _head(text: str, room: int) -> str:
    """The longest start of ``text`` that takes at most ``room`` cells."""
    end = len(text)
    while end and cells(text[:end]) > room:
        end -= 1
    return text[:end]


def _tail(text: str, room: int) -> str:
    """The longest end of ``text`` that takes at most ``room`` cells."""
    start = 0
    while start < len(text) and cells(text[start:]) > room:
        start += 1
    return text[start:]


def pad(text: str, width: int) -> str:
    """``text`` padded with spaces to ``width`` cells (``str.ljust`` counts characters)."""
    return text + " " * (width - cells(text))


def home_short(text: str, home: str | None = None) -> str:
    """``/home/me/proj/data`` -> ``~/proj/data`` (only the invoking user's home)."""
    home = (home if home is not None else os.path.expanduser("~")).rstrip("/")
    if not home:
        return text
    if text == home:
        return "~"
    if text.startswith(home + "/"):
        return "~" + text[len(home) :]
    return text


def elide(text: str, width: int) -> str:
    """``text`` in at most ``width`` cells: its start, ``…``, and as many of its last
    path components as fit in two thirds of the room."""
    if cells(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    room = width - 1
    tail_room = max(1, room * 2 // 3)
    parts = text.split("/")
    tail = ""
    for part in reversed(parts[1:]):
        candidate = "/" + part + tail
        if cells(candidate) > tail_room:
            break
        tail = candidate
    if not tail:
        tail = _tail(text, tail_room)
    return _head(text, room - cells(tail)) + ELLIPSIS + tail


def widths(cols: Sequence[Col], rows: Sequence[Sequence[str]]) -> list[int]:
    out = [cells(c.title) for c in cols]
    for row in rows:
        out = [max(w, cells(cell)) for w, cell in zip(out, row, strict=True)]
    return out


def total(cols: Sequence[Col], rows: Sequence[Sequence[str]]) -> int:
    return sum(widths(cols, rows)) + GAP * (len(cols) - 1)


def _caps(natural: list[int], room: int, floor: int) -> list[int] | None:
    """Widths for the path columns: the widest are narrowed first, none below ``floor``
    (or its natural width); None when ``room`` cannot hold them."""
    cap = max(natural, default=0)
    while cap > 0:
        sizes = [min(w, cap) for w in natural]
        if sum(sizes) <= room:
            return sizes
        if cap <= floor:
            return None
        cap -= 1
    return None


def _elided(cols: list[Col], rows: list[list[str]], width: int, floor: int) -> Table | None:
    natural = widths(cols, rows)
    fixed = sum(w for w, c in zip(natural, cols, strict=True) if not c.path)
    room = width - fixed - GAP * (len(cols) - 1)
    paths = [w for w, c in zip(natural, cols, strict=True) if c.path]
    caps = _caps(paths, room, floor)
    if caps is None:
        return None
    cap_of = iter(caps)
    limits = [next(cap_of) if c.path else w for w, c in zip(natural, cols, strict=True)]
    new_rows = [
        [
            elide(cell, lim) if c.path else cell
            for cell, c, lim in zip(row, cols, limits, strict=True)
        ]
        for row in rows
    ]
    return cols, new_rows


def fit(
    cols: Sequence[Col], rows: Sequence[Sequence[str]], width: int | None, home: str | None = None
) -> list[Table]:
    """One table that fits ``width`` (None: any width), or two: the second holds the path
    (and free-text) columns that could not stay readable in the first."""
    cols = list(cols)
    if width is None or total(cols, rows) <= width:
        return [(cols, [list(r) for r in rows])]
    short = [
        [home_short(x, home) if c.path else x for x, c in zip(r, cols, strict=True)] for r in rows
    ]
    return _shortened(cols, short, width)


def wrapped(cols: list[Col], rows: list[list[str]], width: int) -> list[list[str]] | None:
    """Rows whose ``wrap`` column goes on over continuation lines (other cells empty) so
    the table fits ``width``; None when no such column or too little room."""
    import textwrap

    sizes = widths(cols, rows)
    which = [i for i, c in enumerate(cols) if c.wrap]
    if not which:
        return None
    i = which[0]
    room = width - (sum(sizes) - sizes[i]) - GAP * (len(cols) - 1)
    if room < max(MIN_WRAP, cells(cols[i].title)):
        return None
    out = []
    for row in rows:
        pieces = _in_cells(textwrap.wrap(row[i], room, break_on_hyphens=False), room) or [""]
        out.append([*row[:i], pieces[0], *row[i + 1 :]])
        out += [["" if j != i else p for j in range(len(cols))] for p in pieces[1:]]
    return out


def _in_cells(pieces: list[str], room: int) -> list[str]:
    """``pieces`` (wrapped to ``room`` characters by textwrap) cut again where one takes
    more than ``room`` cells: a CJK comment wrapped to the room in characters took twice
    it."""
    out = []
    for piece in pieces:
        while cells(piece) > room:
            head = _head(piece, room) or piece[0]
            out.append(head)
            piece = piece[len(head) :].lstrip(" ")
        out.append(piece)
    return out


def _shortened(cols: list[Col], rows: list[list[str]], width: int) -> list[Table]:
    if total(cols, rows) <= width:
        return [(cols, rows)]
    wrapped_rows = wrapped(cols, rows, width)
    if wrapped_rows is not None:
        return [(cols, wrapped_rows)]
    if not any(c.movable for c in cols):
        return [(cols, rows)]
    one = _elided(cols, rows, width, MIN_PATH)
    if one is not None:
        return [one]
    keys = [i for i, c in enumerate(cols) if c.key] or [0]
    main = [i for i, c in enumerate(cols) if not c.movable]
    moved = [i for i, c in enumerate(cols) if c.movable and i not in keys]
    first = _pick(cols, rows, main)
    together = _pick(cols, rows, keys + moved, keys)
    if total(*together) <= width:
        return [first, together]
    # Side by side they do not fit whole: one table each, elided only if one alone is wider.
    tables = [first]
    for i in moved:
        alone = _pick(cols, rows, [*keys, i], keys)
        tables.append(_elided(*alone, width, MIN_PATH_BELOW) or alone)
    return tables


def _pick(
    cols: list[Col], rows: list[list[str]], which: list[int], keys: Sequence[int] = ()
) -> Table:
    """The columns ``which`` (key columns among them are never shortened)."""
    picked = [Col(cols[i].title, path=cols[i].path and i not in keys) for i in which]
    return picked, [[r[i] for i in which] for r in rows]
