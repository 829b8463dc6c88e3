"""``start --init`` as one step: what can be checked before initializing is checked first,
and a start that still fails leaves nothing this command created.

Before initializing (only when the data directory is not one yet): the port (unless
``auto``) must be free, and the ``-c`` settings must be names and values postgres accepts
(``postgres -C`` against an empty configuration, ~70 ms, as the server user). Some failures
show only when the server starts (``shared_buffers`` larger than memory, a missing
``shared_preload_libraries`` library): then the data directory this command initialized, the
record it made and the log it started are removed. What existed before stays: a data
directory, a pre-existing (empty) directory, a record, a log.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

from pgmgr.core import process, registry, server, sigguard, testhook
from pgmgr.core.errors import DatabaseException, PgmgrError
from pgmgr.core.pgtext import clip_in

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pgmgr.core.instance import Server


def precheck(
    srv: Server,
    *,
    host: str | None,
    port: int | str | None,
    settings: Mapping[str, str],
    user: str | None,
) -> None:
    """Refuse a busy port or a bad setting before a new data directory is initialized.

    :raises PortInUse: the port is taken.
    :raises PortPrivileged: a low port the server user may not bind.
    :raises DatabaseException: postgres refuses a setting (its FATAL line).
    """
    if server.is_datadir(srv.datadir):
        return  # nothing will be initialized
    if port != "auto":
        number = port if port is not None else (srv.inst.port or 5432)
        try:
            su = srv.user(user)
        except PgmgrError:  # said by the init
            su = None
        with contextlib.suppress(ValueError, TypeError):
            server.check_port(srv.inst.host if host is None else host, int(number), su)
    if settings:
        check_settings(srv, settings, user)


def check_settings(srv: Server, settings: Mapping[str, str], user: str | None) -> None:
    """Ask postgres itself (``postgres -C``, which applies every ``-c`` and exits) whether
    it accepts ``settings``, with an empty configuration in a private temporary directory
    the server user can reach (/tmp when root's temp dir is private to root).

    Only a verdict about a parameter counts: anything else (the check itself could not run)
    is left for the start to report.

    :raises DatabaseException: a setting is unknown or its value invalid.
    """
    from pgmgr.core import ownerrm, sockets, sweep, userfs

    install = srv.installation()
    su = srv.user(user)
    sweep.dead_runs(su)  # the dirs of checks (and of this user's other runs) killed
    # made by pgmgr, then given to the server user: only reaching it matters
    # held: see pgmgr.core.sweep (live, whatever pid)
    tmp, held = sweep.make_dir(f"pgmgr-cfg-{os.getpid()}-", sockets.temp_base_for(su, make=False))
    parent = str(tmp.parent)
    try:
        testhook.pause("settings-check-dir")
        # Through that fd (O_NOFOLLOW), not by path: as root, the temp dir may be one
        # another user can write, who could have swapped the new directory for a symlink
        # (root then wrote in, and gave the server user, whatever it pointed to).
        if not sweep.still_named(held, tmp):
            raise sweep.replaced(tmp)
        userfs.write_file_at(held, "postgresql.conf", b"", 0o600, sync=False)
        if su is not None:
            os.chown("postgresql.conf", su.uid, su.gid, dir_fd=held, follow_symlinks=False)
            os.fchown(held, su.uid, su.gid)
        testhook.pause("settings-check")
        try:
            failed = server.postgres_check(install, tmp, settings, su)
        except OSError:
            failed = None
        why = server.why_exited(failed.stderr) if failed else ""
        if why.startswith("FATAL:") and "parameter" in why:
            raise DatabaseException(
                "invalid setting: "
                + clip_in(why.removeprefix("FATAL:").strip(), [*settings, *settings.values()]),
                hint="nothing was initialized; fix the -c setting and try again",
            )
    finally:
        with contextlib.suppress(OSError, PgmgrError), userfs.opened_dir(parent) as fd:
            ownerrm.remove_at(fd, tmp.name)  # the server user's: as that user
        sweep.release(held)


@contextlib.contextmanager
def undo_on_failure(srv: Server, enabled: bool = True) -> Iterator[None]:
    """Around initialize + start: if anything fails (Ctrl-C included), remove what this
    block created, and only that: the data directory's contents (and the directory if it
    did not exist), the record, the log file. The caller decides what SIGTERM and SIGHUP
    mean (``pgmgr start`` makes them act like Ctrl-C with :func:`sigguard.interruptible`,
    so that one the start's clean-up held and delivers does not end the process before
    the undo; in the foreground they ask for a stop, as Ctrl-C does there). A server
    stopped by a 'pgmgr stop' while the start waited for it is not a failure of the init:
    the instance stays, stopped (see :mod:`pgmgr.core.stopwait`)."""
    if not enabled or server.is_datadir(srv.datadir):
        yield
        return
    dir_existed = os.path.lexists(srv.datadir)
    had_record = registry.find_by_datadir(srv.datadir) is not None
    log_existed = srv.log_file.exists()
    from pgmgr.core.startup import StoppedWhileStarting

    try:
        yield
    except StoppedWhileStarting:  # a 'pgmgr stop' meanwhile: stopped on purpose, kept
        raise
    except BaseException as e:
        # A second Ctrl-C (people press it twice) must not cut the undo short: it left
        # the instance the user cancelled, initialized and registered. Short and
        # bounded, so signals wait; then one after a failure says "Interrupted".
        with sigguard.undoing(e):
            testhook.pause("init-undo")
            _undo(srv, dir_existed, had_record, log_existed)
        raise


def _undo(srv: Server, dir_existed: bool, had_record: bool, log_existed: bool) -> None:
    idle = not process.running_postmaster(srv.datadir) and not process.processes_in(srv.datadir)
    if server.is_datadir(srv.datadir) and idle:
        server.remove_partial(srv.datadir, created=not dir_existed, user=srv.user())
        if not had_record:
            with contextlib.suppress(OSError, PgmgrError):
                registry.remove(srv.inst.name)
        if not log_existed:
            with contextlib.suppress(OSError):
                srv.log_file.unlink()
