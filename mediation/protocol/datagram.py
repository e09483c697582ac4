"""Real-time delivery over UDP: one envelope per datagram, loss counted by reports.

The server's :class:`DatagramSender` (one per stream and agency endpoint)
turns log records into datagrams and reads the agency's receiver reports
into a loss figure. The agency's :class:`DatagramReceiver` accepts the
datagrams, tracks every stream's sequence numbers, and once per interval
writes one report per stream that fits one datagram.
"""

from __future__ import annotations

from collections.abc import Container, Sequence

from mediation import pdu
from mediation.protocol.envelope import (
    LogRecord,
    StreamEnvelopes,
    decode_message,
    encode_message,
)
from mediation.protocol.errors import ProtocolError
from mediation.protocol.events import (
    CheckpointReceived,
    EndpointResponsive,
    EndpointSilent,
    EnvelopeReceived,
    Event,
    GapDetected,
    LossCount,
    ReportReceived,
    UnknownMessage,
)
from mediation.protocol.gaps import SequenceTracker
from mediation.protocol.keepalive import UtcNow, system_utc_now
from mediation.protocol.sealed import OVERHEAD

REPORT_INTERVAL = 1.0
SILENT_AFTER = 3  # report intervals without a report
# 1400 octets stays under a 1500-octet Ethernet MTU with IPv6, UDP and
# an IPsec or GRE header or two: a report is never fragmented.
MAX_REPORT_OCTETS = 1400
MAX_UDP_PAYLOAD = 65507
# Every datagram is sealed (sealed.py): its header and tag come on top.
MAX_ENVELOPE = MAX_UDP_PAYLOAD - OVERHEAD
_NEW = object.__new__

# Worst cases, so the range budget needs no trial encoding: a SequenceRange
# is at most 2 + 2 * (2 + 9) octets; everything else in a report (stream
# with a 32-character handle, time, counts, headers) is under 128.
_RANGE_OCTETS = 24
_REPORT_OVERHEAD = 128


def parse_datagram(data: bytes) -> pdu.DeliveryMessage:
    """Decode one datagram (one whole message), e.g. to route a report by its stream.

    Raises:
        ProtocolError: not exactly one valid DeliveryMessage.
    """
    return decode_message(data)


class DatagramSender:
    """The server's side of one stream to one UDP endpoint."""

    def __init__(
        self,
        stream: pdu.StreamId,
        *,
        report_interval: float = REPORT_INTERVAL,
        silent_after: int = SILENT_AFTER,
        envelopes: StreamEnvelopes | None = None,
    ) -> None:
        """Args:
        stream: the warrant stream this sender delivers.
        report_interval: seconds between the receiver's reports.
        silent_after: missed report intervals before the endpoint is silent.
        envelopes: the stream's envelopes, shared with its other endpoints
            (default: encoded for this sender alone).
        """
        self.stream = stream
        self.envelopes = envelopes if envelopes is not None else StreamEnvelopes(stream)
        self.report_interval = report_interval
        self.silent_after = silent_after
        self.first_sent: int | None = None
        self.next_sequence: int | None = None
        self.silent = False
        self.last_report_at: float | None = None
        self._clock_from: float | None = None  # first send, then each report
        self._last_report: pdu.ReceiverReport | None = None

    def envelope(self, record: LogRecord, now: float) -> bytes:
        """The datagram carrying one log record (a :class:`LogRecord`).

        Raises:
            ValueError: the record is not the next in sequence, or too big
            for one datagram.
        """
        seq = record.seq
        if self.next_sequence is not None and seq != self.next_sequence:
            raise ValueError(f"record {seq} sent, {self.next_sequence} was next")
        data = self.envelopes.envelope(record)
        if len(data) > MAX_ENVELOPE:
            raise ValueError(f"envelope of {len(data)} octets does not fit a UDP datagram")
        if self.first_sent is None:
            self.first_sent = seq
            self._clock_from = now
        self.next_sequence = seq + 1
        return data

    def envelope_run(
        self, records: Sequence[LogRecord], now: float
    ) -> tuple[list[bytes], list[LogRecord]]:
        """:meth:`envelope` of each record of a run, in one call.

        A record whose :meth:`envelope` would raise is skipped, and the
        next one is taken as following it (what a sender does with an
        envelope too large for a datagram: the agency fetches it by
        retrieval).

        Returns:
            The envelopes of the records that go, in order; the records
            skipped.
        """
        expected = self.next_sequence
        seq = records[0].seq if records else 0
        in_order = expected is None or seq == expected
        for record in records:
            if not in_order or record.seq != seq:
                in_order = False
                break
            seq += 1
        if in_order and records:
            try:
                out = self.envelopes.envelopes(records)
            except ValueError:  # a broken record: one by one, below
                pass
            else:
                if max(map(len, out)) <= MAX_ENVELOPE:
                    if self.first_sent is None:
                        self.first_sent = records[0].seq
                        self._clock_from = now
                    self.next_sequence = seq
                    return out, []
        return self._envelope_each(records, now)

    def _envelope_each(
        self, records: Sequence[LogRecord], now: float
    ) -> tuple[list[bytes], list[LogRecord]]:
        """:meth:`envelope_run` the long way, for a run that has a record to skip."""
        out: list[bytes] = []
        skipped: list[LogRecord] = []
        for record in records:
            try:
                out.append(self.envelope(record, now))
            except ValueError:
                skipped.append(record)
                if self.first_sent is None:
                    self.first_sent = record.seq
                self.next_sequence = record.seq + 1
        return out, skipped

    def checkpoint(self, checkpoint: pdu.ChainCheckpoint) -> bytes:
        """The datagram carrying a signed chain checkpoint of this stream.

        Sent after the envelope of the last record it covers; it takes no
        sequence number, and a lost one is only a later checkpoint's wait.

        Raises:
            ValueError: the checkpoint is of another stream.
        """
        if checkpoint.stream != self.stream:
            raise ValueError(f"checkpoint of {checkpoint.stream} on the sender of {self.stream}")
        return encode_message(checkpoint)

    def receive_datagram(self, data: bytes, now: float) -> list[Event]:
        """A datagram from the endpoint: a receiver report.

        Raises:
            ProtocolError: not a valid report for this stream (drop it).
        """
        message = parse_datagram(data)
        if isinstance(message, pdu.UnknownDeliveryMessage):
            return [UnknownMessage(message.tag, message.raw)]
        if not isinstance(message, pdu.ReceiverReport):
            raise ProtocolError(f"unexpected {type(message).__name__} from a UDP endpoint")
        return self.receive_report(message, now)

    def receive_report(self, report: pdu.ReceiverReport, now: float) -> list[Event]:
        """Apply a decoded receiver report.

        Returns:
            ``EndpointResponsive`` if the endpoint had been silent, then
            ``ReportReceived`` unless the report is older than one already
            applied (UDP may reorder them).

        Raises:
            ProtocolError: another stream's report, or counts that contradict
            each other.
        """
        if report.stream != self.stream:
            raise ProtocolError(f"receiverReport for {report.stream} reached {self.stream}")
        _check_report(report)
        events: list[Event] = []
        self.last_report_at = now
        self._clock_from = now
        if self.silent:
            self.silent = False
            events.append(EndpointResponsive(self.stream))
        last = self._last_report
        if (
            last is not None
            and report.report_time < last.report_time
            and report.received_count < last.received_count
        ):
            return events  # a late, older report: alive, but no news
        self._last_report = report
        events.append(ReportReceived(report, self.loss))
        return events

    def next_deadline(self) -> float | None:
        """When :meth:`tick` may change state; None: nothing to wait for."""
        if self.silent or self._clock_from is None:
            return None
        return self._clock_from + self.silent_after * self.report_interval

    def tick(self, now: float) -> list[Event]:
        """Notice a silent endpoint.

        Returns:
            ``[EndpointSilent]`` once, when the deadline passes.
        """
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return []
        self.silent = True
        return [EndpointSilent(self.stream, self.last_report_at)]

    @property
    def loss(self) -> LossCount:
        """The loss figure over the sent range, from the latest report.

        Recomputed from the latest report rather than accumulated, so a
        datagram that arrives late (reordered) or is fetched by retrieval
        stops counting as lost in the next report.
        """
        report = self._last_report
        if self.first_sent is None or self.next_sequence is None:
            return LossCount()
        first, last_sent = self.first_sent, self.next_sequence - 1
        sent = last_sent - first + 1
        if report is None or report.highest_sequence is None:
            return LossCount(sent=sent, unreported=sent)
        high = report.highest_sequence
        top = min(high, last_sent)
        if top < first:
            return LossCount(sent=sent, unreported=sent)
        listed_in = sum(_overlap(r, first, top) for r in report.missing)
        listed_all = sum(r.count for r in report.missing)
        omitted = high + 1 - report.received_count - listed_all
        # Left-out ranges lie somewhere in [0, high] outside the listed ones;
        # bound how many can fall inside [first, top].
        free_in = top - first + 1 - listed_in
        free_out = (high + 1 - listed_all) - free_in
        upper = listed_in + min(omitted, free_in)
        lower = listed_in + max(0, omitted - free_out)
        return LossCount(
            sent=sent,
            received=top - first + 1 - upper,
            lost=upper,
            unreported=last_sent - top,
            exact=upper == lower,
        )


def _overlap(r: pdu.SequenceRange, first: int, last: int) -> int:
    return max(0, min(r.last, last) - max(r.first, first) + 1)


def _check_report(report: pdu.ReceiverReport) -> None:
    """Counts and ranges must agree, or the loss figure would be nonsense."""
    high = report.highest_sequence
    if high is None:
        if report.received_count or report.missing:
            raise ProtocolError("receiverReport without highestSequence counts envelopes")
        return
    if not 1 <= report.received_count <= high + 1:
        raise ProtocolError(
            f"receiverReport: receivedCount {report.received_count} impossible "
            f"with highestSequence {high}"
        )
    previous = -1
    for r in report.missing:
        if r.first <= previous or r.last >= high:
            raise ProtocolError("receiverReport: missing ranges overlap, are unsorted or too high")
        previous = r.last + 1  # adjacent ranges would be one range
    listed = sum(r.count for r in report.missing)
    if listed > high + 1 - report.received_count:
        raise ProtocolError("receiverReport: more missing listed than receivedCount allows")
    if not report.missing_omitted and listed != high + 1 - report.received_count:
        raise ProtocolError("receiverReport: missing ranges disagree with receivedCount")


class DatagramReceiver:
    """The agency's side of UDP delivery: every stream arriving on one socket."""

    def __init__(
        self,
        *,
        streams: Container[pdu.StreamId] | None = None,
        report_interval: float = REPORT_INTERVAL,
        max_report_octets: int = MAX_REPORT_OCTETS,
        utc_now: UtcNow = system_utc_now,
    ) -> None:
        """Args:
        streams: the streams accepted; None accepts any.
        report_interval: seconds between reports.
        max_report_octets: the largest report datagram.
        utc_now: the wall clock for ``reportTime``.
        """
        self._accept = streams
        self.report_interval = report_interval
        self._max_ranges = (max_report_octets - _REPORT_OVERHEAD) // _RANGE_OCTETS
        if self._max_ranges < 1:
            raise ValueError(f"{max_report_octets} octets cannot hold a report")
        self._utc_now = utc_now
        self._trackers: dict[pdu.StreamId, SequenceTracker] = {}
        self._next_report: float | None = None
        # The last envelope's stream (accepted) and its tracker, and the one
        # before: a sender's datagrams come a stream (or a warrant's two) at
        # a time, and a StreamId hashes in Python.
        self._last: tuple[pdu.StreamId | None, SequenceTracker | None] = (None, None)
        self._other = self._last

    @property
    def trackers(self) -> dict[pdu.StreamId, SequenceTracker]:
        """Every stream's tracker (settable: a receiver shares its own among machines)."""
        return self._trackers

    @trackers.setter
    def trackers(self, trackers: dict[pdu.StreamId, SequenceTracker]) -> None:
        self._trackers = trackers
        self._last = self._other = (None, None)

    def tracker(self, stream: pdu.StreamId) -> SequenceTracker:
        """The stream's tracker, made empty on first use."""
        if stream not in self.trackers:
            self.trackers[stream] = SequenceTracker()
        return self.trackers[stream]

    def receive_datagram(self, data: bytes, now: float) -> list[Event]:
        """One datagram from the server.

        Returns:
            ``GapDetected`` (if it jumps past the highest so far) then
            ``EnvelopeReceived``; or ``CheckpointReceived``; or
            ``UnknownMessage`` for a later version's message. An
            envelope's and a checkpoint's event keeps the datagram (``raw``).

        Raises:
            ProtocolError: malformed, not a delivery datagram, or for a
            stream not accepted. Concerns this datagram only.
        """
        message = decode_message(data)  # parse_datagram(), one call less per datagram
        if message.__class__ is pdu.Envelope or isinstance(message, pdu.Envelope):
            return self._envelope(message, now, data)
        if isinstance(message, pdu.ChainCheckpoint):
            if self._accept is not None and message.stream not in self._accept:
                raise ProtocolError(
                    f"checkpoint for {message.stream}, not delivered to this receiver"
                )
            return [CheckpointReceived(message, raw=data)]
        if isinstance(message, pdu.UnknownDeliveryMessage):
            return [UnknownMessage(message.tag, message.raw)]
        raise ProtocolError(f"unexpected {type(message).__name__} in a delivery datagram")

    def _envelope(self, envelope: pdu.Envelope, now: float, data: bytes) -> list[Event]:
        stream = envelope.stream
        last = self._last
        if stream is last[0]:  # the stream of the datagram before: accepted, its tracker known
            tracker = last[1]
        elif stream is (other := self._other)[0]:  # the one before it (two streams interleaved)
            tracker = other[1]
            self._last, self._other = other, last
        else:
            if self._accept is not None and stream not in self._accept:
                raise ProtocolError(f"envelope for {stream}, not delivered to this receiver")
            tracker = self.trackers.get(stream)
            if tracker is None:
                tracker = self.tracker(stream)
            self._last, self._other = (stream, tracker), last
        seq = envelope.sequence_number
        expected, new = tracker.arrive(seq)
        # What EnvelopeReceived(envelope, duplicate=not new) makes, without
        # the frozen dataclass's __init__ (a tenth of this machine's cost).
        received = _NEW(EnvelopeReceived)
        fields = received.__dict__
        fields["envelope"] = envelope
        fields["duplicate"] = not new
        fields["retrieved"] = False
        fields["raw"] = data  # the datagram is the message: its octets, kept for the owner
        if self._next_report is None:
            self._next_report = now + self.report_interval
        if seq > expected:
            return [GapDetected(stream, expected, seq - 1), received]
        return [received]

    def next_deadline(self) -> float | None:
        """When the next reports are due; None before any stream is known."""
        return self._next_report

    def report_due(self, now: float) -> bool:
        """Whether :meth:`make_reports` should be called now."""
        return self._next_report is not None and now >= self._next_report

    def make_reports(self, now: float) -> list[bytes]:
        """One report datagram per known stream, and schedule the next round.

        Each report lists at most as many missing ranges as fit the size
        limit (the lowest and the newest) and says how many it left out.
        """
        if not self.trackers:
            return []
        self._next_report = now + self.report_interval
        report_time = self._utc_now()
        out = []
        for stream, tracker in self.trackers.items():
            ranges, omitted = tracker.missing_sample(self._max_ranges)
            report = pdu.ReceiverReport(
                stream=stream,
                report_time=report_time,
                received_count=tracker.received_count,
                missing=tuple(pdu.SequenceRange(a, b) for a, b in ranges),
                highest_sequence=tracker.highest,
                missing_omitted=omitted or None,
            )
            out.append(encode_message(report))
        return out
