"""Servers listen on loopback only: 127.0.0.0/8, ::1, ``localhost``, or no TCP address at
all ('': the unix socket only). Never another interface, whoever asks (``-H 0.0.0.0``, a
Manager's ``host``, a record written by hand or by an older pgmgr): :func:`refused` is
checked where the host is given, for a clear error before anything is made, and again on
every postgres command line pgmgr builds (:func:`pgmgr.core.server.postgres_argv`)."""

from __future__ import annotations

#: What a host may be, for messages.
ALLOWED = "127.0.0.1, ::1, localhost, a list of them, or '' for the unix socket only"


def is_loopback(address: str) -> bool:
    """Whether one ``listen_addresses`` entry is a loopback address (or ``localhost``)."""
    import ipaddress

    address = address.strip()
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # '*', '0.0.0.0' is valid but not loopback; a name, '', a zone
        return False


def refused(host: str) -> list[str]:
    """The entries of the ``listen_addresses`` text ``host`` that are not loopback (an
    empty one in a list too: postgres refuses it); [] for '' (the unix socket only)."""
    if not host.strip():
        return []
    return [h.strip() or "''" for h in host.split(",") if not is_loopback(h)]


def message(host: str, what: str = "--host") -> str | None:
    """Why ``host`` cannot be listened on (one line), or None."""
    if "\n" in host or "\r" in host or "\0" in host:  # recorded, and in postmaster.pid
        return f"invalid {what} {host!r}: it holds a line break"
    bad = refused(host)
    if not bad:
        return None
    return (
        f"invalid {what} {host!r}: pgmgr servers listen on loopback only, not on "
        f"{', '.join(bad)} ({ALLOWED})"
    )
