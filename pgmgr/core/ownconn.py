"""pgmgr's own connections, apart from the user's libpq environment.

libpq takes every connection parameter it is not given from a ``PG*`` variable:
``PGOPTIONS='-c default_transaction_read_only=on'`` made the pytest plugin's ``CREATE
DATABASE`` fail, ``PGTARGETSESSIONATTRS=standby`` refused the primary, ``PGSERVICE`` names a
service whose file may set anything, ``PGHOSTADDR`` sends a socket connection over TCP to
another address. None of them may change what pgmgr does for itself:

- :func:`params` / :func:`dsn`: pgmgr's own in-process (psycopg) connections give every
  parameter that one of those variables would set explicitly: as libpq would have it with
  the variable unset (its compiled default, else the empty value, which in a conninfo
  string counts as given, so libpq does not look further). Nothing here edits
  ``os.environ``: a library caller may have threads.
- The programs pgmgr runs for itself (pg_dump, pg_basebackup, pg_upgrade, psql -f ...)
  get an environment without any ``PG*`` variable (:func:`pgmgr.core.server._child_env`);
  pgmgr's own Python children (template refills, reapers) get :func:`own_environ`.
- The ``pgmgr`` command itself drops libpq's variables from its process as it starts
  (:func:`detach_process`), which also covers what no parameter overrides: ``PGTZ``,
  ``PGDATESTYLE`` and ``PGGEQO`` (sent by libpq as startup options) and a ``PGSERVICE``
  naming no known service. A library caller's process keeps them (see README).

What pgmgr runs *for the user* (``pgmgr psql``, ``pgmgr run``) gets the user's
environment (:func:`user_environ`) less the variables that choose another server, role,
database or password (:data:`TARGET`): pgmgr sets its own for those.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms
if TYPE_CHECKING:
    from pgmgr.core.instance import Server

#: Variables that choose where a user's client connects and as whom: ``pgmgr psql`` and
#: ``pgmgr run`` never pass the user's on (a service's ``host`` beats ``PGHOST``;
#: ``PGHOSTADDR`` beats the host's address, even a socket directory).
TARGET = (
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGSERVICE",
    "PGPASSWORD",
)

_user_env: dict[str, str] | None = None


def is_libpq_var(name: str) -> bool:
    """A variable libpq or a PostgreSQL program may read (pgmgr's own ``PGMGR_*`` and the
    data directory default ``PGDATA`` are pgmgr's: kept)."""
    return name.startswith("PG") and not name.startswith("PGMGR_") and name != "PGDATA"


def own_environ(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (this process's) without libpq's variables: for pgmgr's own children."""
    return {k: v for k, v in (os.environ if env is None else env).items() if not is_libpq_var(k)}


def detach_process() -> None:
    """Remove libpq's variables from this process, keeping them for :func:`user_environ`.

    Only for the ``pgmgr`` command, as it starts (one thread): editing ``os.environ`` while
    another thread reads the environment (libpq's ``getenv``) is not safe.
    """
    global _user_env
    if _user_env is None:
        _user_env = dict(os.environ)
    for name in [k for k in os.environ if is_libpq_var(k)]:
        del os.environ[name]


def stray_targets(given: Iterable[str]) -> list[str]:
    """The :data:`TARGET` variables of the user's environment that ``given`` does not set:
    a shell that takes ``pgmgr env``'s exports unsets them."""
    env = os.environ if _user_env is None else _user_env
    return [name for name in TARGET if name in env and name not in given]


def user_environ() -> dict[str, str]:
    """The user's environment, for a program pgmgr runs for them, without :data:`TARGET`."""
    env = dict(os.environ if _user_env is None else _user_env)
    for name in TARGET:
        env.pop(name, None)
    return env


#: An explicit value for each parameter libpq would otherwise take from a variable: as
#: libpq has it with the variable unset, or what pgmgr's own work wants (no SSL or GSSAPI
#: over its socket, any session, every authentication method its servers use). Empty
#: where empty means unset: in a conninfo string an empty value counts as given, and libpq
#: then looks no further (``hostaddr`` has no other value that keeps a socket a socket);
#: not where libpq refuses it (``sslcertmode``, ``require_auth``).
OWN = {
    "password": "",
    "connect_timeout": "130",  # psycopg's own default; most callers give their own
    "passfile": "",
    "hostaddr": "",
    "options": "",
    "client_encoding": "",
    "application_name": "pgmgr",
    "channel_binding": "prefer",
    "requiressl": "0",
    "sslmode": "prefer",
    "sslnegotiation": "postgres",
    "sslcompression": "0",
    "sslcert": "",
    "sslkey": "",
    "sslcertmode": "allow",
    "sslrootcert": "",
    "sslcrl": "",
    "sslcrldir": "",
    "sslsni": "1",
    "requirepeer": "",
    "require_auth": "password,md5,scram-sha-256,gss,sspi,none",
    "min_protocol_version": "3.0",
    "max_protocol_version": "3.0",
    "ssl_min_protocol_version": "TLSv1.2",
    "ssl_max_protocol_version": "",
    "gssencmode": "disable",
    "krbsrvname": "postgres",
    "gsslib": "",
    "gssdelegation": "0",
    "target_session_attrs": "any",
    "load_balance_hosts": "disable",
}


#: Parameters no variable sets but a service (``PGSERVICE``) may: given when one is set
#: (a value that changes nothing else), so that a service's ``replication=true`` does not
#: make pgmgr's connections WAL senders (no SQL), nor its ``sslkeylogfile`` log their keys.
SERVICE_ONLY = {
    "replication": "",
    "sslkeylogfile": "",
    "oauth_issuer": "",
    "oauth_client_id": "",
    "oauth_client_secret": "",
    "oauth_scope": "",
}


@functools.cache
def _known() -> frozenset[str]:
    """The parameters the libpq psycopg uses knows."""
    from psycopg import pq

    return frozenset(opt.keyword.decode() for opt in pq.Conninfo.get_defaults())


@functools.cache
def _env_backed() -> tuple[tuple[str, str], ...]:
    """(keyword, variable) for each parameter libpq reads from the environment, as the
    libpq psycopg uses knows them (its version decides the list)."""
    from psycopg import pq

    found = []
    for opt in pq.Conninfo.get_defaults():
        if opt.envvar is not None:
            found.append((opt.keyword.decode(), opt.envvar.decode()))
    return tuple(found)


def params(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` plus an explicit value for each parameter it lacks that libpq would take
    from the environment: :data:`OWN`'s; for one it does not know (a newer libpq's), the
    empty value when its variable is set. ``service`` is left out: an empty one is a
    lookup of the service "" (it fails), and a service's values never beat given ones;
    with ``PGSERVICE`` set, :data:`SERVICE_ONLY` gives those only a service sets.

    On a socket no SSL is tried (none is possible there).
    """
    env = os.environ
    out = dict(base)
    for keyword, variable in _env_backed():
        if keyword in out or keyword == "service":
            continue
        if keyword in OWN:
            out[keyword] = OWN[keyword]
        elif variable in env or "PGSERVICE" in env:
            out[keyword] = ""
    if "PGSERVICE" in env:
        for keyword, value in SERVICE_ONLY.items():
            if keyword in _known() and keyword not in out:
                out[keyword] = value
    if out.get("host", "").startswith("/") and "sslmode" in out:
        out["sslmode"] = "disable"
    return out


def conninfo(base: Mapping[str, str]) -> str:
    """:func:`params` of ``base`` as a conninfo string (what psycopg hands to libpq)."""
    from pgmgr.core.pgtext import dsn_quote

    return " ".join(f"{k}={dsn_quote(v)}" for k, v in params(base).items())


def dsn(srv: Server, tcp: bool | None = None) -> str:
    """The conninfo of ``srv`` (:meth:`Server.conninfo`) for pgmgr's own connections."""
    return conninfo(srv.conninfo(tcp))
