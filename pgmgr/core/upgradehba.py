"""Whether the new major loads the old cluster's ``pg_hba.conf`` and ``pg_ident.conf``,
which an upgrade carries over. A line it does not take (an authentication method it lacks:
``ldap``, ``pam`` or ``gss`` in a build without them; a file named with ``@`` that is not
carried) made the upgraded server fail to start ("could not load pg_hba.conf") once the
upgrade was done: neither pg_upgrade's checks nor ``postgres -C`` read that file. A
pg_ident.conf line it does not take (a PostgreSQL user ``/(``, a regular expression from
16 on) only makes it log at start-up, and every connection using that map fail.

The fresh new cluster is started for the question, before anything is stopped (``--check``
too): on the upgrade's private socket directory, without TCP, with a copy of the files in
its data directory (so that the names they include resolve as they will once carried:
the caller placed the other entries the upgrade carries there,
:func:`pgmgr.core.upgradefiles.placed`), or the files the kept ``hba_file`` and
``ident_file`` settings name, dying with pgmgr; then it is stopped (a fast shutdown,
which pg_upgrade needs) and the copies removed. A file named by its full path in a
directory of the old data directory that is not carried is found by reading the lines
(there, the old one's file would still be found).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Sequence
from pathlib import Path

from pgmgr.core import launch, server, sigguard, upgradeprobe
from pgmgr.core import upgradeconf as conf
from pgmgr.core.errors import DatabaseException
from pgmgr.core.instance import Server
from pgmgr.core.snapstore import Store
from pgmgr.core.upgradeplan import CARRIED_FILES
from pgmgr.core.versions import Installation

#: The copies of the old pg_hba.conf and pg_ident.conf in the new data directory, for the
#: question only.
COPY = "pgmgr-check-pg_hba.conf"
IDENT_COPY = "pgmgr-check-pg_ident.conf"
_CAUSE = re.compile(r"\b(?:LOG|WARNING):\s+(.+?)\s*$")
#: A file pg_hba.conf includes: ``@name`` or ``@"name"`` (a database or user list).
_INCLUDE = re.compile(r'(?:^|[\s,])@(?:"([^"]+)"|([^\s,"]+))')
_LINE = re.compile(r'\bCONTEXT:\s+line (\d+) of configuration file "([^"]+)"')


def place(old: Path, newdata: Path, carried: Sequence[str] = ()) -> tuple[str | None, bool]:
    """Copy ``old``'s pg_hba.conf and pg_ident.conf into ``newdata`` as :data:`COPY` and
    :data:`IDENT_COPY` (the first's ``@`` names into ``carried`` entries read from ``old``:
    :func:`from_old`): the text of the first (None if there is none), and whether there
    was the second. As the user."""
    found: list[bytes | None] = []
    for name, copy in (("pg_hba.conf", COPY), ("pg_ident.conf", IDENT_COPY)):
        try:
            data = conf.read(old / name)
        except FileNotFoundError:
            found.append(None)
            continue
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        with os.fdopen(os.open(newdata / copy, flags, 0o600), "wb") as f:
            if copy == COPY and carried:
                f.write(from_old(data.decode(errors="surrogateescape"), old, carried).encode(
                    errors="surrogateescape"))  # fmt: skip
            else:
                f.write(data)
        found.append(data)
    hba, ident = found
    return (None if hba is None else hba.decode(errors="replace")), ident is not None


def from_old(text: str, old: Path, carried: Sequence[str]) -> str:
    """pg_hba.conf's ``text`` for the check, each relative ``@`` name that leads into one
    of the ``carried`` entries, or out of the data directory (``@../users``), named from
    ``old``: the check's copy is in the new cluster's work directory, where a carried
    relative symlink (``admins -> ../admins.list``) leads elsewhere than it will once the
    upgraded directory is in ``old``'s place."""
    tops = {name.rstrip("/") for name in carried} | {".."}

    def named(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] not in tops:
            return m.group(0)
        path = str(old / name)
        if re.search(r'[\s,"]', path):  # not written plainly: left as it is
            return m.group(0)
        return m.group(0)[: m.group(0).index("@") + 1] + path

    out = []
    for line in text.splitlines(keepends=True):
        body, mark, comment = line.partition("#")
        out.append(_INCLUDE.sub(named, body) + mark + comment)
    return "".join(out)


def _uncarried(path: str, datadir: Path) -> str | None:
    """The directory of PostgreSQL's in ``datadir`` that ``path`` is in, which the upgrade
    does not carry (``global``), or None."""
    from pgmgr.core import upgradefiles

    name = os.path.normpath(path)
    if not os.path.isabs(name) or not Path(name).is_relative_to(datadir):
        return None
    top = Path(name).relative_to(datadir).parts[:1]
    if top and upgradefiles.own(top[0]) and top[0] not in CARRIED_FILES:
        return top[0]
    return None


def _named_refused(srv: Server, name: str, value: str, top: str) -> DatabaseException:
    return DatabaseException(
        f"cannot upgrade '{srv.inst.name}': {name} names {value}, in {top} of the data "
        "directory, which the upgrade does not carry; nothing was changed",
        hint=f"move the file to the top level of the data directory (or out of it) and set "
        f"{name} again, then upgrade",
    )


def in_datadir(text: str, datadir: Path) -> str | None:
    """The first file that pg_hba.conf's ``text`` names with ``@`` by its full path in a
    directory of ``datadir`` that PostgreSQL made ("line 7: ..."), or None: the old
    server reads it there, the upgraded one finds there the new cluster's directory,
    without it (the upgrade carries what PostgreSQL did not make, and its configuration
    files: :mod:`pgmgr.core.upgradefiles`)."""
    for number, line in enumerate(text.splitlines(), 1):
        for m in _INCLUDE.finditer(line.split("#", 1)[0]):
            name = os.path.normpath(m.group(1) or m.group(2))
            top = _uncarried(name, datadir)
            if top:
                return f'line {number}: file "{name}" is in {top}, which the upgrade does not carry'
    return None


def unplace(newdata: Path) -> None:
    """Remove :data:`COPY` and :data:`IDENT_COPY` from ``newdata``. As the user."""
    for name in (COPY, IDENT_COPY):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(newdata / name)


def _named(srv: Server, store: Store) -> dict[str, str]:
    """``hba_file`` and ``ident_file`` as the kept settings set them (the record's, then
    postgresql.auto.conf's, which wins), if they do."""
    auto = conf.reading(srv, store, conf.auto_settings, srv.datadir)
    both = {**srv.inst.settings, **auto}
    return {k: both[k] for k in ("hba_file", "ident_file") if both.get(k)}


def check(
    srv: Server, store: Store, new: Installation, newdata: Path, sockdir: str,
    carried: Sequence[str] = (),
) -> None:  # fmt: skip
    """:raises DatabaseException: the new major's server does not start with the old
    pg_hba.conf, or does not load its pg_ident.conf (see the module doc); nothing was
    changed. ``carried``: the entries placed in ``newdata`` (see :func:`from_old`)."""
    try:
        text, ident = conf.reading(srv, store, place, srv.datadir, newdata, carried)
        settings = _named(srv, store)
        for name, value in settings.items():
            top = _uncarried(os.path.join("/", value), srv.datadir)  # relative: from /
            if top:
                raise _named_refused(srv, name, value, top)
        if "hba_file" not in settings:
            if text is None:
                return
            inside = in_datadir(text, srv.datadir)
            if inside:
                raise _refused(srv, new, inside, newdata)
            settings["hba_file"] = str(newdata / COPY)
        if "ident_file" not in settings and ident:
            settings["ident_file"] = str(newdata / IDENT_COPY)
        argv = server.postgres_argv(
            new, newdata, host="", port=srv.inst.port or 5432, socket_dir=Path(sockdir),
            settings=settings,
        )  # fmt: skip
        offset = launch.open_log_offset(srv.log_file)
        with sigguard.shielded(deliver=False) as got:  # a Ctrl-C inside Popen loses the child
            child = launch.spawn(
                argv, srv.log_file, srv.user(), die_with_parent=True, death=signal.SIGINT
            )
        try:
            sigguard.redeliver(got, None)
            upgradeprobe.wait_ready(srv, child, offset, newdata)
            log = launch.log_tail(srv.log_file, lines=1000, since=offset)
        except launch.ServerExited as e:
            raise _refused(srv, new, _cause(e.log, newdata), newdata) from None
        finally:
            upgradeprobe.stop(child)
        cause = ident_why(log, settings.get("ident_file"))
        if cause:
            raise _ident_refused(srv, new, cause.replace(f"{newdata}/", ""))
    finally:
        store.as_user(unplace, newdata)


def ident_why(log: str, ident: str | None) -> str | None:
    """What the server's ``log`` says of the usermap file ``ident`` (a path; relative,
    from ``/``, where pgmgr starts servers): its first complaint ("line 3: invalid
    regular expression ...", "could not open file ..."), or None."""
    if not ident:
        return None
    path = os.path.normpath(os.path.join("/", ident))
    said = why(log, path)
    if said:
        return said
    for line in log.splitlines():
        m = _CAUSE.search(line)
        if m and f'"{path}"' in m.group(1) and "could not open" in m.group(1):
            return m.group(1)
    return None


def _ident_refused(srv: Server, new: Installation, cause: str) -> DatabaseException:
    return DatabaseException(
        f"cannot upgrade '{srv.inst.name}': PostgreSQL {new.major} would not load its "
        f"pg_ident.conf ({cause}): the connections that use its maps would fail; nothing "
        "was changed",
        hint="change or remove that line (or the file ident_file names), then upgrade",
    )


def why(log: str, hba: str) -> str | None:
    """What the server's ``log`` says of the copy ``hba``: its first complaint, with the
    line it is about ("line 100: invalid authentication method ..."), or None."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        m = _LINE.search(line)
        if m and m.group(2) == hba and i > 0 and (cause := _CAUSE.search(lines[i - 1])):
            return f"line {m.group(1)}: {cause.group(1)}"
    return None


def _cause(log: str, newdata: Path) -> str:
    """Why the server did not start with the copy of pg_hba.conf in ``newdata``."""
    hba = str(newdata / COPY)
    cause = why(log, hba)
    if cause is None:  # not about pg_hba.conf: the server's own words
        cause = launch.why_exited(log).replace(hba, "pg_hba.conf")
    return cause.replace(f"{newdata}/", "")  # a file named with @: as the line names it


def _refused(srv: Server, new: Installation, cause: str, newdata: Path) -> DatabaseException:
    hint = "change or remove that line of pg_hba.conf, then upgrade"
    if "could not open file" in cause or "does not carry" in cause:
        hint = ("keep the file outside the data directory (named with its full path), or "
                "at its top level (the upgrade carries what PostgreSQL did not make there), "
                "then upgrade")  # fmt: skip
    return DatabaseException(
        f"cannot upgrade '{srv.inst.name}': PostgreSQL {new.major} would not start with its "
        f"pg_hba.conf ({cause}); nothing was changed",
        hint=hint,
    )
