"""``pgmgr import DIR -d NEWDIR``: a new instance from a bundle (:mod:`pgmgr.core.bundle`).

Everything that can be checked is checked before anything is made (the bundle's files and
checksums, the target directory, the version, the extensions the target binaries have); if a
later step fails, the new instance is destroyed again, so an import either succeeds or leaves
nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pgmgr.core import (
    copy,
    dirlock,
    identity,
    listen,
    privileges,
    registry,
    scram,
    server,
    sigguard,
    sweep,
    teardown,
    testhook,
    userfs,
    versions,
)
from pgmgr.core.bundle import ImportResult, _new_dir, check_root_safe, client_env
from pgmgr.core.bundlecheck import MANIFEST, missing_extensions, read_manifest
from pgmgr.core.errors import DatabaseException, PgmgrError, UsageError, VersionNotFound
from pgmgr.core.instance import Server, quote_ident, quote_literal


def target_install(manifest: dict[str, Any], version: str | None) -> versions.Installation:
    """The binaries to import into: ``version``, else the bundle's own major.

    :raises DatabaseException: an older major than the bundle's (pg_restore reads archives
        of its own and older majors only), or not installed.
    """
    src_major = str(manifest["source"]["major"])
    try:
        install = versions.select(version or src_major).installation
    except VersionNotFound as e:
        if version:
            raise
        # not "PostgreSQL 99 (from --version)": the user gave none
        raise DatabaseException(
            f"the bundle is from PostgreSQL {manifest['source']['version']}, which is not "
            f"installed here (installed: {', '.join(e.installed) or 'none'}); nothing was "
            "created",
            hint=f"install PostgreSQL {src_major}, or import into a newer one with -v",
        ) from None
    if versions.version_key(install.major) < versions.version_key(src_major):
        raise DatabaseException(
            f"the bundle is from PostgreSQL {manifest['source']['version']}; it cannot be "
            f"imported into the older PostgreSQL {install.major} (nothing was created)",
            hint=f"use -v {src_major} or newer",
        )
    return install


def globals_sql(text: str, superuser: str) -> str:
    """``pg_dumpall --globals-only`` output without the ``CREATE ROLE`` of the superuser
    (the new instance has it already; the ``ALTER ROLE`` that follows still applies)."""
    names = {superuser, quote_ident(superuser)}
    drop = re.compile(r"^CREATE ROLE (.+);$")
    return "".join(
        line
        for line in text.splitlines(keepends=True)
        if not ((m := drop.match(line.strip())) and m.group(1) in names)
    )


def restore_argv(install: versions.Installation, archive: Path, *, create: bool) -> list[str]:
    argv = [str(install.bin("pg_restore")), "--exit-on-error", "-d", "postgres"]
    return [*argv, *(["--create"] if create else []), str(archive)]


def import_bundle(
    bundle: Path,
    datadir: Path,
    *,
    version: str | None = None,
    name: str | None = None,
    port: str | None = None,
    auth: str | None = None,
    timeout: float = 60.0,
) -> ImportResult:
    """Create, start and fill a new instance from ``bundle``.

    The instance is registered first, marked ``pending`` (``pgmgr status`` shows it as
    ``importing``, or ``incomplete`` once no import runs; ``start`` refuses it), and the
    mark is cleared last. An import killed on the way is redone by the same import run
    again (it removes the unfinished one first), or removed by ``pgmgr destroy``.

    :raises DatabaseException: see :func:`~pgmgr.core.bundlecheck.read_manifest`,
        :func:`target_install`; the directory exists; the target lacks extensions; a
        restore step failed (then the new instance is removed again).
    :raises UsageError: the name is taken; a bad port or ``auth``.
    :raises PortPrivileged, PortInUse: ``port`` cannot be listened on (before anything).
    """
    t0 = time.monotonic()
    server.check_port_option(port)
    if auth is not None and auth not in server.AUTH_METHODS:
        raise UsageError(f"invalid --auth {auth!r}: use {', '.join(server.AUTH_METHODS)}")
    bundle = Path(os.path.abspath(bundle))
    if bundle.is_dir():
        check_root_safe(bundle, "import from")
    manifest = read_manifest(bundle)
    settings, dropped = _settings(bundle, manifest)
    auth, dropped_auth = _auth(manifest, auth)
    install = target_install(manifest, version)
    datadir = Path(os.path.abspath(datadir))
    identity.check_links(datadir)  # no other user's symlink on the way, as for init
    if name:
        registry.check_name(name)
    # as its start will (on the host a new record has), before the lock (a retry's
    # clean-up) and the initdb
    su = privileges.server_user(datadir, None)
    listen.check_new_port(registry.Instance.host, port, su, install.bindir / "postgres")
    # The lock is held to the end: a retry waits for a live import, and finding the
    # pending record of this directory under it means its import is dead.
    with sigguard.interruptible(), dirlock.lock(datadir):
        earlier = teardown.redo_unfinished(datadir, "import", str(bundle))
        name = name or earlier  # a retry without --name keeps the name it was given
        _check_new(datadir, name, install, manifest)
        srv = Server.for_datadir(datadir, name=name, version=install.version)
        srv.inst.pending, srv.inst.pending_from, srv.building = "import", str(bundle), True
        srv.save()  # registered, marked
        try:
            testhook.pause("import-registered")
            _init(srv, manifest, auth)
            _start(srv, settings, port, timeout)
            testhook.pause("import-started")
            _restore(srv, install, bundle, manifest)
            srv.inst.pending = srv.inst.pending_from = None
            srv.save()
        except BaseException:
            with contextlib.suppress(Exception):
                # The directory this import built (set once it is in place: a signal later
                # in _init, before it returned, left it behind, the record removed).
                if srv.built:
                    teardown.destroy(srv)
                else:  # a directory that appeared there is not ours to remove
                    registry.remove(srv.inst.name)
            raise
    dbs = [str(d["name"]) for d in manifest["databases"]]
    elapsed = time.monotonic() - t0
    return ImportResult(
        srv, str(manifest["source"]["version"]), dbs, elapsed, dropped, dropped_auth
    )


def _settings(bundle: Path, manifest: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The manifest's settings the import applies, and the names it drops (see
    :func:`~pgmgr.core.server.portable_settings`).

    :raises DatabaseException: a setting is malformed (before anything is made)."""
    try:
        return server.portable_settings(manifest["settings"])
    except UsageError as e:
        raise DatabaseException(
            f"{bundle}/{MANIFEST} is not a valid manifest ({e}); nothing was created"
        ) from None


def _auth(manifest: dict[str, Any], asked: str | None) -> tuple[str, str | None]:
    """The new instance's TCP authentication, and the bundle's when it is not applied:
    ``asked`` (``--auth``), else the bundle's, but never ``trust`` (any local client logs
    in over TCP as any role, the superuser included, without a password). A bundle is a
    file someone else may have made or edited: it does not open the new server so
    silently, as it does not choose its files or commands (:func:`_settings`); the new
    instance gets pgmgr's default, scram-sha-256 with its own password, and the import
    says so."""
    bundled = str(manifest.get("auth") or server.InitOptions.auth)
    if asked is not None:
        return asked, None
    if bundled == "trust":
        return server.InitOptions.auth, bundled
    return bundled, None


def _check_new(
    datadir: Path, name: str | None, install: versions.Installation, manifest: dict[str, Any]
) -> None:
    """:raises DatabaseException: the directory exists; the target lacks extensions.
    :raises UsageError: the name is taken."""
    _new_dir(datadir, "import")
    if name and name in registry.names():
        raise UsageError(f"instance name {name!r} is already used", hint="choose another --name")
    missing = missing_extensions(install, manifest)
    if missing:
        raise DatabaseException(
            f"PostgreSQL {install.version} ({install.bindir}) lacks extensions the bundle "
            f"uses: {', '.join(missing)}; nothing was created",
            hint="install them for that version, or import into another with -v",
        )


def _init(srv: Server, manifest: dict[str, Any], auth: str) -> None:
    """:raises DatabaseException: initdb failed, or a data directory appeared there."""
    locale = manifest["locale"]
    opts = server.InitOptions(
        superuser=str(manifest["superuser"]),
        auth=auth,
        encoding=str(manifest["encoding"]),
        locale=str(locale["collate"]),
        extra=() if locale["collate"] == locale["ctype"] else (f"--lc-ctype={locale['ctype']}",),
    )
    srv.initialize(opts, new=True)
    srv.pin()


def _start(srv: Server, settings: dict[str, str], port: str | None, timeout: float) -> None:
    srv.inst.settings = settings
    srv.save()
    srv.start(port=port or "auto", timeout=timeout)


def _restore(
    srv: Server, install: versions.Installation, bundle: Path, manifest: dict[str, Any]
) -> None:
    """Globals with the target's psql, then each database with its pg_restore; the
    superuser keeps the new instance's password."""
    # Bytes as pg_dumpall wrote them: a LATIN1 cluster's role names are not UTF-8, and the
    # file's own SET client_encoding tells psql how to read them.
    text = (bundle / str(manifest["globals"])).read_bytes().decode(errors="surrogateescape")
    # psql runs the bundle's text as the server user: a psql meta-command in it (``\\!``
    # runs a shell) can then do no more than the SQL it carries could anyway (COPY ... TO
    # PROGRAM runs as the server user too), never act as root or as the importing user.
    su = srv.user()
    psql = [str(install.bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"]
    env = client_env(srv)
    sql = globals_sql(text, srv.inst.superuser).encode(errors="surrogateescape")
    server.run(psql, su, timeout=3600, env=env, input=sql, die_with_parent=True)
    for db in manifest["databases"]:
        with readable_archive(bundle / str(db["dir"]), su) as archive:
            argv = restore_argv(install, archive, create=db["name"] != "postgres")
            server.run(argv, su, env=env, timeout=24 * 3600, die_with_parent=True)
        testhook.pause("import-restored-db")
    if srv.inst.password:
        verifier = scram.verifier(srv.inst.password)
        role, pw = quote_ident(srv.inst.superuser), quote_literal(verifier)
        server.run(psql, su, timeout=60, env=env, input=f"ALTER ROLE {role} PASSWORD {pw};\n")


@contextlib.contextmanager
def readable_archive(archive: Path, su: privileges.ServerUser | None) -> Iterator[Path]:
    """``archive`` as a directory pg_restore can read as the server user ``su``.

    pg_restore opens the files its ``toc.dat`` names, ``../`` included: run as root it
    would read any file a crafted bundle names into the new instance. So it runs as the
    server user, and, as root, on a private copy of the archive given to that user (the
    bundle itself may be readable by root only): a copy made by root in its own 0700
    directory, handed over entry by entry through fds before the directory itself, and
    removed through fds afterwards (:func:`_remove_copy`; after a kill, by the next sweep).
    """
    if su is None or su.uid == os.geteuid():
        yield archive
        return
    sweep.dead_runs(su)  # the copies of imports killed before they removed theirs
    # held: see pgmgr.core.sweep (live, whatever pid)
    top, held = sweep.make_dir(f"pgmgr-imp-{os.getpid()}-", _copy_place(su))
    try:
        testhook.pause("import-archive-dir")
        # Through the held fd (O_NOFOLLOW), as /proc/self/fd/N, not by path: the temp dir
        # may be one another user can write, who could swap the directory for a symlink
        # (root then copied into, and gave postgres, whatever it pointed to).
        if not sweep.still_named(held, top):
            raise sweep.replaced(top)
        here = Path(f"/proc/self/fd/{held}")
        copy.copy_tree(archive, here / "archive")
        for _dir, _subdirs, files, dfd in os.fwalk(here / "archive"):
            for entry in files:
                os.chown(entry, su.uid, su.gid, dir_fd=dfd, follow_symlinks=False)
            os.fchown(dfd, su.uid, su.gid)
        os.fchown(held, su.uid, su.gid)
        yield top / "archive"
    finally:
        testhook.pause("import-archive-remove")
        with contextlib.suppress(OSError, PgmgrError):
            _remove_copy(top, held)
        sweep.release(held)


def _copy_place(su: privileges.ServerUser) -> str | None:
    """Where to make the copy: the temp dir (None), unless the server user cannot reach it
    (root's private ``TMPDIR=/tmp/user/0``, 0700): pg_restore, as that user, could not
    open the copy there ("Permission denied"); then /tmp."""
    import tempfile

    here = tempfile.gettempdir()
    return None if userfs.as_user(su, os.access, here, os.X_OK) else "/tmp"  # noqa: S108


def _remove_copy(top: Path, held: int | None) -> None:
    """Remove the copy :func:`readable_archive` made, through fds, as
    :mod:`pgmgr.core.ownerrm` removes what a server user owns: the directory it made
    (``held``, wherever it is now) emptied as its owner, then its name removed from the
    temp dir only if it still names that directory. By path, as the server user, it
    removed whatever that user had put at the name meanwhile (a directory it owns in
    sticky /tmp: it may rename it away) and left the copy of the bundle where it was
    moved; nor could it reach the path in a temp dir of root's it may not enter."""
    from pgmgr.core import ownerrm

    if held is not None:
        ownerrm.empty(held)
    with userfs.opened_dir(top.parent) as parent:
        st = os.lstat(top.name, dir_fd=parent)
        made = os.fstat(held) if held is not None else st  # not held: root's own, empty
        if (st.st_dev, st.st_ino) == (made.st_dev, made.st_ino):
            ownerrm.remove_at(parent, top.name)
