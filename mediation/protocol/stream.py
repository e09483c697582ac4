"""Delivery that loses nothing: envelopes on a TLS/TCP stream, acknowledged.

The server connects out to the agency. :class:`StreamSender` streams each
stream's envelopes back to back, at most ``window`` unacknowledged per
stream, and after a reconnect resumes from the first unacknowledged one,
marking what an earlier connection already carried as redelivered. The
agency's :class:`StreamReceiver` takes them in order, flags duplicates, and
acknowledges cumulatively. Both sides send and answer keepalives, and the
same connection carries replay requests (see ``retrieval``).
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, MutableMapping, Sequence

from mediation import pdu
from mediation.protocol.connection import StreamConnection
from mediation.protocol.envelope import (
    LogRecord,
    StreamEnvelopes,
    decode_message,
    encode_message,
)
from mediation.protocol.errors import ProtocolError
from mediation.protocol.events import (
    AckReceived,
    CheckpointReceived,
    EnvelopeReceived,
    Event,
    Range,
)
from mediation.protocol.framing import MAX_MESSAGE, leading_messages
from mediation.protocol.gaps import SequenceTracker
from mediation.protocol.keepalive import (
    KEEPALIVE_INTERVAL,
    KEEPALIVE_TIMEOUT,
    UtcNow,
    system_utc_now,
)
from mediation.protocol.retrieval import RetrievalClient, RetrievalLimits, RetrievalServer

# 1024 full-size CC envelopes (~1.5 KB) are ~1.5 MB in flight, about the
# bandwidth-delay product of a 100 Mbit/s path at 100 ms RTT, so acks do
# not throttle a long link; and a resume repeats at most one window.
WINDOW = 1024
# Acknowledge every 256 envelopes or 200 ms: a quarter of the window, which
# is what the server's writer waits for before it writes into a full window
# again (so more frequent acks freed nothing it would use), and an idle-ish
# stream is still confirmed promptly. At 1,000 envelopes/s that is ~4 acks a
# second, not ~16: each cost the server a wake-up and a TLS read (64 was
# ~0.25 acks per tap batch, ~300 us of the server's CPU each, `bench/e2e.py
# --idle`; docs/architecture.md, "delivery at light load (dlight)").
ACK_EVERY = 256
ACK_DELAY = 0.2
_NEW = object.__new__


class StreamSender(StreamConnection):
    """The server's end of the connection to one agency endpoint."""

    def __init__(
        self,
        positions: Mapping[pdu.StreamId, int],
        *,
        sent_before: Mapping[pdu.StreamId, int] | None = None,
        window: int = WINDOW,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        max_message: int = MAX_MESSAGE,
        utc_now: UtcNow = system_utc_now,
        retrieval_limits: RetrievalLimits | None = None,
        envelopes: Mapping[pdu.StreamId, StreamEnvelopes] | None = None,
    ) -> None:
        """Args:
        positions: every stream delivered on this connection, with its
            first unacknowledged sequence number (the log's delivery cursor).
        sent_before: per stream, one past the highest sequence number an
            earlier connection (or process) may have sent; those are
            marked redelivered when sent again, and the agency may
            acknowledge up to there. Default: nothing beyond ``positions``.
        window: the most unacknowledged envelopes in flight per stream.
        keepalive_interval: seconds of silence from the peer before a keepalive.
        keepalive_timeout: seconds to wait for its answer.
        max_message: the largest message accepted from the peer.
        utc_now: the wall clock for the time fields we send.
        retrieval_limits: what replay requests on one connection may cost.
        envelopes: per stream, its envelopes shared with the stream's other
            endpoints (default: encoded for this connection alone).
        """
        super().__init__(
            keepalive_interval=keepalive_interval,
            keepalive_timeout=keepalive_timeout,
            max_message=max_message,
            utc_now=utc_now,
        )
        if window < 1:
            raise ValueError("the window must hold at least one envelope")
        self.window = window
        self._acked = dict(positions)
        self._next = dict(positions)
        self._sent_high = {s: max(p, (sent_before or {}).get(s, p)) for s, p in positions.items()}
        self.retrieval_limits = retrieval_limits
        self._envelopes = {s: (envelopes or {}).get(s) or StreamEnvelopes(s) for s in positions}
        self.retrieval = RetrievalServer(self._acked.keys(), limits=retrieval_limits)

    def resume(self, now: float, from_seq: Mapping[pdu.StreamId, int] | None = None) -> None:
        """Start a connection (the first one too): send from the first unacknowledged.

        Args:
            now: the owner's monotonic clock.
            from_seq: per stream, where to start if not from what this
                machine saw acknowledged (e.g. the log's durable cursor).
        """
        self._start(now)
        # Requests, and the connection's retrieval budget, die with connections.
        self.retrieval = RetrievalServer(self._acked.keys(), limits=self.retrieval_limits)
        for stream, seq in (from_seq or {}).items():
            self._stream(stream)
            self._acked[stream] = seq
            self._sent_high[stream] = max(self._sent_high[stream], seq)
        self._next = dict(self._acked)

    @property
    def streams(self) -> list[pdu.StreamId]:
        """The streams this connection delivers."""
        return list(self._acked)

    def acked(self, stream: pdu.StreamId) -> int:
        """The first sequence number of ``stream`` not acknowledged."""
        return self._acked[self._stream(stream)]

    def next_sequence(self, stream: pdu.StreamId) -> int:
        """The sequence number :meth:`send` takes next for ``stream``."""
        return self._next[self._stream(stream)]

    def window_room(self, stream: pdu.StreamId) -> int:
        """How many more envelopes of ``stream`` may be sent before an ack."""
        stream = self._stream(stream)
        return self.window - (self._next[stream] - self._acked[stream])

    def send(self, stream: pdu.StreamId, record: LogRecord) -> bytes:
        """The envelope of the next record of ``stream``.

        Raises:
            ValueError: no connection, not the next sequence number, or the
            window is full (wait for an :class:`AckReceived`).
        """
        self._require_connection()
        stream = self._stream(stream)
        seq = self._next[stream]
        if record.seq != seq:
            raise ValueError(f"record {record.seq} of {stream} sent, {seq} is next")
        if self.window_room(stream) <= 0:
            raise ValueError(f"window of {self.window} envelopes of {stream} is full")
        data = self._envelopes[stream].envelope(record, seq < self._sent_high[stream])
        self._next[stream] = seq + 1
        self._sent_high[stream] = max(self._sent_high[stream], seq + 1)
        return data

    def send_run(self, stream: pdu.StreamId, records: Sequence[LogRecord]) -> list[bytes]:
        """The envelopes of the next records of ``stream``, as many as go now.

        :meth:`send` for a run of records, with the stream looked up once:
        stops at the first record that is not next in sequence or when the
        window is full (the length of the result says how many went).

        Raises:
            ValueError: no connection, or a record cannot be enveloped (a
            broken log); nothing of the run counts as sent then.
        """
        self._require_connection()
        stream = self._stream(stream)
        seq, high = self._next[stream], self._sent_high[stream]
        room = self.window - (seq - self._acked[stream])
        count = 0  # how many go: in sequence, within the window
        for record in records:
            if count >= room or record.seq != seq + count:
                break
            count += 1
        if not count:
            return []
        run = records if count == len(records) else records[:count]
        out = self._envelopes[stream].envelopes(run, high)  # one call for the run
        self._next[stream] = seq + count
        self._sent_high[stream] = max(high, seq + count)
        return out

    def checkpoint(self, checkpoint: pdu.ChainCheckpoint) -> bytes:
        """The octets of a signed chain checkpoint for one of our streams."""
        self._stream(checkpoint.stream)
        return encode_message(checkpoint)

    def replay_envelope(self, request_id: int, record: LogRecord) -> bytes | None:
        """See :meth:`RetrievalServer.envelope` (None: a retrieval limit is reached)."""
        return self.retrieval.envelope(request_id, record)

    def finish_replay(
        self,
        request_id: int,
        delivered: int | None = None,
        unavailable: Iterable[Range] = (),
        reason: str | None = None,
    ) -> bytes:
        """See :meth:`RetrievalServer.finish`."""
        return self.retrieval.finish(request_id, delivered, unavailable, reason)

    def _stream(self, stream: pdu.StreamId) -> pdu.StreamId:
        if stream not in self._acked:
            raise ValueError(f"{stream} is not delivered on this connection")
        return stream

    def _handle(self, message: pdu.DeliveryMessage, now: float) -> list[Event]:
        if isinstance(message, pdu.Acknowledgement):
            return [self._ack(message)]
        if isinstance(message, pdu.ReplayRequest):
            return [self.retrieval.handle_request(message)]
        raise ProtocolError(f"unexpected {type(message).__name__} from the agency")

    def _ack(self, ack: pdu.Acknowledgement) -> AckReceived:
        stream, value = ack.stream, ack.next_expected
        if stream not in self._acked:
            raise ProtocolError(f"acknowledgement for {stream}, not delivered here")
        acked, ceiling = self._acked[stream], self._sent_high[stream]
        if value < acked:
            raise ProtocolError(f"acknowledgement of {stream} goes back from {acked} to {value}")
        if value > ceiling:
            raise ProtocolError(
                f"acknowledgement of {stream} up to {value}, only up to {ceiling} was sent"
            )
        self._acked[stream] = value
        # The agency already holds what an earlier connection carried: skip it.
        self._next[stream] = max(self._next[stream], value)
        return AckReceived(stream, value, value - acked)


class StreamReceiver(StreamConnection):
    """The agency's end: takes envelopes in order and acknowledges them."""

    def __init__(
        self,
        positions: Mapping[pdu.StreamId, int] | None = None,
        *,
        trackers: MutableMapping[pdu.StreamId, SequenceTracker] | None = None,
        streams: Container[pdu.StreamId] | None = None,
        ack_every: int = ACK_EVERY,
        ack_delay: float = ACK_DELAY,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        max_message: int = MAX_MESSAGE,
        utc_now: UtcNow = system_utc_now,
    ) -> None:
        """Args:
        positions: per stream, the first sequence number not yet stored
            (everything below is). Streams not given start wherever their
            first envelope does.
        trackers: per-stream trackers to share (e.g. with a
            ``DatagramReceiver``); a stream given in ``positions`` but not
            here gets one holding ``0..position-1``.
        streams: the streams accepted; None accepts any.
        ack_every: acknowledge after this many envelopes...
        ack_delay: ...or this many seconds after the first unacknowledged.
        keepalive_interval: seconds of silence from the peer before a keepalive.
        keepalive_timeout: seconds to wait for its answer.
        max_message: the largest message accepted from the peer.
        utc_now: the wall clock for the time fields we send.
        """
        super().__init__(
            keepalive_interval=keepalive_interval,
            keepalive_timeout=keepalive_timeout,
            max_message=max_message,
            utc_now=utc_now,
        )
        self._accept = streams
        self.ack_every = ack_every
        self.ack_delay = ack_delay
        self._position: dict[pdu.StreamId, int] = dict(positions or {})
        self.retrieval = RetrievalClient(trackers)
        for stream, position in self._position.items():
            if stream not in self.retrieval.trackers and position > 0:
                self.retrieval.tracker(stream).add_range(0, position - 1)
        self._dirty: set[pdu.StreamId] = set()
        # The last live envelope's stream (accepted), its tracker once known,
        # its position (only _live writes _position) and whether it is in
        # _dirty; and the same of the stream before it: envelopes come a
        # stream (or a warrant's two) at a time, and a StreamId hashes in Python.
        self._run: list = [None, None, 0, False]
        self._other: list = [None, None, 0, False]
        self._carry = 0  # octets the message the buffer holds lacks, when known (receive_data)
        self._unacked = 0
        self._ack_at: float | None = None

    def connection_made(self, now: float) -> None:
        """Start a connection: acknowledge every known position at once.

        Those first acks tell the server where to resume, so it need not
        send again what is already stored.
        """
        self._start(now)
        self._carry = 0  # a new buffer
        self.retrieval.connection_lost()
        self._dirty = set(self._position)
        self._run[3] = self._other[3] = False  # (both in it, if known: not marked, re-added)
        self._flush_acks()

    def connection_lost(self) -> None:
        """The transport is gone; open replay requests die with it."""
        super().connection_lost()
        self.retrieval.connection_lost()

    def position(self, stream: pdu.StreamId) -> int | None:
        """The next sequence number expected live on ``stream``; None if unknown."""
        return self._position.get(stream)

    def tracker(self, stream: pdu.StreamId) -> SequenceTracker:
        """Everything held of ``stream``, live and retrieved."""
        return self.retrieval.tracker(stream)

    def request_missing(
        self, stream: pdu.StreamId, below: int | None = None, now: float | None = None
    ) -> list[bytes]:
        """See :meth:`RetrievalClient.request_missing`."""
        self._require_connection()
        return self.retrieval.request_missing(stream, below, now)

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """:meth:`StreamConnection.receive_data`, a read's whole messages cut from it.

        The messages a read holds whole are sliced from it
        (``framing.leading_messages``); the buffer takes only the rest: the
        message a read cuts short, completed by the octets it lacked at the
        start of the next read, and anything unusual. The events, the errors
        and what :meth:`events_before_break` returns are the same.
        """
        carry, self._carry = self._carry, 0
        if not self._connected or data.__class__ is not bytes:
            return super().receive_data(data, now)  # (broken: it raises)
        head = b""
        if self._buffer.pending:
            if not carry or carry > len(data):  # unknown, or still short: the buffer's
                events = super().receive_data(data, now)
                self._carry = carry - len(data) if carry > len(data) else 0
                return events
            head, data = data[:carry], data[carry:]
        whole, rest, need = leading_messages(data, self._max_message)
        events: list[Event] = super().receive_data(head, now) if head else []
        try:
            if whole:
                self._keepalive.heard(now)  # once per read: all its messages arrived by now
            message = self._message
            for raw in whole:
                events.extend(message(raw, now))
        except ProtocolError as exc:  # as StreamConnection.receive_data breaks the connection
            self._broken = exc
            self._connected = False
            self._out.clear()
            self._unreturned = events
            raise
        if rest < len(data):
            try:
                events.extend(super().receive_data(data[rest:], now))
            except ProtocolError:
                self._unreturned = events + self._unreturned  # this read's, in order
                raise
            self._carry = need  # the rest was one message cut short: the octets it lacks
        return events

    def _message(self, raw: bytes, now: float) -> list[Event]:
        """Each envelope's and checkpoint's event keeps the message's octets (``raw``).

        The owner stores them as received (a later version's extension
        fields included) without framing the stream a second time.
        """
        message = decode_message(raw)
        # Envelopes, nearly every message, straight to their handling: no
        # keepalive or unknown message is an Envelope.
        if message.__class__ is pdu.Envelope:
            event: Event = self._envelope(message, now)
            event.__dict__["raw"] = raw  # made just now by this machine, not yet shared
            return [event]
        events = self._dispatch(message, now)
        for event in events:
            if event.__class__ in (CheckpointReceived, EnvelopeReceived):
                event.__dict__["raw"] = raw
        return events

    def _envelope(self, message: pdu.Envelope, now: float) -> EnvelopeReceived:
        stream = message.stream
        if (
            stream is not self._run[0]
            and stream is not self._other[0]
            and self._accept is not None
            and stream not in self._accept
        ):
            raise ProtocolError(f"envelope for {stream}, not delivered here")
        if self.retrieval.claims(message):
            return self.retrieval.handle_envelope(message)
        return self._live(message, now)

    def _handle(self, message: pdu.DeliveryMessage, now: float) -> list[Event]:
        if isinstance(message, pdu.Envelope):
            return [self._envelope(message, now)]
        if isinstance(message, pdu.ReplayResult):
            return [self.retrieval.handle_result(message, now)]
        if isinstance(message, pdu.ChainCheckpoint):
            if self._accept is not None and message.stream not in self._accept:
                raise ProtocolError(f"checkpoint for {message.stream}, not delivered here")
            return [CheckpointReceived(message)]
        raise ProtocolError(f"unexpected {type(message).__name__} from the server")

    def _live(self, envelope: pdu.Envelope, now: float) -> EnvelopeReceived:
        stream, seq = envelope.stream, envelope.sequence_number
        run = self._run
        if stream is not run[0]:
            if stream is self._other[0]:  # the stream before it (two streams interleaved)
                self._run, self._other = self._other, run
            else:  # (accepted: _envelope checked it)
                position = self._position.setdefault(stream, seq)
                self._run, self._other = [stream, None, position, False], run
            run = self._run
        position = run[2]
        if seq > position:
            raise ProtocolError(
                f"envelope {seq} of {stream} skips from {position}: a stream loses nothing"
            )
        if seq == position:
            self._position[stream] = run[2] = seq + 1
            tracker = run[1]
            if tracker is None:
                tracker = self.retrieval.trackers.get(stream)
                if tracker is None:
                    tracker = self.tracker(stream)
                run[1] = tracker
            duplicate = not tracker.arrive(seq)[1]
        else:
            duplicate = True
        if not run[3]:  # in _dirty already? (set.add hashes the stream)
            self._dirty.add(stream)
            run[3] = True
        self._unacked += 1
        if self._unacked >= self.ack_every:
            self._flush_acks()
        elif self._ack_at is None:
            self._ack_at = now + self.ack_delay
        # What EnvelopeReceived(envelope, duplicate) makes, without the frozen
        # dataclass's __init__ (per envelope: it costs more than this method).
        received = _NEW(EnvelopeReceived)
        fields = received.__dict__
        fields["envelope"] = envelope
        fields["duplicate"] = duplicate
        fields["retrieved"] = False
        return received

    def _flush_acks(self) -> None:
        for stream in sorted(self._dirty, key=str):
            ack = pdu.Acknowledgement(stream, self._position[stream])
            self._out += encode_message(ack)
        self._dirty.clear()
        self._run[3] = self._other[3] = False
        self._unacked = 0
        self._ack_at = None

    def _before_answer(self, now: float) -> None:
        self._flush_acks()

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do (an ack or a keepalive)."""
        deadline = super().next_deadline()
        if deadline is None or self._ack_at is None:
            return deadline
        return min(deadline, self._ack_at)

    def tick(self, now: float) -> list[Event]:
        """Send acks whose delay is up, and run the keepalive timers."""
        if self._connected and self._ack_at is not None and now >= self._ack_at:
            self._flush_acks()
        return super().tick(now)
