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
from collections.abc import Container, Iterable, MutableMapping

from mediation import pdu
from mediation.pdu.delivery import MAX_ID, MAX_SEQUENCE
from mediation.protocol.envelope import LogRecord, encode_message, record_envelope
from mediation.protocol.errors import ProtocolError
from mediation.protocol.events import EnvelopeReceived, Range, ReplayFinished, ReplayWanted
from mediation.protocol.gaps import IntervalSet, SequenceTracker

# A request of 64 ranges is under 2 KiB; more would only let one request
# monopolise the server's log reader.
MAX_REQUEST_RANGES = 64
MAX_OUTSTANDING = 16
# Lost stretches one request may report before it is cut short: keeps a
# ReplayResult (never + not-yet ranges, ~24 octets each) far below the
# 1 MiB message limit whatever holes the log has.
MAX_RESULT_RANGES = 4096


@dataclasses.dataclass(frozen=True)
class RetrievalLimits:
    """What one request and one connection may cost the server (``[retrieval]`` config).

    The first record of a request or connection always goes, whatever its
    size, so a record larger than a byte limit is still retrievable.
    """

    request_records: int = 100_000
    request_bytes: int = 64 * 2**20
    connection_records: int = 1_000_000
    connection_bytes: int = 512 * 2**20

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{field.name}: must be a whole number of 1 or more")


def _ranges(pieces: Iterable[Range]) -> IntervalSet:
    merged = IntervalSet()
    for first, last in pieces:
        merged.add(first, last)
    return merged


def _check_range(first: int, last: int) -> None:
    """The SequenceNumber type's bounds (0..2**64-1), first <= last.

    Raises:
        ProtocolError: out of bounds or empty (never an OverflowError later).
    """
    for value in (first, last):
        if not isinstance(value, int) or not 0 <= value <= MAX_SEQUENCE:
            raise ProtocolError(f"replay range {first!r}..{last!r}: not 0..{MAX_SEQUENCE}")
    if last < first:
        raise ProtocolError(f"replay range {first}..{last} is empty")


@dataclasses.dataclass
class _Asked:
    """A request on the client side."""

    stream: pdu.StreamId
    ranges: IntervalSet
    count: int = 0  # envelopes arrived


@dataclasses.dataclass
class _Serving:
    """A request on the server side, while it is answered."""

    stream: pdu.StreamId
    ranges: IntervalSet
    count: int = 0  # envelopes sent
    octets: int = 0
    sent: IntervalSet = dataclasses.field(default_factory=IntervalSet)
    never: IntervalSet = dataclasses.field(default_factory=IntervalSet)
    never_why: list[str] = dataclasses.field(default_factory=list)
    later_why: list[str] = dataclasses.field(default_factory=list)
    limited: pdu.ReplayLimit | None = None


def _note(reasons: list[str], text: str) -> None:
    if text not in reasons:
        reasons.append(text)


class RetrievalServer:
    """The server's side of one connection: requests, their budget, their results.

    The owner answers each :class:`ReplayWanted`: :meth:`plan` with the
    stream's stored bounds says what to read; each record read goes through
    :meth:`envelope` (None: a limit is reached, stop reading); :meth:`lost`
    reports what the log no longer has; :meth:`finish` closes the request.
    """

    def __init__(
        self,
        streams: Container[pdu.StreamId],
        *,
        max_ranges: int = MAX_REQUEST_RANGES,
        max_outstanding: int = MAX_OUTSTANDING,
        limits: RetrievalLimits | None = None,
    ) -> None:
        """Args:
        streams: the streams this agency may ask for (its own warrants only).
        max_ranges: the most ranges one request may hold.
        max_outstanding: the most requests open at once.
        limits: records and octets per request and per connection.
        """
        self._streams = streams
        self._max_ranges = max_ranges
        self._max_outstanding = max_outstanding
        self.limits = limits or RetrievalLimits()
        self._open: dict[int, _Serving] = {}
        self.records = 0
        """Envelopes sent on this connection."""
        self.octets = 0
        """Their octets."""
        self.limited = 0
        """Requests finished with ranges left for later by a limit."""

    @property
    def spent(self) -> bool:
        """Whether this connection's budget is used up (every further request: not yet)."""
        limits = self.limits
        return self.records >= limits.connection_records or self.octets >= limits.connection_bytes

    def handle_request(self, request: pdu.ReplayRequest) -> ReplayWanted:
        """Accept a replay request.

        Returns:
            What was asked: ranges sorted and merged (intervals, never numbers).

        Raises:
            ProtocolError: a stream not this agency's, a request id already
            open, too many ranges or open requests, a range out of bounds.
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
        for r in request.ranges:
            _check_range(r.first, r.last)
        merged = _ranges((r.first, r.last) for r in request.ranges)
        self._open[request.request_id] = _Serving(request.stream, merged)
        return ReplayWanted(request.request_id, request.stream, tuple(merged))

    def plan(self, request_id: int, first_stored: int, last_stored: int) -> list[Range]:
        """What to read from the log for a request, given what the stream stores now.

        Below ``first_stored`` is never (past retention); above
        ``last_stored`` is not yet (past the stream's end). Once this
        connection's budget is spent, nothing is read: all of it is not yet.

        Args:
            request_id: an open request.
            first_stored: the lowest sequence number the log still has.
            last_stored: the highest durable one (-1: none yet).

        Returns:
            The ranges to read, lowest first, each inside the stored bounds.
        """
        request = self._request(request_id)
        if self.spent:
            self._limit(request, pdu.ReplayLimit.CONNECTION)
            return []
        low, high = first_stored, last_stored
        reads: list[Range] = []
        for first, last in request.ranges:
            if first < low:
                request.never.add(first, min(last, low - 1))
                _note(request.never_why, "past retention")
            if last > high:
                end = f"stored up to {high}" if high >= low else "nothing stored yet"
                _note(request.later_why, f"beyond the stream's end ({end})")
            start, stop = max(first, low), min(last, high)
            if start <= stop:
                reads.append((start, stop))
        return reads

    def envelope(self, request_id: int, record: LogRecord) -> bytes | None:
        """The (redelivered) envelope of one record found for an open request.

        Returns:
            The envelope's octets, counted against the limits; None when a
            limit of the request or the connection is reached (stop reading:
            the rest goes back as not yet).

        Raises:
            ValueError: no such open request, or the record was not asked for.
        """
        request = self._request(request_id)
        if record.seq not in request.ranges:
            raise ValueError(f"record {record.seq} was not asked for by {request_id}")
        data = record_envelope(request.stream, record, redelivered=True)
        limits, size = self.limits, len(data)
        if self.records and (
            self.records >= limits.connection_records
            or self.octets + size > limits.connection_bytes
        ):
            self._limit(request, pdu.ReplayLimit.CONNECTION)
            return None
        if request.count and (
            request.count >= limits.request_records or request.octets + size > limits.request_bytes
        ):
            self._limit(request, pdu.ReplayLimit.REQUEST)
            return None
        request.count += 1
        request.octets += size
        request.sent.add(record.seq, record.seq)
        self.records += 1
        self.octets += size
        return data

    def lost(self, request_id: int, first: int, last: int, reason: str = "past retention") -> bool:
        """Record ``first``..``last`` of a request as never available (the log lacks them).

        Returns:
            False when the request has as many lost stretches as its result
            may carry: stop reading (the rest goes back as not yet).
        """
        request = self._request(request_id)
        request.never.add(first, last)
        _note(request.never_why, reason)
        if request.never.interval_count >= MAX_RESULT_RANGES:
            self._limit(request, pdu.ReplayLimit.REQUEST)
            return False
        return True

    def finish(
        self,
        request_id: int,
        delivered: int | None = None,
        unavailable: Iterable[Range] = (),
        reason: str | None = None,
    ) -> bytes:
        """Close a request: the ReplayResult octets.

        Asked-for numbers neither sent nor never available go back as not
        yet (ask again), so nothing is ever called unavailable by omission.

        Args:
            request_id: the request being closed.
            delivered: how many envelopes were sent; None: as counted by
                :meth:`envelope`.
            unavailable: more asked-for ranges that can never be sent.
            reason: why those (e.g. "past retention"); never case data.

        Raises:
            ValueError: no such open request, or unavailable ranges not asked for.
        """
        request = self._request(request_id)
        for first, last in _ranges(unavailable):
            if request.ranges.count_within(first, last) != last - first + 1:
                raise ValueError(f"unavailable {first}..{last} was not asked for")
            request.never.add(first, last)
            _note(request.never_why, reason or "not available")
        del self._open[request_id]
        not_yet = [
            piece
            for a, b in request.ranges
            for gap in request.sent.gaps(a, b)
            for piece in request.never.gaps(*gap)
        ]
        self.limited += request.limited is not None
        words = [*request.never_why, *request.later_why] if request.never or not_yet else []
        result = pdu.ReplayResult(
            request_id=request_id,
            stream=request.stream,
            delivered=request.count if delivered is None else delivered,
            unavailable=tuple(pdu.SequenceRange(a, b) for a, b in request.never),
            reason="; ".join(words) or None,
            not_yet=tuple(pdu.SequenceRange(a, b) for a, b in not_yet),
            limited=request.limited if not_yet else None,
        )
        return encode_message(result)

    @property
    def open_requests(self) -> list[int]:
        """Ids of the requests not yet finished."""
        return list(self._open)

    def _limit(self, request: _Serving, which: pdu.ReplayLimit) -> None:
        limits = self.limits
        if which is pdu.ReplayLimit.CONNECTION:
            text = (
                f"connection limit of {limits.connection_records} records or "
                f"{limits.connection_bytes} bytes reached; ask again on a new connection"
            )
        else:
            text = (
                f"request limit of {limits.request_records} records or "
                f"{limits.request_bytes} bytes reached; ask again"
            )
        request.limited = which
        _note(request.later_why, text)

    def _request(self, request_id: int) -> _Serving:
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
                _check_range(first, last)
            except ProtocolError as exc:
                raise ValueError(str(exc)) from None
        merged = _ranges(pieces)
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
        asked = _ranges(
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
        return self._owner(envelope) is not None

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
        gone = _ranges(unavailable)
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
