"""One way to ask the kernel for a UDP receive buffer, and to say what it gave.

A receiver of bursts (the agency's UDP delivery, the server's TZSP listener)
needs more than Linux's default buffer. ``SO_RCVBUFFORCE`` passes
``net.core.rmem_max`` where the process may (CAP_NET_ADMIN); otherwise
``SO_RCVBUF`` is capped there, and a warning names the sysctl to raise.
"""

from __future__ import annotations

import logging
import socket

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # the Linux value


def set_receive_buffer(sock: socket.socket, wanted: int, label: str, log: logging.Logger) -> int:
    """Ask for ``wanted`` bytes of receive buffer on ``sock``; log and return what was granted.

    Args:
        sock: a UDP socket.
        wanted: bytes asked for.
        label: the log lines' prefix (``udp``, ``tzsp``).
        log: where the one line about it goes.

    Returns:
        ``SO_RCVBUF`` as read back (Linux doubles what it grants, for its overhead).
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, wanted)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if granted // 2 < wanted:  # less than asked: capped
        log.warning(
            "%s: receive buffer capped at %d bytes (asked %d): bursts may be dropped; "
            "raise it with: sysctl -w net.core.rmem_max=%d",
            label,
            granted,
            wanted,
            wanted,
        )
    else:
        log.info("%s: receive buffer %d bytes (asked %d)", label, granted, wanted)
    return granted
