"""Whether the new major loads the old cluster's ``pg_hba.conf``, which an upgrade carries
over. A line it does not take (an authentication method it lacks: ``ldap``, ``pam`` or
``gss`` in a build without them; a file named with ``@`` in the data directory, which is
not carried) made the upgraded server fail to start ("could not load pg_hba.conf") once
the upgrade was done: neither pg_upgrade's checks nor ``postgres -C`` read that file.

The fresh new cluster is started for the question, before anything is stopped (``--check``
too): on the upgrade's private socket directory, without TCP, with a copy of the file in
its data directory (so that the names it includes resolve as they will once it is
carried), dying with pgmgr; then it is stopped (a fast shutdown, which pg_upgrade needs)
and the copy removed. A file named by its full path in the old data directory is found
by reading the lines (there, the old one's file would still be found).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from pathlib import Path

from pgmgr.core import launch, server, sigguard, upgradeprobe
from pgmgr.core import upgradeconf as conf
from pgmgr.core.errors import DatabaseException
from pgmgr.core.instance import Server
from pgmgr.core.snapstore import Store
from pgmgr.core.versions import Installation

#: The copy of the old pg_hba.conf in the new data directory, for the question only.
COPY = "pgmgr-check-pg_hba.conf"
_CAUSE = re.compile(r"\b(?:LOG|WARNING):\s+(.+?)\s*$")
#: A file pg_hba.conf includes: ``@name`` or ``@"name"`` (a database or user list).
_INCLUDE = re.compile(r'(?:^|[\s,])@(?:"([^"]+)"|([^\s,"]+))')
_LINE = re.compile(r'\bCONTEXT:\s+line (\d+) of configuration file "([^"]+)"')


def place(old: Path, newdata: Path) -> str | None:
    """Copy ``old``'s pg_hba.conf into ``newdata`` as :data:`COPY`; its text, or None if
    it has none. As the user."""
    try:
        data = conf.read(old / "pg_hba.conf")
    except FileNotFoundError:
        return None
    fd = os.open(newdata / COPY, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return data.decode(errors="replace")


def in_datadir(text: str, datadir: Path) -> str | None:
    """The first file that pg_hba.conf's ``text`` names with ``@`` by its full path in
    ``datadir`` ("line 7: ..."), or None: the old server reads it there, the upgraded
    one finds there the new data directory, which has no such file."""
    for number, line in enumerate(text.splitlines(), 1):
        for m in _INCLUDE.finditer(line.split("#", 1)[0]):
            name = os.path.normpath(m.group(1) or m.group(2))
            if os.path.isabs(name) and Path(name).is_relative_to(datadir):
                return f'line {number}: file "{name}" is in the data directory'
    return None


def unplace(newdata: Path) -> None:
    """Remove :data:`COPY` from ``newdata``. As the user."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(newdata / COPY)


def check(srv: Server, store: Store, new: Installation, newdata: Path, sockdir: str) -> None:
    """:raises DatabaseException: the new major's server does not start with the old
    pg_hba.conf (see the module doc); nothing was changed."""
    try:
        text = conf.reading(srv, store, place, srv.datadir, newdata)
        if text is None:
            return
        inside = in_datadir(text, srv.datadir)
        if inside:
            raise _refused(srv, new, inside, newdata)
        hba = newdata / COPY
        argv = server.postgres_argv(
            new, newdata, host="", port=srv.inst.port or 5432, socket_dir=Path(sockdir),
            settings={"hba_file": str(hba)},
        )  # fmt: skip
        offset = launch.open_log_offset(srv.log_file)
        with sigguard.shielded(deliver=False) as got:  # a Ctrl-C inside Popen loses the child
            child = launch.spawn(
                argv, srv.log_file, srv.user(), die_with_parent=True, death=signal.SIGINT
            )
        try:
            sigguard.redeliver(got, None)
            upgradeprobe.wait_ready(srv, child, offset, newdata)
        except launch.ServerExited as e:
            raise _refused(srv, new, _cause(e.log, newdata), newdata) from None
        finally:
            upgradeprobe.stop(child)
    finally:
        store.as_user(unplace, newdata)


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
    if "could not open file" in cause or "in the data directory" in cause:
        hint = ("keep the file outside the data directory, named with its full path (the "
                "upgrade carries pg_hba.conf, pg_ident.conf and postgresql.auto.conf "
                "only), then upgrade")  # fmt: skip
    return DatabaseException(
        f"cannot upgrade '{srv.inst.name}': PostgreSQL {new.major} would not start with its "
        f"pg_hba.conf ({cause}); nothing was changed",
        hint=hint,
    )
