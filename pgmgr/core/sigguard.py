"""Signals during work that must finish or be undone (snapshots, restores, branches,
upgrades): :func:`interruptible` makes SIGTERM and SIGHUP act like Ctrl-C, so clean-up in
``finally`` blocks runs for them too; :func:`shielded` holds all three past a point of no
return; :func:`commit` says that point is passed for good.

Why :func:`commit`: a signal that arrives once the work is done (the swap made, the
snapshot named) but before the command has said so must not make it say "Interrupted"
(exit 130: nothing changed) or die of the signal with nothing said. Holding signals only
inside :func:`shielded` left that window open from the end of the block to the exit of
the process: the clean-up that follows (a fork through :func:`pgmgr.core.userfs.as_user`),
the summary line, Python's own exit.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _State:
    """What :func:`commit` changed, for the outermost :func:`interruptible` to undo."""

    depth = 0  # interruptible() blocks entered and not left
    saved: dict[int, object] = {}  # noqa: RUF012 - the handlers before the outermost block
    committed = False
    cancellable = 0  # cancellable() blocks entered and not left
    received: list[int] = []  # noqa: RUF012 - signals recorded since commit()
    shields: list[list[int]] = []  # noqa: RUF012 - what each open shielded() block recorded
    hit: list[int] = []  # noqa: RUF012 - what the outermost block's SIGTERM/SIGHUP raised
    unraisable: object = None  # sys.unraisablehook before the outermost block


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM and SIGHUP act like Ctrl-C for the duration, so the clean-up in ``finally``
    blocks runs for a CI timeout or a closed terminal too (only in the main thread).

    Only where the signal has its default action: a handler of the caller's stays in
    charge (``start --foreground`` and ``pgmgr run`` record a SIGTERM and stop the server
    once it is up; a library caller may have its own), and so does an ignored SIGHUP
    (under ``nohup``, a closed terminal must not cancel the work). A second SIGTERM or
    SIGHUP while the first one's clean-up runs is ignored, and so is one while a Ctrl-C's
    runs: the clean-up is what the first asked for, and a second KeyboardInterrupt would
    cut it short (a half-removed work directory). One :func:`interruptible` serves every
    command that must finish or be undone (init, import, replica, bundle, snapshot,
    restore, branch, upgrade, start)."""
    if not _main_thread() or _State.committed:  # past the point of no return: held
        yield
        return
    hit: list[int] = []

    def _raise(signum: int, frame: object) -> None:
        # Its clean-up runs already, or that of a Ctrl-C (a KeyboardInterrupt on its way
        # through an except or finally block): a hang-up after a Ctrl-C cut it short.
        if hit or isinstance(sys.exc_info()[1], KeyboardInterrupt):
            return
        hit.append(signum)
        raise _interrupt(signum)

    if _State.depth == 0:
        _State.saved = {s: signal.getsignal(s) for s in SIGNALS}
        if sys.unraisablehook is not _lost_interrupt:  # kept by committed work before
            _State.unraisable, sys.unraisablehook = sys.unraisablehook, _lost_interrupt
    _State.depth += 1
    taken = [s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) == signal.SIG_DFL]
    if taken:
        _State.hit = hit
    old = {s: signal.signal(s, _raise) for s in taken}
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        _State.depth -= 1
        try:
            if not _State.committed:
                _put_back(old)
            elif _State.depth == 0 and not _process_exits():
                held = _uncommit()
                # In-process, the committed work is complete now: a signal it held is the
                # caller's, delivered now to the caller's own handlers (a Ctrl-C raises
                # KeyboardInterrupt, an ignored one stays ignored); after a failure, all
                # but a Ctrl-C, whose KeyboardInterrupt would only hide it.
                _deliver(held, quiet=failed)
        finally:
            # kept while committed work's handlers stay (until the process exits)
            ours = sys.unraisablehook is _lost_interrupt
            if _State.depth == 0 and not _State.committed and ours:
                sys.unraisablehook = _State.unraisable  # type: ignore[assignment]


def _interrupt(signum: int) -> KeyboardInterrupt:
    """The KeyboardInterrupt a handler of this module raises for ``signum``."""
    e = KeyboardInterrupt()
    e.signum = signum  # type: ignore[attr-defined]  # see _lost_interrupt
    return e


def _lost_interrupt(unraisable: Any) -> None:
    """``sys.unraisablehook`` inside :func:`interruptible`. A signal whose handler raised
    while Python ran code whose exceptions it ignores (a weakref callback, such as the
    import system's module-lock one, or a ``__del__``) printed "Exception ignored in ...
    KeyboardInterrupt" with a traceback, and the interrupt was lost: an upgrade
    interrupted so ran to its end, and a second SIGTERM was ignored as the first one's.

    The signal is sent again, by a thread, once this hook has returned: raised in the
    hook, it would be lost the same way. The thread waits for the hook's last statement,
    a store (in ``finally``), after which no bytecode of the hook checks for signals; the
    main thread handles it at its next check, back in code whose exceptions count (lost
    again, it is sent again). Only an interrupt of this module's handlers, or of Python's
    own Ctrl-C handler: another (a caller's handler that raises KeyboardInterrupt, say)
    goes to the hook before this one."""
    exc = unraisable.exc_value
    signum = getattr(exc, "signum", None)
    if signum is None and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signum = signal.SIGINT
    if not isinstance(exc, KeyboardInterrupt) or signum is None:
        hook = _State.unraisable if callable(_State.unraisable) else sys.__unraisablehook__
        hook(unraisable)
        return
    import _thread

    returned: dict[str, bool] = {}
    try:
        if signum in _State.hit:
            _State.hit.remove(signum)  # or its handler would take it for a second one
        # not threading.Thread: its start() waits for the thread, a wait in which a
        # second signal's handler would raise in here
        _thread.start_new_thread(_send_again, (signum, returned))
    except KeyboardInterrupt as again:  # that second signal, raised in here after all
        extra = getattr(again, "signum", None)
        if extra in _State.hit:
            _State.hit.remove(extra)  # the first one's is on its way
    finally:
        returned["hook"] = True  # the last statement: see the docstring


def _send_again(signum: int, returned: dict[str, bool]) -> None:
    import os
    import time

    deadline = time.monotonic() + 1.0  # the hook cut short before its last store
    while not returned and time.monotonic() < deadline:
        time.sleep(0.001)
    os.kill(os.getpid(), signum)


@contextlib.contextmanager
def shielded(deliver: bool = True) -> Iterator[list[int]]:
    """Past the point of no return (a swap, the record and the restart that go with it),
    or a clean-up that must not be cut short: SIGINT/SIGTERM/SIGHUP are only recorded in
    the yielded list while the block runs. After :func:`commit` inside the block, its
    handlers stay when it ends. Entered after :func:`commit` (the wait for a server
    started again), it holds a signal for after the committed work as well, or a library
    caller would never get it.

    When the block ends (not committed), what it recorded is delivered (``deliver``, see
    :func:`redeliver`): a Ctrl-C raises KeyboardInterrupt there, whose cause is the
    failure the block ended with, or the one an enclosing ``except`` block handles (a
    clean-up's): the command says that error, then "Interrupted" (130). Held and then
    dropped, a Ctrl-C during a failed branch's clean-up, or during the record an upgrade
    writes before pg_upgrade runs, did nothing at all. A caller that decides itself what
    a recorded signal means passes ``deliver=False``."""
    got: list[int] = []
    if not _main_thread():
        yield got
        return

    def _record(signum: int, frame: object) -> None:
        got.append(signum)
        if _State.committed:  # held for after the committed work too (see commit())
            _State.received.append(signum)

    # An ignored one (SIGHUP under nohup, SIGINT in a job a script runs in the background)
    # stays ignored: recorded, it read as an interrupt to a caller that decides itself
    # (pause: a 'nohup pgmgr snapshot' said "Interrupted" on the hang-up).
    old = {s: signal.signal(s, _record) for s in SIGNALS if not _ignored(s)}
    _State.shields.append(got)
    try:
        yield got
    except BaseException as e:
        _unshield(got, old)
        if deliver:
            redeliver(got, e)
        raise
    _unshield(got, old)
    if deliver:
        redeliver(got, sys.exc_info()[1])


def _ignored(sig: int) -> bool:
    return signal.getsignal(sig) is signal.SIG_IGN


def _unshield(got: list[int], old: dict[signal.Signals, Any]) -> None:
    _State.shields[:] = [g for g in _State.shields if g is not got]
    _put_back({s: _after_commit if _State.committed else h for s, h in old.items()})


def _put_back(handlers: dict[signal.Signals, Any]) -> None:
    """Install every one of ``handlers``, then raise what a pending signal's handler
    raised meanwhile: ``signal.signal`` runs a pending handler first, and a Ctrl-C
    between two of the calls raised out of the loop, leaving the rest on the handlers of
    a block that had ended (a SIGTERM then only recorded into a list nobody reads)."""
    raised: BaseException | None = None
    for s, handler in handlers.items():
        for attempt in range(len(SIGNALS) + 1):  # each pending handler raises once at most
            try:
                signal.signal(s, handler)
                break
            except BaseException as e:  # a pending handler's: installed on the next try
                if attempt == len(SIGNALS):
                    raise
                raised = raised or e
    if raised is not None:
        raise raised


@contextlib.contextmanager
def undoing(failure: BaseException) -> Iterator[list[int]]:
    """The clean-up of ``failure``, in the ``except`` block that re-raises it: signals are
    held while it runs (:func:`shielded`: a second Ctrl-C must not cut it short), then
    :func:`redeliver` gives them to the handlers in place. Held and then dropped, they
    made a failed start whose clean-up the user interrupted exit 1 with its error, as if
    nobody had (and ``pgmgr run`` returned the error instead of 128 + the signal)."""
    with shielded(deliver=False) as got:
        yield got
    redeliver(got, failure)


def redeliver(got: list[int], failure: BaseException | None) -> None:
    """Raise the signals ``got`` held during the clean-up of ``failure`` (or during work
    that has not failed: None), each once, in order, to the handlers in place now, unless
    ``failure`` is an interrupt already: a
    Ctrl-C then raises KeyboardInterrupt (its cause ``failure``: see :func:`cause`), so
    the command says "Interrupted", exit 130; an unhandled SIGTERM ends the process as it
    would have a moment later (143 in a shell); a handler of the caller's (``pgmgr run``,
    an enclosing :func:`shielded`) records it. When ``failure`` is an interrupt, only a
    second Ctrl-C is left out: a handler of the caller's still gets its SIGTERM. Nothing
    after :func:`commit`: those wait for the end of the committed work already."""
    if not got or not _main_thread() or _State.committed:
        return
    try:
        _deliver(got, quiet=isinstance(failure, KeyboardInterrupt))
    except KeyboardInterrupt as e:
        if failure is None:
            raise
        raise e from failure


def _deliver(signals: list[int], quiet: bool) -> None:
    """Raise each of ``signals`` once, in order, to the handlers in place now. A handler
    that raises (a Ctrl-C's KeyboardInterrupt) does not keep the others from theirs: the
    first exception propagates once all are delivered (a SIGTERM held with a Ctrl-C never
    reached the caller's SIGTERM handler). ``quiet``: a failure says what happened
    already, and Python's Ctrl-C handler is left out (its KeyboardInterrupt would hide
    it)."""
    first: BaseException | None = None
    for s in dict.fromkeys(signals):
        if quiet and signal.getsignal(s) is signal.default_int_handler:
            continue
        try:
            signal.raise_signal(s)
        except BaseException as e:
            first = first or e
    if first is not None:
        raise first


def cause(interrupt: KeyboardInterrupt) -> BaseException | None:
    """The failure whose clean-up ``interrupt`` came in (see :func:`redeliver`), if any:
    the work had failed by itself before the user interrupted it."""
    found = interrupt.__cause__
    return None if isinstance(found, KeyboardInterrupt) else found


def commit() -> None:
    """The work under way has passed its point of no return (call it inside
    :func:`shielded`, once the change is made): from now on SIGINT, SIGTERM and SIGHUP are
    only recorded (with those the open :func:`shielded` blocks recorded before), except
    inside :func:`cancellable` (optional work that may be cut short), until the process
    exits (console script, see :func:`_process_exits`) or else until the outermost
    :func:`interruptible` block ends."""
    if not _main_thread() or _State.depth == 0:
        return
    if not _State.committed:  # held in the block since its start: the caller's too
        _State.received.extend(s for got in _State.shields for s in got)
    _State.committed = True
    for s in SIGNALS:
        if not _ignored(s):  # one the process ignores stays so (see shielded)
            signal.signal(s, _after_commit)


def _after_commit(signum: int, frame: object) -> None:
    if _State.cancellable:
        raise _interrupt(signum)  # taken by the optional work it cuts short
    _State.received.append(signum)


def _uncommit() -> list[int]:
    """Put back the handlers from before the outermost block; the signals recorded."""
    received, _State.received = _State.received, []
    _State.committed = False
    # None: not set from Python, nothing to put back
    _put_back({s: h for s, h in _State.saved.items() if h is not None})  # type: ignore[misc]
    return received


@contextlib.contextmanager
def cancellable() -> Iterator[None]:
    """Optional work after :func:`commit` (statistics after an upgrade): a signal raises
    KeyboardInterrupt in it, for it to catch; elsewhere it would only be recorded. One
    recorded since :func:`commit` (a Ctrl-C during the restart before it) raises at once:
    the user asked to stop before the optional work began."""
    if not _main_thread():  # signals are the main thread's: nothing to cancel here
        yield
        return
    if _State.committed and _State.received:
        _State.received = []
        raise KeyboardInterrupt
    _State.cancellable += 1
    try:
        yield
    finally:
        _State.cancellable -= 1


def _process_exits() -> bool:
    """The process ends with the command (the console script, :func:`pgmgr.entry.main`,
    says so without importing this module): a :func:`commit` lasts until then. Otherwise
    (a library caller, a test in-process) it lasts until the outermost
    :func:`interruptible` block ends, which restores the handlers from before it and
    then delivers the signals held meanwhile to them."""
    return bool(getattr(sys.modules.get("pgmgr.entry"), "COMMAND_PROCESS", False))


def settle() -> None:
    """The command has said everything (done, failed or interrupted) and only the exit
    remains: ignore SIGINT, SIGTERM and SIGHUP from here. Python's exit restores their
    default action, which would kill the process after it said what happened (exit -2
    after "Interrupted", or after the summary of a completed restore). Console script only."""
    if not _main_thread():
        return
    for s in SIGNALS:
        while True:
            try:
                signal.signal(s, signal.SIG_IGN)
                break
            except KeyboardInterrupt:  # one pending: run (signal.signal checks first), again
                continue
