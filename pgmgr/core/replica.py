"""Streaming standbys: ``pgmgr replica SRC``, ``pgmgr promote NAME``, and each instance's role.

A replica is PostgreSQL's own streaming replication, set up the way a DBA would: on the
primary a replication role with its own generated password, a physical replication slot
(so the primary keeps the WAL the standby still needs) and ``pg_hba.conf`` lines allowing
that role over loopback only (then a reload); then ``pg_basebackup -R`` run as the server
user writes the standby's data directory, ``standby.signal`` and ``primary_conninfo``. The
standby is registered like any instance, with its primary, slot, role and password in its
record (what it holds on the primary is made and undone by :mod:`pgmgr.core.onprimary`).
pgmgr never manages failover: ``promote`` is PostgreSQL's ``pg_promote()`` (or, for a
standby with ``hot_standby = off``, which accepts no connection, ``pg_ctl promote``'s signal file).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pgmgr.core import (
    dirlock,
    dirpath,
    diskio,
    identity,
    listen,
    registry,
    server,
    sigpromote,
    testhook,
    tools,
    userfs,
    versions,
)
from pgmgr.core.errors import (
    DatabaseException,
    InstanceNotFound,
    NotRunning,
    UsageError,
    WorkerError,
    doing,
)
from pgmgr.core.instance import Server, unfinished
from pgmgr.core.onprimary import HBA_TAG, connect, detach_primary, prepare_primary, slot_name, value
from pgmgr.core.ops import require_running
from pgmgr.core.pgtext import new_password
from pgmgr.core.roles import is_standby, refuses_connections


def basebackup_argv(
    install: versions.Installation, target: Path, host: str, port: int, role: str, slot: str
) -> list[str]:
    return [
        str(install.bin("pg_basebackup")),
        "-D", str(target), "-h", host, "-p", str(port), "-U", role, "-w",
        "-X", "stream", "-S", slot, "-R", "-c", "fast",
    ]  # fmt: skip


# --------------------------------------------------------------------------- replica


def check_source(src: Server, version: str | None) -> None:
    """:raises NotRunning: SRC is stopped, or starting or stopping (it refuses connections).
    :raises DatabaseException: another major asked for, or SRC is itself a standby or
        unfinished."""
    if src.inst.pending:  # a standby of a half-made instance, which a retry destroys
        raise unfinished(src.inst, "replicated")
    pf = require_running(src)
    if pf.phase in ("starting", "stopping"):  # it refuses connections: say so, not libpq
        name = src.inst.name
        state = "still starting" if pf.phase == "starting" else "shutting down"
        raise NotRunning(
            f"'{name}' (pid {pf.pid}) is {state}: a replica is made of a server that "
            "accepts connections; nothing was created",
            hint=f"wait until 'pgmgr status {name}' says running ('pgmgr start {name}' "
            "waits for a start), then run it again",
        )
    major = src.installation().major
    if version:
        asked = versions.check_version_string(version)
        if versions.major_of(asked) != major and asked != major:
            raise DatabaseException(
                f"'{src.inst.name}' is PostgreSQL {major}: a streaming replica must run the "
                f"same major version, not {asked}",
                hint=f"to move it to PostgreSQL {asked}, use 'pgmgr export' and "
                f"'pgmgr import -v {asked}'",
            )
    if is_standby(src):
        raise DatabaseException(
            f"'{src.inst.name}' is a standby; make replicas of its primary"
            + (f" '{src.inst.primary}'" if src.inst.primary else "")
        )
    if not src.inst.host:
        raise DatabaseException(
            f"'{src.inst.name}' listens on no TCP address; replication runs over loopback TCP",
            hint=f"restart it with 'pgmgr start {src.inst.name} -H 127.0.0.1'",
        )


def target_dir(src: Server, name: str, datadir: Path | None) -> Path:
    """:raises DatabaseException: the directory exists, or its parent does not; as root,
    a user other than root and the server user could swap something in on its path (the
    backup, written as the server user, would go where they point it)."""
    target = Path(os.path.abspath(datadir or Path(src.inst.datadir).parent / name))
    identity.check_links(target)  # no other user's symlink on the way, as for init
    if os.path.lexists(target):
        raise DatabaseException(
            f"{target} already exists; a replica needs a new directory (nothing was created)",
            hint="choose another with -d DIR",
        )
    dirpath.check(target, "create", parents_only=True)
    if not target.parent.is_dir():
        raise DatabaseException(f"{target.parent} does not exist (nothing was created)")
    dirpath.check_datadir_place(target, "create")
    su = src.user()
    # As root, checked as the server user: "others" are users other than root and it.
    if su is not None and userfs.as_user(su, userfs.others_can_write, str(target)):
        raise DatabaseException(
            f"refusing to make {target} as root: another OS user than root and "
            f"{su.name!r} can change it or a directory above it (nothing was created)",
            hint="choose a directory whose parents only root and the server user can write",
        )
    return target


def create(
    src: Server,
    *,
    name: str | None = None,
    datadir: Path | None = None,
    port: str | None = None,
    version: str | None = None,
    timeout: float = 120.0,
) -> Server:
    """A running, registered streaming standby of ``src``.

    Its record is created first (exclusively: of two commands making one name, the second
    stops there, before it touched SRC), marked ``pending`` until the standby runs. A
    replica killed on the way is redone by the same command run again (it drops what the
    first one made on SRC, all named after the replica, and its directory), or removed
    by ``pgmgr destroy``.

    :raises NotRunning: SRC is not running.
    :raises UsageError: the name is taken; a bad port.
    :raises PortPrivileged, PortInUse: ``port`` cannot be listened on (before anything).
    :raises DatabaseException: see :func:`check_source`, :func:`target_dir`; a slot or role
        of that name exists on SRC; pg_basebackup failed. Whatever was made is undone.
    """
    from pgmgr.core import sigguard, teardown

    server.check_port_option(port)
    check_source(src, version)
    postgres = src.installation().bindir / "postgres"
    listen.check_new_port(listen.loopback_of(src.inst.host or ""), port, src.user(), postgres)
    if name:
        registry.check_name(name)
    else:
        name = default_name(src, datadir)
    path = Path(os.path.abspath(datadir or Path(src.inst.datadir).parent / name))
    # The lock is held to the end: a retry waits for a live replica command, and finding
    # the pending record of this directory under it means its command is dead.
    with sigguard.interruptible(), dirlock.lock(path):
        name = teardown.redo_unfinished(path, "replica", src.inst.name) or name
        target = target_dir(src, name, path)
        rep = _register(src, name, target)
        try:
            testhook.pause("replica-registered")
            prepare_primary(src, name, rep.inst.repl_role or "", rep.inst.repl_password or "")
            testhook.pause("replica-primary-ready")
            _clone(src, rep)
            testhook.pause("replica-cloned")
            rep.start(host=rep.inst.host, port=port or "auto", timeout=timeout)
            rep.inst.pending = rep.inst.pending_from = None
            rep.save()
        except BaseException:
            with contextlib.suppress(Exception):
                release_to_destroy(rep)
            with contextlib.suppress(Exception):
                if rep.inst.ino is not None:  # pinned when _clone made the directory
                    teardown.destroy(rep)
                else:  # a directory that appeared there is not ours to remove
                    registry.remove(rep.inst.name)
            raise
    return rep


def default_name(src: Server, datadir: Path | None) -> str:
    """``SRC-replica`` (or ``-2``, ``-3``...). A retry without ``--name`` takes the name of
    an unfinished replica of SRC that no command is making, in the place it would make it,
    so it redoes that one instead of making another beside it (whose slot would keep SRC's
    WAL for ever)."""
    base = registry.unique_name(f"{src.inst.name}-replica")
    stem = re.escape(f"{src.inst.name}-replica"[:56])
    parent = Path(src.inst.datadir).parent
    for other in sorted(n for n in registry.names() if re.fullmatch(stem + r"(-\d+)?", n)):
        with contextlib.suppress(Exception):
            inst = registry.load(other)
            where = Path(os.path.abspath(datadir or parent / other))
            if (
                (inst.pending, inst.pending_from) == ("replica", src.inst.name)
                and Path(inst.datadir) == where
                and not dirlock.is_locked(where)
            ):
                return other
    return base


def _register(src: Server, name: str, target: Path) -> Server:
    """The standby's record, marked pending, created exclusively.

    :raises UsageError: the name is taken (by a finished instance, or another command
        making it right now).
    """
    install = src.installation()
    if name in registry.names():
        other = registry.load(name)
        if other.pending and dirlock.is_locked(Path(other.datadir)):
            raise UsageError(
                f"instance name {name!r} is being made by another 'pgmgr {other.pending}'",
                hint="wait for it to finish, or choose another --name",
            )
        if other.pending:
            raise unfinished(other, "made again here")
        raise UsageError(f"instance name {name!r} is already used", hint="choose another --name")
    rep = Server.for_datadir(target, name=name, version=install.version)
    inst = rep.inst
    inst.host = listen.loopback_of(src.inst.host or "")
    inst.superuser, inst.auth = src.inst.superuser, src.inst.auth
    inst.password, inst.password_pending = src.inst.password, False  # the catalog is SRC's
    inst.server_user, inst.settings = src.inst.server_user, dict(src.inst.settings)
    inst.primary, inst.slot = src.inst.name, slot_name(name)
    inst.repl_role, inst.repl_password = slot_name(name), new_password()
    inst.pending, inst.pending_from = "replica", src.inst.name
    rep.building = True
    rep.save()
    if rep.inst is not inst:  # pragma: no cover - registered by a command that took no lock
        raise UsageError(f"{target} was registered meanwhile as '{rep.inst.name}'")
    return rep


def _clone(src: Server, rep: Server) -> None:
    """pg_basebackup into the standby's new directory (made here and handed to the server
    user; its identity pinned in the record at once, so a destroy of an interrupted clone
    removes that very directory and nothing else)."""
    su = src.user()
    target = rep.datadir
    with userfs.opened_dir(target.parent) as parent:  # no symlink swapped in on the way
        with doing("create the directory", target):  # (it said only its last name)
            os.mkdir(target.name, 0o700, dir_fd=parent)
        st = os.stat(target.name, dir_fd=parent, follow_symlinks=False)
        if su is not None:
            os.chown(target.name, su.uid, su.gid, dir_fd=parent, follow_symlinks=False)
        diskio.fsync_dirs(parent)  # before the record pins it (pg_basebackup syncs within)
    rep.inst.dev, rep.inst.ino = st.st_dev, st.st_ino
    rep.save()
    host = src.conninfo(tcp=True)["host"]
    role, slot, password = rep.inst.repl_role or "", rep.inst.slot or "", rep.inst.repl_password
    argv = basebackup_argv(src.installation(), target, host, int(src.inst.port or 5432), role, slot)
    # Under the subreaper, as a snapshot's pg_basebackup: its death signal killed
    # pg_basebackup with pgmgr, not the child it forks to stream the WAL (-X stream),
    # which went on for ever, holding the slot active: no retry or destroy could drop it.
    tools.run(argv, su, timeout=3600, env={"PGPASSWORD": password or ""}, reap=True)
    rep.pin()
    rep.save()


# --------------------------------------------------------------------------- promote


@dataclass
class PromoteResult:
    """What ``pgmgr promote`` did."""

    name: str
    former_primary: str | None
    detached: list[str]
    note: str | None


def promote(srv: Server, timeout: int = 60) -> PromoteResult:
    """Promote a running standby (``pg_promote``), clear its ``primary_conninfo`` (it held
    the replication password), and drop its slot, role and pg_hba.conf lines on the former
    primary when that runs. A promote interrupted after ``pg_promote`` (a primary whose
    record still names its former primary) is finished by running it again.

    :raises NotRunning: not running. :raises DatabaseException: not a standby; an
        unfinished ``pgmgr replica``.
    :raises WorkerError: it did not finish promotion within ``timeout``.
    """
    with dirlock.lock(srv.datadir):
        # the record as it is now: a promote that held the lock before may have changed it
        # (read before the lock, a second promote saved what the first had cleared)
        srv = Server.load(srv.inst.name)
        from pgmgr.core.readyfirst import ready_first

        # a standby another process starts (not yet consistent) is waited for: libpq
        # said "starting up"; a stopping one refused
        ready_first(srv, "promote", f"promote '{srv.inst.name}'", closed_ok=True)
        require_running(srv)
        if srv.inst.pending:
            raise unfinished(srv.inst, "promoted")
        standby = is_standby(srv)
        if not standby and not srv.inst.primary:
            raise DatabaseException(
                f"'{srv.inst.name}' is a primary, not a standby: there is nothing to promote"
            )
        if standby and refuses_connections(srv.datadir):  # hot_standby = off
            sigpromote.promote(srv, timeout)
            standby = False
        with connect(srv) as conn:
            if standby and not value(conn, "SELECT pg_promote(true, %s)", timeout):
                raise WorkerError(f"'{srv.inst.name}' did not finish promotion within {timeout} s")
            testhook.pause("promote-promoted")
            value(conn, "ALTER SYSTEM RESET primary_conninfo")
            value(conn, "ALTER SYSTEM RESET primary_slot_name")
            value(conn, "SELECT pg_reload_conf()")
        former = srv.inst.primary
        detached, note = release(srv)
    return PromoteResult(srv.inst.name, former, detached, note)


def release(srv: Server) -> tuple[list[str], str | None]:
    """Forget that ``srv`` follows a primary: drop its slot, role and pg_hba.conf lines
    there (when the primary runs), then clear them from its record (in that order: a
    kill in between leaves a record that still says what to drop).

    :returns: what was dropped, and a note saying what is left behind, if anything.
    """
    inst = srv.inst
    former, role, slot = inst.primary, inst.repl_role, inst.slot
    done: list[str] = []
    note = None
    if former:
        try:
            done = detach_primary(Server.load(former), inst.name, role, slot)
        except InstanceNotFound:  # the primary is gone, and its slots and roles with it
            pass
        except Exception as e:  # the promotion or removal stands; say what is left behind
            note = (
                f"could not clean up on '{former}' ({e}): drop slot {slot} and role {role} "
                "there, or it keeps WAL for a standby that no longer follows it, and remove "
                f"the pg_hba.conf lines that end in '{HBA_TAG}{inst.name}'"
            )
    inst.primary = inst.slot = inst.repl_role = inst.repl_password = None
    if srv.register and registry.find_by_datadir(srv.datadir) is not None:
        srv.save()
    return done, note


def release_to_destroy(srv: Server, timeout: float = 30.0) -> tuple[list[str], str | None]:
    """Before a standby is destroyed: stop it (its walsender must go before its slot can)
    and :func:`release` it, while its record still says what it holds on its primary."""
    if not srv.inst.primary:
        return [], None
    if srv.running() is not None:
        try:
            srv.stop("fast", timeout)
        except WorkerError:
            srv.stop("immediate", timeout)
    return release(srv)
