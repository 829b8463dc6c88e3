"""After pg_upgrade: the configuration carried over to the new cluster (and what the new
major rejects of it), and the statistics rebuilt. Used by :mod:`pgmgr.core.upgrade`."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pgmgr.core import fifowait, sigguard, tools
from pgmgr.core import upgradeplan as plan
from pgmgr.core.errors import CommandFailed, DatabaseException
from pgmgr.core.instance import Server
from pgmgr.core.regular import NotRegular, open_regular
from pgmgr.core.snapstore import Store
from pgmgr.core.versions import Installation

T = TypeVar("T")


def read(path: Path) -> bytes:
    """The bytes of the configuration file ``path`` (a symlink followed: these are the
    user's own files). As the user. Opened without blocking: a FIFO put in its place,
    which no one ever writes to, made the upgrade wait for ever, holding the lock.

    :raises NotRegular: not a regular file (a FIFO, a device, a directory).
    :raises FileNotFoundError: there is none.
    """
    with open_regular(path) as f:
        return f.read()


def reading(srv: Server, store: Store, fn: Callable[..., T], *args: Any) -> T:
    """``store.as_user(fn, *args)`` for ``fn`` that reads the data directory's
    configuration (:func:`read`): a file there that is not a regular file fails the
    upgrade in one line, before anything changed.

    :raises DatabaseException: such a file."""
    try:
        return store.as_user(fn, *args)
    except NotRegular as e:
        raise _refused(srv, e.path) from None


def _refused(srv: Server, path: Path) -> DatabaseException:
    return DatabaseException(
        f"cannot upgrade '{srv.inst.name}': {path} is not a regular file; nothing was changed",
        hint="put the file back (a regular file), then upgrade",
    )


#: The files of the old data directory that the upgrade opens: postgresql.conf (pg_upgrade
#: opens it, to tell a data directory from a configuration-only one; pgmgr reads it) and
#: those it carries over.
OPENED = ("postgresql.conf", *plan.CARRIED_FILES)


def irregular(datadir: Path) -> list[Path]:
    """Those of :data:`OPENED` in ``datadir`` that are there but are not regular files (a
    symlink followed; not opened: a FIFO's open waits for a writer). As the user."""
    found = []
    for name in OPENED:
        try:
            st = os.stat(datadir / name)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            found.append(datadir / name)
    return found


def check_regular(srv: Server, store: Store) -> None:
    """:raises DatabaseException: a file of :data:`OPENED` is not a regular file: a FIFO
    put there, which no one writes to, made pg_upgrade (and pgmgr) wait for ever to open
    it, holding the instance's lock. (One swapped in after this check is still refused
    where pgmgr reads it, :func:`read`, but pg_upgrade would wait: Ctrl-C ends it.)"""
    found = store.as_user(irregular, srv.datadir)
    if found:
        raise _refused(srv, found[0])


def auto_settings(old: Path) -> dict[str, str]:
    """The settings of the old cluster's postgresql.auto.conf (ALTER SYSTEM). As the user."""
    try:
        text = read(old / "postgresql.auto.conf").decode(errors="replace")
    except FileNotFoundError:
        return {}
    return {k: plan.unquote(v) for k, v in plan.auto_conf_settings(text).items()}


def carry(old: Path, new: Path, rejected: set[str]) -> None:
    """Copy the configuration pgmgr keeps into the new cluster, the lines setting what the
    new major rejects commented out. As the user."""
    for name in plan.CARRIED_FILES:
        try:
            data = read(old / name)
        except FileNotFoundError:
            continue
        (new / name).write_bytes(data)
    path = new / "postgresql.auto.conf"
    if rejected and path.is_file():
        text = read(path).decode(errors="replace")
        path.write_text(plan.drop_from_auto_conf(text, rejected))


def rejected_settings(
    new: Installation, datadir: Path, settings: dict[str, str], srv: Server
) -> list[str]:
    """The names among ``settings`` that the new major's postgres refuses (``-C``)."""
    user = srv.user()

    def accepts(items: dict[str, str]) -> bool:
        argv = [str(new.bin("postgres")), "-D", str(datadir), "-C", "port"]
        for k, v in items.items():
            argv += ["-c", f"{k}={v}"]
        try:
            tools.run(argv, user, timeout=60, watch=fifowait.watchdog())  # a FIFO: Stuck
        except CommandFailed:
            return False
        return True

    if not settings or accepts(settings):
        return []
    return sorted(k for k, v in settings.items() if not accepts({k: v}))


def rejected(srv: Server, store: Store, new: Installation, newdata: Path) -> list[str]:
    """The settings of postgresql.auto.conf and the record that the new major rejects.
    Checked before the old files are carried over: the new postgres reads them too."""
    auto = reading(srv, store, auto_settings, srv.datadir)
    return rejected_settings(new, newdata, {**auto, **srv.inst.settings}, srv)


def check_libraries(srv: Server, store: Store, new: Installation) -> None:
    """:raises DatabaseException: a library the carried settings preload (the record's,
    and postgresql.auto.conf's, which wins) is not in the new installation: pg_upgrade
    does not look at them, and the upgraded server would not start (no check where the
    new installation's library directory cannot be told, or a ``dynamic_library_path``
    is set)."""
    from pgmgr.core import binout

    auto = reading(srv, store, auto_settings, srv.datadir)
    settings = {**srv.inst.settings, **auto}
    out = binout.cached_output([str(new.bin("pg_config")), "--pkglibdir"])
    libdir = Path(out.strip()) if out and out.strip() else None
    if libdir is None or not libdir.is_dir():
        return
    own = settings.get("dynamic_library_path", "$libdir").strip() not in ("", "$libdir")
    for name in plan.PRELOADS:
        for lib in plan.library_list(settings.get(name, "")):
            if (own and "/" not in lib) or plan.library_found(libdir, lib):
                continue
            how = (f"ALTER SYSTEM SET {name} = '...', or ALTER SYSTEM RESET {name}" if name in auto
                   else f"kept by pgmgr: 'pgmgr config {srv.inst.name} set {name}=...', or "
                   f"'unset {name}'")  # fmt: skip
            raise DatabaseException(
                f"cannot upgrade '{srv.inst.name}': PostgreSQL {new.major} has no library "
                f"{lib!r} ({name}): {plan.PRELOADS[name]}; nothing was changed",
                hint=f"install it for PostgreSQL {new.major}, or take it out of {name} ({how})",
            )


def check_scoped(srv: Server, new: Installation, newdata: Path, scoped: list[plan.Scoped]) -> None:
    """:raises DatabaseException: the new major rejects settings of databases or roles
    (``scoped``): pg_upgrade's --check does not look at them, and it failed to restore
    them once the server was stopped. A custom setting (``x.y``) is never rejected."""
    todo = [s for s in scoped if "." not in s.name and s.name not in plan.UNCHECKABLE]
    first: dict[str, str] = {}
    for s in todo:
        first.setdefault(s.name, s.value)
    names = set(rejected_settings(new, newdata, first, srv)) if first else set()
    refused = [
        s for s in todo
        if (s.name in names if s.value == first[s.name]
            else rejected_settings(new, newdata, {s.name: s.value}, srv))
    ]  # fmt: skip
    if not refused:
        return
    raise DatabaseException(
        f"cannot upgrade '{srv.inst.name}': PostgreSQL {new.major} rejects these settings of "
        "databases and roles, which pg_upgrade would fail to restore: "
        + ", ".join(f"{s.name} ({s.where()})" for s in refused)
        + "; nothing was changed",
        hint="reset them (" + "; ".join(s.reset_sql() for s in refused) + "), then upgrade",
    )


def conf_texts(old: Path, new: Path) -> tuple[str, str]:
    """The two clusters' postgresql.conf. As the user."""
    texts = (read(d / "postgresql.conf").decode(errors="replace") for d in (old, new))
    return next(texts), next(texts)


def left_behind(
    srv: Server, store: Store, new: Installation, newdata: Path, rejected: list[str]
) -> tuple[list[str], list[str]]:
    """What the upgrade leaves behind of the old configuration: the settings the new major
    rejects (``rejected``, of those pgmgr carries, and those of postgresql.conf), and the
    ones of postgresql.conf it accepts but which are not carried over (pgmgr carries
    postgresql.auto.conf and the record's settings, not postgresql.conf)."""
    old, new_conf = reading(srv, store, conf_texts, srv.datadir, newdata)
    kept = set(reading(srv, store, auto_settings, srv.datadir)) | set(srv.inst.settings)
    left = plan.not_carried(old, new_conf, kept)
    gone = rejected_settings(new, newdata, left, srv)
    return sorted({*rejected, *gone}), [n for n in left if n not in gone]


#: What pg_upgrade writes in its working directory when extensions should be updated.
EXTENSION_SCRIPT = "update_extensions.sql"


def extension_script(work: Path) -> str | None:
    """pg_upgrade's ``update_extensions.sql`` in ``work``, if it wrote one: a regular file
    only (never a FIFO nor a symlink), at most 1 MB. As the user."""
    try:
        fd = os.open(work / EXTENSION_SCRIPT, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return f.read(1 << 20).decode(errors="replace")


def rebuild_statistics(srv: Server, new: Installation) -> tuple[str | None, str | None]:
    """Rebuild the statistics on the running new server (see
    :func:`upgradeplan.analyze_steps`): what ran, or how to run it (and why it did not).
    """
    argvs = analyze_argvs(srv, new)
    try:
        with sigguard.cancellable():  # the upgrade is complete: this may be cut short
            for argv in argvs:
                tools.run(argv, srv.user(), timeout=3600)
    except (CommandFailed, KeyboardInterrupt) as e:
        why = str(e) or "interrupted"
        return None, f"statistics were not rebuilt ({why}); run: {shell(argvs)}"
    steps = plan.analyze_steps(new.major)
    return ", then ".join(" ".join(["vacuumdb", *s]) for s in steps), None


def analyze_argvs(srv: Server, new: Installation) -> list[list[str]]:
    inst = srv.inst
    host = str(inst.socket_dir or inst.host)
    return [
        plan.vacuumdb_argv(new, step, host, inst.port, inst.superuser)
        for step in plan.analyze_steps(new.major)
    ]


def shell(argvs: list[list[str]]) -> str:
    import shlex

    return " && ".join(shlex.join(argv) for argv in argvs)
