"""One way for ``serve`` to open a UDP listener (taps, TZSP, RADIUS).

Each listener is optional: an empty ``listen`` setting turns it off, and an
address that cannot be bound is logged and the server carries on without it.
"""

from __future__ import annotations

import logging
import socket

from mediation.server.config import listen_address
from mediation.udpbuffer import set_receive_buffer


def bind_udp(
    listen: str, label: str, log: logging.Logger, buffer: int | None = None
) -> socket.socket | None:
    """A bound, non-blocking UDP socket for the ``HOST:PORT`` setting ``listen``.

    Args:
        listen: the checked setting; "" means off.
        label: the log lines' prefix (``tap link``, ``tzsp``, ``radius``).
        log: where a bind failure is logged.
        buffer: the receive buffer to ask for, if not the kernel's default.

    Returns:
        The socket, or None when off or when it cannot be bound (logged).
    """
    address = listen_address(listen)
    if address is None:
        return None
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if buffer is not None:
            set_receive_buffer(sock, buffer, label, log)
        sock.bind(address)
    except OSError as exc:
        log.error("%s: cannot listen on udp %s: %s", label, listen, exc.strerror)
        sock.close()
        return None
    sock.setblocking(False)
    return sock
