"""Replay, the server's side: a connection's requests, their budget and their results.

:class:`RetrievalServer` is driven by whoever reads the log (``server/link``):
it checks each request, says what to read (:meth:`RetrievalServer.plan`),
counts what is sent against the request's and the connection's limits
(:class:`RetrievalLimits`) and closes the request with a ReplayResult that
tells *never* (past retention, lost) from *not yet* (past the stream's end,
or over a limit). The agency's side is ``retrieval.RetrievalClient``.

Nothing here is sized by the peer's numbers: ranges stay intervals (a
request for 0..2**64-1 is one pair) and counts are arithmetic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container, Iterable

from mediation import pdu
from mediation.pdu.delivery import MAX_SEQUENCE
from mediation.protocol.envelope import LogRecord, encode_message, record_envelope
from mediation.protocol.errors import ProtocolError
from mediation.protocol.events import Range, ReplayWanted
from mediation.protocol.gaps import IntervalSet

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


def merge_ranges(pieces: Iterable[Range]) -> IntervalSet:
    """The pieces as one set of sorted, merged intervals."""
    merged = IntervalSet()
    for first, last in pieces:
        merged.add(first, last)
    return merged


def check_range(first: int, last: int) -> None:
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
        self._spent = False

    @property
    def spent(self) -> bool:
        """Whether this connection's budget is used up (every further request: not yet)."""
        limits = self.limits
        return (
            self._spent
            or self.records >= limits.connection_records
            or self.octets >= limits.connection_bytes
        )

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
            check_range(r.first, r.last)
        merged = merge_ranges((r.first, r.last) for r in request.ranges)
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
        for first, last in merge_ranges(unavailable):
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
        self._spent |= which is pdu.ReplayLimit.CONNECTION  # a record did not fit: done
        _note(request.later_why, text)

    def _request(self, request_id: int) -> _Serving:
        try:
            return self._open[request_id]
        except KeyError:
            raise ValueError(f"no open replay request {request_id}") from None
