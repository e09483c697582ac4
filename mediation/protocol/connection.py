"""What both ends of a stream (TLS/TCP) connection share.

Framing, keepalives, the outgoing buffer of messages the machine sends by
itself, and the rule that a connection on which the peer broke the protocol
is finished. The two roles (``stream.StreamSender``, ``stream.StreamReceiver``)
add what each message means to them.
"""

from __future__ import annotations

from mediation import pdu
from mediation.protocol.envelope import decode_message
from mediation.protocol.errors import ProtocolError
from mediation.protocol.events import Event, UnknownMessage
from mediation.protocol.framing import MAX_MESSAGE, MessageBuffer
from mediation.protocol.keepalive import (
    KEEPALIVE_INTERVAL,
    KEEPALIVE_TIMEOUT,
    KeepaliveTimer,
    UtcNow,
    system_utc_now,
)


class StreamConnection:
    """One end of a delivery stream connection; subclasses give the role.

    Octets come from two places and go to the same socket in any order
    (each is a run of whole messages): what the owner asked for (returned
    by the sending methods) and what the machine sends by itself
    (keepalives, answers, acknowledgements), taken with :meth:`data_to_send`.
    """

    def __init__(
        self,
        *,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        max_message: int = MAX_MESSAGE,
        utc_now: UtcNow = system_utc_now,
    ) -> None:
        self._keepalive = KeepaliveTimer(keepalive_interval, keepalive_timeout, utc_now)
        self._max_message = max_message
        self._utc_now = utc_now
        self._buffer = MessageBuffer(max_message)
        self._out = bytearray()
        self._connected = False
        self._broken: ProtocolError | None = None
        self._unreturned: list[Event] = []  # see events_before_break

    @property
    def connected(self) -> bool:
        """Between the start of a connection and its loss, timeout or breakage."""
        return self._connected

    def _start(self, now: float) -> None:
        """A fresh connection: a new buffer and timers, nothing queued."""
        self._buffer = MessageBuffer(self._max_message)
        self._out.clear()
        self._keepalive.reset(now)
        self._connected = True
        self._broken = None

    def connection_lost(self) -> None:
        """The transport is gone (closed, reset, or we gave up on it)."""
        self._connected = False
        self._out.clear()

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Octets from the peer, in any split.

        Returns:
            The events of every message completed by them, in order.

        Raises:
            ProtocolError: the peer broke the protocol; the connection is
            finished (every later call raises it again): close it. Events
            of earlier messages in the same input are not returned: take
            them with :meth:`events_before_break` (a receiver has counted
            their envelopes as held, so it must store them). Anything
            queued to send is dropped, acks above all, so none of it is
            acknowledged: everything unacknowledged is sent again on the
            next connection.
            ValueError: no connection was started.
        """
        if self._broken is not None:
            raise self._broken
        if not self._connected:
            raise ValueError("receive_data before the connection was started")
        events: list[Event] = []
        try:
            buffer = self._buffer
            buffer.feed(data)
            raw = buffer.next_message()
            if raw is not None:
                self._keepalive.heard(now)  # once per read: all its messages arrived by now
                message = self._message
                while raw is not None:
                    events.extend(message(raw, now))
                    raw = buffer.next_message()
        except ProtocolError as exc:
            # Drop what this input would have made us send, acks above all:
            # the events behind them are not returned, so nothing they
            # cover may be acknowledged. The server resends it all.
            self._broken = exc
            self._connected = False
            self._out.clear()
            self._unreturned = events
            raise
        return events

    def events_before_break(self) -> list[Event]:
        """The events before the fault, in the input whose fault ended the connection.

        Returns:
            Them, in order, once (then an empty list); empty if nothing broke.
        """
        events, self._unreturned = self._unreturned, []
        return events

    def _message(self, raw: bytes, now: float) -> list[Event]:
        """The events of one whole message (a role may keep ``raw`` with them)."""
        return self._dispatch(decode_message(raw), now)

    def _dispatch(self, message: pdu.DeliveryMessage, now: float) -> list[Event]:
        if isinstance(message, pdu.KeepaliveAnswer):  # before Keepalive: it subclasses it
            return [self._keepalive.answered(message, now)]
        if isinstance(message, pdu.Keepalive):
            self._before_answer(now)
            self._out += self._keepalive.answer(message)
            return []
        if isinstance(message, pdu.UnknownDeliveryMessage):
            return [UnknownMessage(message.tag, message.raw)]
        return self._handle(message, now)

    def _handle(self, message: pdu.DeliveryMessage, now: float) -> list[Event]:
        """The role's meaning of a message; raise ProtocolError for one it must not get."""
        raise NotImplementedError

    def _before_answer(self, now: float) -> None:
        """Hook: what the role sends ahead of a keepalive answer."""

    def data_to_send(self) -> bytes:
        """Octets the machine queued by itself since the last call; send them."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do; None if not connected."""
        return self._keepalive.deadline() if self._connected else None

    def tick(self, now: float) -> list[Event]:
        """Run the timers due at ``now`` (queueing octets for :meth:`data_to_send`).

        Returns:
            ``[PeerTimedOut]`` once if our keepalive went unanswered: the
            connection is then finished.
        """
        if not self._connected:
            return []
        data, timed_out = self._keepalive.tick(now)
        self._out += data
        if timed_out is not None:
            self._connected = False
            return [timed_out]
        return []

    def _require_connection(self) -> None:
        if not self._connected:
            raise ValueError("no connection: start one first")
