"""What of the old data directory is not PostgreSQL's: an upgrade carries it over to the
new cluster (pg_upgrade copies only the cluster's own files).

- Every top-level entry that PostgreSQL (or pgmgr) did not make (:data:`removal.PG_ENTRIES`):
  a ``README``, scripts, the ``server.crt`` that ``ssl_cert_file = 'server.crt'`` names,
  a file ``ident_file``, ``hba_file`` or an ``@file`` of pg_hba.conf names, the files
  postgresql.conf includes, a ``conf.d``. Copied as the server user through directory fds
  (:func:`pgmgr.core.copy.copy_tree`): a symlink is copied as a symlink, never followed;
  a FIFO, socket or device is left out, and said. What the new cluster has of its own is
  never replaced.
- The ``include``, ``include_if_exists`` and ``include_dir`` lines of postgresql.conf
  (which is not carried: initdb's new one is kept), added at the end of the new one.

Before anything is stopped (:func:`placed`), the entries are copied into the fresh new
cluster and the new major reads postgresql.conf with those lines (``postgres -C``, which
reads every included file): a setting it rejects there, or a file it cannot open, is
refused then, not once the upgraded server fails to start. The copies are removed after
that check, moved aside (:mod:`pgmgr.core.upgradekept`): once pg_upgrade is done, each entry
unchanged since is moved into place, any other copied again.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pgmgr.core import copy, removal, snapstore, tools, upgradekept, userfs
from pgmgr.core import upgradeconf as conf
from pgmgr.core.errors import CommandFailed, DatabaseException
from pgmgr.core.instance import Server
from pgmgr.core.pgconf import QUOTED, quote_value, unquote_value
from pgmgr.core.snapstore import Store
from pgmgr.core.versions import Installation

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: An include line of postgresql.conf: the directive and its file (quoted or not).
_INCLUDE = re.compile(
    rf"^\s*(include_if_exists|include_dir|include)(?![\w.])\s*=?\s*({QUOTED}|[^#\s']+)", re.I
)
_BLOCK = "# Carried over from the old postgresql.conf by 'pgmgr upgrade':"
_REJECTED = re.compile(r"\b(?:LOG|FATAL|ERROR):\s+(.+?)\s*$")


@dataclass
class Carried:
    """What the upgrade carries of the old data directory, and what it leaves out."""

    #: the top-level entries copied (a directory's name ends with ``/``)
    files: list[str] = field(default_factory=list)
    #: ``(name, why)`` of what is not
    dropped: list[tuple[str, str]] = field(default_factory=list)
    #: the include lines of postgresql.conf
    includes: list[str] = field(default_factory=list)
    #: each entry copied, as it was before (:func:`upgradekept.stamp`), taken at ``since``
    stamps: dict[str, list[upgradekept.Entry]] = field(default_factory=dict)
    since: int = 0


#: The names pgmgr's checks give their copies in the new data directory (never carried).
CHECK_PREFIX = "pgmgr-check-"


def own(name: str) -> bool:
    """Whether the top-level entry ``name`` of a data directory is PostgreSQL's or pgmgr's."""
    return (
        name in removal.PG_ENTRIES or removal.is_socket_name(name) or name.startswith(CHECK_PREFIX)
    )


#: The configuration the new major reads for the check, in the new data directory.
TRIAL_CONF = CHECK_PREFIX + "postgresql.conf"


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def copy_entries(old: Path, new: Path, before: Carried | None = None) -> Carried:
    """Copy the top-level entries of ``old`` that are not PostgreSQL's (:func:`own`) into
    ``new``; what was copied and what was not. As the user. ``before``: what the check
    copied, kept beside ``new`` (:func:`upgradekept.set_aside`): an entry unchanged since
    is moved into place instead.

    :raises OSError: one could not be copied (unreadable, no space): ``filename`` names it.
    """
    done = Carried(since=upgradekept.now())
    ofd = os.open(old, _DIR_FLAGS)
    kfd = upgradekept.opened(new) if before is not None else None
    try:
        nfd = os.open(new, _DIR_FLAGS)
        try:
            with os.scandir(ofd) as it:
                names = sorted(e.name for e in it if not own(e.name))
            for name in names:
                if not _reused(ofd, nfd, kfd, name, done, before):
                    _copy_entry(ofd, nfd, name, done, old)
        finally:
            os.close(nfd)
    finally:
        os.close(ofd)
        if kfd is not None:
            os.close(kfd)
    return done


def _reused(
    ofd: int, nfd: int, kfd: int | None, name: str, done: Carried, before: Carried | None
) -> bool:
    """Whether the check's copy of ``name`` was moved into place: it is unchanged since
    (:func:`upgradekept.unchanged`), and the new cluster has no ``name`` of its own. A
    copy not moved is removed first: it took the room of the copy made again (a changed
    10 GB file held twice during the downtime filled a disk the checks said was big
    enough)."""
    if before is None or kfd is None or name not in before.stamps:
        return False
    if not (
        upgradekept.unchanged(ofd, name, before.stamps[name], before.since)
        and not _present(nfd, name)  # else said by _copy_entry
        and upgradekept.take(kfd, nfd, name)
    ):
        userfs.rmtree_at(kfd, name)
        return False
    top = name + "/" if name + "/" in before.files else name
    done.files.append(top)
    done.dropped += [(n, why) for n, why in before.dropped if n == top]
    return True


def _present(dfd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def entries_size(old: Path) -> int:
    """The bytes :func:`copy_entries` allocates for its copies of ``old``, at most (a
    sparse file's holes left out: the copy keeps them). As the user."""
    total = 0
    ofd = os.open(old, _DIR_FLAGS)
    try:
        with os.scandir(ofd) as it:
            names = [e.name for e in it if not own(e.name)]
        for name in names:
            with contextlib.suppress(OSError):  # removed meanwhile: the copy says the rest
                st = os.stat(name, dir_fd=ofd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    total += copy.allocation(name, st, ofd)
                elif stat.S_ISDIR(st.st_mode):
                    sub = os.open(name, _DIR_FLAGS, dir_fd=ofd)
                    try:
                        total += copy.tree_allocated(sub)
                    finally:
                        os.close(sub)
    finally:
        os.close(ofd)
    return total


def _copy_entry(ofd: int, nfd: int, name: str, done: Carried, old: Path) -> None:
    try:
        st = os.stat(name, dir_fd=ofd, follow_symlinks=False)
    except FileNotFoundError:
        return  # removed meanwhile
    try:  # before the copy: a change after it shows
        before = upgradekept.stamp(ofd, name)
    except OSError:  # the copy says what (an unreadable directory); never reused
        before = []
    with contextlib.suppress(FileNotFoundError):
        os.stat(name, dir_fd=nfd, follow_symlinks=False)
        done.dropped.append((name, f"PostgreSQL {_major(nfd)} has its own"))
        return
    try:
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=ofd), name, dir_fd=nfd)
            stats = copy.CopyStats()
        elif stat.S_ISDIR(st.st_mode):
            sfd = os.open(name, _DIR_FLAGS, dir_fd=ofd)
            try:
                stats = copy.copy_tree(sfd, name, dst_dir_fd=nfd)
            finally:
                os.close(sfd)
            name += "/"
        elif stat.S_ISREG(st.st_mode):
            stats = copy.copy_file(ofd, nfd, name)
        else:
            done.dropped.append((name, _kind(st.st_mode)))
            return
    except OSError as e:
        where = os.fsdecode(e.filename) if e.filename else ""
        if not os.path.isabs(where):  # a name in its directory; in a tree, under its top
            top = old / name
            e.filename = str(top / where if stat.S_ISDIR(st.st_mode) and where else top)
            e.filename2 = None
        raise
    done.files.append(name)
    done.stamps[name.rstrip("/")] = before
    if stats.skipped:
        what = "a FIFO, socket or device" if stats.skipped == 1 else "FIFOs, sockets or devices"
        done.dropped.append((name, f"{stats.skipped} of its entries: {what}"))


def _major(nfd: int) -> str:
    try:
        return userfs.read_file_at(nfd, "PG_VERSION", limit=64).decode().strip()
    except (OSError, userfs.UnsafePath):
        return "(new)"


def remove_entries(new: Path, names: list[str]) -> None:
    """Remove the entries :func:`copy_entries` made in ``new``. As the user."""
    with userfs.opened_dir(new) as fd:
        for name in names:
            userfs.rmtree_at(fd, name.rstrip("/"))


def include_lines(text: str) -> list[str]:
    """The active include lines of a postgresql.conf's ``text`` (without their comments)."""
    found = []
    for line in text.splitlines():
        m = _INCLUDE.match(line)
        if m:
            found.append(f"{m.group(1).lower()} {_quoted(m.group(2))}")
    return found


def _quoted(value: str) -> str:
    """A quoted value as the file has it (PostgreSQL reads it the same here), else quoted."""
    return value if value.startswith("'") else quote_value(value)


def with_includes(text: str, lines: list[str]) -> str:
    """postgresql.conf's ``text`` with ``lines`` (:func:`include_lines`) at its end."""
    if not lines:
        return text
    return text.rstrip("\n") + "\n\n" + "\n".join([_BLOCK, *lines]) + "\n"


def trial_text(lines: list[str], old: Path, carried: Sequence[str] = ()) -> str:
    """The configuration the new major reads for the check (in the new data directory):
    its postgresql.conf, then ``lines``. A relative name that leads out of the data
    directory (``../common.conf``), or into one of the ``carried`` entries, is made
    absolute from ``old``, where the upgraded one will be: a carried symlink
    (``site.conf -> ../shared.conf``) resolves there as it will after the upgrade, not
    from the work directory the new cluster is checked in. Other names (a directory of
    PostgreSQL's, never carried) are read in the new cluster, as after the upgrade."""
    tops = {name.rstrip("/") for name in carried}
    out = ["include 'postgresql.conf'"]
    for line in lines:
        directive, value = line.split(" ", 1)
        name = unquote_value(value)
        top = os.path.normpath(name).split(os.sep)[0]
        if not os.path.isabs(name) and (top == ".." or top in tops):
            value = quote_value(str(old / name))
        out.append(f"{directive} {value}")
    return "\n".join(out) + "\n"


def _write_trial(newdata: Path, text: str) -> None:
    fd = os.open(newdata / TRIAL_CONF, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    # a name of bytes that are not UTF-8 ('\\377.conf') is written back as those bytes
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(text)


def _unlink_trial(newdata: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(newdata / TRIAL_CONF)


def old_includes(old: Path) -> list[str]:
    """The include lines of ``old``'s postgresql.conf. As the user."""
    try:
        return include_lines(conf.read(old / "postgresql.conf").decode(errors="replace"))
    except FileNotFoundError:
        return []


def add_includes(new: Path, lines: list[str]) -> None:
    """Add ``lines`` at the end of ``new``'s postgresql.conf. As the user."""
    if lines:
        path = new / "postgresql.conf"
        path.write_text(with_includes(conf.read(path).decode(errors="replace"), lines))


def carry(old: Path, new: Path, before: Carried | None = None) -> Carried:
    """Copy the entries (:func:`copy_entries`, reusing ``before``'s copies where nothing
    changed) and add the include lines. As the user."""
    done = copy_entries(old, new, before)
    done.includes = old_includes(old)
    add_includes(new, done.includes)
    return done


def copied(srv: Server, store: Store, fn: object, *args: object) -> Carried:
    """``conf.reading(srv, store, fn, *args)`` where ``fn`` copies entries: one that cannot
    be copied is one line, nothing changed.

    :raises DatabaseException: it could not be copied."""
    try:
        done: Carried = conf.reading(srv, store, fn, *args)  # type: ignore[arg-type]
    except OSError as e:
        where = e.filename or srv.datadir
        raise DatabaseException(
            f"cannot upgrade '{srv.inst.name}': cannot copy {where} to the new cluster "
            f"({e.strerror or e}); nothing was changed",
            hint="make it readable by the server user, or move it out of the data directory, "
            "then upgrade (the upgrade carries over what PostgreSQL did not make there)",
        ) from None
    return done


@contextlib.contextmanager
def placed(srv: Server, store: Store, new: Installation, newdata: Path) -> Iterator[Carried]:
    """The entries of the old data directory copied into the fresh ``newdata`` (moved
    aside on exit for the switch to reuse, :mod:`pgmgr.core.upgradekept`; removed on an
    error), and the new major's reading of postgresql.conf with the include lines
    checked: what the upgrade would carry.

    :raises DatabaseException: an entry cannot be copied, or the new major rejects what
        postgresql.conf includes; nothing was changed.
    """
    done = Carried()
    try:
        # Room first: the copy is made while the server runs, and filling its disk (a big
        # backup kept there) would stop it. (A sparse file's holes are kept.)
        size = store.as_user(entries_size, srv.datadir)
        snapstore.check_space(
            store, size, f"the files '{srv.inst.name}' keeps in its data directory"
        )
        done = copied(srv, store, copy_entries, srv.datadir, newdata)
        done.includes = conf.reading(srv, store, old_includes, srv.datadir)
        if done.includes:
            check_includes(srv, store, new, newdata, done.includes, done.files)
        yield done
    except BaseException:
        store.as_user(remove_entries, newdata, done.files)
        raise
    try:
        store.as_user(upgradekept.set_aside, newdata, done.files)
    except OSError:  # copied again at the switch, as any entry not kept
        done.stamps = {}
        store.as_user(remove_entries, newdata, done.files)


def check_includes(
    srv: Server, store: Store, new: Installation, newdata: Path, lines: list[str],
    carried: list[str],
) -> None:  # fmt: skip
    """:raises DatabaseException: the new major's ``postgres -C`` refuses postgresql.conf
    with ``lines`` (a setting it lacks in an included file, a file it cannot open);
    ``carried``: the entries copied into ``newdata`` (see :func:`trial_text`)."""
    from pgmgr.core import fifowait

    store.as_user(_write_trial, newdata, trial_text(lines, srv.datadir, carried))
    try:
        argv = [str(new.bin("postgres")), "-D", str(newdata), "-C", "port",
                "-c", f"config_file={newdata / TRIAL_CONF}"]  # fmt: skip
        tools.run(argv, srv.user(), timeout=60, watch=fifowait.watchdog())
    except CommandFailed as e:
        said = [m.group(1) for m in map(_REJECTED.search, (e.stderr or "").splitlines()) if m]
        cause = "; ".join(said[:2]) or str(e)
        cause = cause.replace(f"{newdata}/", "").replace(f"{srv.datadir}/", "")
        raise DatabaseException(
            f"cannot upgrade '{srv.inst.name}': PostgreSQL {new.major} does not take what "
            f"postgresql.conf includes ({cause}); nothing was changed",
            hint="change that file (or the include line of postgresql.conf), then upgrade",
        ) from None
    finally:
        store.as_user(_unlink_trial, newdata)
