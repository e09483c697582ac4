"""Keepalives on a stream connection, the same for both ends.

When nothing has been heard from the peer for ``interval`` seconds, send a
keepalive; when its answer has not come back ``timeout`` seconds after
that, the peer is gone. Idle is measured on what we *receive*: a peer that
acknowledges or streams is evidently alive, and one that has stopped is
found within ``interval + timeout`` however busy our own sending is.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from mediation import pdu
from mediation.pdu.delivery import MAX_ID
from mediation.protocol.envelope import encode_message
from mediation.protocol.errors import ProtocolError
from mediation.protocol.events import KeepaliveAnswered, PeerTimedOut

# Linux's TCP keepalive (first probe after 2 h) is far too slow to notice a
# dead agency. Application heartbeats of tens of seconds are the precedent:
# SCTP's HB.interval is 30 s (RFC 4960), BGP sends keepalives every 30 s
# against a 90 s hold time (RFC 4271). We probe sooner (10 s of silence)
# and give the answer 30 s, so a dead peer is noticed within 40 s.
KEEPALIVE_INTERVAL = 10.0
KEEPALIVE_TIMEOUT = 30.0

UtcNow = Callable[[], dt.datetime]


def system_utc_now() -> dt.datetime:
    """The wall clock, for the time fields of the messages we send."""
    return dt.datetime.now(dt.UTC)


class KeepaliveTimer:
    """Our keepalives to the peer, and our answers to the peer's."""

    def __init__(
        self,
        interval: float = KEEPALIVE_INTERVAL,
        timeout: float = KEEPALIVE_TIMEOUT,
        utc_now: UtcNow = system_utc_now,
    ) -> None:
        """Args:
        interval: seconds of silence from the peer before we send a keepalive.
        timeout: seconds we wait for its answer.
        utc_now: the wall clock written into ``sentTime``.
        """
        if interval <= 0 or timeout <= 0:
            raise ValueError("keepalive interval and timeout must be positive")
        self.interval = interval
        self.timeout = timeout
        self._utc_now = utc_now
        self._last_heard = 0.0
        self._next_id = 1
        self._outstanding: tuple[int, float] | None = None  # (id, sent at)
        self.timed_out = False

    def reset(self, now: float) -> None:
        """A new connection: nothing outstanding, the peer counts as just heard."""
        self._last_heard = now
        self._outstanding = None
        self.timed_out = False

    def heard(self, now: float) -> None:
        """Any whole message arrived from the peer."""
        self._last_heard = max(self._last_heard, now)

    def deadline(self) -> float:
        """When :meth:`tick` has something to do next."""
        if self._outstanding is not None:
            return self._outstanding[1] + self.timeout
        return self._last_heard + self.interval

    def tick(self, now: float) -> tuple[bytes, PeerTimedOut | None]:
        """Send a keepalive if the peer has been quiet, or give up on it.

        Returns:
            ``(octets to send, None)`` or ``(b"", PeerTimedOut)`` once (after
            which the timer is spent until :meth:`reset`).
        """
        if self.timed_out:
            return b"", None
        if self._outstanding is not None:
            _id, sent_at = self._outstanding
            if now >= sent_at + self.timeout:
                self.timed_out = True
                return b"", PeerTimedOut(now - sent_at)
            return b"", None
        if now < self._last_heard + self.interval:
            return b"", None
        keepalive_id = self._next_id
        self._next_id = keepalive_id % MAX_ID + 1
        self._outstanding = (keepalive_id, now)
        return encode_message(pdu.Keepalive(keepalive_id, self._utc_now())), None

    def answer(self, keepalive: pdu.Keepalive) -> bytes:
        """The octets answering the peer's keepalive (echoing id and time)."""
        return encode_message(pdu.KeepaliveAnswer(keepalive.keepalive_id, keepalive.sent_time))

    def answered(self, answer: pdu.KeepaliveAnswer, now: float) -> KeepaliveAnswered:
        """The peer answered a keepalive.

        Raises:
            ProtocolError: it answers no keepalive we have outstanding.
        """
        if self._outstanding is None or self._outstanding[0] != answer.keepalive_id:
            raise ProtocolError(f"keepaliveAnswer {answer.keepalive_id} answers no keepalive sent")
        sent_at = self._outstanding[1]
        self._outstanding = None
        return KeepaliveAnswered(answer.keepalive_id, now - sent_at)
