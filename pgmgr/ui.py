"""Rendering: messages on stderr, data on stdout, Rich only when a terminal is there.

Everything pgmgr prints goes through :func:`write`, which never raises: a closed stream,
a full disk, a reader that went away (EPIPE) or a character the stream's encoding lacks
must never stop an operation half-way (an init done but not recorded, a server started
but not noted). What could not be written to stdout is remembered in :data:`lost`, and
the command's exit code says so at the end (:func:`pgmgr.entry.guarded`).

Every command builds one model (a dict or a list of dicts) and hands it to :func:`emit_json`
or :func:`table`, so the table and ``--json`` always show the same fields. When the stream is
not a terminal, or ``NO_COLOR`` is set, output is plain text without escape codes and Rich is
never imported (it costs ~40 ms of start-up).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from typing import Any, TextIO

    from rich.console import Console

    from pgmgr.tablefit import Col as Col


class Settings:
    """What the global options set (a plain class: dataclasses cost ~5 ms of start-up)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet


settings = Settings()


def __getattr__(name: str) -> Any:
    """``ui.Col`` (:class:`pgmgr.tablefit.Col`), imported when first used: ``--json`` output
    never needs the table code."""
    if name == "Col":
        from pgmgr.tablefit import Col

        return Col
    raise AttributeError(f"module 'pgmgr.ui' has no attribute {name!r}")


def _fancy(stream: TextIO) -> bool:
    """Rich output only on a real terminal, and never when NO_COLOR is set: Rich's no_color
    still emits bold and cursor-control codes, and NO_COLOR promises plain text."""
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def _console(stream: TextIO) -> Console:
    from rich.console import Console

    return Console(file=stream, no_color=bool(os.environ.get("NO_COLOR")), highlight=False)


#: "stdout" or "stderr" -> the first error that kept text from it (OSError or ValueError);
#: nothing more is written to such a stream. Cleared when a command starts.
lost: dict[str, Exception] = {}


def write(name: str, text: str) -> bool:
    """Write ``text`` to ``sys.stdout`` or ``sys.stderr`` (``name``) and flush; False if
    it could not be written (then noted in :data:`lost`). Never raises: output failing
    must not break off what the command is doing. Text the stream cannot encode
    (``PYTHONIOENCODING=ascii``, a file name's undecodable byte) is written as the bytes
    the file system has for it: a path in ``pgmgr env``'s exports stays that path.

    To the process's own stdout and stderr it writes the bytes itself (:func:`_write_all`);
    a stream put in their place (a test's, a library caller's) is written as a stream."""
    if name in lost:
        return False
    stream = getattr(sys, name)
    try:
        if stream is None:  # the descriptor was closed when Python started
            import errno

            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        if stream is getattr(sys, f"__{name}__"):
            stream.flush()  # what went through it before (Typer's help, say) comes first
            _write_all(stream.fileno(), _encoded(stream, text))
            return True
        try:
            stream.write(text)
        except UnicodeEncodeError:
            stream.flush()
            if hasattr(stream, "buffer"):
                stream.buffer.write(_as_bytes(text))
            else:  # a text-only stream (a caller's StringIO-like object)
                stream.write(text.encode("ascii", "backslashreplace").decode())
        stream.flush()
    except (OSError, ValueError) as e:  # ValueError: a closed file object
        lost[name] = e
        return False
    return True


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``: after a short write, the rest; on a descriptor
    left non-blocking (a parent's pipe with O_NONBLOCK: Node's, some CI runners'), once it
    can take more. Python's buffered stdout dropped what did not fit, without an error:
    'pgmgr logs -n 20000' delivered 2,458 lines and exited 0."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            import select

            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            poller.poll()


def _encoded(stream: TextIO, text: str) -> bytes:
    """``text`` in ``stream``'s encoding, else as the file system has it."""
    try:
        return text.encode(stream.encoding or "utf-8", stream.errors or "strict")
    except UnicodeEncodeError:
        return _as_bytes(text)


def _as_bytes(text: str) -> bytes:
    """``text`` as the file system encodes names (UTF-8, an undecodable byte given back
    as it was); a character even that cannot take as ``\\uNNNN``."""
    try:
        return os.fsencode(text)
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


def stdout_gone() -> bool:
    """Whether stdout can take no more: written to in vain already, or a pipe whose reader
    has gone (what ``tail -f`` checks while it has nothing to print). Never raises."""
    if "stdout" in lost:
        return True
    if sys.stdout is None:  # closed from the start (>&-): noted as any failed write
        return not write("stdout", "")
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    import select

    poller = select.poll()
    poller.register(fd, 0)  # errors and hang-ups are always reported
    if any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0)):
        lost["stdout"] = BrokenPipeError()
        return True
    return False


def message(text: str) -> None:
    """A line for people (stderr); silenced by --quiet. Plain text even on a terminal:
    these lines have no markup, and Rich would cost ~40 ms of import to print them. On a
    terminal narrower than a line, the line is broken between words (see :func:`_fit`)."""
    if settings.quiet:
        return
    write("stderr", _fit(text) + "\n")


def _fit(text: str) -> str:
    """``text`` broken between words where a line is wider than the terminal on stderr
    (``COLUMNS``, else its width): the terminal itself breaks it anywhere, in the middle of
    a snapshot's name or a command to copy. Unchanged on a pipe, or a word wider than the
    line (a long path), which is never split."""
    try:
        if not sys.stderr.isatty():
            return text
    except (AttributeError, ValueError):
        return text
    from pgmgr.core import numtext
    from pgmgr.tablefit import cells

    width = numtext.whole(os.environ.get("COLUMNS"))
    if not width:
        try:
            width = os.get_terminal_size(sys.stderr.fileno()).columns
        except (AttributeError, ValueError, OSError):
            return text
    if width < 20 or all(cells(line) <= width for line in text.split("\n")):
        return text
    out = []
    for line in text.split("\n"):
        if cells(line) <= width:
            out.append(line)
            continue
        body = line.lstrip(" ")
        indent = line[: len(line) - len(body)]  # kept on each of its rows
        row = indent
        for word in body.split(" "):
            if row.strip() and cells(row) + 1 + cells(word) > width:
                out.append(row)
                row = indent + word
            else:
                row = f"{row} {word}" if row.strip() else row + word
        out.append(row)
    return "\n".join(out)


def _line(text: str) -> str:
    """``text`` on one line, whatever it held, with an argument of pgmgr's command line or
    the value of a variable of its environment that is longer than a line clipped where it
    appears: a 100 kB value given (a name, a path, a port) is not repeated in full."""
    from pgmgr.core.pgtext import clip_in

    given = [*sys.argv[1:], *os.environ.values()]
    return visible(" ".join(clip_in(text, given, 200).split()))


def error(text: str, hint: str | None = None) -> None:
    """``Error: <text>`` (and ``Hint: <hint>``) on stderr; never silenced."""
    write("stderr", f"Error: {_line(text)}\n" + (f"Hint: {_line(hint)}\n" if hint else ""))


def warning(text: str, hint: str | None = None) -> None:
    """``Warning: <text>`` (and ``Hint: <hint>``) on stderr: something asked for did not
    happen, though the command did its job. Never silenced, like errors."""
    write("stderr", f"Warning: {_line(text)}\n" + (f"Hint: {_line(hint)}\n" if hint else ""))


def emit_json(obj: Any) -> None:
    """One JSON document on stdout."""
    write("stdout", json.dumps(obj, indent=2, default=str) + "\n")


#: C0 controls but tab and newline, DEL, and C1 controls (U+009B is a CSI to a terminal).
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0))}


def visible(text: str) -> str:
    """``text`` with its control characters (but tab and newline) shown as ``\\xNN``: what
    a server log holds (a role or database name, say, from whoever connected) must not
    drive the operator's terminal."""
    return text.translate(_CONTROLS)


def visible_line(text: str) -> str:
    """``text`` as :func:`visible` shows it, and its tabs and line breaks too: a name or
    path of the user's set within a line of pgmgr's stays that one line."""
    return visible(text).translate(_BREAKS)


_BREAKS = {c: f"\\x{c:02x}" for c in (0x09, 0x0A)}


def emit(text: str) -> None:
    """Data for scripts (stdout), printed even with --quiet."""
    write("stdout", text + "\n")


def table(
    columns: Sequence[str | Col], rows: Sequence[Sequence[str]], title: str | None = None
) -> None:
    """A table on stdout: Rich on a terminal, aligned plain columns otherwise.

    It fits the width (the terminal's, or ``COLUMNS``; plain output to a pipe without
    ``COLUMNS`` keeps every path whole): see :mod:`pgmgr.tablefit`.
    """
    from pgmgr import tablefit

    cols = [c if isinstance(c, tablefit.Col) else tablefit.Col(c) for c in columns]
    fancy = _fancy(sys.stdout)
    console = _console(sys.stdout) if fancy else None
    width = console.width if console is not None else _plain_width()
    parts = []
    for i, (tcols, trows) in enumerate(tablefit.fit(cols, rows, width)):
        if console is not None:
            parts.append(_rich_table(console, tcols, trows, title if i == 0 else None))
        else:
            parts.append(_plain_table(tcols, trows))
    write("stdout", "\n".join(parts))


def _plain_width() -> int | None:
    """``COLUMNS`` if set, else the terminal's width, else None (a pipe: no limit)."""
    from pgmgr.core import numtext

    columns = numtext.whole(os.environ.get("COLUMNS"))
    if columns:
        return columns
    try:
        if sys.stdout.isatty():
            import shutil

            return shutil.get_terminal_size().columns
    except (AttributeError, ValueError, OSError):
        pass
    return None


def _plain_table(cols: Sequence[Col], rows: Sequence[Sequence[str]]) -> str:
    from pgmgr.tablefit import GAP, pad, widths

    sizes = widths(cols, rows)
    lines = [[c.title for c in cols], *rows]
    out = [
        (" " * GAP).join(pad(c, w) for c, w in zip(line, sizes, strict=True)).rstrip()
        for line in lines
    ]
    return "\n".join(out) + "\n"


def _rich_table(
    console: Console, cols: Sequence[Col], rows: Sequence[Sequence[str]], title: str | None
) -> str:
    """The table as Rich renders it for ``console`` (captured: :func:`write` prints it)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    # No edges and collapsed padding: two spaces between columns, as in plain text, so
    # pgmgr.tablefit's arithmetic holds; "fold" rather than "…" if Rich still has to wrap.
    # Text, not str: names, paths and messages are printed as typed, never parsed as
    # markup (a data dir named '[/oops]' would crash Rich, '[bold]x' would turn bold).
    t = Table(
        title=Text(title) if title is not None else None,
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for col in cols:
        t.add_column(Text(col.title), overflow="fold")
    for row in rows:
        t.add_row(*(Text(cell) for cell in row))
    with console.capture() as captured:
        console.print(t)
    return captured.get()


#: Operations that finish within this "blink" show no spinner at all (and import no Rich).
SPINNER_DELAY = 0.15


@contextmanager
def spinner(text: str) -> Iterator[Callable[[str], None]]:
    """A spinner with elapsed time on a terminal, once the operation has taken longer than
    :data:`SPINNER_DELAY`; nothing otherwise (the summary line follows). It yields a
    function: what it is given (the step under way, a size) is shown after ``text``."""
    detail = [""]

    def step(what: str) -> None:
        detail[0] = what

    if settings.quiet or not _fancy(sys.stderr):
        yield step
        return
    import threading

    start = time.monotonic()
    finished = threading.Event()
    lock = threading.Lock()
    shown: list[Any] = []

    def show() -> None:
        if finished.wait(SPINNER_DELAY):
            return
        from rich.live import Live
        from rich.spinner import Spinner
        from rich.text import Text

        sp = Spinner("dots", text=Text(text))  # Text: the message is never markup

        class _Elapsed:
            def __rich__(self) -> Spinner:
                step = f" {detail[0]}" if detail[0] else ""
                sp.update(text=Text(f"{text}{step} {time.monotonic() - start:.1f}s"))
                return sp

        with lock:
            if finished.is_set():
                return
            live = Live(
                _Elapsed(), console=_console(sys.stderr), refresh_per_second=12.5, transient=True
            )
            live.start()
            shown.append(live)

    thread = threading.Thread(target=show, name="pgmgr-spinner", daemon=True)
    thread.start()
    try:
        yield step
    finally:
        finished.set()
        with lock:
            for live in shown:
                live.stop()
        thread.join()


def ms(seconds: float) -> str:
    """``0.0423 -> '42 ms'``, ``1.5 -> '1.50 s'``."""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def size(n: float) -> str:
    """``1536 -> '1.5 kB'`` (:func:`pgmgr.core.diskio.human`, which core's messages use)."""
    from pgmgr.core.diskio import human

    return human(n)
