"""Replay: an agency asks for sequence ranges again and gets them from the log.

Message-level machines, carried on a stream connection (see ``stream``):
the agency's :class:`RetrievalClient` and the server's
:class:`RetrievalServer`. A request is answered by its envelopes, in order,
each marked redelivered, then one ReplayResult saying how many were sent,
which asked-for ranges can *never* be sent (past retention, or lost) and
which are *not yet* sent (past the stream's end, or left over when a limit
of the request or of the connection was reached: ask again later).

Nothing here is sized by the peer's numbers: ranges stay intervals (a
request for 0..2**64-1 is one pair), counts are arithmetic, and the server
machine stops a request at its record and byte limits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, MutableMapping

from mediation import pdu
from mediation.pdu.delivery import MAX_ID
from mediation.protocol.envelope import encode_message
from mediation.protocol.errors import ProtocolError
from mediation.protocol.events import EnvelopeReceived, Range, ReplayFinished
from mediation.protocol.gaps import IntervalSet, SequenceTracker
from mediation.protocol.retrieval_server import (
    MAX_OUTSTANDING,
    MAX_REQUEST_RANGES,
    RetrievalLimits,
    RetrievalServer,
    check_range,
    merge_ranges,
)

__all__ = [
    "MAX_OUTSTANDING",
    "MAX_REQUEST_RANGES",
    "RetrievalClient",
    "RetrievalLimits",
    "RetrievalServer",
]


@dataclasses.dataclass
class _Asked:
    """A request on the client side."""

    stream: pdu.StreamId
    ranges: IntervalSet
    count: int = 0  # envelopes arrived


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
        self._open: dict[int, _Asked] = {}
        self._next_id = 1

    def tracker(self, stream: pdu.StreamId) -> SequenceTracker:
        """The stream's tracker, made empty on first use."""
        if stream not in self.trackers:
            self.trackers[stream] = SequenceTracker()
        return self.trackers[stream]

    def request(self, stream: pdu.StreamId, ranges: Iterable[Range]) -> bytes:
        """A ReplayRequest for ``ranges`` of ``stream``.

        Raises:
            ValueError: no ranges, a range outside 0..2**64-1, more than the
            per-request maximum, or too many requests open.
        """
        pieces = list(ranges)
        for first, last in pieces:
            try:
                check_range(first, last)
            except ProtocolError as exc:
                raise ValueError(str(exc)) from None
        merged = merge_ranges(pieces)
        if not merged or merged.interval_count > self._max_ranges:
            raise ValueError(f"a request holds 1 to {self._max_ranges} ranges")
        if len(self._open) >= self._max_outstanding:
            raise ValueError(f"{self._max_outstanding} replay requests are already open")
        request_id = self._next_id
        while request_id in self._open:
            request_id = request_id % MAX_ID + 1
        self._next_id = request_id % MAX_ID + 1
        self._open[request_id] = _Asked(stream, merged)
        wanted = tuple(pdu.SequenceRange(a, b) for a, b in merged)
        return encode_message(pdu.ReplayRequest(request_id, stream, wanted))

    def request_missing(
        self, stream: pdu.StreamId, below: int | None = None, now: float | None = None
    ) -> list[bytes]:
        """Requests for everything ``stream`` misses that is not already asked for.

        Args:
            stream: the stream.
            below: only gaps ending below this sequence number (leave the
                newest alone: on UDP they may still be in flight).
            now: the owner's clock: ranges answered "not yet" wait their
                pause (see :meth:`SequenceTracker.mark_not_yet`); None: ask
                for them too.

        Returns:
            Up to the open-request limit of requests, each of at most the
            per-request number of ranges; empty when nothing is wanted.
        """
        asked = merge_ranges(
            piece for r in self._open.values() if r.stream == stream for piece in r.ranges
        )
        wanted: list[Range] = []
        room = (self._max_outstanding - len(self._open)) * self._max_ranges
        for first, last in self.tracker(stream).retrievable(now=now):
            if below is not None:
                if first >= below:
                    break
                last = min(last, below - 1)
            wanted.extend(asked.gaps(first, last))
            if len(wanted) >= room:
                break
        out = []
        while wanted and len(self._open) < self._max_outstanding:
            chunk, wanted = wanted[: self._max_ranges], wanted[self._max_ranges :]
            out.append(self.request(stream, chunk))
        return out

    def claims(self, envelope: pdu.Envelope) -> bool:
        """Whether the envelope answers one of our open requests."""
        return bool(self._open) and self._owner(envelope) is not None

    def handle_envelope(self, envelope: pdu.Envelope) -> EnvelopeReceived:
        """Take in an envelope that :meth:`claims` (a duplicate is flagged, not stored)."""
        request = self._owner(envelope)
        if request is None:
            raise ValueError("envelope answers no open request")
        request.count += 1
        new = self.tracker(envelope.stream).add(envelope.sequence_number)
        return EnvelopeReceived(envelope, duplicate=not new, retrieved=True)

    def handle_result(self, result: pdu.ReplayResult, now: float = 0.0) -> ReplayFinished:
        """Close a request: unavailable ranges become missing for good, not-yet ones wait.

        Args:
            result: the server's ReplayResult.
            now: the owner's clock, for the pause before not-yet ranges are
                asked again.

        Raises:
            ProtocolError: no such open request, another stream, ranges not
            asked for, or a delivered count that is not the number of
            envelopes that arrived for it.
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
        unavailable = tuple((r.first, r.last) for r in result.unavailable)
        not_yet = tuple((r.first, r.last) for r in result.not_yet or ())
        for first, last in (*unavailable, *not_yet):
            if request.ranges.count_within(first, last) != last - first + 1:
                raise ProtocolError(f"replayResult marks {first}..{last}, which was not asked for")
        tracker = self.tracker(request.stream)
        for first, last in unavailable:
            tracker.mark_unavailable(first, last, result.reason)
        for first, last in not_yet:
            tracker.mark_not_yet(first, last, result.reason)
        if not_yet:
            # A limit that cut a request which did deliver is progress: go on
            # at once. Past the stream's end, or nothing at all: pause.
            progress = bool(result.delivered) and result.limited is not None
            tracker.not_yet_answered(now, progress=progress)
        else:
            tracker.answered_in_full()
        gone = merge_ranges(unavailable)
        still = sum(
            last - first + 1 - gone.count_within(first, last)
            for a, b in request.ranges
            for first, last in tracker.gaps_within(a, b)
        )
        return ReplayFinished(
            result.request_id,
            request.stream,
            result.delivered,
            unavailable,
            result.reason,
            still,
            not_yet,
            result.limited,
        )

    def connection_lost(self) -> None:
        """Requests die with their connection: forget them so they can be asked again."""
        self._open.clear()

    @property
    def open_requests(self) -> list[int]:
        """Ids of the requests not yet answered by a ReplayResult."""
        return list(self._open)

    def _owner(self, envelope: pdu.Envelope) -> _Asked | None:
        for request in self._open.values():
            if request.stream == envelope.stream and envelope.sequence_number in request.ranges:
                return request
        return None
