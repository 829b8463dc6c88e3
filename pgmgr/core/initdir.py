"""Making an instance's data directory: a template copy or an initdb, built in a private
work directory and moved into place (see :mod:`pgmgr.core.staging`), then registered.
:meth:`pgmgr.core.instance.Server.initialize` calls in here. A template copy, or a data
directory registered without a known password, gets its password at its first start
(:func:`apply_pending_password`)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace

from pgmgr.core import (
    dirpath,
    privileges,
    server,
    sigdefault,
    sigguard,
    staging,
    testhook,
    userfs,
    versions,
)
from pgmgr.core import template as tpl
from pgmgr.core.diskio import disk_full
from pgmgr.core.errors import DatabaseException
from pgmgr.core.pgtext import new_password, quote_ident, quote_literal
from pgmgr.core.server import InitOptions

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pgmgr.core.instance import Server


def initialize(
    srv: Server,
    opts: InitOptions,
    *,
    user: str | None = None,
    password: str | None = None,
    template: bool = True,
    new: bool = False,
) -> bool:
    """Initialize the data directory if it is absent or empty; register it either way.

    With ``new`` (the caller found nothing there) a data directory that appeared meanwhile
    is refused, never registered: an import must not restore into someone else's cluster.

    With ``template`` (the default) it is a copy of a cached initdb result when one can
    serve ``opts`` (see :mod:`pgmgr.core.template`); the password is then set on the
    first start.

    :returns: True if it was initialized, False if it already was a data directory.
    :raises DatabaseException: a non-empty directory that is not a data directory.
    """
    datadir = srv.datadir
    dirpath.check(datadir, "make data directory", parents_only=True)
    dirpath.check_datadir_place(datadir, "use")
    if datadir.exists() and not datadir.is_dir():
        raise DatabaseException(f"{datadir} exists and is not a directory")
    if server.is_datadir(datadir):
        if new:
            raise DatabaseException(
                f"{datadir} appeared while pgmgr was about to make it; nothing was done there"
            )
        fresh = srv.new and opts.auth != "trust" and srv.inst.password is None
        if fresh:
            reset_password(srv, password or new_password())
        srv.save()
        if fresh and not srv.adopted:  # else the record it has keeps its password
            srv.notes.append(
                f"no password is known for {srv.datadir}: a new one was generated for "
                f"'{srv.inst.name}' and is set for {srv.inst.superuser!r} at its next start "
                "(through the local socket); 'pgmgr url --tcp' shows it"
            )
        return False
    if not srv.new:
        _check_not_moved_away(srv)
    if srv.register:  # else the directory is built and then cannot be registered
        from pgmgr.core import paths, registry

        records = registry.instances_dir()
        paths.check_writable(records, f"initialize {datadir}", paths.STATE_ELSEWHERE)
    install = srv.installation()
    su = srv.user(user)
    if su is not None:
        privileges.check_reachable(datadir, su, "data directory")
        privileges.check_reachable(install.bindir / "postgres", su, "PostgreSQL binaries")
        srv.inst.server_user = su.name
    if opts.auth != "trust" and password is None:
        password = new_password()
    with build(srv, install, opts, su, password, template, pin_early=new) as built:
        testhook.pause("init-built")  # in place, not yet registered (tests: a signal now)
        srv.inst.superuser = opts.superuser
        srv.inst.auth = opts.auth
        srv.inst.password = password if opts.auth != "trust" else None
        srv.inst.password_pending = built.copied and srv.inst.password is not None
        pinned = srv.pin()  # a new directory: whatever the record said before
        if pinned:
            _register(srv, built)
            testhook.pause("init-registered")  # tests: a signal once it is saved
    if not pinned:  # left as it is: no longer provably the directory this init built
        raise DatabaseException(
            f"{datadir} changed while it was being initialized (it is no longer the "
            "directory pgmgr built, or crosses another user's symlink); nothing was "
            "registered",
            hint=f"check {datadir} and its parent directories",
        )
    return True


def _check_not_moved_away(srv: Server) -> None:
    """A registered instance whose data directory is missing because it was moved while its
    server runs: a new cluster built at the path took over the record (status then showed
    it stopped, and the server with the data ran on, unseen). "create it with 'pgmgr init
    -d DIR'" is what 'pgmgr start' and 'stop' suggest for a missing data directory.

    :raises DatabaseException: its server still runs from the moved directory.
    """
    from pgmgr.core import movedserver

    moved = movedserver.find(srv, unseen=False)
    if moved is not None:
        raise DatabaseException(
            f"refusing to make a new data directory for '{srv.inst.name}' at {srv.datadir}: "
            f"{movedserver.sentence(srv, moved)}; nothing was done",
            hint=movedserver.hint(srv, moved),
        )


@dataclass
class Built:
    """What :func:`build` yields: whether it is a template copy (its password is still
    to be set), and what the block registered: then it is kept, whatever follows."""

    copied: bool
    kept: bool = False  # its record is saved
    system_id: int | None = None  # of the cluster whose record is being saved


def _register(srv: Server, built: Built) -> None:
    """Save the record of the directory :func:`build` made (pinned: ``srv.inst`` holds
    its system identifier): from then on the init is complete and kept."""
    built.system_id = srv.inst.system_id
    srv.save()
    built.kept = True


def _saved(srv: Server, built: Built) -> bool:
    """Whether the record of ``built`` is saved, though :func:`_register` did not return
    (interrupted once the record was written: the build was undone under the record it
    kept, an instance whose data directory was gone). Signals are not held instead: the
    save may wait for the registry's lock, up to 30 s."""
    if built.kept or built.system_id is None:
        return built.kept
    from pgmgr.core import registry

    try:
        rec = registry.find_by_datadir(srv.datadir)
    except Exception:  # unreadable: not provably saved, undone as before
        return False
    return rec is not None and rec.system_id == built.system_id


@contextlib.contextmanager
def build(
    srv: Server,
    install: versions.Installation,
    opts: InitOptions,
    su: privileges.ServerUser | None,
    password: str | None,
    template: bool,
    *,
    pin_early: bool = False,
) -> Iterator[Built]:
    """Build the cluster in a private work directory and move it into place (see
    :mod:`pgmgr.core.staging`), then run the block, which registers it: an interrupted
    init never leaves a data directory, not even one built and not yet registered (the
    block is undone with it: SIGTERM and SIGHUP interrupt it like Ctrl-C too).
    With ``pin_early`` (a registered, unfinished build), the record pins the directory as
    soon as it is there, before anything is built in it: a kill later leaves a record that
    names that very directory, and a directory it does not pin is not the build's.
    A block that registered it (``kept``, see :func:`_register`) is complete: an
    exception after that leaves the directory to its record.
    """
    stage = staging.Stage(srv.datadir, su)
    built: Built | None = None
    with sigguard.interruptible():
        stage.open()
        try:
            if pin_early:
                _pin_directory(srv)
                testhook.pause("init-pinned")
            fin = stage.finish(sync=not opts.no_sync)
            with disk_full(f"the data directory {srv.datadir}", srv.datadir.parent):
                how = tpl.init_from_template(install, fin, opts, user=su) if template else None
            if how is None:  # synced once, by the commit's syncfs
                lean = replace(opts, no_sync=True)
                server.initdb(install, stage.data, lean, password=password, user=su)
                stage.commit(sync=not opts.no_sync)
            srv.built = True
            built = Built(how is not None)
            yield built
        except BaseException:
            if built is not None and _saved(srv, built):
                raise
            srv.built = False
            with sigguard.shielded():  # a second Ctrl-C must not leave half of it
                stage.abort()
            raise


def _pin_directory(srv: Server) -> None:
    """Record the device and inode of the (still empty) data directory, reached without
    following a symlink; its system identifier follows once it is built."""
    fd = userfs.open_dir(srv.datadir)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    srv.inst.dev, srv.inst.ino, srv.inst.system_id = st.st_dev, st.st_ino, None
    srv.save()


def reset_password(srv: Server, password: str) -> None:
    """Registering a data directory pgmgr knows no password of (made elsewhere, or
    forgotten): a new one is set through the local socket at its next start. The caller
    says so once the record is saved as this one (see :attr:`Server.adopted`)."""
    srv.inst.password = password
    srv.inst.password_pending = srv.inst.password_reset = True


def apply_pending_password(
    srv: Server, install: versions.Installation, su: privileges.ServerUser | None
) -> None:
    """Set the superuser's password over the private socket on the first start of an
    instance copied from a template (the copy shares the template's catalog)."""
    if not srv.inst.password_pending or not srv.inst.password:
        return
    role, pw = quote_ident(srv.inst.superuser), quote_literal(srv.inst.password)
    sql = f"ALTER ROLE {role} PASSWORD {pw}"
    argv = [
        str(install.bin("psql")),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        str(srv.inst.socket_dir),
        "-p",
        str(srv.inst.port),
        "-U",
        srv.inst.superuser,
        "-d",
        "postgres",
    ]
    proc = subprocess.run(
        argv,
        input=sql,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=30,
        env=server._child_env(None),
        check=False,
        preexec_fn=sigdefault.preexec(),  # default dispositions, none blocked
    )
    if proc.returncode != 0 and not srv.inst.password_reset:
        raise DatabaseException(f"could not set the password: {proc.stderr.strip()}")
    if proc.returncode != 0:  # a re-registered data dir stays as it was: say so
        srv.inst.password = None
        srv.notes.append(
            f"could not set a new password for '{srv.inst.name}' "
            f"({' '.join(proc.stderr.split())}); TCP logins need the one it had"
        )
    elif srv.inst.password_reset:
        srv.notes.append(f"set the new password of {srv.inst.superuser!r}")
    srv.inst.password_pending = srv.inst.password_reset = False
    srv.save()
