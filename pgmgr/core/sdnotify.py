"""The sd_notify protocol: tell systemd (or anything listening on ``$NOTIFY_SOCKET``) how the
service is doing.

A unit with ``Type=notify`` waits for ``READY=1`` before it counts the service as started;
``STOPPING=1`` says a shutdown is under way. The protocol is one datagram of newline-separated
``KEY=value`` lines sent to the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a name starting
with ``@`` is in the abstract namespace), so no library is needed.
"""

from __future__ import annotations

import os


def notify(*states: str) -> bool:
    """Send ``states`` (``"READY=1"``, ``"STOPPING=1"``, ``"STATUS=..."``) to ``$NOTIFY_SOCKET``.

    :returns: False when no one listens (no variable, no socket): outside systemd this is a
        no-op, and a failed notification never stops the server.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not states:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False  # systemd sends an absolute path or an abstract name; nothing else
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(states).encode(), address)
    except OSError:
        return False
    return True
