"""What a template is keyed by, and the pure parts of using one: which initdb arguments may
share a template, whether ``PGMGR_NO_TEMPLATE`` turns templates off, the key's fields (see
:mod:`pgmgr.core.template` for what they cover) and ``pg_hba.conf`` per instance."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pgmgr.core import linked
from pgmgr.core.errors import UsageError
from pgmgr.core.privileges import ServerUser
from pgmgr.core.server import InitOptions
from pgmgr.core.versions import Installation, version_key

FORMAT = 2  # bump when what a template holds changes
ENV_DISABLE = "PGMGR_NO_TEMPLATE"
#: initdb < 14 also edits password_encryption for scram; templates are only used from 14 on.
MIN_MAJOR = 14
_FLAGS = frozenset(
    {"-k", "--data-checksums", "--no-data-checksums", "-N", "--no-sync", "-g"}
    | {"--allow-group-access", "--no-instructions", "--no-locale", "--sync-method=fsync"}
)
_VALUED = frozenset(
    {"-E", "--encoding", "-c", "--set", "-T", "--text-search-config", "--wal-segsize"}
    | {"--locale", "--lc-collate", "--lc-ctype", "--lc-messages", "--lc-monetary"}
    | {"--lc-numeric", "--lc-time", "--locale-provider", "--icu-locale", "--icu-rules"}
    | {"--builtin-locale"}
)
_NO_SYNC = frozenset({"-N", "--no-sync"})
#: Where glibc finds compiled locales (``$LOCPATH`` comes first when set).
LOCALE_DIRS = ("/usr/lib/locale",)
#: type, database, user, address, then the method (initdb writes no mask column).
_HOST_LINE = re.compile(r"^(host(?:ssl|nossl)?[ \t]+\S+[ \t]+\S+[ \t]+\S+[ \t]+)\S+", re.M)


def template_args(extra: Sequence[str]) -> list[str] | None:
    """The initdb arguments that shape a template (sync flags dropped), or None when some
    argument is not known to be safe to share (``--waldir``, ``--pwfile``, ``-A`` ...)."""
    kept: list[str] = []
    args = list(extra)
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg.split("=", 1)[0]
        if arg in _NO_SYNC:
            pass
        elif arg in _FLAGS or (name in _VALUED and "=" in arg):
            kept.append(arg)
        elif arg in _VALUED and i + 1 < len(args):
            kept += [arg, args[i + 1]]
            i += 1
        elif arg[:2] in ("-E", "-c", "-T") and len(arg) > 2:
            kept.append(arg)
        else:
            return None
        i += 1
    return kept


def disabled_by_env() -> bool:
    """Whether ``PGMGR_NO_TEMPLATE`` turns templates off: ``1``/``true``/``yes``/``on`` do;
    unset, empty, ``0``/``false``/``no``/``off`` do not (any case, spaces ignored). The one
    parser of the variable: the CLI's ``--no-template`` does not read it.

    :raises UsageError: any other value (rather than guess which was meant).
    """
    raw = os.environ.get(ENV_DISABLE, "")
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise UsageError(
        f"invalid {ENV_DISABLE}={raw!r}: use 1, true, yes or on (initdb, no template) or "
        "0, false, no, off or empty (templates)"
    )


def why_not(install: Installation, opts: InitOptions) -> str | None:
    """Why a template cannot serve this init, or None when it can.

    :raises UsageError: ``PGMGR_NO_TEMPLATE`` holds a value that is not a yes or a no.
    """
    if disabled_by_env():
        return f"{ENV_DISABLE} is set"
    if version_key(install.major) < (MIN_MAJOR,):
        return f"PostgreSQL {install.major} is older than {MIN_MAJOR}"
    if template_args(opts.extra) is None:
        return "an initdb argument is not known to be safe to share"
    return None


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def locale_fingerprint(dirs: Sequence[str] | None = None) -> str:
    """A digest of the installed locales: name, size and mtime of each entry of the locale
    directories (``/usr/lib/locale``, holding ``locale-archive``, and ``$LOCPATH``). initdb
    imports a collation per locale, so a template of another locale set is stale. ~20 us."""
    if dirs is None:
        dirs = [d for d in os.environ.get("LOCPATH", "").split(":") if d] + list(LOCALE_DIRS)
    h = hashlib.sha256()  # names that are not UTF-8 (surrogates) hash as their bytes
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            h.update(f"{d}:-\n".encode(errors="surrogateescape"))
            continue
        for name in names:
            try:
                st = os.stat(os.path.join(d, name))
            except OSError:
                continue
            h.update(f"{d}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode(errors="surrogateescape"))
    return h.hexdigest()[:16]


def key_fields(
    install: Installation, opts: InitOptions, user: ServerUser | None = None
) -> dict[str, Any]:
    """What a template depends on (stored next to it, shown by ``pgmgr cache list``).

    :raises OSError: the binaries cannot be read.
    """
    return {
        "format": FORMAT,
        "uid": owner_of(user)[0],
        "locales": locale_fingerprint(),
        "icu": linked.icu_fingerprint(install.bin("postgres")),
        "version": install.version,
        "bindir": os.path.realpath(install.bindir),
        "postgres": _stamp(install.bin("postgres")),
        "initdb": _stamp(install.bin("initdb")),
        "superuser": opts.superuser,
        "encoding": opts.encoding,
        "locale": opts.locale,
        "initdb_args": template_args(opts.extra) or [],
    }


def key_of(fields: dict[str, Any]) -> str:
    blob = json.dumps(fields, sort_keys=True).encode()
    return f"pg{fields['version']}-" + hashlib.sha256(blob).hexdigest()[:16]


def hba_for(text: str, auth: str) -> str:
    """``pg_hba.conf`` with the method of every ``host*`` line set to ``auth``."""
    return _HOST_LINE.sub(lambda m: m.group(1) + auth, text)


def owner_of(user: ServerUser | None) -> tuple[int, int]:
    """The uid and gid that templates and data directories for ``user`` belong to."""
    return (user.uid, user.gid) if user is not None else (os.geteuid(), os.getegid())
