"""The one error type for a misbehaving peer."""

from __future__ import annotations


class ProtocolError(Exception):
    """The peer broke the delivery protocol; the message names what was wrong.

    On a stream (TLS/TCP) connection the connection is finished: the machine
    refuses further input until the owner starts a new connection. On UDP
    it concerns the one datagram only: count it, drop it, carry on.

    Local misuse (sending out of order, an unknown request id of our own)
    raises ``ValueError`` instead: that is a bug in the owner, not the peer.
    """
