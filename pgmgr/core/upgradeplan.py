"""The pure parts of a major upgrade: which binaries are needed, the initdb and pg_upgrade
command lines, and which kept settings a new major rejects.

:mod:`pgmgr.core.upgrade` runs them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pgmgr.core.errors import DatabaseException, UsageError
from pgmgr.core.pgconf import QUOTED, unquote_value
from pgmgr.core.versions import Installation

METHODS = ("copy", "link", "clone")
LC_OTHER = ("lc_messages", "lc_monetary", "lc_numeric", "lc_time")
#: What pg_upgrade itself looks for in each bin directory (src/bin/pg_upgrade/exec.c).
OLD_BINARIES = ("postgres", "pg_ctl", "pg_controldata")
NEW_BINARIES = (
    "initdb", "pg_upgrade", "postgres", "pg_ctl", "pg_controldata", "pg_dump", "pg_dumpall",
    "pg_restore", "pg_resetwal", "psql", "vacuumdb",
)  # fmt: skip
#: Configuration files pg_upgrade leaves behind and pgmgr carries over to the new cluster.
CARRIED_FILES = ("pg_hba.conf", "pg_ident.conf", "postgresql.auto.conf")
_AUTO_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(.*?)\s*$")
#: Settings a later major renamed (old name -> new name, major): the upgrade drops the old
#: name, and says the new one; it does not set it (the meaning may have changed too).
RENAMED = {"force_parallel_mode": ("debug_parallel_query", "16")}
#: pg_upgrade's "A list of the problem ... is in the file:" and the path on the next line.
_LISTED = re.compile(r"is in the file:\s*\n\s*(\S+)")
#: pg_upgrade's 'Consult the last few lines of "PATH" for' (a server it started failed).
_CONSULT = re.compile(r'Consult the last few lines of "([^"\n]+)"')
#: Where the first sentence of pg_upgrade's paragraph ends: after a full stop, not one of
#: "i.e." or "e.g." ("must allow connections, i.e. their pg_database.datallowconn ...").
_SENTENCE_END = re.compile(r"(?<=\.)(?<!i\.e\.)(?<!e\.g\.)\s")
_SERVER_FATAL = re.compile(r"\b(?:FATAL|PANIC):\s+(.+?)\s*$")
_ERROR = re.compile(r"\bERROR:\s+(.+?)\s*$")
#: The lines of pg_upgrade's update_extensions.sql: "\\connect NAME" (or, for a name that
#: needs quoting, '\\connect -reuse-previous=on "dbname='NAME'"'), 'ALTER EXTENSION "X" UPDATE;'.
_CONNECT = re.compile(
    r"""^\\connect\s+(?:-reuse-previous=on\s+"dbname='((?:[^'\\]|\\.)*)'"|(\S+))\s*$"""
)
_UPDATE = re.compile(r'^ALTER EXTENSION "((?:[^"]|"")+)" UPDATE;\s*$')


#: Settings naming libraries a server loads as it starts, or at each connection: what a
#: missing one does.
PRELOADS = {
    "shared_preload_libraries": "it would not start",
    "session_preload_libraries": "every connection would fail",
}


def library_list(value: str) -> list[str]:
    """The names in a list setting such as ``shared_preload_libraries``: comma-separated,
    each maybe double-quoted (``""`` a quote in it, a comma then part of the name)."""
    names, i = [], 0
    while i < len(value):
        while i < len(value) and value[i] in " \t,":
            i += 1
        if i >= len(value):
            break
        if value[i] == '"':
            end = i + 1
            while True:
                end = value.find('"', end)
                if end < 0 or value[end + 1 : end + 2] != '"':
                    break
                end += 2
            end = len(value) if end < 0 else end
            names.append(value[i + 1 : end].replace('""', '"'))
            i = end + 1
        else:
            end = value.find(",", i)
            end = len(value) if end < 0 else end
            names.append(value[i:end].strip())
            i = end
    return [n for n in names if n]


def library_found(libdir: Path, lib: str) -> bool:
    """Whether the server finds library ``lib`` (a name in ``libdir``, or a path, maybe
    under ``$libdir``), with or without its ``.so``."""
    path = Path(lib.replace("$libdir", str(libdir), 1)) if "/" in lib else libdir / lib
    return path.is_file() or path.with_name(path.name + ".so").is_file()


@dataclass(frozen=True)
class Scoped:
    """A setting of a database or a role (``ALTER DATABASE/ROLE ... SET``)."""

    database: str  # "" for every database
    role: str  # "" for every role
    name: str
    value: str

    def where(self) -> str:
        if self.role:
            return f"role {self.role}" + (f" in database {self.database}" if self.database else "")
        return f"database {self.database}"

    def reset_sql(self) -> str:
        if self.role:
            db = f" IN DATABASE {_ident(self.database)}" if self.database else ""
            return f"ALTER ROLE {_ident(self.role)}{db} RESET {self.name}"
        return f"ALTER DATABASE {_ident(self.database)} RESET {self.name}"


def _ident(name: str) -> str:
    """``name`` as SQL writes it: quoted only when it must be."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


#: Settings only a session with a catalog can check (``postgres -C`` refuses them all).
UNCHECKABLE = ("role", "session_authorization")


@dataclass(frozen=True)
class ClusterOptions:
    """What the new cluster must share with the old one for pg_upgrade to accept it."""

    encoding: str
    collate: str
    ctype: str
    provider: str = "c"  # c (libc) | i (icu) | b (builtin)
    locale: str | None = None  # the icu/builtin locale
    checksums: bool = False
    #: lc_messages, lc_monetary, lc_numeric, lc_time (initdb writes them in postgresql.conf,
    #: which is not carried over: else they would be the environment's)
    lc_other: tuple[str, ...] = ()


def check_method(method: str) -> str:
    if method not in METHODS:
        raise UsageError(f"invalid --method {method!r}: use copy, link or clone")
    return method


def _order(major: str) -> tuple[int, ...]:
    return tuple(int(part) for part in major.split("."))


def check_direction(old: str, new: str) -> None:
    """:raises UsageError: ``new`` is not a higher major than ``old`` ("9.6" < "10")."""
    if _order(new) == _order(old):
        raise UsageError(f"the instance is already PostgreSQL {old}; nothing to upgrade")
    if _order(new) < _order(old):
        raise UsageError(
            f"cannot upgrade PostgreSQL {old} to {new}: that is a downgrade, which pg_upgrade "
            "cannot do",
            hint="restore the snapshot kept by the upgrade, or dump and restore",
        )


def missing_binaries(old: Installation, new: Installation) -> list[str]:
    """Full paths of the programs pg_upgrade needs that are not there."""
    missing = [old.bin(p) for p in OLD_BINARIES if not old.bin(p).is_file()]
    missing += [new.bin(p) for p in NEW_BINARIES if not new.bin(p).is_file()]
    return [str(p) for p in missing]


def check_binaries(old: Installation, new: Installation) -> None:
    """:raises DatabaseException: naming every missing program."""
    missing = missing_binaries(old, new)
    if missing:
        raise DatabaseException(
            "cannot upgrade: missing " + ", ".join(missing) + "; nothing was changed",
            hint="install the full server packages of both versions "
            "(e.g. 'apt-get install postgresql-NN')",
        )


def initdb_argv(new: Installation, datadir: Path, superuser: str, o: ClusterOptions) -> list[str]:
    argv = [
        str(new.bin("initdb")), "-D", str(datadir), "-U", superuser, "-E", o.encoding,
        f"--lc-collate={o.collate}", f"--lc-ctype={o.ctype}", "--auth=trust", "-N",
    ]  # fmt: skip
    if o.provider == "i" and o.locale:
        argv += ["--locale-provider=icu", f"--icu-locale={o.locale}"]
    elif o.provider == "b" and o.locale:
        argv += ["--locale-provider=builtin", f"--builtin-locale={o.locale}"]
    for option, value in zip(LC_OTHER, o.lc_other, strict=False):
        argv.append(f"--{option.replace('_', '-')}={value}")
    if o.checksums:
        argv.append("--data-checksums")
    elif int(new.major) >= 18:
        argv.append("--no-data-checksums")  # 18 turns them on by default
    return argv


@dataclass(frozen=True)
class UpgradeArgs:
    """The two installations and data directories of one pg_upgrade."""

    old: Installation
    new: Installation
    old_datadir: Path
    new_datadir: Path
    superuser: str
    old_port: int
    new_port: int
    socket_dir: str
    method: str
    check: bool = False


def pg_upgrade_argv(a: UpgradeArgs, *, no_sync: bool = True) -> list[str]:
    """pg_upgrade's command line. ``no_sync``: pgmgr flushes the filesystem once instead
    of pg_upgrade's fsync of every file."""
    argv = [
        str(a.new.bin("pg_upgrade")), "-b", str(a.old.bindir), "-B", str(a.new.bindir),
        "-d", str(a.old_datadir), "-D", str(a.new_datadir), "-U", a.superuser,
        "-p", str(a.old_port), "-P", str(a.new_port), "-s", a.socket_dir, f"--{a.method}",
    ]  # fmt: skip
    if a.check:
        argv.append("--check")
    elif no_sync:
        argv.append("--no-sync")
    return argv


def analyze_steps(new_major: str) -> list[list[str]]:
    """The vacuumdb options that rebuild the statistics after an upgrade to ``new_major``,
    as pg_upgrade advises. From 18 on pg_upgrade carries most statistics over: a plain
    ``--analyze-in-stages`` would first replace them with its 1-target ones (worse plans
    until its last stage), so only what is missing is built in stages, then the rest
    refreshed."""
    if int(new_major) < 18:
        return [["--all", "--analyze-in-stages"]]
    return [["--all", "--analyze-in-stages", "--missing-stats-only"], ["--all", "--analyze-only"]]


def vacuumdb_argv(
    new: Installation, step: list[str], host: str, port: int | None, user: str
) -> list[str]:
    port_args = ["-p", str(port)] if port else []
    return [str(new.bin("vacuumdb")), *step, "-h", host, *port_args, "-U", user]


def renamed(names: list[str], new_major: str) -> dict[str, str]:
    """Which of ``names`` (settings the new major rejects) it knows under another name."""
    return {
        n: RENAMED[n][0] for n in names if n in RENAMED and int(new_major) >= int(RENAMED[n][1])
    }


_CONF_LINE = re.compile(rf"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=?\s*({QUOTED}|[^#\s]*)")


def conf_settings(text: str) -> dict[str, str]:
    """``name -> value`` (unquoted) of the active lines of a postgresql.conf."""
    out = {}
    for line in text.splitlines():
        m = _CONF_LINE.match(line)
        if m:
            out[m.group(1).lower()] = unquote(m.group(2))
    return out


def not_carried(old_conf: str, new_conf: str, kept: set[str]) -> dict[str, str]:
    """The settings of the old postgresql.conf that the new one (initdb's) does not have
    with the same value, but for those pgmgr keeps (``kept``: postgresql.auto.conf's and
    the record's, which win anyway) and include directives."""
    old, new = conf_settings(old_conf), conf_settings(new_conf)
    return {
        n: v for n, v in sorted(old.items())
        if n not in kept and not n.startswith("include") and new.get(n) != v
    }  # fmt: skip


def auto_conf_settings(text: str) -> dict[str, str]:
    """``name -> value`` of ``postgresql.auto.conf`` (quotes kept, as the file has them)."""
    out = {}
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        m = _AUTO_LINE.match(line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def unquote(value: str) -> str:
    """A value of a configuration file as PostgreSQL reads it (see :func:`unquote_value`)."""
    return unquote_value(value)


def drop_from_auto_conf(text: str, names: set[str]) -> str:
    """``text`` with the lines setting ``names`` commented out, saying why."""
    lines = []
    for line in text.splitlines():
        m = _AUTO_LINE.match(line)
        if m and m.group(1) in names and not line.lstrip().startswith("#"):
            line = f"# rejected by the new major at upgrade (pgmgr): {line}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def failure_reason(output: str, logs: str, returncode: int) -> str:
    """What pg_upgrade says failed, in one line: the first sentence of the paragraph
    after the check marked ``fatal`` (pg_upgrade wraps it over several lines), with the
    first entry of the file it lists the problems in (``logs``: pg_upgrade's files, each
    under a ``==> PATH <==`` header), e.g. the missing library; else its last line."""
    lines = [ln.strip() for ln in output.splitlines()]
    lines = [ln for ln in lines if ln not in ("Failure, exiting", "*failure*")]
    # "Checking ...  fatal" (PostgreSQL 15); "Checking data type usage  failed check:
    # Checking for ..." then a heading "Data type checks failed:" (18), whose output ends
    # with the name of a file in the work directory (deleted by then: never the reason).
    marked = (i for i, ln in enumerate(lines) if ln.endswith("fatal") or "failed check:" in ln)
    fatal = next(marked, None)
    if fatal is None:
        said = _server_said(output, logs)
        if said:
            return said
        rest = [ln for ln in lines if ln]
        return rest[-1].rstrip(".") if rest else f"exit code {returncode}"
    para: list[str] = []
    for line in lines[fatal + 1 :]:
        if not line and para:
            break
        if line and (para or not line.endswith(":")):  # not the heading
            para.append(line)
    text = " ".join(para)
    sentence = _SENTENCE_END.split(text, maxsplit=1)[0] if text else lines[fatal]
    listed = _LISTED.search("\n".join(lines[fatal + 1 :]))
    first = _first_entry(logs, listed.group(1)) if listed else None
    return f"{sentence.rstrip('.')} ({first})" if first else sentence.rstrip(".")


def extension_updates(script: str) -> list[tuple[str, str]]:
    """``(database, extension)`` of each ``ALTER EXTENSION ... UPDATE`` in pg_upgrade's
    ``update_extensions.sql`` (``script``): the extensions that kept the old major's
    version, which the new one updates."""
    found, db = [], ""
    for line in script.splitlines():
        if m := _CONNECT.match(line):
            db = m.group(2) or re.sub(r"\\(.)", r"\1", m.group(1))
        elif m := _UPDATE.match(line):
            found.append((db, m.group(1).replace('""', '"')))
    return found


def _server_said(output: str, logs: str) -> str | None:
    """What the log pg_upgrade's output says to consult says, or None: a server it
    started did not start (its last FATAL or PANIC line; the output's last line is then
    the pg_ctl command line), or a statement failed (psql's last ERROR line, with the
    statement before it: a schema the new major refuses)."""
    consult = _CONSULT.search(output)
    lines = (_file_text(logs, consult.group(1)) or "").splitlines() if consult else []
    found = [m.group(1) for m in map(_SERVER_FATAL.search, lines) if m]
    if found:
        which = {"source": "the old server", "target": "the new server"}
        said = next((w for k, w in which.items() if f"{k} postmaster" in output), "a server")
        return f"{said} did not start: {found[-1]}"
    errors = [(i, m.group(1)) for i, line in enumerate(lines) if (m := _ERROR.search(line))]
    if not errors:
        return None
    at, error = errors[-1]
    before = [ln.strip() for ln in lines[:at] if ln.strip()]
    statement = before[-1].rstrip(";") if before and before[-1].endswith(";") else None
    if statement and len(statement) > 200:
        statement = statement[:199] + "…"
    return f"{error} (in: {statement})" if statement else error


def _file_text(logs: str, path: str) -> str | None:
    """The text of file ``path`` in ``logs`` (see :func:`failure_reason`), or None."""
    header = f"==> {path} <==\n"
    at = logs.find(header)
    if at < 0:
        return None
    rest = logs[at + len(header) :]
    end = rest.find("\n==> ")
    return rest if end < 0 else rest[:end]


def _first_entry(logs: str, path: str) -> str | None:
    """The first line of file ``path`` in ``logs`` (whitespace squeezed, at most 200
    characters), or None."""
    header = f"==> {path} <=="
    at = logs.find(header)
    if at < 0:
        return None
    for line in logs[at + len(header) :].splitlines():
        if line.startswith("==> "):
            return None
        if line.strip():
            line = " ".join(line.split())
            return line if len(line) <= 200 else line[:199] + "…"
    return None
