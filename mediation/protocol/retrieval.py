"""Replay: an agency asks for sequence ranges again and gets them from the log.

Message-level machines, carried on a stream connection (see ``stream``):
the agency's :class:`RetrievalClient` and the server's
:class:`RetrievalServer`. A request is answered by its envelopes, in order,
each marked redelivered, then one ReplayResult saying how many were sent
and which asked-for ranges cannot be (never appended, or past retention).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container, Iterable, MutableMapping

from mediation import pdu
from mediation.pdu.delivery import MAX_ID
from mediation.protocol.envelope import LogRecord, encode_message, record_envelope
from mediation.protocol.errors import ProtocolError
from mediation.protocol.events import EnvelopeReceived, Range, ReplayFinished, ReplayWanted
from mediation.protocol.gaps import IntervalSet, SequenceTracker

# A request of 64 ranges is under 2 KiB; more would only let one request
# monopolise the server's log reader.
MAX_REQUEST_RANGES = 64
MAX_OUTSTANDING = 16


def _ranges(pieces: Iterable[Range]) -> IntervalSet:
    merged = IntervalSet()
    for first, last in pieces:
        merged.add(first, last)
    return merged


@dataclasses.dataclass
class _Request:
    stream: pdu.StreamId
    ranges: IntervalSet
    count: int = 0  # envelopes sent (server) or arrived (client)


class RetrievalServer:
    """The server's side: parses requests, lets the owner read the log, closes them."""

    def __init__(
        self,
        streams: Container[pdu.StreamId],
        *,
        max_ranges: int = MAX_REQUEST_RANGES,
        max_outstanding: int = MAX_OUTSTANDING,
    ) -> None:
        """Args:
        streams: the streams this agency may ask for (its own warrants only).
        max_ranges: the most ranges one request may hold.
        max_outstanding: the most requests open at once.
        """
        self._streams = streams
        self._max_ranges = max_ranges
        self._max_outstanding = max_outstanding
        self._open: dict[int, _Request] = {}

    def handle_request(self, request: pdu.ReplayRequest) -> ReplayWanted:
        """Accept a replay request.

        Returns:
            What to read from the log: ranges sorted and merged.

        Raises:
            ProtocolError: a stream not this agency's, a request id already
            open, too many ranges or too many open requests.
        """
        if request.stream not in self._streams:
            raise ProtocolError(f"replayRequest for {request.stream}, not this agency's stream")
        if request.request_id in self._open:
            raise ProtocolError(f"replayRequest {request.request_id} is already open")
        if len(request.ranges) > self._max_ranges:
            raise ProtocolError(
                f"replayRequest of {len(request.ranges)} ranges (at most {self._max_ranges})"
            )
        if len(self._open) >= self._max_outstanding:
            raise ProtocolError(f"more than {self._max_outstanding} replayRequests open")
        merged = _ranges((r.first, r.last) for r in request.ranges)
        self._open[request.request_id] = _Request(request.stream, merged)
        return ReplayWanted(request.request_id, request.stream, tuple(merged))

    def envelope(self, request_id: int, record: LogRecord) -> bytes:
        """The (redelivered) envelope of one record found for an open request.

        Raises:
            ValueError: no such open request, or the record was not asked for.
        """
        request = self._request(request_id)
        if record.seq not in request.ranges:
            raise ValueError(f"record {record.seq} was not asked for by {request_id}")
        request.count += 1
        return record_envelope(request.stream, record, redelivered=True)

    def finish(
        self,
        request_id: int,
        delivered: int | None = None,
        unavailable: Iterable[Range] = (),
        reason: str | None = None,
    ) -> bytes:
        """Close a request: the ReplayResult octets.

        Args:
            request_id: the request being closed.
            delivered: how many envelopes were sent; None: as counted by
                :meth:`envelope`.
            unavailable: asked-for ranges that cannot be sent.
            reason: why (e.g. "past retention"); never case data.

        Raises:
            ValueError: no such open request, or unavailable ranges not asked for.
        """
        request = self._request(request_id)
        pieces = tuple(_ranges(unavailable))
        for first, last in pieces:
            if request.ranges.count_within(first, last) != last - first + 1:
                raise ValueError(f"unavailable {first}..{last} was not asked for")
        del self._open[request_id]
        result = pdu.ReplayResult(
            request_id=request_id,
            stream=request.stream,
            delivered=request.count if delivered is None else delivered,
            unavailable=tuple(pdu.SequenceRange(a, b) for a, b in pieces),
            reason=reason,
        )
        return encode_message(result)

    @property
    def open_requests(self) -> list[int]:
        """Ids of the requests not yet finished."""
        return list(self._open)

    def _request(self, request_id: int) -> _Request:
        try:
            return self._open[request_id]
        except KeyError:
            raise ValueError(f"no open replay request {request_id}") from None


class RetrievalClient:
    """The agency's side: asks for what its trackers miss and takes in the answers."""

    def __init__(
        self,
        trackers: MutableMapping[pdu.StreamId, SequenceTracker] | None = None,
        *,
        max_ranges: int = MAX_REQUEST_RANGES,
        max_outstanding: int = MAX_OUTSTANDING,
    ) -> None:
        """Args:
        trackers: per-stream trackers shared with the live receiver (e.g.
            ``DatagramReceiver.trackers``); missing ones are made on use.
        max_ranges: the most ranges put in one request.
        max_outstanding: the most requests open at once.
        """
        self.trackers = {} if trackers is None else trackers
        self._max_ranges = max_ranges
        self._max_outstanding = max_outstanding
        self._open: dict[int, _Request] = {}
        self._next_id = 1

    def tracker(self, stream: pdu.StreamId) -> SequenceTracker:
        """The stream's tracker, made empty on first use."""
        if stream not in self.trackers:
            self.trackers[stream] = SequenceTracker()
        return self.trackers[stream]

    def request(self, stream: pdu.StreamId, ranges: Iterable[Range]) -> bytes:
        """A ReplayRequest for ``ranges`` of ``stream``.

        Raises:
            ValueError: no ranges, more than the per-request maximum, or too
            many requests open.
        """
        merged = _ranges(ranges)
        if not merged or merged.interval_count > self._max_ranges:
            raise ValueError(f"a request holds 1 to {self._max_ranges} ranges")
        if len(self._open) >= self._max_outstanding:
            raise ValueError(f"{self._max_outstanding} replay requests are already open")
        request_id = self._next_id
        while request_id in self._open:
            request_id = request_id % MAX_ID + 1
        self._next_id = request_id % MAX_ID + 1
        self._open[request_id] = _Request(stream, merged)
        wanted = tuple(pdu.SequenceRange(a, b) for a, b in merged)
        return encode_message(pdu.ReplayRequest(request_id, stream, wanted))

    def request_missing(self, stream: pdu.StreamId, below: int | None = None) -> list[bytes]:
        """Requests for everything ``stream`` misses that is not already asked for.

        Args:
            stream: the stream.
            below: only gaps ending below this sequence number (leave the
                newest alone: on UDP they may still be in flight).

        Returns:
            Up to the open-request limit of requests, each of at most the
            per-request number of ranges; empty when nothing is wanted.
        """
        asked = _ranges(
            piece for r in self._open.values() if r.stream == stream for piece in r.ranges
        )
        wanted: list[Range] = []
        for first, last in self.tracker(stream).retrievable():
            if below is not None:
                if first >= below:
                    break
                last = min(last, below - 1)
            wanted.extend(asked.gaps(first, last))
        out = []
        while wanted and len(self._open) < self._max_outstanding:
            chunk, wanted = wanted[: self._max_ranges], wanted[self._max_ranges :]
            out.append(self.request(stream, chunk))
        return out

    def claims(self, envelope: pdu.Envelope) -> bool:
        """Whether the envelope answers one of our open requests."""
        return self._owner(envelope) is not None

    def handle_envelope(self, envelope: pdu.Envelope) -> EnvelopeReceived:
        """Take in an envelope that :meth:`claims` (a duplicate is flagged, not stored)."""
        request = self._owner(envelope)
        if request is None:
            raise ValueError("envelope answers no open request")
        request.count += 1
        new = self.tracker(envelope.stream).add(envelope.sequence_number)
        return EnvelopeReceived(envelope, duplicate=not new, retrieved=True)

    def handle_result(self, result: pdu.ReplayResult) -> ReplayFinished:
        """Close a request; its unavailable ranges become permanently missing.

        Raises:
            ProtocolError: no such open request, another stream, unavailable
            ranges not asked for, or a delivered count that is not the
            number of envelopes that arrived for it.
        """
        request = self._open.pop(result.request_id, None)
        if request is None:
            raise ProtocolError(f"replayResult {result.request_id} closes no open request")
        if result.stream != request.stream:
            raise ProtocolError(f"replayResult {result.request_id} is for another stream")
        if result.delivered != request.count:
            raise ProtocolError(
                f"replayResult {result.request_id} says {result.delivered} delivered, "
                f"{request.count} arrived"
            )
        tracker = self.tracker(request.stream)
        unavailable = tuple((r.first, r.last) for r in result.unavailable)
        for first, last in unavailable:
            if request.ranges.count_within(first, last) != last - first + 1:
                raise ProtocolError(f"replayResult marks {first}..{last}, which was not asked for")
            tracker.mark_unavailable(first, last, result.reason)
        gone = _ranges(unavailable)
        still = sum(
            last - first + 1 - gone.count_within(first, last)
            for a, b in request.ranges
            for first, last in tracker.gaps_within(a, b)
        )
        return ReplayFinished(
            result.request_id, request.stream, result.delivered, unavailable, result.reason, still
        )

    def connection_lost(self) -> None:
        """Requests die with their connection: forget them so they can be asked again."""
        self._open.clear()

    @property
    def open_requests(self) -> list[int]:
        """Ids of the requests not yet answered by a ReplayResult."""
        return list(self._open)

    def _owner(self, envelope: pdu.Envelope) -> _Request | None:
        for request in self._open.values():
            if request.stream == envelope.stream and envelope.sequence_number in request.ranges:
                return request
        return None
