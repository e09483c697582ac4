"""The tap link's machines, both sides, sans-I/O (docs/tap-link.md).

TLS: the tap sends ``TapHello``; the server answers ``ServerHello`` (the
last batch id whose PDUs are all in the log) and a ``WarrantSet`` (again
whenever it changes); the tap then sends ``PduBatch`` messages, many PDUs
each, pipelined up to a window, and the server answers each with one
``BatchAck`` once every accepted PDU of it is durable. Keepalives flow
both ways when a side has been quiet; a peer silent past the timeout is
dead. Either side may send ``Close``.

UDP: one sealed datagram (:mod:`mediation.protocol.sealed`) per batch,
whose batch id is the datagram's sequence number in the tap's session;
:class:`UpstreamLoss` counts the ids that never came.

Feed received octets with ``receive_data``, take events back; take what
to send with :meth:`_Side.data_to_send`. Times are passed in (monotonic
seconds). No sockets, no trio.
"""

from __future__ import annotations

import collections
import enum

from mediation.pdu import taplink as T
from mediation.pdu.errors import PDUError
from mediation.protocol.errors import ProtocolError
from mediation.protocol.framing import MAX_MESSAGE, MessageBuffer

# A batch is cut at this many octets of PDUs (well under MAX_MESSAGE, so a
# full batch plus its header always fits a message the server accepts).
MAX_BATCH_BYTES = 512 * 1024
# Batches sent and not yet acknowledged: enough to keep the server's log
# writer busy while acks of earlier ones travel back.
WINDOW = 8
KEEPALIVE_INTERVAL = 10
KEEPALIVE_TIMEOUT = 30.0


class State(enum.Enum):
    HELLO = "hello"  # waiting for the other side's hello
    READY = "ready"
    CLOSED = "closed"


class _Side:
    """What both sides share: framing, keepalives, close."""

    def __init__(self, now: float, timeout: float, max_message: int = MAX_MESSAGE) -> None:
        self.state = State.HELLO
        self._buffer = MessageBuffer(max_message)
        self._out = bytearray()
        self._timeout = timeout
        self.interval: float = KEEPALIVE_INTERVAL
        self._heard = now
        self._sent = now
        self._keepalive_id = 0

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call."""
        out, self._out = bytes(self._out), bytearray()
        return out

    def _send(self, message: T.Message, now: float | None = None) -> None:
        if self.state is State.CLOSED:
            raise ValueError("the link is closed")
        self._out += T.encode(message)
        if now is not None:
            self._sent = now

    def _send_raw(self, data: bytes, now: float) -> None:
        if self.state is State.CLOSED:
            raise ValueError("the link is closed")
        self._out += data
        self._sent = now

    def close(self, reason: str) -> None:
        """Queue a ``Close`` and stop."""
        if self.state is not State.CLOSED:
            self._out += T.encode(T.Close(reason[:200]))
            self.state = State.CLOSED

    def tick(self, now: float) -> None:
        """Send a keepalive when quiet; the peer is dead when silent too long.

        Raises:
            ProtocolError: nothing heard for the timeout.
        """
        if self.state is State.CLOSED:
            return
        if now - self._heard > self._timeout:
            raise ProtocolError(f"peer silent for {now - self._heard:.0f} s")
        if now - self._sent >= self.interval and self.state is State.READY:
            self._keepalive_id = (self._keepalive_id + 1) % 2**32
            self._send(T.Keepalive(self._keepalive_id), now)

    def _messages(self, data: bytes, now: float) -> list[T.Message]:
        """Whole messages in ``data`` (plus what was buffered), decoded.

        Raises:
            ProtocolError: bad framing, or a message that does not decode.
        """
        if self.state is State.CLOSED:
            raise ProtocolError("data after close")
        self._buffer.feed(data)
        if data:
            self._heard = now
        out = []
        while (raw := self._buffer.next_message()) is not None:
            try:
                message = T.decode(raw)
            except PDUError as exc:
                raise ProtocolError(f"undecodable message: {exc}") from None
            if isinstance(message, T.Keepalive) and self.state is State.READY:
                self._send(T.KeepaliveAnswer(message.id), now)
                continue
            if isinstance(message, T.Close):
                self.state = State.CLOSED
            out.append(message)
        return out


class TapLinkTap(_Side):
    """The tap's side of one TLS connection.

    Args:
        hello: what the tap says first (sent at once).
        now: the clock at connection.
        window: batches in flight before :meth:`can_send` says no.
    """

    def __init__(
        self,
        hello: T.TapHello,
        now: float,
        window: int = WINDOW,
        timeout: float = KEEPALIVE_TIMEOUT,
    ) -> None:
        super().__init__(now, timeout)
        self.window = window
        self.last_stored: int | None = None
        self.in_flight: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._send(hello, now)

    def receive_data(self, data: bytes, now: float) -> list[T.Message]:
        """Events: ``ServerHello``, ``WarrantSet``, ``BatchAck``, ``Close``, answers.

        Raises:
            ProtocolError: a message out of place (an ack of a batch not in
            flight, anything before the hello), or bad octets.
        """
        out = []
        for message in self._messages(data, now):
            if isinstance(message, T.ServerHello):
                if self.state is not State.HELLO:
                    raise ProtocolError("second ServerHello")
                if message.version != T.VERSION:
                    raise ProtocolError(f"server speaks version {message.version}")
                self.state, self.last_stored = State.READY, message.last_stored
                self.interval = message.keepalive
            elif self.state is State.HELLO and not isinstance(message, T.Close):
                raise ProtocolError(f"{type(message).__name__} before ServerHello")
            elif isinstance(message, T.BatchAck):
                if self.in_flight and next(iter(self.in_flight)) != message.batch_id:
                    raise ProtocolError(f"ack of batch {message.batch_id}, not the oldest sent")
                if not self.in_flight:
                    raise ProtocolError(f"ack of batch {message.batch_id}, none in flight")
                self.in_flight.popitem(last=False)
            elif isinstance(message, T.PduBatch | T.TapHello):
                raise ProtocolError(f"{type(message).__name__} from the server")
            out.append(message)
        return out

    def can_send(self) -> bool:
        return self.state is State.READY and len(self.in_flight) < self.window

    def send_batch(self, batch_id: int, pdus: bytes, now: float) -> None:
        """Queue one batch (its PDUs as :func:`mediation.pdu.taplink.encode_pdus` made them).

        Raises:
            ValueError: not ready, the window is full, or ids not increasing.
        """
        if not self.can_send():
            raise ValueError("not ready to send a batch (hello or window)")
        last = next(reversed(self.in_flight)) if self.in_flight else -1
        if batch_id <= last:
            raise ValueError(f"batch {batch_id} after {last}: ids must increase")
        self._send_raw(T.batch_message(batch_id, pdus), now)
        self.in_flight[batch_id] = len(pdus)


class TapLinkServer(_Side):
    """The server's side of one tap's TLS connection.

    Args:
        now: the clock at the end of the handshake.
        keepalive: seconds between keepalives (told to the tap).
    """

    def __init__(
        self, now: float, keepalive: int = KEEPALIVE_INTERVAL, timeout: float = KEEPALIVE_TIMEOUT
    ) -> None:
        super().__init__(now, timeout)
        self.interval = keepalive
        self.hello: T.TapHello | None = None
        self._last_batch = -1

    def receive_data(self, data: bytes, now: float) -> list[T.Message]:
        """Events: the ``TapHello`` (first, once), ``PduBatch``, ``Close``, answers.

        Raises:
            ProtocolError: anything before the hello, a second hello,
            batch ids not increasing on this connection, a server message.
        """
        out = []
        for message in self._messages(data, now):
            if isinstance(message, T.TapHello):
                if self.hello is not None:
                    raise ProtocolError("second TapHello")
                if message.version != T.VERSION:
                    raise ProtocolError(f"tap speaks version {message.version}")
                self.hello = message
            elif self.hello is None and not isinstance(message, T.Close):
                raise ProtocolError(f"{type(message).__name__} before TapHello")
            elif isinstance(message, T.PduBatch):
                if message.batch_id <= self._last_batch:
                    raise ProtocolError(
                        f"batch {message.batch_id} after {self._last_batch}: ids must increase"
                    )
                self._last_batch = message.batch_id
            elif isinstance(message, T.ServerHello | T.WarrantSet | T.BatchAck):
                raise ProtocolError(f"{type(message).__name__} from a tap")
            out.append(message)
        return out

    def accept(self, last_stored: int, now: float) -> None:
        """Answer the hello: ready."""
        if self.hello is None or self.state is not State.HELLO:
            raise ValueError("accept() before the hello, or twice")
        self._send(T.ServerHello(last_stored, int(self.interval)), now)
        self.state = State.READY

    def send_warrants(self, warrants: T.WarrantSet, now: float) -> None:
        self._send(warrants, now)

    def send_ack(self, ack: T.BatchAck, now: float) -> None:
        self._send(ack, now)


class UpstreamLoss:
    """Batch ids missing from a UDP tap's sessions: the upstream loss count.

    One counter per sealed session (a tap restart starts a new session and
    a new sequence at 1). A gap is counted when a later id arrives; one that
    arrives late (reordered, within the sealed replay window) is taken off.
    """

    def __init__(self, max_sessions: int = 8) -> None:
        self.lost = 0
        self._highest: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        self._max = max_sessions

    def observe(self, session: bytes, batch_id: int) -> int:
        """Note one authentic datagram's batch id; returns how many it shows lost."""
        highest = self._highest.get(session)
        if highest is None:
            highest = 0
            if len(self._highest) >= self._max:
                self._highest.popitem(last=False)
        if batch_id > highest:
            gap = batch_id - highest - 1
            self._highest[session] = batch_id
            self.lost += gap
            return gap
        self.lost = max(0, self.lost - 1)  # a late one: not lost after all
        return 0
